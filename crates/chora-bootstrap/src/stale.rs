//! Records that no instance of this system runs any more: what an earlier
//! system left in a kept registry volume (its capability containers removed
//! by a reset while their orchestrator was dead, so nobody deregistered
//! them), or what a crash left. They must never fail a fresh bootstrap, so
//! after each phase the bootstrap removes them: every instance of one of its
//! services that is not `up` and is not under an id this system gave. An
//! `up` instance is never removed (something heartbeats it); nor is anything
//! of a name this config does not have.

use crate::ctx::Ctx;
use chora_api::manifest::{ListFilter, Status};
use std::collections::BTreeSet;

impl Ctx {
    /// Deregisters the stale instances of this system's services; returns
    /// how many went. Failures are logged, never fatal: a stale record only
    /// lingers until its TTL. Before the capabilities' phase (`deployed` false) their
    /// orchestrator is not asked (it may not run yet): their records are
    /// kept until the pass after phase 3.
    pub async fn prune_stale(&self, deployed: bool) -> usize {
        let client = self.manifest();
        let Ok(list) = client.list(&ListFilter::default()).await else {
            return 0;
        };
        let units = self.config.registered_units();
        let ours = if deployed {
            self.ours().await
        } else {
            crate::ctx::Ours::default()
        };
        let services: BTreeSet<&str> = units
            .iter()
            .map(|u| {
                self.spec(u)
                    .replica
                    .as_ref()
                    .map_or(u.as_str(), |r| r.service.as_str())
            })
            .collect();
        let mut gone = 0;
        for i in list.iter().filter(|i| i.status != Status::Up) {
            if !services.contains(i.name.as_str())
                || units.iter().any(|u| self.instance_matcher(&ours, u)(i))
            {
                continue;
            }
            match client.deregister(&i.name, &i.id).await {
                Ok(()) => {
                    tracing::info!(service = %i.name, instance = %i.id, "removed a stale record");
                    gone += 1;
                }
                Err(e) => {
                    tracing::warn!(service = %i.name, instance = %i.id, error = %e, "cannot remove a stale record")
                }
            }
        }
        gone
    }
}
