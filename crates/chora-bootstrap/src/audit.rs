//! The audit log `.chora/logs/bootstrap.log`: one JSON object per line in the
//! seed's format, rotated at `logging.max_bytes`, keeping `logging.backup_count`
//! files. No secret ever reaches it: callers pass names and results only.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Audit {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    user: String,
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'a str,
    phase: Option<u8>,
    action: &'a str,
    service: Option<&'a str>,
    user: &'a str,
    result: &'a str,
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl Audit {
    pub fn new(path: &Path, max_bytes: u64, backups: u32) -> Audit {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            // SAFETY: getuid never fails.
            .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
        Audit {
            path: path.to_owned(),
            max_bytes,
            backups,
            user,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        level: &str,
        phase: Option<u8>,
        action: &str,
        service: Option<&str>,
        result: &str,
        duration_ms: Option<u64>,
        detail: Option<&str>,
    ) {
        let line = Line {
            timestamp: chora_api::bootstrap_state::now(),
            level,
            phase,
            action,
            service,
            user: &self.user,
            result,
            duration_ms,
            detail,
        };
        let mut text = serde_json::to_string(&line).expect("audit lines serialize");
        text.push('\n');
        if let Err(e) = self.append(text.as_bytes()) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot write the audit log");
        }
    }

    fn append(&self, data: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + data.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(data)
    }

    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.backups == 0 {
            return std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(numbered(self.backups));
        for n in (1..self.backups).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bootstrap.log");
        let a = Audit::new(&p, 300, 2);
        for i in 0..10 {
            a.record(
                "INFO",
                Some(1),
                "start_service",
                Some("manifest"),
                "success",
                Some(i),
                None,
            );
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["action"], "start_service");
            assert_eq!(v["phase"], 1);
        }
        assert!(dir.path().join("bootstrap.log.1").exists());
        assert!(dir.path().join("bootstrap.log.2").exists());
        assert!(!dir.path().join("bootstrap.log.3").exists());
    }
}
