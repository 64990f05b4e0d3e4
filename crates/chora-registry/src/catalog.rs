//! The catalog: the registry's in-memory read model.
//!
//! Every read is served from here, never from storage. A backend applies each
//! change to the catalog only after the change is durable, so a read never shows
//! what a crash could take back. Each instance keeps its JSON rendering, redone
//! when the instance changes, so that a listing of thousands of instances is a
//! concatenation of bytes. The change index (`X-Chora-Index`) moves on every
//! membership or status change, not on a plain heartbeat, and wakes blocking reads.

use bytes::{BufMut, Bytes, BytesMut};
use chora_api::manifest::{Instance, ListFilter, Metadata, Registration, Status};
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How long instances live without heartbeats.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Heartbeats are expected this often; after twice this, an instance is `unhealthy`.
    pub heartbeat_interval: Duration,
    /// After this long without a heartbeat an instance is removed.
    pub ttl: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            heartbeat_interval: Duration::from_secs(10),
            ttl: Duration::from_secs(30),
        }
    }
}

/// What is stored of an instance: everything but its liveness.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub name: String,
    pub id: String,
    pub version: String,
    pub interfaces: BTreeMap<String, String>,
    pub metadata: Metadata,
    /// Milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
}

impl Record {
    /// The record for a validated registration with its id settled.
    pub fn new(reg: Registration, id: String, registered_at: SystemTime) -> Record {
        Record {
            name: reg.name,
            id,
            version: reg.version,
            interfaces: reg.interfaces,
            metadata: reg.metadata.unwrap_or_default(),
            registered_at_ms: unix_ms(registered_at),
        }
    }

    pub fn registered_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.registered_at_ms)
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Entry {
    record: Record,
    last_heartbeat: SystemTime,
    last_seen: Instant,
    reported: Status,
    status: Status,
    json: Bytes,
}

impl Entry {
    fn new(record: Record, now: (SystemTime, Instant)) -> Entry {
        let mut e = Entry {
            record,
            last_heartbeat: now.0,
            last_seen: now.1,
            reported: Status::Up,
            status: Status::Up,
            json: Bytes::new(),
        };
        e.render();
        e
    }

    fn instance(&self) -> Instance {
        Instance {
            name: self.record.name.clone(),
            id: self.record.id.clone(),
            version: self.record.version.clone(),
            interfaces: self.record.interfaces.clone(),
            metadata: self.record.metadata.clone(),
            status: self.status,
            last_heartbeat: chora_api::rfc3339(self.last_heartbeat),
            registered_at: chora_api::rfc3339(self.record.registered_at()),
        }
    }

    fn render(&mut self) {
        self.json = serde_json::to_vec(&self.instance())
            .expect("instances serialize")
            .into();
    }

    /// The status this entry should have at `now`.
    fn effective(&self, now: Instant, l: &Liveness) -> Status {
        if self.reported == Status::Unhealthy
            || now.duration_since(self.last_seen) >= l.heartbeat_interval * 2
        {
            Status::Unhealthy
        } else {
            Status::Up
        }
    }
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    index: u64,
    count: usize,
}

