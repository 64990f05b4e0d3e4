//! What the dashboard shows of the bootstrap: `bootstrap-state.json` (phases,
//! status, last error, the services it started) and the phase durations of the
//! audit log `logs/bootstrap.log`. Both are read as plain JSON (the orchestrator
//! does not link the bootstrap), and again only when they changed on disk.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

pub const PHASE_NAMES: [&str; 5] = [
    "Pre-Bootstrap Validation",
    "Core Services",
    "Infrastructure Services",
    "Capability Services",
    "Validation",
];

/// The audit log is read from its end, at most this much.
const AUDIT_TAIL: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseView {
    pub phase: u8,
    pub name: &'static str,
    /// `completed`, `failed`, `in_progress` or `pending`.
    pub status: &'static str,
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootstrapView {
    pub status: String,
    pub environment: String,
    pub current_phase: u8,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub last_error: Option<String>,
    pub phases: Vec<PhaseView>,
}

/// A service the bootstrap started, as its state file records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub phase: u8,
    pub pid: Option<u32>,
    pub container: Option<String>,
    pub url: Option<String>,
    pub started_at: Option<String>,
    /// A replica's service (`manifest` for the unit `manifest-2`).
    pub service: Option<String>,
    /// The instance id a replica registers under.
    pub instance_id: Option<String>,
    /// The health URL of a unit that is not in the Manifest (an etcd member).
    pub health: Option<String>,
}

/// Reads the home's files when they change.
pub struct Reader {
    home: Option<PathBuf>,
    seen: Option<(Stamp, Stamp)>,
    view: Option<BootstrapView>,
    services: BTreeMap<String, Record>,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Reader {
    pub fn new(home: Option<PathBuf>) -> Reader {
        let mut r = Reader {
            home,
            seen: None,
            view: None,
            services: BTreeMap::new(),
        };
        r.refresh();
        r
    }

    pub fn view(&self) -> Option<BootstrapView> {
        self.view.clone()
    }

    pub fn services(&self) -> &BTreeMap<String, Record> {
        &self.services
    }

    /// Re-reads the state file and the audit log if either changed.
    pub fn refresh(&mut self) {
        let Some(home) = &self.home else {
            return;
        };
        let state_path = home.join("bootstrap-state.json");
        let audit_path = home.join("logs").join("bootstrap.log");
        let now = (stamp(&state_path), stamp(&audit_path));
        if self.seen.as_ref() == Some(&now) {
            return;
        }
        self.seen = Some(now);
        let state: Option<serde_json::Value> = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let Some(state) = state else {
            self.view = None;
            self.services.clear();
            return;
        };
        let durations = audit_durations(&audit_path);
        self.view = Some(view_of(&state, &durations));
        self.services = records_of(&state);
    }
}

fn str_of(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_owned)
}

fn view_of(s: &serde_json::Value, durations: &BTreeMap<u8, u64>) -> BootstrapView {
    let status = str_of(s, "status").unwrap_or_else(|| "unknown".into());
    let current = s.get("current_phase").and_then(|v| v.as_u64()).unwrap_or(0) as u8;
    let completed: Vec<u8> = s
        .get("completed_phases")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_u64())
                .map(|p| p as u8)
                .collect()
        })
        .unwrap_or_default();
    let phases = (0..=4u8)
        .map(|n| PhaseView {
            phase: n,
            name: PHASE_NAMES[n as usize],
            status: if completed.contains(&n) {
                "completed"
            } else if n == current && status == "failed" {
                "failed"
            } else if n == current && status == "in_progress" {
                "in_progress"
            } else {
                "pending"
            },
            duration_ms: durations.get(&n).copied(),
        })
        .collect();
    BootstrapView {
        status,
        environment: str_of(s, "environment").unwrap_or_default(),
        current_phase: current,
        started_at: str_of(s, "started_at"),
        completed_at: str_of(s, "completed_at"),
        last_error: str_of(s, "last_error"),
        phases,
    }
}

fn records_of(s: &serde_json::Value) -> BTreeMap<String, Record> {
    let Some(map) = s.get("services").and_then(|v| v.as_object()) else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(name, r)| {
            (
                name.clone(),
                Record {
                    phase: r.get("phase").and_then(|v| v.as_u64()).unwrap_or(9) as u8,
                    pid: r.get("pid").and_then(|v| v.as_u64()).map(|p| p as u32),
                    container: str_of(r, "container"),
                    url: str_of(r, "url"),
                    started_at: str_of(r, "started_at"),
                    service: str_of(r, "service"),
                    instance_id: str_of(r, "instance_id"),
                    health: str_of(r, "health"),
                },
            )
        })
        .collect()
}

/// The duration of each phase's last run: `phase_complete` / `phase_failed`
/// lines of the audit log.
fn audit_durations(path: &std::path::Path) -> BTreeMap<u8, u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = BTreeMap::new();
    let Ok(mut f) = std::fs::File::open(path) else {
        return out;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(AUDIT_TAIL);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return out;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return out;
    }
    let text = String::from_utf8_lossy(&buf);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let action = v.get("action").and_then(|a| a.as_str()).unwrap_or("");
        // A later line wins: a resumed run redoes only the phases it runs.
        if matches!(action, "phase_complete" | "phase_failed")
            && let (Some(p), Some(ms)) = (
                v.get("phase").and_then(|p| p.as_u64()),
                v.get("duration_ms").and_then(|d| d.as_u64()),
            )
        {
            out.insert(p as u8, ms);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_come_from_the_state_and_durations_from_the_audit_log() {
        let dir = std::env::temp_dir().join(format!("chora-ui-{}", chora_api::random_hex(4)));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(
            dir.join("bootstrap-state.json"),
            r#"{"status":"failed","environment":"dev","current_phase":3,
                "completed_phases":[0,1,2],"last_error":"analyzer did not start",
                "services":{"manifest":{"phase":1,"pid":42,"started_at":"2026-01-01T00:00:00Z"}}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("logs/bootstrap.log"),
            "{\"action\":\"phase_complete\",\"phase\":1,\"duration_ms\":120}\n\
             {\"action\":\"phase_failed\",\"phase\":3,\"duration_ms\":900}\n",
        )
        .unwrap();
        let r = Reader::new(Some(dir.clone()));
        let v = r.view().unwrap();
        assert_eq!(v.last_error.as_deref(), Some("analyzer did not start"));
        let st: Vec<_> = v.phases.iter().map(|p| p.status).collect();
        assert_eq!(
            st,
            ["completed", "completed", "completed", "failed", "pending"]
        );
        assert_eq!(v.phases[1].duration_ms, Some(120));
        assert_eq!(v.phases[3].duration_ms, Some(900));
        assert_eq!(r.services()["manifest"].pid, Some(42));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
