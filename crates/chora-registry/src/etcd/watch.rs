//! The watch-fed catalog: each node reads everything under the prefix once, then
//! follows it with a watch from the revision after that read, applying every
//! change to its catalog and publishing the watch's revision as the change index.
//! On a compaction, a cancelled watch, or when a write this node made does not
//! come back in time ([`EtcdStore::applied`]), it reads everything again and
//! watches anew.
//!
//! # When the whole cluster is gone
//!
//! While the watch is broken, reads keep serving this node's catalog and
//! [`Store::stale`](crate::store::Store::stale) says since when and why (the
//! HTTP layer turns that into the `X-Chora-Stale` header); writes answer 503
//! `storage_unavailable`, `etcd at <endpoints> unreachable: <reason>`, as soon as
//! every endpoint refuses them (see [`chora_etcd`]). The watch task keeps trying
//! (backing off to one try a second); once etcd answers it reads everything
//! again, watches anew, and the node is current again with no restart.
//!
//! A watch over HTTP/1.1 has no pings of its own: a member that is killed ends
//! it, but one that is cut off or paused only falls silent. So a watch quiet for
//! [`QUIET`] asks its member whether it still serves (answers, and follows a
//! leader); one that does not is left for another endpoint.

use super::{Envelope, EtcdStore, Live, PREFIX, parse_key};
use crate::store::Stale;
use chora_api::manifest::Status;
use chora_etcd::wire::{Event, EventType};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// How long a write waits for this node's catalog to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// How long a write this node made may take to come back through its watch
/// before the watch is presumed stuck and restarted.
const WATCH_SUSPECT: Duration = Duration::from_secs(2);
/// How long a watch may stay silent before its member is asked whether it
/// still serves, and how long that member has to answer: a watch on a member
/// that vanished is left within a second, as gRPC's pings did (500 ms each).
const QUIET: Duration = Duration::from_millis(500);

impl EtcdStore {
    pub(super) fn link(&self) -> std::sync::MutexGuard<'_, Option<Stale>> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watch broke, or could not be set up again: reads are stale (see
    /// [`Store::stale`](crate::store::Store::stale)) since the first of
    /// these, for the latest reason.
    fn lost_etcd(&self, why: &str) {
        let reason = format!("etcd at {} unreachable: {why}", self.endpoints);
        let mut lost = self.link();
        match &mut *lost {
            Some(stale) => stale.reason = reason,
            None => {
                tracing::warn!(%reason, "lost etcd; serving the last known catalog");
                *lost = Some(Stale {
                    since: SystemTime::now(),
                    reason,
                });
            }
        }
    }

    /// The watch follows etcd again.
    fn reached_etcd(&self) {
        if let Some(was) = self.link().take() {
            let down = was.since.elapsed().unwrap_or_default();
            tracing::info!(after = ?down, "etcd is back; the catalog is current again");
        }
    }

    /// Loads everything under the prefix; returns the revision it was read at.
    pub(super) async fn resync(&self) -> Result<i64, chora_etcd::Error> {
        let resp = self.client.range(PREFIX, true).await?;
        let rev = resp.header.revision;
        let mut live = Live::default();
        for kv in &resp.kvs {
            let Some(key) = kv.key_str() else { continue };
            match parse_key(key) {
                Some(("services", n, i)) => {
                    if let Ok(env) = serde_json::from_slice::<Envelope>(&kv.value) {
                        live.meta.insert((n, i), env);
                    }
                }
                Some(("alive", n, i)) => {
                    live.alive.insert((n, i));
                }
                _ => {}
            }
        }
        let entries = live
            .meta
            .iter()
            .map(|(k, e)| (e.record.clone(), live.status(k)))
            .collect();
        self.catalog.reset(entries, rev as u64);
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
        // Leases may have run out while the watch was away: ask etcd again.
        self.fresh().clear();
        // Current as of `rev`; the watch goes on from there.
        self.reached_etcd();
        Ok(rev)
    }

