//! The catalog: the registry's in-memory read model.
//!
//! Every read is served from here, never from storage. A backend applies each
//! change to the catalog only after the change is durable, so a read never shows
//! what a crash could take back. Each instance keeps its JSON rendering, redone
//! when the instance changes, so that a listing of thousands of instances is a
//! concatenation of bytes. The change index (`X-Chora-Index`) moves on every
//! membership or status change, not on a plain heartbeat, and wakes blocking reads.
//!
//! Invariants (kept by [`Catalog`], the only writer of its state):
//!
//! - Instances are sorted by (name, id): a `BTreeMap` of services, each a `Vec`
//!   of entries sorted by id (`state.rs`). No service is ever empty: the last
//!   instance takes its service with it.
//! - An entry's JSON is always what serde would render for its [`Instance`]:
//!   the part fixed at registration is made once, the tail (status and times)
//!   redone on every heartbeat or status change (`entry.rs`).
//! - With [`Catalog::new`] the index moves by one per change and starts above
//!   any index served before a restart; with [`Catalog::with_external_index`]
//!   the backend sets it ([`Catalog::publish`], etcd's revision). Either way it
//!   only grows.
//! - An instance past its TTL is dead even before a sweep removes it: its
//!   heartbeats are refused, and only a new registration brings it back.
//!
//! `record.rs` holds what is stored of an instance ([`Record`]) and the
//! [`Liveness`] rules.

mod entry;
mod record;
mod state;
#[cfg(test)]
mod tests;

pub use record::{Liveness, Record, unix_ms};

use bytes::Bytes;
use bytes::{BufMut, BytesMut};
use chora_api::manifest::{Instance, ListFilter, Status};
use entry::{Entry, WriteJson as _};
use state::State;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The answer to a read: a JSON body and the index it was read at.
pub struct Read {
    pub body: Bytes,
    pub index: u64,
}

/// Why a heartbeat was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Unknown;

/// The in-memory read model, shared by every backend.
pub struct Catalog {
    state: RwLock<State>,
    changes: watch::Sender<u64>,
    liveness: Liveness,
    /// True: every change moves the index by one (SQLite). False: the backend
    /// sets it with [`Catalog::publish`] (etcd, whose revision is the index).
    auto_index: bool,
}

impl Catalog {
    /// An empty catalog whose change index starts at `start_index`. Backends pass a
    /// value larger than any index served before a restart (the clock in µs), so that
    /// blocking reads from before the restart return at once.
    pub fn new(liveness: Liveness, start_index: u64) -> Catalog {
        let (changes, _) = watch::channel(start_index);
        Catalog {
            state: RwLock::new(State {
                index: start_index,
                ..State::default()
            }),
            changes,
            liveness,
            auto_index: true,
        }
    }

    /// A catalog whose index the backend sets (see [`Catalog::publish`]).
    pub fn with_external_index(liveness: Liveness) -> Catalog {
        Catalog {
            auto_index: false,
            ..Catalog::new(liveness, 0)
        }
    }

    /// Sets the index to `index` (if higher) and wakes blocking reads.
    pub fn publish(&self, index: u64) {
        let mut st = self.write();
        if index > st.index {
            st.index = index;
            self.changes.send_replace(index);
        }
    }

