//! What goes in an image: the binary, its loader and every library it needs
//! (read from ELF headers, resolved as ld.so would), and chora itself, each at
//! the path the loader opens.

use super::{CHORA_IN_IMAGE, ImageError};
use crate::elf::{self, Resolver};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The loader's own search directories (glibc on x86-64 Debian): libraries found
/// elsewhere get an `LD_LIBRARY_PATH` in the image, since a scratch image has no
/// ld.so.cache.
const LOADER_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// The tree to put in the image: image path → source file.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) files: BTreeMap<String, PathBuf>,
    pub(super) entrypoint: String,
    pub(super) library_path: Vec<String>,
}

pub(super) fn plan(binary: &Path, chora: &Path) -> Result<Plan, ImageError> {
    if !binary.exists() {
        return Err(ImageError::BinaryMissing {
            path: binary.to_path_buf(),
        });
    }
    let resolver = Resolver::system();
    let mut files = BTreeMap::new();
    let mut library_path = Vec::new();
    let mut add = |exe: &Path, at: Option<String>| -> Result<String, ImageError> {
        let info = elf::read(exe)?;
        let needs = resolver.resolve(exe)?;
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".into());
        // $ORIGIN-relative libraries are found again only if the binary keeps
        // its place.
        let uses_origin = info
            .runpath
            .iter()
            .chain(&info.rpath)
            .any(|p| p.contains("$ORIGIN") || p.contains("${ORIGIN}"));
        let place = match at {
            Some(at) => at,
            None if uses_origin => absolute(exe),
            None => format!("/usr/local/bin/{name}"),
        };
        files.insert(place.clone(), exe.to_path_buf());
        if let Some(loader) = needs.loader {
            files.insert(absolute(&loader), loader);
        }
        for lib in needs.libraries {
            let at = absolute(&lib.path);
            let dir = Path::new(&at)
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            if !lib.via_runpath
                && !LOADER_DIRS.contains(&dir.as_str())
                && !library_path.contains(&dir)
            {
                library_path.push(dir);
            }
            files.insert(at, lib.path);
        }
        Ok(place)
    };
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let entrypoint = if same(binary, chora) {
        add(binary, Some(CHORA_IN_IMAGE.to_string()))?
    } else {
        let entry = add(binary, None)?;
        // A binary called chora at the same place wins over this chora.
        if entry != CHORA_IN_IMAGE {
            add(chora, Some(CHORA_IN_IMAGE.to_string()))?;
        }
        entry
    };
    Ok(Plan {
        files,
        entrypoint,
        library_path,
    })
}

/// `path` made absolute and without `.`/`..`, symlinks kept (the name the loader
/// opens is the name the file must have in the image).
fn absolute(path: &Path) -> String {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out.display().to_string()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_keeping_their_names() {
        assert_eq!(absolute(Path::new("/a/b/../c/./d.so")), "/a/c/d.so");
        assert_eq!(
            absolute(Path::new("/lib64/ld-linux-x86-64.so.2")),
            "/lib64/ld-linux-x86-64.so.2"
        );
    }

    #[test]
    fn the_plan_holds_the_binary_its_loader_libraries_and_chora() {
        let exe = std::env::current_exe().unwrap();
        let p = plan(&exe, &exe).unwrap();
        assert_eq!(p.entrypoint, CHORA_IN_IMAGE);
        assert!(p.files.contains_key(CHORA_IN_IMAGE));
        assert!(
            p.files.keys().any(|f| f.ends_with("/libc.so.6")),
            "{:?}",
            p.files
        );
        assert!(
            p.files.keys().any(|f| f.contains("ld-linux")),
            "{:?}",
            p.files
        );

        let e = plan(Path::new("/nonexistent/bin"), &exe).unwrap_err();
        assert!(matches!(e, ImageError::BinaryMissing { .. }), "{e:?}");
    }
}
