//! Where one chora home keeps everything (DESIGN.md §4): `.chora/` under the
//! working directory, or `CHORA_HOME`. Every command finds its files here.

use std::path::PathBuf;

/// Everything chora bootstrap keeps: `.chora/` under the working directory, or
/// `CHORA_HOME`.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn from_env() -> Home {
        let root = std::env::var_os("CHORA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".chora"));
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map(|d| d.join(&root))
                .unwrap_or(root)
        };
        Home { root }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("bootstrap-config.yml")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("bootstrap-state.json")
    }
    /// The spec each unit was last started with (see `applied.rs`).
    pub fn applied(&self) -> PathBuf {
        self.root.join("applied-specs.json")
    }
    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("bootstrap.lock")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    /// Where the process runtime keeps the pid files of phases 1-2 (it
    /// alone reads and writes them).
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    pub fn audit(&self) -> PathBuf {
        self.logs().join("bootstrap.log")
    }
}