    /// Waits until the index has reached `index` (the backend applied a write
    /// it made), at most `wait`. True when it has.
    pub async fn wait_applied(&self, index: u64, wait: Duration) -> bool {
        let mut rx = self.changes.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|&i| i >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Replaces everything with `entries` (a backend's full resync).
    pub fn reset(&self, entries: Vec<(Record, Status)>, index: u64) {
        let now = (SystemTime::now(), Instant::now());
        let mut st = self.write();
        st.services.clear();
        st.count = 0;
        for (r, status) in entries {
            st.insert(&r.name, Entry::new(&r, status, now));
        }
        st.index = st.index.max(index);
        self.changes.send_replace(st.index);
    }

    /// Sets an instance's status (backends that track liveness themselves).
    pub fn set_status(&self, name: &str, id: &str, status: Status) {
        let mut st = self.write();
        if let Some(e) = st.entry_mut(name, id)
            && e.status != status
        {
            e.status = status;
            e.reported = status;
            if status == Status::Up {
                e.last_heartbeat = SystemTime::now();
            }
            e.rerender();
            self.bump(&mut st);
        }
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, st: &mut State) {
        if self.auto_index {
            st.index += 1;
            self.changes.send_replace(st.index);
        }
    }

    pub fn index(&self) -> u64 {
        self.read().index
    }

    pub fn contains(&self, name: &str, id: &str) -> bool {
        self.read().entry(name, id).is_some()
    }

    /// When a known instance was first registered (ms since the Unix epoch).
    pub fn registered_at_ms(&self, name: &str, id: &str) -> Option<u64> {
        self.read().entry(name, id).map(|e| e.registered_at_ms)
    }

    /// Inserts or replaces records loaded from storage at start-up. Each gets a full
    /// TTL from now to heartbeat again.
    pub fn load(&self, records: impl IntoIterator<Item = Record>) {
        let now = (SystemTime::now(), Instant::now());
        let mut st = self.write();
        for r in records {
            st.insert(&r.name, Entry::new(&r, Status::Up, now));
        }
        self.bump(&mut st);
    }

    /// Applies a durable registration: a new instance, or a known one updated in
    /// place (keeping `registered_at`). Either way it counts as a heartbeat.
    pub fn upsert(&self, record: Record) -> Instance {
        self.upsert_status(record, Status::Up)
    }

    /// [`Catalog::upsert`] with the status the backend knows.
    pub fn upsert_status(&self, record: Record, status: Status) -> Instance {
        let now = (SystemTime::now(), Instant::now());
        let mut st = self.write();
        let registered_at_ms = st
            .entry(&record.name, &record.id)
            .map_or(record.registered_at_ms, |e| e.registered_at_ms);
        let record = Record {
            registered_at_ms,
            ..record
        };
        st.insert(&record.name, Entry::new(&record, status, now));
        let inst = record.into_instance(status, now.0);
        self.bump(&mut st);
        inst
    }

    /// Removes an instance; true when it was there.
    pub fn remove(&self, name: &str, id: &str) -> bool {
        let mut st = self.write();
        if st.remove(name, id).is_none() {
            return false;
        }
        self.bump(&mut st);
        true
    }

    /// Records a heartbeat. An instance past its TTL is refused even before the
    /// sweeper removes it, so that an expired instance never comes back to life.
    pub fn heartbeat(&self, name: &str, id: &str, status: Option<Status>) -> Result<(), Unknown> {
        let now = (SystemTime::now(), Instant::now());
        let ttl = self.liveness.ttl;
        let mut st = self.write();
        let e = st.entry_mut(name, id).ok_or(Unknown)?;
        if now.1.duration_since(e.last_seen) >= ttl {
            return Err(Unknown);
        }
        e.last_heartbeat = now.0;
        e.last_seen = now.1;
        if let Some(s) = status {
            e.reported = s;
        }
        let before = e.status;
        e.status = e.effective(now.1, &self.liveness);
        e.rerender();
        if e.status != before {
            self.bump(&mut st);
        }
        Ok(())
    }

    /// Records when a heartbeat arrived, and nothing else (a backend whose
    /// storage decides liveness, etcd, keeps `last_heartbeat` true on the node
    /// that took the heartbeat). No change index move: nobody waits for it.
    pub fn touch(&self, name: &str, id: &str) {
        let now = SystemTime::now();
        let mut st = self.write();
        if let Some(e) = st.entry_mut(name, id) {
            e.last_heartbeat = now;
            e.rerender();
        }
    }

    /// Marks instances `unhealthy` whose heartbeats are overdue. Returns the
    /// instances past their TTL, which the backend then removes durably.
    pub fn sweep(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let l = self.liveness;
        let mut expired = Vec::new();
        let mut changed = false;
        {
            // Most sweeps change nothing: look first under the read lock.
            let st = self.read();
            for (name, e) in st
                .services
                .iter()
                .flat_map(|(n, m)| m.iter().map(move |e| (n, e)))
            {
                if now.duration_since(e.last_seen) >= l.ttl {
                    expired.push((name.clone(), e.id.to_string()));
                } else if e.effective(now, &l) != e.status {
                    changed = true;
                }
            }
        }
        if changed {
            let mut st = self.write();
            let mut any = false;
            for e in st.entries_mut() {
                let s = e.effective(now, &l);
                if s != e.status {
                    e.status = s;
                    e.rerender();
                    any = true;
                }
            }
            if any {
                self.bump(&mut st);
            }
        }
        expired
    }

    /// Removes instances that `sweep` found expired, unless one was registered
    /// again since (then its `last_seen` is fresh). Returns how many were removed.
    pub fn remove_expired(&self, keys: &[(String, String)]) -> usize {
        let now = Instant::now();
        let ttl = self.liveness.ttl;
        let mut st = self.write();
        let mut removed = 0;
        for (name, id) in keys {
            if st
                .entry(name, id)
                .is_some_and(|e| now.duration_since(e.last_seen) >= ttl)
            {
                st.remove(name, id);
                removed += 1;
            }
        }
        if removed > 0 {
            self.bump(&mut st);
        }
        removed
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.read().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Instances per status: `(up, unhealthy)`.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.read();
        let up = st.entries().filter(|e| e.status == Status::Up).count();
        (up, st.count - up)
    }

    /// `GET /v1/services`: instances matching `filter`, sorted by name then id.
    pub fn list(&self, filter: &ListFilter) -> Read {
        let st = self.read();
        let mut out = BytesMut::with_capacity(2 + st.count * 320);
        out.put_u8(b'[');
        let mut first = true;
        let mut push = |e: &Entry| {
            if !first {
                out.put_u8(b',');
            }
            first = false;
            out.put_slice(&e.json);
        };
        let matches = |e: &Entry| {
            filter.status.is_none_or(|s| s == e.status)
                && filter
                    .tag
                    .as_deref()
                    .is_none_or(|t| e.tags.iter().any(|x| &**x == t))
        };
        match &filter.name {
            Some(n) => st
                .services
                .get(n)
                .into_iter()
                .flatten()
                .filter(|e| matches(e))
                .for_each(&mut push),
            None => st.entries().filter(|e| matches(e)).for_each(&mut push),
        }
        out.put_u8(b']');
        Read {
            body: out.freeze(),
            index: st.index,
        }
    }

    /// `GET /v1/services/{name}`: the service and its instances, or `None` with the
    /// index when no instance of exactly that name exists.
    pub fn service(&self, name: &str) -> Result<Read, u64> {
        let st = self.read();
        let Some(m) = st.services.get(name) else {
            return Err(st.index);
        };
        // The service's version, interfaces and metadata are those of its newest
        // up instance (or newest of all when none is up).
        let newest = |want_up: bool| {
            m.iter()
                .filter(|e| !want_up || e.status == Status::Up)
                .max_by(|a, b| (a.registered_at_ms, &a.id).cmp(&(b.registered_at_ms, &b.id)))
        };
        let rep = newest(true)
            .or_else(|| newest(false))
            .expect("no empty services");
        let status = if m.iter().any(|e| e.status == Status::Up) {
            Status::Up
        } else {
            Status::Unhealthy
        };
        let size = m.iter().map(|e| e.json.len() + 1).sum::<usize>();
        let mut out = Vec::with_capacity(size + rep.fixed as usize + 64);
        out.extend_from_slice(b"{\"name\":");
        name.write(&mut out);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(rep.version_json());
        out.extend_from_slice(b",\"status\":");
        status.write(&mut out);
        out.push(b',');
        out.extend_from_slice(rep.head_json());
        out.extend_from_slice(b",\"instances\":[");
        for (i, e) in m.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e.json);
        }
        out.extend_from_slice(b"]}");
        Ok(Read {
            body: out.into(),
            index: st.index,
        })
    }

    /// Waits until the change index passes `index`, at most `wait`. An index from
    /// the future (a client of an earlier incarnation) returns at once.
    pub async fn wait_past(&self, index: u64, wait: Duration) {
        let mut rx = self.changes.subscribe();
        if *rx.borrow() != index {
            return;
        }
        let _ = tokio::time::timeout(wait, rx.wait_for(|&i| i != index)).await;
    }
}
