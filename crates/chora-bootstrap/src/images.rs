//! Images of programs this machine has (etcd, Prometheus), for systems in
//! containers with no registry (DESIGN.md §9-10, §16): the configured image
//! when the engine has it or can pull it, else `chora-<what>:<version>`
//! built once from the local binary with `chora image build`, and found
//! again by that tag the next time (no pull tried again). Never a registry
//! that is not there: a pull is tried only for a configured image, and at
//! most for 120 s.

use crate::ctx::Ctx;
use crate::failure::StepError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `binary --version` prints after `prefix` on a line of its own, up to
/// the first space, as an image tag can hold it (`+` becomes `-`).
pub fn version_of(binary: &Path, prefix: &str) -> Option<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))?
        .split_whitespace()
        .next()?
        .replace('+', "-");
    (!v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
    .then_some(v)
}

/// An image made from a binary of this machine.
pub struct BinaryImage {
    /// `etcd`, `prometheus`: the tag is `chora-<what>:<version>`.
    pub what: &'static str,
    /// The image to use when the engine has it or can pull it.
    pub configured: Option<String>,
    /// The local binary to build from.
    pub binary: Option<PathBuf>,
    /// Its version, as the binary says it (`None`: not that program).
    pub version: fn(&Path) -> Option<String>,
    /// How to install the binary (for the error).
    pub install: &'static str,
}

impl Ctx {
    /// The image of `want` and a sentence saying where it came from.
    pub async fn ensure_binary_image(
        &self,
        want: &BinaryImage,
    ) -> Result<(String, String), StepError> {
        let what = want.what;
        let d = self.docker_runtime().await?;
        let docker = d.docker();
        let exists = |tag: String| async move {
            chora_docker::image::image_exists(docker, &tag)
                .await
                .map_err(|e| StepError::new(e.to_string()))
        };
        if let Some(c) = &want.configured
            && exists(c.clone()).await?
        {
            return Ok((c.clone(), format!("{what} image {c} present")));
        }
        let version = want.binary.as_deref().and_then(want.version);
        // Built here earlier: no pull to try again.
        if let Some(v) = &version {
            let tag = format!("chora-{what}:{v}");
            if exists(tag.clone()).await? {
                let of = want
                    .configured
                    .as_deref()
                    .map(|c| format!("; {c} is not here"))
                    .unwrap_or_default();
                return Ok((
                    tag.clone(),
                    format!("{what} image {tag} present (built from a local {what}{of})"),
                ));
            }
        }
        let why = match &want.configured {
            Some(c) => match tokio::time::timeout(
                Duration::from_secs(120),
                chora_docker::image::pull(docker, c),
            )
            .await
            {
                Ok(Ok(())) => return Ok((c.clone(), format!("{what} image {c} pulled"))),
                Ok(Err(why)) => why,
                Err(_) => "the pull took over 120 s".into(),
            },
            None => "no image is configured".into(),
        };
        let (Some(bin), Some(v)) = (want.binary.clone(), version) else {
            let named = want.configured.as_deref().unwrap_or("(none)");
            return Err(StepError::new(format!(
                "the {what} image {named} is missing and cannot be pulled, and no {what} binary was found to build one"
            ))
            .cause(format!("the pull failed: {why}"))
            .cause(match &want.binary {
                Some(b) => format!("{} does not answer `--version` like {what}", b.display()),
                None => format!("no `{what}` on the PATH and none in the config"),
            })
            .action(format!("Install {what} ({}) and run `chora bootstrap` again", want.install))
            .action(format!(
                "Or build the image yourself: chora image build --binary /path/to/{what} --tag chora-{what}:VERSION"
            )));
        };
        let tag = format!("chora-{what}:{v}");
        let built = chora_docker::image::build(
            docker,
            chora_docker::image::BuildSpec {
                binary: bin.clone(),
                tag: tag.clone(),
            },
        )
        .await
        .map_err(|e| {
            StepError::new(format!(
                "cannot build the {what} image {tag} from {}: {e}",
                bin.display()
            ))
            .action(format!(
                "Try it alone: chora image build --binary {} --tag {tag}",
                bin.display()
            ))
        })?;
        let instead = want
            .configured
            .as_deref()
            .map(|c| format!("; {c} cannot be pulled: {why}"))
            .unwrap_or_default();
        Ok((
            tag.clone(),
            format!(
                "Built {what} image {tag} from {} ({:.1} MB, no registry{instead})",
                bin.display(),
                built.size as f64 / 1e6
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &Path, name: &str, says: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\nprintf '%s\\n' '{says}'\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn a_version_is_read_as_a_tag_can_hold_it() {
        let d = tempfile::tempdir().unwrap();
        let etcd = fake(d.path(), "etcd", "etcd Version: 3.4.23");
        assert_eq!(
            version_of(&etcd, "etcd Version:").as_deref(),
            Some("3.4.23")
        );
        let prom = fake(
            d.path(),
            "prometheus",
            "prometheus, version 2.42.0+ds (branch: debian/sid)",
        );
        assert_eq!(
            version_of(&prom, "prometheus, version ").as_deref(),
            Some("2.42.0-ds")
        );
        assert_eq!(version_of(&prom, "etcd Version:"), None, "not that program");
        let odd = fake(d.path(), "odd", "etcd Version: 3.4/../x");
        assert_eq!(version_of(&odd, "etcd Version:"), None, "not a tag");
    }
}
