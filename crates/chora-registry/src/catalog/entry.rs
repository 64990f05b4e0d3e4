//! One instance as the catalog keeps it: its JSON, rendered once and kept
//! (byte ranges into it serve the service head), plus what filters and
//! liveness need.

use super::{Liveness, Record};
use bytes::Bytes;
use chora_api::manifest::Status;
use std::time::{Duration, Instant, SystemTime};

/// One instance as the catalog keeps it: its rendered JSON and what reads, filters
/// and liveness need, nothing more (10,000 instances in well under 30 MB).
pub(super) struct Entry {
    pub(super) id: Box<str>,
    pub(super) tags: Box<[Box<str>]>,
    pub(super) registered_at_ms: u64,
    pub(super) last_heartbeat: SystemTime,
    pub(super) last_seen: Instant,
    pub(super) reported: Status,
    pub(super) status: Status,
    /// The instance as JSON. Its first `fixed` bytes (`{"name":…` up to the end of
    /// `metadata`) change only with a new registration; the rest is redone on a
    /// heartbeat or a status change.
    pub(super) json: Bytes,
    pub(super) fixed: u32,
    /// Where the version's JSON string is, and where `"interfaces":…,"metadata":…`
    /// starts (it ends at `fixed`): the head of `GET /v1/services/{name}`.
    pub(super) version: (u32, u32),
    pub(super) head: u32,
}

impl Entry {
    pub(super) fn new(record: &Record, status: Status, now: (SystemTime, Instant)) -> Entry {
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
    pub(super) fn render(&mut self, mut out: Vec<u8>) {
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

    pub(super) fn rerender(&mut self) {
        let mut out = Vec::with_capacity(self.fixed as usize + 100);
        out.extend_from_slice(&self.json[..self.fixed as usize]);
        self.render(out);
    }

    pub(super) fn version_json(&self) -> &[u8] {
        &self.json[self.version.0 as usize..self.version.1 as usize]
    }

    /// `"interfaces":…,"metadata":…`
    pub(super) fn head_json(&self) -> &[u8] {
        &self.json[self.head as usize..self.fixed as usize]
    }

    /// The status this entry should have at `now`.
    pub(super) fn effective(&self, now: Instant, l: &Liveness) -> Status {
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
pub(super) trait WriteJson {
    fn write(&self, out: &mut Vec<u8>);
}

impl<T: serde::Serialize + ?Sized> WriteJson for T {
    fn write(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("catalog values serialize");
    }
}
