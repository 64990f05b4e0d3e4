//! `.chora/infra-state.json`: what the last runs found and did on each host,
//! step by step. Written atomically (temp file, fsync, rename, fsync of the
//! directory). A re-run re-checks every step (checks are cheap and the truth
//! is on the host), so only what is not done is acted on; the file is the
//! record, read by `chora infra status` for the time each host was last ready.

use crate::report::{HostStatus, Report, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InfraState {
    pub schema_version: u32,
    pub inventory: String,
    pub updated_at: String,
    pub hosts: BTreeMap<String, HostState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostState {
    pub address: String,
    /// `ready` or `failed`, as of the last run.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<String>,
    /// Step name → `done` (ok or changed) or `failed`, with when.
    pub steps: BTreeMap<String, StepState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepState {
    pub status: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl InfraState {
    /// The file, or an empty state when there is none (or it does not parse:
    /// it is only a record, the hosts are re-checked anyway).
    pub fn load(path: &Path) -> InfraState {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Folds a run's report in.
    pub fn record(&mut self, inventory: &Path, report: &Report) {
        let at = now();
        self.schema_version = SCHEMA_VERSION;
        self.inventory = inventory.display().to_string();
        self.updated_at = at.clone();
        for h in &report.hosts {
            let e = self.hosts.entry(h.name.clone()).or_default();
            e.address = h.address.clone();
            e.error = h.error.clone();
            match h.status {
                HostStatus::Ready => {
                    if e.status != "ready" || e.ready_since.is_none() {
                        e.ready_since = Some(at.clone());
                    }
                    e.status = "ready".into();
                }
                HostStatus::Failed => {
                    e.status = "failed".into();
                    e.ready_since = None;
                }
            }
            for s in &h.steps {
                e.steps.insert(
                    s.step.clone(),
                    StepState {
                        status: match s.status {
                            Status::Ok | Status::Changed => "done".into(),
                            Status::Failed => "failed".into(),
                        },
                        at: at.clone(),
                        detail: s.detail.clone(),
                    },
                );
            }
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&serde_json::to_vec_pretty(self).expect("state serializes"))?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}
