//! The swarm of a fleet as one run holds it: what the context (ctx.rs) keeps
//! once the fleet is first reached (a field of its own, so that the context
//! needs nothing else of the fleet's module).

use chora_infra::Inventory;
use chora_infra::tunnel::DockerTunnel;
use chora_runtime::swarm::SwarmRuntime;
use std::sync::Arc;

/// The swarm of a fleet, as this run reaches it.
pub struct Fleet {
    pub inventory: Inventory,
    /// The manager's Docker, over SSH: held open while the run lasts.
    pub manager: DockerTunnel,
    pub swarm: Arc<SwarmRuntime>,
    /// The images this run put on every host already.
    pub(super) ensured: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
}
