//! The swarm of a fleet as one run holds it: what the context (ctx.rs) keeps
//! once the fleet is first reached (a field of its own, so that the context
//! needs nothing else of the fleet's module).

use chora_infra::Inventory;
use chora_infra::tunnel::DockerTunnel;
use chora_runtime::swarm::SwarmRuntime;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::OnceCell as Once;

/// The swarm of a fleet, as this run reaches it.
pub struct Fleet {
    pub inventory: Inventory,
    /// The manager's Docker, over SSH: held open while the run lasts.
    pub manager: DockerTunnel,
    pub swarm: Arc<SwarmRuntime>,
    /// Each image this run puts on every host: set once it is there (a
    /// caller asking for one on its way waits for that load).
    pub(super) ensured: tokio::sync::Mutex<BTreeMap<String, Arc<Once<()>>>>,
    /// The other hosts' Docker, over SSH, once reached (by host name).
    pub(super) tunnels: tokio::sync::Mutex<BTreeMap<String, Arc<Once<Arc<DockerTunnel>>>>>,
}

impl Fleet {
    /// Host `name`'s Docker over SSH, reached once per run and kept.
    pub(super) async fn tunnel(
        &self,
        name: &str,
    ) -> Result<Arc<DockerTunnel>, chora_infra::tunnel::TunnelError> {
        let cell = self
            .tunnels
            .lock()
            .await
            .entry(name.to_owned())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            chora_infra::tunnel::docker_tunnel(&self.inventory, name)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
    }
}
