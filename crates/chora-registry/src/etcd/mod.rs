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
//! etcd is reached through its JSON gateway by [`chora_etcd::Client`] (endpoint
//! failover, timeouts, and whether a failed call may have happened). Four
//! mechanisms, a file each, each arguing its invariants in its head:
//!
//! - [`watch`]: the watch-fed catalog, the revision as the index, and what a
//!   node does while the whole cluster is gone (stale reads, fast 503 writes,
//!   recovery by itself).
//! - [`heartbeat`]: heartbeats answered from memory, their leases renewed in
//!   batches every tick (issue 15).
//! - [`write`]: registrations and deregistrations, and the writes etcd did not
//!   confirm (DESIGN §10: an error only when the write is known not to have
//!   happened).
//! - this file: the keys, what is stored under them, and the [`Store`] seam.

mod heartbeat;
mod watch;
mod write;

use crate::catalog::{Catalog, Liveness, Record};
use crate::store::{Stale, Store, StoreError};
use chora_api::manifest::{Instance, Status};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use write::SETTLE;

const PREFIX: &str = "/chora/";

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

/// What this node knows of etcd's instances, as its watch delivered them.
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
    client: chora_etcd::Client,
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
    /// Leases this node renewed itself, by id (see [`heartbeat`]).
    fresh: Mutex<HashMap<i64, heartbeat::Fresh>>,
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
        let client = chora_etcd::Client::new(endpoints).map_err(|e| fail(e.to_string()))?;
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
        let follower = tokio::spawn(watch::follow(weak.clone(), store.rewatch.clone(), rev));
        let renewer = tokio::spawn(heartbeat::renew_pending(weak, store.tick));
        store
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([follower, renewer]);
        Ok(store)
    }

    /// The error a write answers when etcd did not take it.
    fn unavailable(&self, e: &chora_etcd::Error) -> StoreError {
        StoreError::Unavailable(format!("etcd at {} unreachable: {e}", self.endpoints))
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

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn register(&self, record: Record) -> BoxFuture<'_, Result<(Instance, bool), StoreError>> {
        Box::pin(self.put_instance(record))
    }

    fn heartbeat<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
        status: Option<Status>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.beat(name, id, status))
    }

    fn deregister<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_instance(name, id))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.client
                .count(&format!("{PREFIX}ping"))
                .await
                .map(|_| ())
                .map_err(|e| self.unavailable(&e))
        })
    }

    fn stale(&self) -> Option<Stale> {
        self.link().clone()
    }
}
