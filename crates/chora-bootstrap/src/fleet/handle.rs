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
    /// Each image this run puts on every host, once there.
    pub(super) ensured: OnceMap<()>,
    /// The other hosts' Docker, over SSH, once reached (by host name).
    pub(super) tunnels: OnceMap<Arc<DockerTunnel>>,
}

impl Fleet {
    /// Host `name`'s Docker over SSH, reached once per run and kept.
    pub(super) async fn tunnel(
        &self,
        name: &str,
    ) -> Result<Arc<DockerTunnel>, chora_infra::tunnel::TunnelError> {
        self.tunnels
            .get_or_try_init(name, || async {
                chora_infra::tunnel::docker_tunnel(&self.inventory, name)
                    .await
                    .map(Arc::new)
            })
            .await
    }
}

/// One value per key, made once per run: a second caller for a key waits
/// for the first one's making (and makes it again if that failed); callers
/// for other keys do not wait.
pub(super) struct OnceMap<T>(tokio::sync::Mutex<BTreeMap<String, Arc<Once<T>>>>);

impl<T> Default for OnceMap<T> {
    fn default() -> Self {
        OnceMap(Default::default())
    }
}

impl<T: Clone> OnceMap<T> {
    pub(super) async fn get_or_try_init<E, F, Fut>(&self, key: &str, make: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let cell = self
            .0
            .lock()
            .await
            .entry(key.to_owned())
            .or_default()
            .clone();
        cell.get_or_try_init(make).await.cloned()
    }
}
