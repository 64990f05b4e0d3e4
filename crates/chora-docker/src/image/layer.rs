//! The image's one layer: its tree as a tar made in memory (binaries stripped
//! of debug info when objcopy is there), and the import changes (entrypoint,
//! `LD_LIBRARY_PATH`, labels) the engine applies.

use super::plan::Plan;
use super::{CHORA_IN_IMAGE, EMPTY_DIRS, ImageError, ImageFile};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Reads `source`, stripped of debug info when objcopy is there; chora
/// itself (`all`) of its symbol table too, which nothing in an image reads
/// (a third of a debug build's bytes, to load onto every host).
fn contents(
    source: &Path,
    scratch: &Path,
    objcopy: bool,
    all: bool,
) -> Result<(Vec<u8>, bool), ImageError> {
    let io = |source_err| ImageError::Io {
        path: source.to_path_buf(),
        source: source_err,
    };
    if objcopy {
        let out = scratch.join("stripped");
        let ok = std::process::Command::new("objcopy")
            .arg(if all { "--strip-all" } else { "--strip-debug" })
            .arg(source)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let data = std::fs::read(&out).map_err(io)?;
            let _ = std::fs::remove_file(&out);
            return Ok((data, true));
        }
    }
    Ok((std::fs::read(source).map_err(io)?, false))
}

fn objcopy_available() -> bool {
    std::process::Command::new("objcopy")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The image's one layer (a tar of its tree, paths relative to `/`) and its
/// configuration (Dockerfile instructions the engine applies on import).
pub(super) struct Layer {
    pub(super) tar: Vec<u8>,
    pub(super) changes: Vec<String>,
    pub(super) files: Vec<ImageFile>,
    pub(super) stripped: Result<(), String>,
}

pub(super) fn layer(plan: &Plan, tag: &str) -> Result<Layer, ImageError> {
    let objcopy = objcopy_available();
    let scratch = tempfile::tempdir().map_err(|source| ImageError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    let mut not_stripped = Vec::new();
    let append = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, kind, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data)
            .map_err(|source| ImageError::Io {
                path: PathBuf::from(path),
                source,
            })
    };
    let mut changes = vec![format!("ENTRYPOINT [\"{}\"]", plan.entrypoint)];
    if !plan.library_path.is_empty() {
        changes.push(format!(
            "ENV LD_LIBRARY_PATH={}",
            plan.library_path.join(":")
        ));
    }
    changes.push(format!(
        "LABEL io.chora.built-by=\"chora {}\" io.chora.tag=\"{tag}\"",
        env!("CARGO_PKG_VERSION")
    ));
    for (dir, mode) in EMPTY_DIRS {
        append(
            &mut tar,
            &format!("{}/", &dir[1..]),
            *mode,
            tar::EntryType::Directory,
            &[],
        )?;
        dirs.insert(dir.to_string());
    }
    for (at, source) in &plan.files {
        let parents: Vec<&Path> = Path::new(at).ancestors().skip(1).collect();
        for dir in parents.into_iter().rev() {
            let d = dir.display().to_string();
            if d == "/" || !dirs.insert(d.clone()) {
                continue;
            }
            append(
                &mut tar,
                &format!("{}/", &d[1..]),
                0o755,
                tar::EntryType::Directory,
                &[],
            )?;
        }
        let (data, stripped) = contents(source, scratch.path(), objcopy, at == CHORA_IN_IMAGE)?;
        if objcopy && !stripped {
            not_stripped.push(at.clone());
        }
        let mode = std::fs::metadata(source)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        append(&mut tar, &at[1..], mode, tar::EntryType::Regular, &data)?;
        files.push(ImageFile {
            path: at.clone(),
            source: source.clone(),
            size: data.len() as u64,
        });
    }
    let tar = tar.into_inner().map_err(|source| ImageError::Io {
        path: PathBuf::from("build context"),
        source,
    })?;
    let stripped = if !objcopy {
        Err("objcopy is not installed (apt-get install binutils): copied as is".to_string())
    } else if !not_stripped.is_empty() {
        Err(format!(
            "objcopy failed on {}: copied as is",
            not_stripped.join(", ")
        ))
    } else {
        Ok(())
    };
    Ok(Layer {
        tar,
        changes,
        files,
        stripped,
    })
}
