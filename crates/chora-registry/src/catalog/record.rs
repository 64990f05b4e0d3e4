//! What is stored of an instance ([`Record`]: everything but its liveness),
//! and how long an instance lives without heartbeats ([`Liveness`]).

use chora_api::manifest::{Instance, Metadata, Registration, Status};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

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
