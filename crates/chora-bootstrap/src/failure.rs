//! What a person reads when a command fails, and its exit code.
//!
//! Every command returns a [`Failure`]: an error code, a description, possible
//! causes, suggested actions and where the logs are, printed in the seed's error
//! template (DESIGN.md §3) on stderr. Never a backtrace or a debug string.

use std::fmt::Write;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// The documented exit code.
    #[serde(skip)]
    pub exit: u8,
    /// Upper-case code such as `MANIFEST_UNREACHABLE`.
    pub code: &'static str,
    pub message: String,
    pub causes: Vec<String>,
    pub actions: Vec<String>,
    pub log: Option<String>,
    /// Print nothing: the command already said what there is to say (status).
    #[serde(skip)]
    pub quiet: bool,
}

/// Exit code for an unreadable or invalid configuration, on every command.
pub const EXIT_CONFIG: u8 = crate::exit::CONFIG;

/// A failed step: what happened, for the error template.
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    pub causes: Vec<String>,
    pub actions: Vec<String>,
    /// The error code a person reads instead of the phase's own
    /// (`LOCK_LOST`).
    pub code: Option<&'static str>,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            causes: Vec::new(),
            actions: Vec::new(),
            code: None,
        }
    }

    /// This bootstrap lost its etcd lock to a newer one (paused past its
    /// lease): the orchestrator refused its fencing token. Said as such,
    /// never as a generic failure.
    pub fn lock_lost(detail: impl std::fmt::Display) -> Self {
        StepError {
            code: Some("LOCK_LOST"),
            ..StepError::new(format!(
                "this bootstrap lost its lock to a newer one and did nothing more: {detail}"
            ))
        }
        .cause("it was paused or cut off longer than its etcd lease, and another bootstrap took the lock")
        .action("See what the other run did: chora bootstrap status")
        .action("Run `chora bootstrap` again once the other run is done")
    }
    pub fn cause(mut self, c: impl Into<String>) -> Self {
        self.causes.push(c.into());
        self
    }
    pub fn action(mut self, a: impl Into<String>) -> Self {
        self.actions.push(a.into());
        self
    }
}

impl Failure {
    pub fn new(exit: u8, code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            exit,
            code,
            message: message.into(),
            causes: Vec::new(),
            actions: Vec::new(),
            log: None,
            quiet: false,
        }
    }

    pub fn cause(mut self, c: impl Into<String>) -> Self {
        self.causes.push(c.into());
        self
    }

    pub fn action(mut self, a: impl Into<String>) -> Self {
        self.actions.push(a.into());
        self
    }

    pub fn render(&self) -> String {
        let mut s = format!("✗ [{}] {}\n", self.code, self.message);
        if !self.causes.is_empty() {
            s.push_str("\nPossible causes:\n");
            for c in &self.causes {
                let _ = writeln!(s, "  - {c}");
            }
        }
        if !self.actions.is_empty() {
            s.push_str("\nSuggested actions:\n");
            for (i, a) in self.actions.iter().enumerate() {
                let _ = writeln!(s, "  {}. {a}", i + 1);
            }
        }
        if let Some(log) = &self.log {
            let _ = write!(s, "\nFor more details, see logs: {log}\n");
        }
        s
    }

    pub fn log(mut self, path: impl Into<String>) -> Self {
        self.log = Some(path.into());
        self
    }

    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    pub fn print(&self) {
        if self.quiet {
            return;
        }
        eprint!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_seed_template() {
        let f = Failure::new(
            crate::exit::bootstrap::CORE,
            "CORE_FAILED",
            "Manifest Registry failed to start",
        )
        .cause("Port 8500 already in use")
        .action("Check if port is in use: ss -ltnp 'sport = :8500'");
        let text = f.render();
        assert!(text.starts_with("✗ [CORE_FAILED] Manifest Registry failed to start\n"));
        assert!(text.contains("\nPossible causes:\n  - Port 8500 already in use\n"));
        assert!(text.contains("\nSuggested actions:\n  1. Check if port"));
    }
}
