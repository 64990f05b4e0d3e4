//! The gateway's JSON shapes (etcd's `rpc.proto` and `kv.proto` as grpc-gateway
//! renders them): field names as in the proto, `int64` fields as JSON strings,
//! `bytes` fields (keys, values) as base64, and every field at its zero value
//! left out (a missing `TTL` is 0, a missing event `type` is `PUT`, a missing
//! `succeeded` is false). Only the fields chora reads are here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, de::Error as _};

/// base64, as the gateway wants `bytes` fields.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The end of the range of every key that starts with `prefix` (etcd's
/// `range_end` convention: the prefix with its last byte plus one).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// An `int64`: a JSON string from the gateway (a number is taken too).
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Number(i64),
        Text(String),
    }
    match Int64::deserialize(d)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(s) => s.parse().map_err(D::Error::custom),
    }
}

fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    STANDARD.decode(s).map_err(D::Error::custom)
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(default, deserialize_with = "int64")]
    pub revision: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeyValue {
    #[serde(default, deserialize_with = "base64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "base64")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    pub create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

impl KeyValue {
    /// The key as text (chora's keys are UTF-8); `None` for any other.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    #[serde(default, deserialize_with = "int64")]
    pub count: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

/// One operation's answer in a transaction (only reads carry anything chora uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseOp {
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct LeaseGrantResponse {
    #[serde(default, rename = "ID", deserialize_with = "int64")]
    pub id: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct LeaseKeepAliveResponse {
    #[serde(default, rename = "ID", deserialize_with = "int64")]
    pub id: i64,
    /// 0: the lease is gone (expired or revoked).
    #[serde(default, rename = "TTL", deserialize_with = "int64")]
    pub ttl: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StatusResponse {
    /// The member this one follows; 0 while it has no leader.
    #[serde(default, deserialize_with = "int64")]
    pub leader: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    /// Non-zero when the watch asked for revisions compacted away.
    #[serde(default, deserialize_with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum EventType {
    #[default]
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "DELETE")]
    Delete,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    #[serde(default, rename = "type")]
    pub kind: EventType,
    #[serde(default)]
    pub kv: KeyValue,
}

/// One line of a streamed answer (watch, lease keep-alive): a message, or the
/// error that ended the stream.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamLine<T> {
    pub result: Option<T>,
    pub error: Option<StreamError>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamError {
    #[serde(default)]
    pub grpc_code: i32,
    #[serde(default)]
    pub message: String,
}

/// A unary call's error body: `{"error", "message", "code"}` (`code` is gRPC's).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub code: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_shapes_parse_with_zero_values_left_out() {
        let line = r#"{"result":{"header":{"cluster_id":"1","revision":"5"},"events":[{"kv":{"key":"L2Nob3JhL3o=","create_revision":"4","mod_revision":"4","version":"1","value":"MQ=="}},{"type":"DELETE","kv":{"key":"L2Nob3JhL3o=","mod_revision":"5"}}]}}"#;
        let w: StreamLine<WatchResponse> = serde_json::from_str(line).unwrap();
        let w = w.result.unwrap();
        assert_eq!(w.header.revision, 5);
        assert_eq!(w.events[0].kind, EventType::Put);
        assert_eq!(w.events[0].kv.key_str(), Some("/chora/z"));
        assert_eq!(w.events[0].kv.value, b"1");
        assert_eq!(w.events[1].kind, EventType::Delete);
        assert!(w.events[1].kv.value.is_empty());
        let k: LeaseKeepAliveResponse =
            serde_json::from_str(r#"{"header":{"revision":"2"},"ID":"12345"}"#).unwrap();
        assert_eq!((k.id, k.ttl), (12345, 0));
    }

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/chora/"), b"/chora0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
