//! The etcd cluster chora runs itself (`etcd.members`, DESIGN.md §10): the
//! image its members run (present, pulled, or built once from a local etcd
//! binary with `chora image build`, never from a registry that is not there)
//! and what each member says of itself (healthy, leader).

use crate::ctx::Ctx;
use crate::failure::StepError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One etcd member as it reports itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdMember {
    /// `/health` answered 200 (the member has a leader: the cluster has quorum).
    pub healthy: bool,
    /// Whether it is the leader; `None` when it did not say.
    pub leader: Option<bool>,
}

impl Ctx {
    /// The image the etcd members chora runs use: `etcd.image` when the engine
    /// has it or can pull it, else `chora-etcd:<version>`, built once with
    /// `chora image build` from an etcd binary on this machine (`etcd.binary`,
    /// or `etcd` on the PATH). Returns the image and a sentence saying which.
    pub async fn ensure_etcd_image(&self) -> Result<(String, String), StepError> {
        let e = self.config.etcd.clone().unwrap_or_default();
        let d = self.docker_runtime().await?;
        let docker = d.docker();
        let exists = |tag: String| async move {
            chora_docker::image::image_exists(docker, &tag)
                .await
                .map_err(|e| StepError::new(e.to_string()))
        };
        let configured = e.image.clone();
        let done = |image: String, how: String| {
            let _ = self.etcd_image.set(image.clone());
            Ok((image, how))
        };
        if exists(configured.clone()).await? {
            return done(
                configured.clone(),
                format!("etcd image {configured} present"),
            );
        }
        let binary = e.binary.clone().map(PathBuf::from).or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("etcd"))
                    .find(|f| f.is_file())
            })
        });
        let version = binary.as_deref().and_then(etcd_version);
        // Built here earlier: no pull to try again.
        if let Some(v) = &version {
            let tag = format!("chora-etcd:{v}");
            if exists(tag.clone()).await? {
                return done(
                    tag.clone(),
                    format!(
                        "etcd image {tag} present (built from a local etcd; {configured} is not here)"
                    ),
                );
            }
        }
        let why = match tokio::time::timeout(
            Duration::from_secs(120),
            chora_docker::image::pull(docker, &configured),
        )
        .await
        {
            Ok(Ok(())) => {
                return done(
                    configured.clone(),
                    format!("etcd image {configured} pulled"),
                );
            }
            Ok(Err(why)) => why,
            Err(_) => "the pull took over 120 s".into(),
        };
        let (Some(bin), Some(v)) = (binary.clone(), version) else {
            return Err(StepError::new(format!(
                "the etcd image {configured} is missing and cannot be pulled, and no etcd binary was found to build one"
            ))
            .cause(format!("the pull failed: {why}"))
            .cause(match binary {
                Some(b) => format!("{} does not answer `--version` like etcd", b.display()),
                None => "no `etcd` on the PATH and no `etcd.binary` in the config".into(),
            })
            .action("Install etcd (apt-get install etcd-server) and run `chora bootstrap` again")
            .action(format!(
                "Or build the image yourself: chora image build --binary /path/to/etcd --tag {configured}"
            )));
        };
        let tag = format!("chora-etcd:{v}");
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
                "cannot build the etcd image {tag} from {}: {e}",
                bin.display()
            ))
            .action(format!(
                "Try it alone: chora image build --binary {} --tag {tag}",
                bin.display()
            ))
        })?;
        done(
            tag.clone(),
            format!(
                "Built etcd image {tag} from {} ({:.1} MB, no registry; {configured} cannot be pulled: {why})",
                bin.display(),
                built.size as f64 / 1e6
            ),
        )
    }

    /// Etcd member `unit` (`etcd-2`): healthy, and leader or not.
    pub async fn etcd_member(&self, unit: &str) -> EtcdMember {
        let Some(health) = self.unit_health_url(unit).await else {
            return EtcdMember::default();
        };
        let healthy = crate::health::check(&self.http, &health).await.is_ok();
        let status = health.replace("/health", "/v3/maintenance/status");
        let leader = async {
            let v: serde_json::Value = self
                .http
                .post(&status)
                .body("{}")
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let me = v["header"]["member_id"].as_str()?.to_owned();
            Some(v["leader"].as_str()? == me)
        }
        .await;
        EtcdMember { healthy, leader }
    }
}

/// `3.4.23` from `etcd --version` ("etcd Version: 3.4.23").
pub fn etcd_version(binary: &Path) -> Option<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))?
        .trim();
    (!v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
    .then(|| v.to_owned())
}
