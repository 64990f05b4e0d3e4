//! The etcd backend: Manifest nodes that keep no state of their own.
//!
//! An instance is the key `/chora/services/{name}/{id}` on a lease whose TTL is
//! the registry's TTL, plus the key `/chora/alive/{name}/{id}` on a second lease
//! of twice the heartbeat interval. A heartbeat, on any node, keeps both leases
//! alive (lease keep-alives are cheap: no write). When the short lease runs out,
//! etcd deletes the alive key and every node sees the instance turn `unhealthy`;
//! when the long one runs out, etcd deletes the instance. Each node follows the
//! prefix with a watch into its catalog (reads never go to etcd), and the etcd
//! revision is the change index, so `X-Chora-Index` means the same on every node.
//! A write is answered only once this node's catalog has applied it, so a client
//! reads its own writes.
//!
//! # Heartbeats without a round trip each (issue 15)
//!
//! A heartbeat need not wait for etcd when this node has itself seen both of
//! the instance's leases renewed within the last [`EtcdStore::window`] (twice
//! the sweep tick the other backends use: a quarter of the heartbeat interval,
//! between 10 ms and 1 s, so at most half the heartbeat interval and far less
//! than either lease's TTL). Such a heartbeat is answered at once and marks both
//! leases *pending*; every tick a background task renews each pending lease (one
//! keep-alive per lease per tick, however many heartbeats it took). The rest is
//! a real keep-alive, as before. Why the contract holds:
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
//!
//! # Writes whose outcome is unknown (DESIGN §10)
//!
//! A write is answered with an error only when it is known not to have
//! happened. An etcd call that fails after its retries (a timeout during an
//! election, a member lost mid-request) may still have been applied, so:
//!
//! - **Registration.** Every registration writes under at least one lease
//!   granted for it alone: a fresh alive lease (and a fresh instance lease unless
//!   the instance is known and alive). When the write fails, the node reads the
//!   instance key back for up to [`SETTLE`]: if it holds this write (its alive
//!   lease is the fresh one) the registration is answered as a success. If not,
//!   the node revokes the fresh leases, which *fences* the write: etcd refuses a
//!   put on a revoked lease, so the lost write can never be applied later (had
//!   it been applied between the read and the revocation, the revocation deletes
//!   what it wrote). Only then is it answered 503. So a registration answered
//!   with an error does not exist afterwards, with one exception: when etcd
//!   stays unreachable for the whole [`SETTLE`], neither the read nor the
//!   revocation gets through, and the node answers 503 without knowing. If that
//!   write was applied, nobody renews its fresh lease, so the instance turns
//!   `unhealthy` after twice the heartbeat interval and is gone after the TTL
//!   (unless its owner, retrying with the same id, registers it for real). A
//!   write that failed before anything was sent (a lease grant or renewal) is
//!   known not to have happened and answers 503 at once.
//! - **Deregistration** is idempotent: the node sends the delete again until
//!   etcd confirms it, for up to [`SETTLE`]. Past that it answers 503 and the
//!   delete may still be applied later, which is what its caller wanted anyway.
//! - A write etcd confirmed is answered as a success even when this node's
//!   watch does not deliver it in time (it is durable); the node then reads
//!   everything again.
//!
//! # When the whole cluster is gone
//!
//! While the watch is broken, reads keep serving this node's catalog and
//! [`Store::stale`] says since when and why (the HTTP layer turns that into the
//! `X-Chora-Stale` header); writes answer 503 `storage_unavailable`, `etcd at
//! <endpoints> unreachable: <reason>`. The watch task keeps trying (backing off
//! to one try a second); once etcd answers it reads everything again, watches
//! anew, and the node is current again with no restart.

use crate::catalog::{Catalog, Liveness, Record};
use crate::store::{BoxFuture, Stale, Store, StoreError};
use chora_api::manifest::{Instance, Status};
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

const PREFIX: &str = "/chora/";
/// How long a write waits for this node's catalog to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// How long a write this node made may take to come back through its watch
/// before the watch is presumed stuck and restarted.
const WATCH_SUSPECT: Duration = Duration::from_secs(2);
/// How long a node tries to learn the outcome of a write etcd did not confirm.
pub const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
#[error("cannot reach etcd at {endpoints}: {message}")]
pub struct EtcdOpenError {
    pub endpoints: String,
    pub message: String,
}

