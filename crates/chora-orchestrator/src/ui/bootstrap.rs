//! What the dashboard shows of the bootstrap: `bootstrap-state.json` (phases,
//! status, last error, the services it started), read through its one model
//! ([`chora_api::bootstrap_state::State`]), and the phase durations of the audit
//! log `logs/bootstrap.log`. Both are read again only when they changed on disk.

use super::model::{BootstrapView, PhaseView};
use chora_api::bootstrap_state::{PHASE_NAMES, RunStatus, ServiceRecord, State};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

/// The audit log is read from its end, at most this much.
const AUDIT_TAIL: u64 = 256 * 1024;

/// Reads the home's files when they change.
pub struct Reader {
    home: Option<PathBuf>,
    seen: Option<(Stamp, Stamp)>,
    view: Option<BootstrapView>,
    services: BTreeMap<String, ServiceRecord>,
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

    /// The services the bootstrap started, as its state file records them.
    pub fn services(&self) -> &BTreeMap<String, ServiceRecord> {
        &self.services
    }

    /// Re-reads the state file and the audit log if either changed. A state file
    /// that does not parse shows as no bootstrap (the bootstrap itself reports it).
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
        let state = match State::load(&state_path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "the dashboard cannot read the bootstrap state");
                None
            }
        };
        let Some(state) = state else {
            self.view = None;
            self.services.clear();
            return;
        };
        let durations = audit_durations(&audit_path);
        self.view = Some(view_of(&state, &durations));
        self.services = state.services;
    }
}

fn view_of(s: &State, durations: &BTreeMap<u8, u64>) -> BootstrapView {
    let current = s.current_phase;
    let phases = (0..=4u8)
        .map(|n| PhaseView {
            phase: n,
            name: PHASE_NAMES[n as usize],
            status: if s.is_completed(n) {
                "completed"
            } else if n == current && s.status == RunStatus::Failed {
                "failed"
            } else if n == current && s.status == RunStatus::InProgress {
                "in_progress"
            } else {
                "pending"
            },
            duration_ms: durations.get(&n).copied(),
        })
        .collect();
    BootstrapView {
        status: s.status.as_str().to_owned(),
        environment: s.environment.clone(),
        current_phase: current,
        started_at: Some(s.started_at.clone()).filter(|t| !t.is_empty()),
        completed_at: s.completed_at.clone(),
        last_error: s.last_error.clone(),
        phases,
    }
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
        let mut state = State::fresh("dev");
        state.status = RunStatus::Failed;
        state.current_phase = 3;
        state.completed_phases = vec![0, 1, 2];
        state.last_error = Some("analyzer did not start".into());
        state.started(
            "manifest",
            ServiceRecord {
                phase: 1,
                pid: Some(42),
                started_at: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            },
        );
        state.save(&dir.join("bootstrap-state.json")).unwrap();
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
