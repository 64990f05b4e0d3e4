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

    /// The instance this record is, with the given liveness.
    pub fn into_instance(self, status: Status, last_heartbeat: SystemTime) -> Instance {
        Instance {
            status,
            last_heartbeat: chora_api::rfc3339(last_heartbeat),
            registered_at: chora_api::rfc3339(self.registered_at()),
            name: self.name,
            id: self.id,
            version: self.version,
            interfaces: self.interfaces,
            metadata: self.metadata,
        }
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One instance as the catalog keeps it: its rendered JSON and what reads, filters
/// and liveness need, nothing more (10,000 instances in well under 30 MB).
struct Entry {
    id: Box<str>,
    tags: Box<[Box<str>]>,
    registered_at_ms: u64,
    last_heartbeat: SystemTime,
    last_seen: Instant,
    reported: Status,
    status: Status,
    /// The instance as JSON. Its first `fixed` bytes (`{"name":…` up to the end of
    /// `metadata`) change only with a new registration; the rest is redone on a
    /// heartbeat or a status change.
    json: Bytes,
    fixed: u32,
    /// Where the version's JSON string is, and where `"interfaces":…,"metadata":…`
    /// starts (it ends at `fixed`): the head of `GET /v1/services/{name}`.
    version: (u32, u32),
    head: u32,
}

impl Entry {
    fn new(record: &Record, status: Status, now: (SystemTime, Instant)) -> Entry {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"name\":");
        record.name.write(&mut out);
        out.extend_from_slice(b",\"id\":");
        record.id.write(&mut out);
        out.extend_from_slice(b",\"version\":");
        let v0 = out.len() as u32;
        record.version.write(&mut out);
        let v1 = out.len() as u32;
        out.push(b',');
        let head = out.len() as u32;
        out.extend_from_slice(b"\"interfaces\":");
        record.interfaces.write(&mut out);
        out.extend_from_slice(b",\"metadata\":");
        record.metadata.write(&mut out);
        let fixed = out.len() as u32;
        let mut e = Entry {
            id: record.id.as_str().into(),
            tags: record
                .metadata
                .tags
                .iter()
                .map(|t| t.as_str().into())
                .collect(),
            registered_at_ms: record.registered_at_ms,
            last_heartbeat: now.0,
            last_seen: now.1,
            reported: status,
            status,
            json: Bytes::new(),
            fixed,
            version: (v0, v1),
            head,
        };
        e.render(out);
        e
    }

    /// Redoes the changing tail of the JSON after the `fixed` bytes in `out`.
    fn render(&mut self, mut out: Vec<u8>) {
        out.truncate(self.fixed as usize);
        out.extend_from_slice(b",\"status\":");
        self.status.write(&mut out);
        out.extend_from_slice(b",\"last_heartbeat\":\"");
        out.extend_from_slice(chora_api::rfc3339(self.last_heartbeat).as_bytes());
        out.extend_from_slice(b"\",\"registered_at\":\"");
        let registered_at = SystemTime::UNIX_EPOCH + Duration::from_millis(self.registered_at_ms);
        out.extend_from_slice(chora_api::rfc3339(registered_at).as_bytes());
        out.extend_from_slice(b"\"}");
        // Exact size: a Vec's spare capacity would stay allocated behind the Bytes.
        self.json = Bytes::from(out.into_boxed_slice());
    }

    fn rerender(&mut self) {
        let mut out = Vec::with_capacity(self.fixed as usize + 100);
        out.extend_from_slice(&self.json[..self.fixed as usize]);
        self.render(out);
    }

    fn version_json(&self) -> &[u8] {
        &self.json[self.version.0 as usize..self.version.1 as usize]
    }

    /// `"interfaces":…,"metadata":…`
    fn head_json(&self) -> &[u8] {
        &self.json[self.head as usize..self.fixed as usize]
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

/// `value.write(&mut out)`: JSON into a buffer without an error path (the
/// catalog's own types always serialize).
mod write_json {
    pub trait WriteJson {
        fn write(&self, out: &mut Vec<u8>);
    }
    impl<T: serde::Serialize + ?Sized> WriteJson for T {
        fn write(&self, out: &mut Vec<u8>) {
            serde_json::to_writer(out, self).expect("catalog values serialize");
        }
    }
}
use write_json::WriteJson as _;

/// The instances of one service, sorted by id. A `Vec` rather than an inner map:
/// most services have one to a few instances, and a B-tree allocates a whole node
/// (11 slots) for one (3.5 KB per service with `Entry` inline).
type Instances = Vec<Entry>;

#[derive(Default)]
struct State {
    services: BTreeMap<String, Instances>,
    index: u64,
    count: usize,
}

impl State {
    fn position(m: &Instances, id: &str) -> Result<usize, usize> {
        m.binary_search_by(|e| (*e.id).cmp(id))
    }

    fn entry(&self, name: &str, id: &str) -> Option<&Entry> {
        let m = self.services.get(name)?;
        Some(&m[Self::position(m, id).ok()?])
    }

    fn entry_mut(&mut self, name: &str, id: &str) -> Option<&mut Entry> {
        let m = self.services.get_mut(name)?;
        let i = Self::position(m, id).ok()?;
        Some(&mut m[i])
    }

    /// Inserts or replaces; true when the instance is new.
    fn insert(&mut self, name: &str, e: Entry) -> bool {
        let m = match self.services.get_mut(name) {
            Some(m) => m,
            None => self.services.entry(name.to_owned()).or_default(),
        };
        match Self::position(m, &e.id) {
            Ok(i) => {
                m[i] = e;
                false
            }
            Err(i) => {
                if m.len() < 4 {
                    // Exact sizes for small services: Vec would otherwise jump to 4.
                    m.reserve_exact(1);
                }
                m.insert(i, e);
                self.count += 1;
                true
            }
        }
    }

    /// Removes an instance, and its service when it was the last one.
    fn remove(&mut self, name: &str, id: &str) -> Option<Entry> {
        let m = self.services.get_mut(name)?;
        let e = m.remove(Self::position(m, id).ok()?);
        if m.is_empty() {
            self.services.remove(name);
        } else if m.len() < m.capacity() / 4 {
            m.shrink_to_fit();
        }
        self.count -= 1;
        Some(e)
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.services.values().flatten()
    }

    fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.services.values_mut().flatten()
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

    /// The hand-assembled JSON is exactly what serde renders for the wire types,
    /// before and after a heartbeat redoes its tail, and the service head is the
    /// newest up instance's.
    #[test]
    fn rendering_matches_the_wire_types() {
        let c = Catalog::new(Liveness::default(), 1);
        let mut old = rec("svc", "i-1");
        old.version = "1.0.0".into();
        let mut new = rec("svc", "i-2");
        new.version = "2.0.\"quoted\"".into();
        new.registered_at_ms = 5;
        new.metadata = serde_json::from_value(serde_json::json!({
            "description": "d", "tags": ["a", "b"], "environment": "e", "team": {"x": 1}
        }))
        .unwrap();
        new.interfaces.insert("gRPC".into(), "127.0.0.1:2".into());
        let a = c.upsert(old);
        let b = c.upsert(new);
        let listed = c.list(&ListFilter::default()).body;
        assert_eq!(listed, serde_json::to_vec(&[&a, &b]).unwrap());
        c.heartbeat("svc", "i-2", Some(Status::Unhealthy)).unwrap();
        let listed: Vec<Instance> =
            serde_json::from_slice(&c.list(&ListFilter::default()).body).unwrap();
        assert_eq!(listed[1].status, Status::Unhealthy);
        assert_eq!(listed[1].registered_at, b.registered_at);
        let s: chora_api::manifest::Service =
            serde_json::from_slice(&c.service("svc").unwrap().body).unwrap();
        // i-2 is newer but unhealthy: the head comes from i-1, the one up.
        assert_eq!(s.version, "1.0.0");
        assert_eq!(s.status, Status::Up);
        c.heartbeat("svc", "i-2", Some(Status::Up)).unwrap();
        let s: chora_api::manifest::Service =
            serde_json::from_slice(&c.service("svc").unwrap().body).unwrap();
        assert_eq!(s.version, b.version);
        assert_eq!(s.interfaces, b.interfaces);
        assert_eq!(s.metadata, b.metadata);
        let tagged = ListFilter {
            tag: Some("b".into()),
            ..Default::default()
        };
        let only: Vec<Instance> = serde_json::from_slice(&c.list(&tagged).body).unwrap();
        assert_eq!(only.len(), 1);
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