/// What is stored under an instance key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    record: Record,
    lease: i64,
    alive_lease: i64,
    reported: Status,
}

type Key = (String, String);

/// What this node knows of a lease it renewed itself.
#[derive(Debug, Clone, Copy)]
struct Fresh {
    /// When the last renewal that etcd confirmed was sent.
    renewed: Instant,
    /// A heartbeat was answered from memory since: renew at the next tick.
    pending: bool,
}

#[derive(Default)]
struct Live {
    meta: HashMap<Key, Envelope>,
    alive: HashSet<Key>,
}

impl Live {
    fn status(&self, k: &Key) -> Status {
        match self.meta.get(k) {
            Some(e) if e.reported == Status::Up && self.alive.contains(k) => Status::Up,
            _ => Status::Unhealthy,
        }
    }
}

pub struct EtcdStore {
    client: Client,
    catalog: Arc<Catalog>,
    live: RwLock<Live>,
    ttl: i64,
    alive_ttl: i64,
    /// The endpoints, as error messages name them.
    endpoints: String,
    /// `Some` while the watch is broken (etcd unreachable).
    lost: Mutex<Option<Stale>>,
    /// Tells the watch task to read everything again and watch anew.
    rewatch: Arc<tokio::sync::Notify>,
    task: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Leases this node renewed itself, by id (see the module doc).
    fresh: Mutex<HashMap<i64, Fresh>>,
    /// How often pending leases are renewed.
    tick: Duration,
}

fn svc_key(name: &str, id: &str) -> String {
    format!("{PREFIX}services/{name}/{id}")
}

fn alive_key(name: &str, id: &str) -> String {
    format!("{PREFIX}alive/{name}/{id}")
}

/// `(kind, name, id)` of a key under the prefix.
fn parse_key(key: &str) -> Option<(&str, String, String)> {
    let rest = key.strip_prefix(PREFIX)?;
    let mut it = rest.splitn(3, '/');
    Some((it.next()?, it.next()?.to_owned(), it.next()?.to_owned()))
}

/// What a person needs to know of an etcd error: for a gRPC status its message
/// (and the innermost cause), not the whole status with its metadata.
fn reason(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let cause = std::error::Error::source(s).map(chora_api::root_cause);
            match (s.message(), cause) {
                ("", Some(c)) => c,
                ("", None) => format!("{:?}", s.code()),
                (m, Some(c)) if !m.contains(&c) => format!("{m}: {c}"),
                (m, _) => m.to_owned(),
            }
        }
        e => e.to_string(),
    }
}

/// Runs an etcd call again (up to three times) when it fails: the client
/// balances over the endpoints, and the next try goes to another member when one
/// is down. Every call made through here is safe to repeat.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut last = None;
    for attempt in 0..3 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Runs a call that is safe to repeat until etcd answers it, for up to
/// [`SETTLE`], backing off from 50 ms to 500 ms between tries.
async fn settle<T, F, Fut>(mut f: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut delay = Duration::from_millis(50);
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if tokio::time::Instant::now() + delay >= deadline => return Err(e),
            Ok(Err(_)) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(_) => {
                return Err(etcd_client::Error::Internal(format!(
                    "no answer within {SETTLE:?}"
                )));
            }
        }
    }
}

/// What a node learnt of a registration etcd did not confirm.
enum Outcome {
    /// It was applied, at this revision.
    Happened(u64),
    /// It was not, and never will be (its fresh leases are revoked).
    Fenced,
    /// etcd did not answer long enough to tell.
    Unknown,
}

fn ceil_secs(d: Duration) -> i64 {
    d.as_secs_f64().ceil().max(1.0) as i64
}

