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
    /// has it or can pull it, else `chora-etcd:<version>` built once from an
    /// etcd binary on this machine (`etcd.binary`, or `etcd` on the PATH).
    /// Returns the image and a sentence saying which.
    pub async fn ensure_etcd_image(&self) -> Result<(String, String), StepError> {
        let e = self.config.etcd.clone().unwrap_or_default();
        let want = crate::images::BinaryImage {
            what: "etcd",
            configured: Some(e.image.clone()),
            binary: e
                .binary
                .clone()
                .map(PathBuf::from)
                .or_else(|| crate::config::on_path("etcd")),
            version: etcd_version,
            install: "apt-get install etcd-server",
        };
        let (image, how) = self.ensure_binary_image(&want).await?;
        let _ = self.etcd_image.set(image.clone());
        Ok((image, how))
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
    crate::images::version_of(binary, "etcd Version:")
}
