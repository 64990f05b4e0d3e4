//! Images with no registry: `FROM scratch` plus one binary and exactly the
//! loader and shared libraries it needs ([`crate::elf`]), plus chora itself (so
//! `chora probe` can be every image's health check), an empty `/tmp` (1777) and
//! `/data`. Made through the Engine API by importing a tar of that tree, made in
//! memory, as the image's one layer (`docker import`, with the entrypoint and
//! labels as import changes): no Dockerfile, no base image, no build container.
//! Nothing is pulled, and nothing but the listed files goes in: no environment,
//! no credentials, no secret.

use crate::elf::{self, ElfError, Resolver};
use crate::{Docker, DockerError};
use bollard::query_parameters::{CreateImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Where chora itself sits in every image.
pub const CHORA_IN_IMAGE: &str = "/usr/local/bin/chora";
/// Empty directories every image has, with their modes.
pub const EMPTY_DIRS: &[(&str, u32)] = &[("/tmp", 0o1777), ("/data", 0o755)];
/// The loader's own search directories (glibc on x86-64 Debian): libraries found
/// elsewhere get an `LD_LIBRARY_PATH` in the image, since a scratch image has no
/// ld.so.cache.
const LOADER_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// `chora:<version>`: the image of this chora.
pub fn chora_tag() -> String {
    format!("chora:{}", env!("CARGO_PKG_VERSION"))
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The entrypoint's binary.
    pub binary: PathBuf,
    /// `NAME[:TAG]`.
    pub tag: String,
}

impl BuildSpec {
    /// This chora binary as `chora:<version>`.
    pub fn chora() -> Result<BuildSpec, ImageError> {
        Ok(BuildSpec {
            binary: this_exe()?,
            tag: chora_tag(),
        })
    }
}

/// One file put in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Its path inside the image.
    pub path: String,
    /// The file it was read from (symlinks followed).
    pub source: PathBuf,
    /// Bytes in the image (after stripping).
    pub size: u64,
}

