//! `.chora/bootstrap-state.json`, the one model of it (DESIGN.md §4): the
//! seed's Appendix B plus `schema_version` and, per started service, how to
//! find it again. The bootstrap writes it; the dashboard and `status` read it.
//! Written atomically (temp file, fsync, rename, fsync of the directory), so
//! it always parses; a file it cannot parse is `StateError::Corrupted` (the
//! bootstrap's exit 8), never silently replaced.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const SCHEMA_VERSION: u32 = 1;

/// The phases' names (DESIGN.md §2), by number.
pub const PHASE_NAMES: [&str; 5] = [
    "Pre-Bootstrap Validation",
    "Core Services",
    "Infrastructure Services",
    "Capability Services",
    "Validation",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    InProgress,
    Completed,
    Failed,
    RolledBack,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::InProgress => "in_progress",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::RolledBack => "rolled_back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub phase: u8,
    pub timestamp: String,
    pub services_running: Vec<String>,
    pub health_status: BTreeMap<String, bool>,
}

/// How to find a started service again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub phase: u8,
    /// Phases 1-2: the process, identified by pid and its start time (clock
    /// ticks since boot), so a reused pid is never mistaken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A unit of a fleet: its Swarm service's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_service: Option<String>,
    /// Phase 3: deployed through this orchestrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A replica: the service it is a copy of (`manifest` for `manifest-2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A replica in the Manifest: the instance id it registers under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// A unit that is not in the Manifest (an etcd member): its health URL, as
    /// a container on the project network reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    pub started_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema_version: u32,
    pub environment: String,
    pub current_phase: u8,
    pub status: RunStatus,
    pub completed_phases: Vec<u8>,
    pub services_started: Vec<String>,
    pub services_healthy: Vec<String>,
    pub credentials_generated: bool,
    pub credential_files: Vec<String>,
    pub checkpoints: Vec<Checkpoint>,
    pub started_at: String,
    pub last_updated: String,
    pub completed_at: Option<String>,
    pub last_error: Option<String>,
    pub retry_count: u32,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
}

/// Why the state file could not be used (exit 8).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state file {path} is corrupted: {message}")]
    Corrupted { path: String, message: String },
    #[error("cannot write the state file {path}: {message}")]
    Write { path: String, message: String },
}

pub fn now() -> String {
    crate::rfc3339(std::time::SystemTime::now())
}

impl State {
    pub fn fresh(environment: &str) -> State {
        let t = now();
        State {
            schema_version: SCHEMA_VERSION,
            environment: environment.to_owned(),
            current_phase: 0,
            status: RunStatus::InProgress,
            completed_phases: Vec::new(),
            services_started: Vec::new(),
            services_healthy: Vec::new(),
            credentials_generated: false,
            credential_files: Vec::new(),
            checkpoints: Vec::new(),
            started_at: t.clone(),
            last_updated: t,
            completed_at: None,
            last_error: None,
            retry_count: 0,
            services: BTreeMap::new(),
        }
    }

    /// The state file, or `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<State>, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StateError::Corrupted {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|e| StateError::Corrupted {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if state.schema_version > SCHEMA_VERSION {
            return Err(StateError::Corrupted {
                path: path.display().to_string(),
                message: format!(
                    "schema_version {} is newer than this chora understands ({SCHEMA_VERSION})",
                    state.schema_version
                ),
            });
        }
        Ok(Some(state))
    }

    /// Writes the state atomically.
    pub fn save(&mut self, path: &Path) -> Result<(), StateError> {
        self.last_updated = now();
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        write_atomic(path, text.as_bytes(), 0o644).map_err(|e| StateError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn is_completed(&self, phase: u8) -> bool {
        self.completed_phases.contains(&phase)
    }

    pub fn complete_phase(&mut self, phase: u8) {
        if !self.completed_phases.contains(&phase) {
            self.completed_phases.push(phase);
            self.completed_phases.sort_unstable();
        }
    }

    /// Records that `name` runs (and is healthy).
    pub fn started(&mut self, name: &str, record: ServiceRecord) {
        if !self.services_started.iter().any(|s| s == name) {
            self.services_started.push(name.to_owned());
        }
        if !self.services_healthy.iter().any(|s| s == name) {
            self.services_healthy.push(name.to_owned());
        }
        self.services.insert(name.to_owned(), record);
    }

    /// How long the system has been up: since the oldest service it records
    /// was started (the Manifest, normally), else since the run started.
    pub fn uptime(&self) -> Option<std::time::Duration> {
        let oldest = self
            .services
            .values()
            .filter_map(|r| crate::parse_rfc3339(&r.started_at))
            .min()
            .or_else(|| crate::parse_rfc3339(&self.started_at))?;
        std::time::SystemTime::now().duration_since(oldest).ok()
    }

    /// Forgets `name` (stopped by rollback or reset).
    pub fn stopped(&mut self, name: &str) {
        self.services_started.retain(|s| s != name);
        self.services_healthy.retain(|s| s != name);
        self.services.remove(name);
    }
}

pub use crate::files::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bootstrap-state.json");
        assert!(State::load(&p).unwrap().is_none());
        let mut s = State::fresh("dev");
        s.current_phase = 2;
        s.started(
            "manifest",
            ServiceRecord {
                phase: 1,
                pid: Some(42),
                start_time: Some(7),
                ..Default::default()
            },
        );
        s.save(&p).unwrap();
        let back = State::load(&p).unwrap().unwrap();
        assert_eq!(back.services_started, ["manifest"]);
        assert_eq!(back.services["manifest"].pid, Some(42));
        std::fs::write(&p, "{\"current_phase\": ").unwrap();
        assert!(matches!(State::load(&p), Err(StateError::Corrupted { .. })));
    }

    #[test]
    fn uptime_counts_from_the_oldest_service() {
        let mut s = State::fresh("dev");
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        s.started(
            "manifest",
            ServiceRecord {
                phase: 1,
                started_at: crate::rfc3339(t),
                ..Default::default()
            },
        );
        let up = s.uptime().unwrap();
        assert!(
            up >= std::time::Duration::from_secs(100) && up < std::time::Duration::from_secs(110)
        );
    }

    #[test]
    fn atomic_writes_set_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.json");
        write_atomic(&p, b"{}", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
