//! Images with no registry: `FROM scratch` plus one binary and exactly the
//! loader and shared libraries it needs ([`crate::elf`]), plus chora itself (so
//! `chora probe` can be every image's health check), an empty `/tmp` (1777) and
//! `/data`. Made through the Engine API by importing a tar of that tree, made in
//! memory, as the image's one layer (`docker import`, with the entrypoint and
//! labels as import changes): no Dockerfile, no base image, no build container.
//!
//! A build is two steps: [`prepare`] reads and checks everything with no engine
//! (the name, `tag.rs`; what goes in, `plan.rs`; the layer, `layer.rs`), then
//! [`build_prepared`] sends it. `inspect.rs` reads an image's files back.
//!
//! Invariants:
//!
//! - Nothing is pulled, and nothing but the planned files goes in: no
//!   environment, no credentials, no secret. Every entry is owned by root with
//!   mtime 0, so the same inputs give the same layer.
//! - Bad input (a bad name, a missing binary, not ELF, a missing library) fails
//!   in [`prepare`], before the engine is asked anything.
//! - Each library keeps the path the loader opens (symlinks followed for the
//!   content, not the name); one found outside the loader's own directories,
//!   and not through the binary's RUNPATH, puts its directory on the image's
//!   `LD_LIBRARY_PATH` (a scratch image has no ld.so.cache).
//! - chora is always at [`CHORA_IN_IMAGE`]; the entrypoint is the binary.

mod inspect;
mod layer;
mod plan;
mod tag;

pub use inspect::{Entry, files_in};

use crate::elf::ElfError;
use crate::{Docker, DockerError};
use bollard::query_parameters::{CreateImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures_util::StreamExt;
use layer::Layer;
use plan::Plan;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where chora itself sits in every image.
pub const CHORA_IN_IMAGE: &str = "/usr/local/bin/chora";
/// Empty directories every image has, with their modes.
pub const EMPTY_DIRS: &[(&str, u32)] = &[("/tmp", 0o1777), ("/data", 0o755)];

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
    let (repo, tag) = tag::split(image);
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

/// A build context ready to send: everything read from disk, nothing asked of
/// the engine yet. Bad input (missing binary, not ELF, missing library, bad
/// name) fails here, before Docker is involved.
pub struct Prepared {
    spec: BuildSpec,
    plan: Plan,
    layer: Layer,
    started: Instant,
}

impl Prepared {
    /// The files that will be in the image, sorted by path.
    pub fn files(&self) -> &[ImageFile] {
        &self.layer.files
    }
}

/// Reads and checks everything [`build`] needs (blocking: reads and strips the
/// files), with chora beside the binary (this process's own executable) as
/// [`CHORA_IN_IMAGE`].
pub fn prepare(spec: BuildSpec) -> Result<Prepared, ImageError> {
    let started = Instant::now();
    tag::check(&spec.tag)?;
    let plan = plan::plan(&spec.binary, &this_exe()?)?;
    let layer = layer::layer(&plan, &spec.tag)?;
    Ok(Prepared {
        spec,
        plan,
        layer,
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
        layer,
        started,
    } = prepared;
    let long = crate::with_timeout(docker, crate::LONG_TIMEOUT);
    // An import (`docker import`): the tar becomes the image's only layer, with
    // no base image, no build container and no second copy of the context.
    let (repo, version) = tag::split(&spec.tag);
    let opts = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .message(&format!("chora image build {}", spec.tag))
        .changes(layer.changes)
        .build();
    let mut stream =
        long.create_image(Some(opts), Some(bollard::body_full(layer.tar.into())), None);
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
        files: layer.files,
        entrypoint: plan.entrypoint,
        library_path: (!plan.library_path.is_empty()).then(|| plan.library_path.join(":")),
        stripped: layer.stripped,
        elapsed: started.elapsed(),
    })
}
