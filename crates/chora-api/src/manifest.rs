//! The Manifest's wire types (DESIGN.md §5, "Manifest").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `^[a-z0-9][a-z0-9._-]{0,62}$`: the only names the Manifest accepts.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Instance ids: like names, but up to 128 characters and upper case allowed.
pub fn is_valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The status of an instance as the Manifest reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Up,
    Unhealthy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Unhealthy => "unhealthy",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "up" => Ok(Status::Up),
            "unhealthy" => Ok(Status::Unhealthy),
            _ => Err(format!(
                "unknown status `{s}` (expected `up` or `unhealthy`)"
            )),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Descriptive data about a service. Keys other than the four known ones are kept
/// as they came and returned beside them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(flatten)]
    pub custom: serde_json::Map<String, serde_json::Value>,
}

/// `POST /v1/services` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub name: String,
    pub version: String,
    /// Interface kind (`REST`, `gRPC`, …) to address, e.g. `{"REST": "http://127.0.0.1:8800"}`.
    pub interfaces: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `POST /v1/services` answer (201 new, 200 known id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub id: String,
    pub name: String,
    pub version: String,
    pub status: Status,
    pub registered_at: String,
    /// Seconds between heartbeats the registry expects.
    #[serde(serialize_with = "whole_or_fraction")]
    pub heartbeat_interval: f64,
    /// Seconds without a heartbeat after which the instance is removed (the TTL).
    #[serde(serialize_with = "whole_or_fraction")]
    pub heartbeat_timeout: f64,
}

/// Seconds as `10` when whole, `0.25` otherwise.
fn whole_or_fraction<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && *v >= 0.0 && *v < 1e15 {
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Optional `PUT …/heartbeat` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub status: Status,
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub id: String,
    pub version: String,
    pub interfaces: BTreeMap<String, String>,
    pub metadata: Metadata,
    pub status: Status,
    pub last_heartbeat: String,
    pub registered_at: String,
}

impl Instance {
    /// The `REST` interface, the one the gateway and health checks use.
    pub fn rest_url(&self) -> Option<&str> {
        self.interfaces.get("REST").map(String::as_str)
    }
}

/// `GET /v1/services/{name}`: the service and all its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub version: String,
    /// `up` when any instance is up.
    pub status: Status,
    pub interfaces: BTreeMap<String, String>,
    pub metadata: Metadata,
    pub instances: Vec<Instance>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub services_registered: u64,
    pub storage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Filters of `GET /v1/services`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ListFilter {
    pub fn matches(&self, i: &Instance) -> bool {
        self.status.is_none_or(|s| s == i.status)
            && self.name.as_deref().is_none_or(|n| n == i.name)
            && self
                .tag
                .as_deref()
                .is_none_or(|t| i.metadata.tags.iter().any(|x| x == t))
    }
}

/// The header that carries the registry's change index on every GET.
pub const INDEX_HEADER: &str = "x-chora-index";

/// The header a Manifest node adds to its reads while they may be out of date
/// (its etcd cluster is unreachable): `since <RFC 3339>: <reason>`.
pub const STALE_HEADER: &str = "x-chora-stale";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design_pattern() {
        for ok in ["a", "analyzer", "svc-0", "a.b_c-d", "0abc", &"a".repeat(63)] {
            assert!(is_valid_name(ok), "{ok} should be valid");
        }
        for bad in ["", "-a", ".a", "A", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad} should be invalid");
        }
    }

    #[test]
    fn metadata_keeps_custom_keys() {
        let m: Metadata =
            serde_json::from_str(r#"{"tags":["core"],"team":"infra","weight":3}"#).unwrap();
        assert_eq!(m.tags, vec!["core"]);
        assert_eq!(m.custom["team"], "infra");
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["weight"], 3);
        assert_eq!(back["description"], serde_json::Value::Null);
    }

    #[test]
    fn registration_rejects_unknown_fields() {
        let e = serde_json::from_str::<Registration>(
            r#"{"name":"a","version":"1","interfaces":{},"interface":{}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `interface`"), "{e}");
    }
}