/// What [`build`] made.
#[derive(Debug, Clone)]
pub struct Built {
    pub tag: String,
    /// `sha256:…`
    pub id: String,
    /// The image's size as the engine reports it.
    pub size: u64,
    /// Every file, sorted by path; besides them the image has only [`EMPTY_DIRS`]
    /// and the directories above the files.
    pub files: Vec<ImageFile>,
    /// The entrypoint's path in the image.
    pub entrypoint: String,
    /// `LD_LIBRARY_PATH` set in the image, when a library lies outside the
    /// loader's own directories.
    pub library_path: Option<String>,
    /// Whether debug info was stripped (`objcopy --strip-debug`); when not, why.
    pub stripped: Result<(), String>,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{} does not exist", path.display())]
    BinaryMissing { path: PathBuf },
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tag}` is not a valid image name: {why}")]
    BadTag { tag: String, why: &'static str },
    #[error("the Docker engine could not build {tag}: {message}")]
    BuildFailed { tag: String, message: String },
}

fn this_exe() -> Result<PathBuf, ImageError> {
    std::env::current_exe().map_err(|source| ImageError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })
}

/// True when the engine has an image called `tag`.
pub async fn image_exists(docker: &Docker, tag: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(e) => {
            let e = DockerError::from_bollard(e);
            if e.is_not_found() { Ok(false) } else { Err(e) }
        }
    }
}

/// Builds `chora:<version>` from this binary when the engine does not have it;
/// `None` when it was already there. Phase 0 calls this when a service's image is
/// `chora:<version>`.
pub async fn ensure_chora_image(docker: &Docker) -> Result<Option<Built>, ImageError> {
    ensure_image(docker, BuildSpec::chora()?).await
}

/// Pulls `image` (`NAME[:TAG]`) from its registry; the engine's reason when it
/// cannot (no registry reachable, unknown image).
pub async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    let (repo, tag) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (image, "latest"),
    };
    let opts = CreateImageOptionsBuilder::default()
        .from_image(repo)
        .tag(tag)
        .build();
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            return Err(DockerError::from_bollard(e).to_string());
        }
    }
    Ok(())
}

/// Builds `spec` only when the engine has no image called `spec.tag`.
pub async fn ensure_image(docker: &Docker, spec: BuildSpec) -> Result<Option<Built>, ImageError> {
    if image_exists(docker, &spec.tag).await? {
        return Ok(None);
    }
    build(docker, spec).await.map(Some)
}

/// Removes the image `tag` (forced); a missing image is not an error.
pub async fn remove_image(docker: &Docker, tag: &str) -> Result<(), DockerError> {
    let opts = RemoveImageOptionsBuilder::default().force(true).build();
    match docker.remove_image(tag, Some(opts), None).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = DockerError::from_bollard(e);
            if e.is_not_found() { Ok(()) } else { Err(e) }
        }
    }
}

/// One path in an image's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute; a directory's ends with `/`.
    pub path: String,
    /// Permission bits (`0o1777` for `/tmp/`).
    pub mode: u32,
    pub size: u64,
}

/// What image `tag` holds, read from its layers (`docker save`), sorted by path.
pub async fn files_in(docker: &Docker, tag: &str) -> Result<Vec<Entry>, DockerError> {
    let mut saved = Vec::new();
    let mut stream = docker.export_image(tag);
    while let Some(chunk) = stream.next().await {
        saved.extend_from_slice(&chunk.map_err(DockerError::from_bollard)?);
    }
    let unreadable = |what: String| DockerError::Api {
        host: crate::host(),
        status: None,
        message: format!("cannot read the saved image {tag}: {what}"),
    };
    // `manifest.json` names the layers in order: `<id>/layer.tar` up to Docker
    // 24, `blobs/sha256/<digest>` in the OCI layout of later engines.
    let mut members: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut archive = tar::Archive::new(saved.as_slice());
    for entry in archive.entries().map_err(|e| unreadable(e.to_string()))? {
        let mut entry = entry.map_err(|e| unreadable(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| unreadable(e.to_string()))?;
        let path = path.display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| unreadable(e.to_string()))?;
        members.insert(path, data);
    }
    let manifest: serde_json::Value = members
        .get("manifest.json")
        .and_then(|m| serde_json::from_slice(m).ok())
        .ok_or_else(|| unreadable("no manifest.json".into()))?;
    let layers: Vec<&Vec<u8>> = manifest[0]["Layers"]
        .as_array()
        .ok_or_else(|| unreadable("manifest.json lists no layers".into()))?
        .iter()
        .map(|l| {
            l.as_str()
                .and_then(|l| members.get(l))
                .ok_or_else(|| unreadable(format!("layer {l} is missing")))
        })
        .collect::<Result<_, _>>()?;
    let mut paths = BTreeMap::new();
    for layer in layers {
        let mut archive = tar::Archive::new(layer.as_slice());
        for entry in archive.entries().map_err(|e| unreadable(e.to_string()))? {
            let entry = entry.map_err(|e| unreadable(e.to_string()))?;
            let path = entry.path().map_err(|e| unreadable(e.to_string()))?;
            let mut p = format!("/{}", path.display().to_string().trim_end_matches('/'));
            if entry.header().entry_type().is_dir() {
                p.push('/');
            }
            let mode = entry.header().mode().unwrap_or(0) & 0o7777;
            let size = entry.header().size().unwrap_or(0);
            paths.insert(
                p.clone(),
                Entry {
                    path: p,
                    mode,
                    size,
                },
            );
        }
    }
    Ok(paths.into_values().collect())
}

/// Checks `NAME[:TAG]` the way the engine would, to say what is wrong before
/// anything is read.
fn check_tag(tag: &str) -> Result<(), ImageError> {
    let bad = |why| {
        Err(ImageError::BadTag {
            tag: tag.to_string(),
            why,
        })
    };
    let (name, version) = match tag.rsplit_once(':') {
        Some((n, v)) if !v.contains('/') => (n, Some(v)),
        _ => (tag, None),
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // A registry host (`reg.example:5000/…`) may have dots, a port, capitals.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        parts.remove(0);
    }
    let name_ok = parts.iter().all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    });
    if !name_ok {
        return bad("a name is lower-case letters, digits, '.', '_', '-' and '/'");
    }
    if let Some(v) = version
        && (v.is_empty()
            || v.len() > 128
            || v.starts_with(['.', '-'])
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return bad("a tag is 1-128 letters, digits, '.', '_' or '-', after a ':'");
    }
    Ok(())
}

/// `NAME[:TAG]` as (name, tag), the tag `latest` when none is given.
fn split_tag(tag: &str) -> (&str, &str) {
    match tag.rsplit_once(':') {
        Some((n, v)) if !v.contains('/') => (n, v),
        _ => (tag, "latest"),
    }
}

/// The tree to put in the image: image path → source file.
#[derive(Debug)]
struct Plan {
    files: BTreeMap<String, PathBuf>,
    entrypoint: String,
    library_path: Vec<String>,
}

fn plan(binary: &Path, chora: &Path) -> Result<Plan, ImageError> {
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

/// Reads `source`, stripped of debug info when objcopy is there.
fn contents(source: &Path, scratch: &Path, objcopy: bool) -> Result<(Vec<u8>, bool), ImageError> {
    let io = |source_err| ImageError::Io {
        path: source.to_path_buf(),
        source: source_err,
    };
    if objcopy {
        let out = scratch.join("stripped");
        let ok = std::process::Command::new("objcopy")
            .arg("--strip-debug")
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
struct Context {
    tar: Vec<u8>,
    changes: Vec<String>,
    files: Vec<ImageFile>,
    stripped: Result<(), String>,
}

fn context(plan: &Plan, tag: &str) -> Result<Context, ImageError> {
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
        let (data, stripped) = contents(source, scratch.path(), objcopy)?;
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
    Ok(Context {
        tar,
        changes,
        files,
        stripped,
    })
}

/// A build context ready to send: everything read from disk, nothing asked of
/// the engine yet. Bad input (missing binary, not ELF, missing library, bad
/// name) fails here, before Docker is involved.
pub struct Prepared {
    spec: BuildSpec,
    plan: Plan,
    ctx: Context,
    started: Instant,
}

impl Prepared {
    /// The files that will be in the image, sorted by path.
    pub fn files(&self) -> &[ImageFile] {
        &self.ctx.files
    }
}

/// Reads and checks everything [`build`] needs (blocking: reads and strips the
/// files), with chora beside the binary (this process's own executable) as
/// [`CHORA_IN_IMAGE`].
pub fn prepare(spec: BuildSpec) -> Result<Prepared, ImageError> {
    let started = Instant::now();
    check_tag(&spec.tag)?;
    let plan = plan(&spec.binary, &this_exe()?)?;
    let ctx = context(&plan, &spec.tag)?;
    Ok(Prepared {
        spec,
        plan,
        ctx,
        started,
    })
}

/// Builds `spec.tag` from `spec.binary`: [`prepare`], then [`build_prepared`].
pub async fn build(docker: &Docker, spec: BuildSpec) -> Result<Built, ImageError> {
    let binary = spec.binary.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(spec))
        .await
        .map_err(|e| ImageError::Io {
            path: binary,
            source: std::io::Error::other(e.to_string()),
        })??;
    build_prepared(docker, prepared).await
}

/// Sends a prepared context to the engine and waits for the image.
pub async fn build_prepared(docker: &Docker, prepared: Prepared) -> Result<Built, ImageError> {
    let Prepared {
        spec,
        plan,
        ctx,
        started,
    } = prepared;
    let long = crate::with_timeout(docker, crate::LONG_TIMEOUT);
    // An import (`docker import`): the tar becomes the image's only layer, with
    // no base image, no build container and no second copy of the context.
    let (repo, version) = split_tag(&spec.tag);
    let opts = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .message(&format!("chora image build {}", spec.tag))
        .changes(ctx.changes)
        .build();
    let mut stream = long.create_image(Some(opts), Some(bollard::body_full(ctx.tar.into())), None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(status) = info.status.as_deref() {
                    tracing::debug!(target: "chora_docker::build", "{status}");
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(ImageError::BuildFailed {
                    tag: spec.tag,
                    message: error.trim().to_string(),
                });
            }
            Err(e) => {
                return Err(match DockerError::from_bollard(e) {
                    DockerError::Api { message, .. } => ImageError::BuildFailed {
                        tag: spec.tag,
                        message,
                    },
                    other => other.into(),
                });
            }
        }
    }
    let inspect = docker
        .inspect_image(&spec.tag)
        .await
        .map_err(DockerError::from_bollard)?;
    Ok(Built {
        id: inspect.id.unwrap_or_default(),
        size: inspect.size.unwrap_or(0).max(0) as u64,
        tag: spec.tag,
        files: ctx.files,
        entrypoint: plan.entrypoint,
        library_path: (!plan.library_path.is_empty()).then(|| plan.library_path.join(":")),
        stripped: ctx.stripped,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked_before_anything_is_read() {
        for ok in [
            "chora:0.1.0",
            "chora-etcd:3.4",
            "chora",
            "reg.example:5000/team/app:v1",
            "a_b.c-d:x",
        ] {
            check_tag(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            ":x",
            "Chora:1",
            "chora:",
            "chora:-x",
            "chora:a b",
            "a//b",
        ] {
            assert!(check_tag(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn tags_split_into_name_and_version() {
        assert_eq!(split_tag("chora:0.1.0"), ("chora", "0.1.0"));
        assert_eq!(split_tag("chora"), ("chora", "latest"));
        assert_eq!(
            split_tag("reg:5000/team/app"),
            ("reg:5000/team/app", "latest")
        );
        assert_eq!(
            split_tag("reg:5000/team/app:v1"),
            ("reg:5000/team/app", "v1")
        );
    }

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