impl EtcdStore {
    /// Connects, loads every instance and starts following changes.
    pub async fn open(
        endpoints: &[String],
        liveness: Liveness,
    ) -> Result<Arc<EtcdStore>, EtcdOpenError> {
        let fail = |message: String| EtcdOpenError {
            endpoints: endpoints.join(","),
            message,
        };
        let eps: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://").to_owned())
            .collect();
        let opts = ConnectOptions::new()
            // A member that vanished (killed, cut off) answers nothing, not
            // even a reset: each call gives up after a second and is retried
            // on another member, and a dead connection is found by its pings
            // within a second. A write takes milliseconds; an election (500 ms
            // in the prod template) fits in a try or two.
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_millis(500), Duration::from_millis(500));
        let client = Client::connect(eps, Some(opts))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let store = Arc::new(EtcdStore {
            client,
            catalog: Arc::new(Catalog::with_external_index(liveness)),
            live: RwLock::default(),
            ttl: ceil_secs(liveness.ttl),
            alive_ttl: ceil_secs(liveness.heartbeat_interval * 2),
            endpoints: endpoints.join(","),
            lost: Mutex::default(),
            rewatch: Arc::default(),
            task: Mutex::default(),
            fresh: Mutex::default(),
            tick: crate::sweep_tick(&liveness),
        });
        let rev = store.resync().await.map_err(|e| fail(e.to_string()))?;
        let weak = Arc::downgrade(&store);
        let follower = tokio::spawn(follow(weak.clone(), store.rewatch.clone(), rev));
        let renewer = tokio::spawn(renew_pending(weak, store.tick));
        store
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([follower, renewer]);
        Ok(store)
    }

    /// How recently this node must have renewed a lease to answer a heartbeat
    /// without asking etcd: two ticks, at most half the heartbeat interval.
    fn window(&self) -> Duration {
        self.tick * 2
    }

    fn fresh(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Fresh>> {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers a heartbeat from memory when both leases were renewed within the
    /// window, and marks them for the next tick's renewal.
    fn beat_from_memory(&self, env: &Envelope) -> bool {
        let mut fresh = self.fresh();
        let window = self.window();
        let ok = |f: Option<&Fresh>| f.is_some_and(|f| f.renewed.elapsed() < window);
        if !(ok(fresh.get(&env.lease)) && ok(fresh.get(&env.alive_lease))) {
            return false;
        }
        for lease in [env.lease, env.alive_lease] {
            if let Some(f) = fresh.get_mut(&lease) {
                f.pending = true;
            }
        }
        true
    }

    fn forget(&self, leases: &[i64]) {
        let mut fresh = self.fresh();
        for l in leases {
            fresh.remove(l);
        }
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// The error a write answers when etcd did not take it.
    fn unavailable(&self, e: &etcd_client::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "etcd at {} unreachable: {}",
            self.endpoints,
            reason(e)
        ))
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Option<Stale>> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watch broke, or could not be set up again: reads are stale (see
    /// [`Store::stale`]) since the first of these, for the latest reason.
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
    async fn resync(&self) -> Result<i64, etcd_client::Error> {
        let resp = retry(|| {
            let mut c = self.client();
            async move { c.get(PREFIX, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut live = Live::default();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            match parse_key(key) {
                Some(("services", n, i)) => {
                    if let Ok(env) = serde_json::from_slice::<Envelope>(kv.value()) {
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

    fn apply(&self, events: &[etcd_client::Event]) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let Some((kind, name, id)) = parse_key(key) else {
                continue;
            };
            let k = (name, id);
            match (kind, ev.event_type()) {
                ("services", EventType::Put) => {
                    let Ok(env) = serde_json::from_slice::<Envelope>(kv.value()) else {
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

    /// Renews a lease: true when it was still alive. Opening the keep-alive stream
    /// sends the first renewal and reads its answer, one round trip in all; the
    /// client turns a TTL of 0 (an expired or revoked lease) into this error.
    /// Records the outcome in the fresh set (timed from before the first try).
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let sent = Instant::now();
        let alive = retry(|| {
            let mut c = self.client();
            async move {
                match c.lease_keep_alive(lease).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
        .map_err(|e| self.unavailable(&e));
        match alive {
            Ok(true) => {
                let mut fresh = self.fresh();
                let f = fresh.entry(lease).or_insert(Fresh {
                    renewed: sent,
                    pending: false,
                });
                f.renewed = f.renewed.max(sent);
            }
            _ => self.forget(&[lease]),
        }
        alive
    }

    /// A lease. (A retried grant may leave an unused lease behind; it expires.)
    async fn grant(&self, ttl: i64) -> Result<i64, StoreError> {
        retry(|| {
            let mut c = self.client();
            async move { c.lease_grant(ttl, None).await }
        })
        .await
        .map(|r| r.id())
        .map_err(|e| self.unavailable(&e))
    }

    /// Writes both keys of an instance. An error leaves the outcome unknown.
    async fn put_both(&self, env: &Envelope) -> Result<u64, etcd_client::Error> {
        let r = &env.record;
        let value = serde_json::to_vec(env).expect("envelopes serialize");
        let txn = Txn::new().and_then(vec![
            TxnOp::put(
                svc_key(&r.name, &r.id),
                value,
                Some(PutOptions::new().with_lease(env.lease)),
            ),
            TxnOp::put(
                alive_key(&r.name, &r.id),
                "1",
                Some(PutOptions::new().with_lease(env.alive_lease)),
            ),
        ]);
        let resp = retry(|| {
            let mut c = self.client();
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0) as u64)
    }

    /// Waits until this node's catalog holds revision `rev`, a write it made.
    /// A watch that has not delivered it within [`WATCH_SUSPECT`] is presumed
    /// stuck (seen after a whole cluster restarted: the new watch stream stayed
    /// silent): the node reads everything again and watches anew.
    async fn applied(&self, rev: u64) {
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

    /// Learns the outcome of a registration etcd did not confirm: reads the
    /// instance back; when it does not hold this write, revokes the write's
    /// fresh leases so that it can never be applied. Keeps trying for
    /// [`SETTLE`] while etcd does not answer.
    async fn settle_put(&self, env: &Envelope, fresh: &[i64]) -> Outcome {
        let key = svc_key(&env.record.name, &env.record.id);
        let read = || {
            let mut c = self.client();
            let key = key.clone();
            async move { c.get(key, None).await }
        };
        let Ok(resp) = settle(read).await else {
            return Outcome::Unknown;
        };
        let ours = resp.kvs().first().and_then(|kv| {
            let stored = serde_json::from_slice::<Envelope>(kv.value()).ok()?;
            (stored.alive_lease == env.alive_lease).then_some(kv.mod_revision() as u64)
        });
        if let Some(rev) = ours {
            tracing::info!(instance = %env.record.id, "the registration did happen");
            return Outcome::Happened(rev);
        }
        for &lease in fresh {
            let revoke = || {
                let mut c = self.client();
                async move {
                    match c.lease_revoke(lease).await {
                        // Already gone: it can hold nothing either.
                        Err(etcd_client::Error::GRpcStatus(s))
                            if s.message().contains("lease not found") =>
                        {
                            Ok(())
                        }
                        r => r.map(|_| ()),
                    }
                }
            };
            if settle(revoke).await.is_err() {
                return Outcome::Unknown;
            }
        }
        Outcome::Fenced
    }

    fn envelope(&self, name: &str, id: &str) -> Option<Envelope> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .meta
            .get(&(name.to_owned(), id.to_owned()))
            .cloned()
    }

    pub fn close(&self) {
        for t in self
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Follows the prefix: watch from the revision after the last full read; on any
/// error or compaction, or when told to (`rewatch`), read everything again and
/// watch from there. While the watch is broken the node is stale
/// ([`EtcdStore::lost_etcd`]) until a watch is established again.
async fn follow(
    store: std::sync::Weak<EtcdStore>,
    rewatch: Arc<tokio::sync::Notify>,
    mut rev: i64,
) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(s) = store.upgrade() else { return };
        let watched = s
            .client()
            .watch(
                PREFIX,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await;
        let mut stream = match watched {
            Ok(w) => w,
            Err(e) => {
                s.lost_etcd(&reason(&e));
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
                msg = stream.message() => Some(msg),
                () = rewatch.notified() => None,
            };
            let Some(s) = store.upgrade() else { return };
            match msg {
                Some(Ok(Some(resp))) if !resp.canceled() && resp.compact_revision() == 0 => {
                    s.apply(resp.events());
                    if let Some(h) = resp.header() {
                        rev = rev.max(h.revision());
                        s.catalog.publish(h.revision() as u64);
                    }
                }
                Some(Ok(None)) => {
                    s.lost_etcd("the watch ended");
                    break;
                }
                Some(Err(e)) => {
                    s.lost_etcd(&reason(&e));
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

/// Every tick, renews the leases of heartbeats answered from memory since the
/// last tick, all at once (see the module doc).
async fn renew_pending(store: std::sync::Weak<EtcdStore>, tick: Duration) {
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
        // A bounded number in flight, not one task per lease: a tick that
        // renews thousands of leases at once competes with the heartbeats
        // for the CPU (a p99 of 30-225 ms) and holds a gRPC stream per lease
        // (RSS 18 → 75 MB). A failure leaves the lease un-renewed: it ages out
        // of the window and the next heartbeat asks etcd itself.
        futures_util::stream::iter(due)
            .for_each_concurrent(RENEWALS_IN_FLIGHT, |lease| {
                let s = s.clone();
                async move {
                    let _ = s.keep_alive(lease).await;
                }
            })
            .await;
    }
}

/// How many lease renewals one node has in flight at once.
const RENEWALS_IN_FLIGHT: usize = 32;

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn register(&self, mut record: Record) -> BoxFuture<'_, Result<(Instance, bool), StoreError>> {
        Box::pin(async move {
            let known = self.envelope(&record.name, &record.id);
            // The alive lease is always granted for this write: it fences the
            // write should its outcome be unknown (see the module doc).
            // Both at once: one round trip to etcd, not two.
            let instance_lease = async {
                match &known {
                    Some(env) if self.keep_alive(env.lease).await? => Ok((env.lease, false)),
                    _ => Ok::<_, StoreError>((self.grant(self.ttl).await?, true)),
                }
            };
            let (instance_lease, alive_lease) =
                tokio::join!(instance_lease, self.grant(self.alive_ttl));
            let ((lease, created), alive_lease) = (instance_lease?, alive_lease?);
            if let (Some(env), false) = (&known, created) {
                record.registered_at_ms = env.record.registered_at_ms;
            }
            let env = Envelope {
                record: record.clone(),
                lease,
                alive_lease,
                reported: Status::Up,
            };
            let rev = match self.put_both(&env).await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(
                        instance = %record.id,
                        error = %reason(&e),
                        "etcd did not confirm a registration; finding out whether it happened"
                    );
                    let fresh: &[i64] = if created {
                        &[lease, alive_lease]
                    } else {
                        &[alive_lease]
                    };
                    match self.settle_put(&env, fresh).await {
                        Outcome::Happened(rev) => rev,
                        Outcome::Fenced => return Err(self.unavailable(&e)),
                        Outcome::Unknown => {
                            tracing::warn!(
                                instance = %record.id,
                                "the outcome of a registration is unknown; if it happened, its leases expire it"
                            );
                            return Err(StoreError::Unknown(format!(
                                "etcd at {} unreachable: {}",
                                self.endpoints,
                                reason(&e)
                            )));
                        }
                    }
                }
            };
            if let Some(old) = known {
                // Replaced by the fresh one; it expires with nothing on it.
                self.forget(&[old.alive_lease]);
            }
            self.applied(rev).await;
            Ok((record.into_instance(Status::Up, SystemTime::now()), created))
        })
    }

    fn heartbeat<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
        status: Option<Status>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let not_found = || StoreError::NotFound {
                name: name.to_owned(),
                id: id.to_owned(),
            };
            let mut env = self.envelope(name, id).ok_or_else(not_found)?;
            let changes = status.is_some_and(|s| s != env.reported);
            if !changes && self.beat_from_memory(&env) {
                self.catalog.touch(name, id);
                return Ok(());
            }
            // Both renewals at once: one round trip to etcd, not two.
            let (lease, alive) =
                tokio::join!(self.keep_alive(env.lease), self.keep_alive(env.alive_lease));
            if !lease? {
                return Err(not_found());
            }
            let mut rewrite = false;
            if !alive? {
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
        })
    }

    fn deregister<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let txn = Txn::new().and_then(vec![
                TxnOp::delete(svc_key(name, id), None),
                TxnOp::delete(alive_key(name, id), None),
            ]);
            let known = self.envelope(name, id);
            if let Some(env) = &known {
                // No heartbeat answered from memory once the delete is sent.
                self.forget(&[env.lease, env.alive_lease]);
            }
            let send = || {
                let mut c = self.client();
                let txn = txn.clone();
                async move { c.txn(txn).await }
            };
            let resp = match retry(send).await {
                Ok(resp) => resp,
                // The delete is idempotent: sending it again until etcd
                // confirms it is how to find out (see the module doc).
                Err(e) => settle(send).await.map_err(|_| self.unavailable(&e))?,
            };
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0) as u64;
            if let Some(env) = known {
                let mut c = self.client();
                let _ = c.lease_revoke(env.lease).await;
                let _ = c.lease_revoke(env.alive_lease).await;
                self.applied(rev).await;
            }
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            retry(|| {
                let mut c = self.client();
                async move {
                    c.get(
                        format!("{PREFIX}ping"),
                        Some(GetOptions::new().with_count_only()),
                    )
                    .await
                }
            })
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(&e))
        })
    }

    fn stale(&self) -> Option<Stale> {
        self.link().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chora_api::manifest::Registration;

    fn record(id: &str) -> Record {
        let reg = Registration {
            name: "svc".into(),
            version: "1".into(),
            interfaces: Default::default(),
            metadata: None,
            id: None,
        };
        Record::new(reg, id.into(), SystemTime::now())
    }

    async fn fresh(store: &EtcdStore, id: &str) -> Envelope {
        Envelope {
            record: record(id),
            lease: store.grant(store.ttl).await.unwrap(),
            alive_lease: store.grant(store.alive_ttl).await.unwrap(),
            reported: Status::Up,
        }
    }

    async fn stored(store: &EtcdStore, id: &str) -> Option<Envelope> {
        let resp = store.client().get(svc_key("svc", id), None).await.unwrap();
        let kv = resp.kvs().first()?;
        Some(serde_json::from_slice(kv.value()).unwrap())
    }

    /// Waits (up to 10 s) until the store's staleness is as `want` says.
    async fn until_stale(store: &EtcdStore, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.stale().is_some() != want {
            assert!(Instant::now() < deadline, "stale never turned {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_write_etcd_did_not_confirm_is_found_out_or_fenced_and_an_outage_makes_reads_stale() {
        if !chora_testkit::etcd_available("a_write_etcd_did_not_confirm") {
            return;
        }
        let mut cluster = chora_testkit::EtcdCluster::start(1);
        let liveness = Liveness {
            heartbeat_interval: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
        };
        let store = EtcdStore::open(&cluster.urls(), liveness).await.unwrap();
        assert_eq!(store.stale(), None);

        // Applied, its answer lost: found out, at the revision it was written.
        let a = fresh(&store, "a").await;
        let rev = store.put_both(&a).await.unwrap();
        match store.settle_put(&a, &[a.lease, a.alive_lease]).await {
            Outcome::Happened(r) => assert_eq!(r, rev),
            _ => panic!("a write that happened was not found"),
        }

        // Not applied: fenced. The same write arriving late is refused, so an
        // error answer stays true.
        let b = fresh(&store, "b").await;
        assert!(matches!(
            store.settle_put(&b, &[b.lease, b.alive_lease]).await,
            Outcome::Fenced
        ));
        let late = store.put_both(&b).await.unwrap_err();
        assert!(reason(&late).contains("lease not found"), "{late}");
        assert!(stored(&store, "b").await.is_none());

        // A re-registration of a live instance that did not happen: only its
        // own fresh alive lease is fenced; the instance stays as it was.
        let a2 = Envelope {
            alive_lease: store.grant(store.alive_ttl).await.unwrap(),
            ..a.clone()
        };
        assert!(matches!(
            store.settle_put(&a2, &[a2.alive_lease]).await,
            Outcome::Fenced
        ));
        assert!(store.put_both(&a2).await.is_err());
        assert_eq!(
            stored(&store, "a").await.unwrap().alive_lease,
            a.alive_lease
        );

        // etcd gone for the whole settle window: the outcome is unknown, and
        // the node says so after trying for SETTLE, not longer.
        let c = fresh(&store, "c").await;
        cluster.members[0].kill();
        let t = Instant::now();
        assert!(matches!(
            store.settle_put(&c, &[c.lease, c.alive_lease]).await,
            Outcome::Unknown
        ));
        let took = t.elapsed();
        assert!(took >= SETTLE - Duration::from_millis(500), "{took:?}");
        assert!(took < SETTLE + Duration::from_secs(2), "{took:?}");

        // Writes answer an error that names etcd and why; reads are stale.
        let t = Instant::now();
        let e = store.register(record("d")).await.unwrap_err();
        let url = cluster.members[0].url();
        assert!(
            e.to_string()
                .contains(&format!("etcd at {url} unreachable: ")),
            "{e}"
        );
        println!(
            "a registration during the outage: {e} (in {:?})",
            t.elapsed()
        );
        until_stale(&store, true).await;
        let stale = store.stale().unwrap();
        assert!(
            stale
                .reason
                .starts_with(&format!("etcd at {url} unreachable"))
        );

        // etcd returns: the node follows it again by itself.
        cluster.members[0].start(false);
        until_stale(&store, false).await;
        let (inst, created) = store.register(record("e")).await.unwrap();
        assert!(created);
        assert!(store.catalog().contains("svc", &inst.id));
        // The fenced write never appeared.
        assert!(stored(&store, "b").await.is_none());
    }
}