impl State {
    fn entry_mut(&mut self, name: &str, id: &str) -> Option<&mut Entry> {
        self.services.get_mut(name)?.get_mut(id)
    }
}

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
            let mut e = Entry::new(r, now);
            e.status = status;
            e.reported = status;
            e.render();
            let name = e.record.name.clone();
            let id = e.record.id.clone();
            if st.services.entry(name).or_default().insert(id, e).is_none() {
                st.count += 1;
            }
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
            e.render();
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
        self.read()
            .services
            .get(name)
            .is_some_and(|m| m.contains_key(id))
    }

    /// The stored record of an instance, if known.
    pub fn record(&self, name: &str, id: &str) -> Option<Record> {
        let st = self.read();
        Some(st.services.get(name)?.get(id)?.record.clone())
    }

    /// Inserts or replaces records loaded from storage at start-up. Each gets a full
    /// TTL from now to heartbeat again.
    pub fn load(&self, records: impl IntoIterator<Item = Record>) {
        let now = (SystemTime::now(), Instant::now());
        let mut st = self.write();
        for r in records {
            let entry = Entry::new(r, now);
            let name = entry.record.name.clone();
            let id = entry.record.id.clone();
            if st
                .services
                .entry(name)
                .or_default()
                .insert(id, entry)
                .is_none()
            {
                st.count += 1;
            }
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
        let inst = match st.entry_mut(&record.name, &record.id) {
            Some(e) => {
                let registered_at_ms = e.record.registered_at_ms;
                e.record = Record {
                    registered_at_ms,
                    ..record
                };
                e.last_heartbeat = now.0;
                e.last_seen = now.1;
                e.reported = status;
                e.status = status;
                e.render();
                e.instance()
            }
            None => {
                let mut e = Entry::new(record, now);
                e.reported = status;
                e.status = status;
                e.render();
                let inst = e.instance();
                st.services
                    .entry(inst.name.clone())
                    .or_default()
                    .insert(inst.id.clone(), e);
                st.count += 1;
                inst
            }
        };
        self.bump(&mut st);
        inst
    }

    /// Removes an instance; true when it was there.
    pub fn remove(&self, name: &str, id: &str) -> bool {
        let mut st = self.write();
        let Some(m) = st.services.get_mut(name) else {
            return false;
        };
        if m.remove(id).is_none() {
            return false;
        }
        if m.is_empty() {
            st.services.remove(name);
        }
        st.count -= 1;
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
        e.render();
        if e.status != before {
            self.bump(&mut st);
        }
        Ok(())
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
            for e in st.services.values().flat_map(|m| m.values()) {
                if now.duration_since(e.last_seen) >= l.ttl {
                    expired.push((e.record.name.clone(), e.record.id.clone()));
                } else if e.effective(now, &l) != e.status {
                    changed = true;
                }
            }
        }
        if changed {
            let mut st = self.write();
            let mut any = false;
            for e in st.services.values_mut().flat_map(|m| m.values_mut()) {
                let s = e.effective(now, &l);
                if s != e.status {
                    e.status = s;
                    e.render();
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
            let Some(m) = st.services.get_mut(name) else {
                continue;
            };
            if m.get(id)
                .is_some_and(|e| now.duration_since(e.last_seen) >= ttl)
            {
                m.remove(id);
                removed += 1;
                if m.is_empty() {
                    st.services.remove(name);
                }
            }
        }
        if removed > 0 {
            st.count -= removed;
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
        let up = st
            .services
            .values()
            .flat_map(|m| m.values())
            .filter(|e| e.status == Status::Up)
            .count();
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
                    .is_none_or(|t| e.record.metadata.tags.iter().any(|x| x == t))
        };
        match &filter.name {
            Some(n) => st
                .services
                .get(n)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|e| matches(e))
                .for_each(&mut push),
            None => st
                .services
                .values()
                .flat_map(|m| m.values())
                .filter(|e| matches(e))
                .for_each(&mut push),
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
            m.values()
                .filter(|e| !want_up || e.status == Status::Up)
                .max_by_key(|e| (e.record.registered_at_ms, e.record.id.clone()))
        };
        let rep = newest(true)
            .or_else(|| newest(false))
            .expect("no empty maps");
        #[derive(serde::Serialize)]
        struct Head<'a> {
            name: &'a str,
            version: &'a str,
            status: Status,
            interfaces: &'a BTreeMap<String, String>,
            metadata: &'a Metadata,
        }
        let head = Head {
            name,
            version: &rep.record.version,
            status: if m.values().any(|e| e.status == Status::Up) {
                Status::Up
            } else {
                Status::Unhealthy
            },
            interfaces: &rep.record.interfaces,
            metadata: &rep.record.metadata,
        };
        let mut out = serde_json::to_vec(&head).expect("serializes");
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"instances\":[");
        for (i, e) in m.values().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, id: &str) -> Record {
        Record {
            name: name.into(),
            id: id.into(),
            version: "1.0.0".into(),
            interfaces: [("REST".to_string(), "http://127.0.0.1:1".to_string())].into(),
            metadata: Metadata::default(),
            registered_at_ms: 1,
        }
    }

    fn fast() -> Liveness {
        Liveness {
            heartbeat_interval: Duration::from_millis(20),
            ttl: Duration::from_millis(60),
        }
    }

    #[test]
    fn list_is_sorted_valid_json_and_filters() {
        let c = Catalog::new(Liveness::default(), 1);
        c.upsert(rec("b", "b-2"));
        c.upsert(rec("a", "a-1"));
        c.upsert(rec("b", "b-1"));
        let all: Vec<Instance> =
            serde_json::from_slice(&c.list(&ListFilter::default()).body).unwrap();
        let ids: Vec<_> = all.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a-1", "b-1", "b-2"]);
        let f = ListFilter {
            name: Some("b".into()),
            ..Default::default()
        };
        let only_b: Vec<Instance> = serde_json::from_slice(&c.list(&f).body).unwrap();
        assert_eq!(only_b.len(), 2);
    }

    #[test]
    fn exact_name_only() {
        let c = Catalog::new(Liveness::default(), 1);
        c.upsert(rec("test-service", "t-1"));
        assert!(c.service("test").is_err());
        let s: chora_api::manifest::Service =
            serde_json::from_slice(&c.service("test-service").unwrap().body).unwrap();
        assert_eq!(s.instances.len(), 1);
    }

    #[test]
    fn index_moves_on_membership_and_status_not_plain_heartbeats() {
        let c = Catalog::new(Liveness::default(), 100);
        c.upsert(rec("a", "a-1"));
        let i = c.index();
        assert!(i > 100);
        c.heartbeat("a", "a-1", None).unwrap();
        assert_eq!(c.index(), i);
        c.heartbeat("a", "a-1", Some(Status::Unhealthy)).unwrap();
        assert!(c.index() > i);
        assert_eq!(c.heartbeat("a", "nope", None), Err(Unknown));
    }

    #[test]
    fn overdue_turns_unhealthy_then_expires() {
        let c = Catalog::new(fast(), 1);
        c.upsert(rec("a", "a-1"));
        std::thread::sleep(Duration::from_millis(45));
        assert!(c.sweep().is_empty());
        assert_eq!(c.counts(), (0, 1));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            c.heartbeat("a", "a-1", None),
            Err(Unknown),
            "expired stays dead"
        );
        let gone = c.sweep();
        assert_eq!(gone, vec![("a".to_string(), "a-1".to_string())]);
        assert_eq!(c.remove_expired(&gone), 1);
        assert!(c.is_empty());
    }
}
