//! What a run found and did, per host and step: the JSON document of DESIGN.md
//! §11 and its text rendering (a final table).

use chora_text::duration::took;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Already so: nothing was done.
    Ok,
    /// Done now (or, in a dry run, would be done).
    Changed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Changed => "changed",
            Status::Failed => "failed",
        }
    }

    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok | Status::Changed => "✓",
            Status::Failed => "✗",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    Ready,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub name: String,
    pub address: String,
    pub status: HostStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: Vec<StepReport>,
}

impl HostReport {
    pub fn changed(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == Status::Changed)
            .count()
    }

    pub fn duration_ms(&self) -> u64 {
        self.steps.iter().map(|s| s.duration_ms).sum()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub ready: usize,
    pub failed: usize,
    /// Steps that changed something, over all hosts.
    pub changed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub hosts: Vec<HostReport>,
    pub summary: Summary,
}

impl Report {
    pub fn new(hosts: Vec<HostReport>) -> Report {
        let summary = Summary {
            ready: hosts
                .iter()
                .filter(|h| h.status == HostStatus::Ready)
                .count(),
            failed: hosts
                .iter()
                .filter(|h| h.status == HostStatus::Failed)
                .count(),
            changed: hosts.iter().map(HostReport::changed).sum(),
        };
        Report { hosts, summary }
    }

    pub fn all_ready(&self) -> bool {
        self.summary.failed == 0
    }

    /// The final table: one row per host, its steps, and why a host failed.
    pub fn table(&self) -> String {
        let steps: Vec<String> = {
            let mut v: Vec<String> = Vec::new();
            for h in &self.hosts {
                for s in &h.steps {
                    if !v.contains(&s.step) {
                        v.push(s.step.clone());
                    }
                }
            }
            v
        };
        let name_w = self
            .hosts
            .iter()
            .map(|h| h.name.chars().count())
            .chain([4])
            .max()
            .unwrap_or(4);
        let addr_w = self
            .hosts
            .iter()
            .map(|h| h.address.chars().count())
            .chain([7])
            .max()
            .unwrap_or(7);
        let col = |s: &str| s.chars().count().max(7);
        let mut out = String::new();
        let _ = write!(
            out,
            "{:<name_w$}  {:<addr_w$}  {:<6}",
            "HOST", "ADDRESS", "STATUS"
        );
        for s in &steps {
            let _ = write!(out, "  {:<w$}", s.to_uppercase(), w = col(s));
        }
        let _ = writeln!(out, "  TIME");
        for h in &self.hosts {
            let status = match h.status {
                HostStatus::Ready => "ready",
                HostStatus::Failed => "failed",
            };
            let _ = write!(
                out,
                "{:<name_w$}  {:<addr_w$}  {:<6}",
                h.name, h.address, status
            );
            for s in &steps {
                let cell = h
                    .steps
                    .iter()
                    .find(|x| &x.step == s)
                    .map(|x| x.status.as_str())
                    .unwrap_or("-");
                let _ = write!(out, "  {:<w$}", cell, w = col(s));
            }
            let _ = writeln!(out, "  {}", took(Duration::from_millis(h.duration_ms())));
        }
        for h in &self.hosts {
            if let Some(e) = &h.error {
                let _ = writeln!(out, "✗ {}: {e}", h.name);
            }
        }
        let _ = writeln!(
            out,
            "{} ready, {} failed, {} changed",
            self.summary.ready, self.summary.failed, self.summary.changed
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_shape_is_the_design_one() {
        let r = Report::new(vec![HostReport {
            name: "app-1".into(),
            address: "192.0.2.10".into(),
            status: HostStatus::Failed,
            error: Some("ssh: Connection refused".into()),
            steps: vec![StepReport {
                step: "ssh".into(),
                status: Status::Failed,
                detail: Some("Connection refused".into()),
                duration_ms: 12,
            }],
        }]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["hosts"][0]["status"], "failed");
        assert_eq!(v["hosts"][0]["steps"][0]["status"], "failed");
        assert_eq!(v["hosts"][0]["steps"][0]["duration_ms"], 12);
        assert_eq!(v["summary"]["failed"], 1);
        assert_eq!(v["summary"]["ready"], 0);
        assert_eq!(v["summary"]["changed"], 0);
        assert!(r.table().contains("✗ app-1: ssh: Connection refused"));
    }
}
