//! `chora image build`: a `FROM scratch` image of a binary (default: this chora)
//! with exactly the loader and libraries it needs, and no registry involved.

use crate::failure::{Failure, exit};
use chora_docker::DockerError;
use chora_docker::elf::ElfError;
use chora_docker::image::{BuildSpec, Built, ImageError};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  chora image build --binary /usr/bin/etcd --tag chora-etcd:3.4")]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an image with no registry and no Dockerfile: FROM scratch, the
    /// binary, the shared libraries and loader it needs (read from its ELF
    /// headers), and chora itself for `chora probe` health checks
    #[command(after_help = "Examples:\n  chora image build\n  \
        chora image build --binary /usr/bin/etcd --tag chora-etcd:3.4\n  \
        docker run --rm chora-etcd:3.4 --version")]
    Build(BuildArgs),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The program the image runs (its entrypoint); default: this chora
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// The image's name; default: chora:<version> for chora, chora-<name>:latest
    /// for another binary
    #[arg(long, value_name = "NAME:TAG")]
    tag: Option<String>,
}

pub fn run(a: ImageArgs) -> Result<(), Failure> {
    match a.command {
        ImageCommand::Build(b) => build(b),
    }
}

fn build(a: BuildArgs) -> Result<(), Failure> {
    let spec = match a.binary {
        None => {
            let mut spec = BuildSpec::chora().map_err(failure)?;
            if let Some(tag) = a.tag {
                spec.tag = tag;
            }
            spec
        }
        Some(binary) => {
            let tag = a.tag.unwrap_or_else(|| default_tag(&binary));
            BuildSpec { binary, tag }
        }
    };
    // Bad input is found before the engine is asked anything.
    let prepared = chora_docker::image::prepare(spec).map_err(failure)?;
    let rt = crate::rt::runtime()?;
    let built = rt.block_on(async {
        let docker = chora_docker::connect()
            .await
            .map_err(|e| failure(e.into()))?;
        chora_docker::image::build_prepared(&docker, prepared)
            .await
            .map_err(failure)
    })?;
    print!("{}", report(&built));
    Ok(())
}

/// `chora-<file name>:latest`, the name made of what an image name may hold.
fn default_tag(binary: &std::path::Path) -> String {
    let name: String = binary
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c| "._-".contains(c));
    if name.is_empty() {
        "chora-app:latest".into()
    } else {
        format!("chora-{name}:latest")
    }
}

fn report(b: &Built) -> String {
    use std::fmt::Write;
    let short = b.id.trim_start_matches("sha256:");
    let mut s = format!(
        "✓ built {} ({}) in {:.1}s, {}\n",
        b.tag,
        &short[..short.len().min(12)],
        b.elapsed.as_secs_f64(),
        human(b.size)
    );
    let _ = writeln!(s, "  entrypoint {}", b.entrypoint);
    let width = b.files.iter().map(|f| f.path.len()).max().unwrap_or(0);
    for f in &b.files {
        let _ = writeln!(s, "  {:<width$}  {:>9}", f.path, human(f.size));
    }
    for (dir, mode) in chora_docker::image::EMPTY_DIRS {
        let _ = writeln!(
            s,
            "  {:<width$}  {:>9}",
            format!("{dir}/"),
            format!("{mode:o}")
        );
    }
    if let Some(p) = &b.library_path {
        let _ = writeln!(s, "  LD_LIBRARY_PATH={p}");
    }
    match &b.stripped {
        Ok(()) => s.push_str("  debug info stripped\n"),
        Err(why) => {
            let _ = writeln!(s, "  debug info kept: {why}");
        }
    }
    s
}

fn human(bytes: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MB {
        format!("{:.1} MiB", bytes as f64 / MB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn failure(e: ImageError) -> Failure {
    let f = Failure::new(exit::FAILURE, code(&e), e.to_string());
    match &e {
        ImageError::BinaryMissing { .. } => f.action("Give the path of an executable: --binary /usr/bin/NAME"),
        ImageError::Elf(ElfError::NotElf { .. } | ElfError::Unsupported { .. } | ElfError::Malformed { .. }) => f
            .cause("only compiled 64-bit Linux programs can be imaged; scripts need their interpreter")
            .action("Point --binary at the compiled program (see `file PATH`)"),
        ImageError::Elf(ElfError::MissingLibrary { name, .. }) => f
            .cause("the library is not installed, or lives in a directory the loader is not told about")
            .action(format!("Install the package that ships {name} (apt-file search {name})"))
            .action("Or list its directory in /etc/ld.so.conf.d/"),
        ImageError::Elf(ElfError::Io { .. }) | ImageError::Io { .. } => {
            f.action("Check the file exists and is readable")
        }
        ImageError::BadTag { .. } => f.action("Use a name such as chora-etcd:3.4"),
        ImageError::Docker(d) => docker_actions(d, f),
        ImageError::BuildFailed { .. } => {
            f.action("Run with CHORA_LOG=debug to see the engine's build output")
        }
    }
}

fn code(e: &ImageError) -> &'static str {
    match e {
        ImageError::BinaryMissing { .. } => "BINARY_NOT_FOUND",
        ImageError::Elf(ElfError::MissingLibrary { .. }) => "LIBRARY_NOT_FOUND",
        ImageError::Elf(ElfError::Io { .. }) | ImageError::Io { .. } => "READ_FAILED",
        ImageError::Elf(_) => "NOT_AN_ELF_BINARY",
        ImageError::BadTag { .. } => "BAD_IMAGE_NAME",
        ImageError::Docker(_) => "DOCKER_UNAVAILABLE",
        ImageError::BuildFailed { .. } => "IMAGE_BUILD_FAILED",
    }
}

fn docker_actions(e: &DockerError, f: Failure) -> Failure {
    match e {
        DockerError::NotRunning { .. } | DockerError::Timeout { .. } => f
            .cause("the Docker daemon is stopped, or DOCKER_HOST points elsewhere")
            .action("Start it: sudo systemctl start docker")
            .action("Check it answers: docker version"),
        DockerError::PermissionDenied { .. } => f
            .cause("this user may not use the Docker socket")
            .action("Add the user to the docker group (sudo usermod -aG docker $USER), then log in again"),
        DockerError::BadHost { .. } => f.action("Fix or unset DOCKER_HOST"),
        DockerError::Api { .. } => f.action("Check the engine's log: journalctl -u docker"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tags_are_valid_image_names() {
        assert_eq!(
            default_tag(std::path::Path::new("/usr/bin/etcd")),
            "chora-etcd:latest"
        );
        assert_eq!(
            default_tag(std::path::Path::new("/opt/My App")),
            "chora-my-app:latest"
        );
        assert_eq!(default_tag(std::path::Path::new("/")), "chora-app:latest");
    }
}