    fn apply(&self, events: &[Event]) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            let Some(key) = ev.kv.key_str() else { continue };
            let Some((kind, name, id)) = parse_key(key) else {
                continue;
            };
            let k = (name, id);
            match (kind, ev.kind) {
                ("services", EventType::Put) => {
                    let Ok(env) = serde_json::from_slice::<Envelope>(&ev.kv.value) else {
                        continue;
                    };
                    let record = env.record.clone();
                    live.meta.insert(k.clone(), env);
                    let status = live.status(&k);
                    self.catalog.upsert_status(record, status);
                }
                ("services", EventType::Delete) => {
                    if let Some(env) = live.meta.remove(&k) {
                        self.forget(&[env.lease, env.alive_lease]);
                    }
                    live.alive.remove(&k);
                    self.catalog.remove(&k.0, &k.1);
                }
                ("alive", EventType::Put) => {
                    live.alive.insert(k.clone());
                    let status = live.status(&k);
                    self.catalog.set_status(&k.0, &k.1, status);
                }
                ("alive", EventType::Delete) => {
                    if let Some(env) = live.meta.get(&k) {
                        self.forget(&[env.alive_lease]);
                    }
                    live.alive.remove(&k);
                    self.catalog.set_status(&k.0, &k.1, Status::Unhealthy);
                }
                _ => {}
            }
        }
    }

    /// Waits until this node's catalog holds revision `rev`, a write it made.
    /// A watch that has not delivered it within [`WATCH_SUSPECT`] is presumed
    /// stuck (seen after a whole cluster restarted: the new watch stream stayed
    /// silent): the node reads everything again and watches anew.
    pub(super) async fn applied(&self, rev: u64) {
        if self.catalog.wait_applied(rev, WATCH_SUSPECT).await {
            return;
        }
        tracing::warn!(
            revision = rev,
            "the watch has not delivered a write this node made; reading everything again"
        );
        self.rewatch.notify_one();
        if !self.catalog.wait_applied(rev, APPLY_WAIT).await {
            tracing::warn!(
                revision = rev,
                "a write this node made is still not in its catalog"
            );
        }
    }
}

/// Follows the prefix: watch from the revision after the last full read; on any
/// error or compaction, or when told to (`rewatch`), read everything again and
/// watch from there. While the watch is broken the node is stale
/// ([`EtcdStore::lost_etcd`]) until a watch is established again.
pub(super) async fn follow(
    store: Weak<EtcdStore>,
    rewatch: Arc<tokio::sync::Notify>,
    mut rev: i64,
) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(s) = store.upgrade() else { return };
        let client = s.client.clone();
        let mut watch = match client.watch(PREFIX, rev + 1).await {
            Ok(w) => w,
            Err(e) => {
                s.lost_etcd(&e.to_string());
                drop(s);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                if let Some(s) = store.upgrade()
                    && let Ok(r) = s.resync().await
                {
                    tracing::info!(revision = r, "catalog reloaded from etcd");
                    rev = r;
                    delay = Duration::from_millis(50);
                }
                continue;
            }
        };
        s.reached_etcd();
        drop(s);
        loop {
            let msg = tokio::select! {
                msg = tokio::time::timeout(QUIET, watch.next()) => Some(msg),
                () = rewatch.notified() => None,
            };
            let Some(s) = store.upgrade() else { return };
            match msg {
                // Quiet: nothing changed, or the member fell silent.
                Some(Err(_)) => {
                    drop(s);
                    if client.serves(watch.endpoint(), QUIET).await {
                        continue;
                    }
                    let Some(s) = store.upgrade() else { return };
                    let ep = &client.endpoints()[watch.endpoint()];
                    s.lost_etcd(&format!("{ep} stopped serving"));
                    client.avoid(watch.endpoint());
                    break;
                }
                Some(Ok(Ok(Some(resp)))) if !resp.canceled && resp.compact_revision == 0 => {
                    if resp.events.is_empty() {
                        continue;
                    }
                    s.apply(&resp.events);
                    rev = rev.max(resp.header.revision);
                    s.catalog.publish(resp.header.revision as u64);
                }
                Some(Ok(Ok(None))) => {
                    s.lost_etcd("the watch ended");
                    client.avoid(watch.endpoint());
                    break;
                }
                Some(Ok(Err(e))) => {
                    s.lost_etcd(&e.to_string());
                    client.avoid(watch.endpoint());
                    break;
                }
                // Cancelled or compacted away, or told to (`rewatch`): read
                // everything again and watch from there.
                _ => {
                    if let Ok(r) = s.resync().await {
                        rev = r;
                    }
                    break;
                }
            }
        }
    }
}
