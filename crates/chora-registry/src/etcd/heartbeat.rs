//! Heartbeats without a round trip each (issue 15).
//!
//! A heartbeat need not wait for etcd when this node has itself seen both of
//! the instance's leases renewed within the last [`EtcdStore::window`] (twice
//! the sweep tick the other backends use: a quarter of the heartbeat interval,
//! between 10 ms and 1 s, so at most half the heartbeat interval and far less
//! than either lease's TTL). Such a heartbeat is answered at once and marks both
//! leases *pending*; every tick a background task renews every pending lease
//! (one renewal per lease per tick, however many heartbeats it took), in a few
//! requests of [`RENEWAL_BATCH`] leases each: etcd's keep-alive stream takes
//! any number of leases in one request. The rest is a real keep-alive, as
//! before. Why the contract holds:
//!
//! - **404 for an unknown or expired instance.** An instance this node does not
//!   know is answered 404 without asking etcd, as before. A lease renewed less
//!   than a window ago (timed from when the renewal was *sent*) has more than
//!   `TTL - window > 0` left, so it cannot have expired: etcd would still answer
//!   "alive". Everything that ends a lease early drops it from the fresh set
//!   first: a deregistration on this node (before its delete is sent), the watch
//!   delivering the deletion of the instance or of its alive key (expiry or a
//!   deregistration on another node), a renewal that etcd answers "not found",
//!   and a full re-read of etcd. So the only heartbeat answered from memory for
//!   an instance gone from etcd is one on another node inside the watch's delay
//!   (milliseconds) after a deregistration: the same staleness reads of that
//!   node already have. The next one after the watch delivers is 404.
//! - **`unhealthy` after 2 × heartbeat interval; removed after the TTL.** Leases
//!   are still etcd's. A heartbeat answered from memory at `t` is renewed in etcd
//!   by the next tick, at `t' >= t`, so the lease runs out no earlier than it
//!   would have with a round trip per heartbeat (`t' + TTL >= t + TTL`) and at
//!   most one tick (plus a round trip) later: the lateness the other backends'
//!   sweeper has. If the node dies before that tick, the last renewal etcd saw
//!   is at most one window old, and etcd expires the leases on its own as
//!   before: the instance still turns `unhealthy` and is removed, at most one
//!   window (≤ half the heartbeat interval) early.
//! - **A heartbeat that changes the status** (`unhealthy`, or back `up`) always
//!   takes the slow path: real renewals, then the write, answered once applied.
//!   So is one whose alive lease has run out (a new one is granted and written).
//! - **etcd unreachable.** Renewals fail, nothing is refreshed, so within a
//!   window every heartbeat takes the slow path and answers 503 as before.

use super::EtcdStore;
use crate::store::StoreError;
use chora_api::manifest::Status;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// How many leases one renewal request carries.
const RENEWAL_BATCH: usize = 256;
/// How many renewal requests one node has in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// What this node knows of a lease it renewed itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fresh {
    /// When the last renewal that etcd confirmed was sent.
    renewed: Instant,
    /// A heartbeat was answered from memory since: renew at the next tick.
    pending: bool,
}

impl EtcdStore {
    /// How recently this node must have renewed a lease to answer a heartbeat
    /// without asking etcd: two ticks, at most half the heartbeat interval.
    fn window(&self) -> Duration {
        self.tick * 2
    }

    pub(super) fn fresh(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Fresh>> {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers a heartbeat from memory when both leases were renewed within the
    /// window, and marks them for the next tick's renewal.
    fn beat_from_memory(&self, lease: i64, alive_lease: i64) -> bool {
        let mut fresh = self.fresh();
        let window = self.window();
        let ok = |f: Option<&Fresh>| f.is_some_and(|f| f.renewed.elapsed() < window);
        if !(ok(fresh.get(&lease)) && ok(fresh.get(&alive_lease))) {
            return false;
        }
        for l in [lease, alive_lease] {
            if let Some(f) = fresh.get_mut(&l) {
                f.pending = true;
            }
        }
        true
    }

    /// No heartbeat is answered from memory for these leases any more.
    pub(super) fn forget(&self, leases: &[i64]) {
        let mut fresh = self.fresh();
        for l in leases {
            fresh.remove(l);
        }
    }

    /// Renews leases in one request: whether each was still alive. Records the
    /// outcome in the fresh set (timed from before the request was sent).
    pub(super) async fn keep_alive(&self, leases: &[i64]) -> Result<Vec<bool>, StoreError> {
        let sent = Instant::now();
        let ttls = match self.client.keep_alive(leases).await {
            Ok(ttls) => ttls,
            Err(e) => {
                self.forget(leases);
                return Err(self.unavailable(&e));
            }
        };
        let alive: HashMap<i64, bool> = ttls.into_iter().map(|(l, ttl)| (l, ttl > 0)).collect();
        let mut fresh = self.fresh();
        Ok(leases
            .iter()
            .map(|l| {
                let ok = alive.get(l).copied().unwrap_or(false);
                if ok {
                    let f = fresh.entry(*l).or_insert(Fresh {
                        renewed: sent,
                        pending: false,
                    });
                    f.renewed = f.renewed.max(sent);
                } else {
                    fresh.remove(l);
                }
                ok
            })
            .collect())
    }

    /// A heartbeat: from memory when it can (see the module doc), else both
    /// leases renewed in one request, and a write when the status changes or
    /// the alive lease ran out.
    pub(super) async fn beat(
        &self,
        name: &str,
        id: &str,
        status: Option<Status>,
    ) -> Result<(), StoreError> {
        let not_found = || StoreError::NotFound {
            name: name.to_owned(),
            id: id.to_owned(),
        };
        let mut env = self.envelope(name, id).ok_or_else(not_found)?;
        let changes = status.is_some_and(|s| s != env.reported);
        if !changes && self.beat_from_memory(env.lease, env.alive_lease) {
            self.catalog.touch(name, id);
            return Ok(());
        }
        let renewed = self.keep_alive(&[env.lease, env.alive_lease]).await?;
        if !renewed[0] {
            return Err(not_found());
        }
        let mut rewrite = false;
        if !renewed[1] {
            env.alive_lease = self.grant(self.alive_ttl).await?;
            rewrite = true;
        }
        if let Some(s) = status
            && s != env.reported
        {
            env.reported = s;
            rewrite = true;
        }
        if rewrite {
            let rev = self
                .put_both(&env)
                .await
                .map_err(|e| self.unavailable(&e))?;
            self.applied(rev).await;
        }
        self.catalog.touch(name, id);
        Ok(())
    }
}

/// Every tick, renews the leases of heartbeats answered from memory since the
/// last tick, all at once (see the module doc).
pub(super) async fn renew_pending(store: Weak<EtcdStore>, tick: Duration) {
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(s) = store.upgrade() else { return };
        let due: Vec<i64> = s
            .fresh()
            .iter_mut()
            .filter(|(_, f)| f.pending)
            .map(|(l, f)| {
                f.pending = false;
                *l
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        // A few requests of many leases each: a request per lease would
        // compete with the heartbeats for the CPU. A failure leaves the
        // leases un-renewed: they age out of the window and the next
        // heartbeat asks etcd itself.
        futures_util::stream::iter(due.chunks(RENEWAL_BATCH))
            .for_each_concurrent(BATCHES_IN_FLIGHT, |batch| {
                let s = s.clone();
                async move {
                    let _ = s.keep_alive(batch).await;
                }
            })
            .await;
    }
}
