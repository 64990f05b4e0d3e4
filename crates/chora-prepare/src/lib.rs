//! `chora prepare`: the start-up bootstrap that makes an application's
//! infrastructure exist before any of its modules loads — directories, SQLite
//! databases with their tables, configuration files, and dependency files that
//! are present and intact — so modules never carry cold-boot code.
//!
//! The shape is the handler pattern: a [`Handler`] says whether it needs to run
//! ([`Handler::should_run`]), runs ([`Handler::run`]) and has a priority (lower
//! first). A [`Runner`] orders the handlers, runs the needed ones, stops at the
//! first failure (unless told otherwise), retries retryable failures, bounds the
//! phase with a timeout and returns a [`Report`] of what it created, repaired and
//! skipped, and why.
//!
//! ```no_run
//! use chora_prepare::{Context, Runner};
//! use std::time::Duration;
//!
//! let ctx = Context::discover(".".as_ref())?; // reads modules/*/module.yml
//! let report = Runner::new(ctx).timeout(Duration::from_secs(30)).run();
//! print!("{report}");
//! if !report.ok { std::process::exit(1) }
//! # Ok::<(), chora_prepare::Error>(())
//! ```
//!
//! Built-in handlers, one per concern and module, with their priorities:
//! directories 5, databases 10, files 15, templates 20, downloads 30. An
//! application's own handlers (default priority 100) take their place in the
//! same order.

mod error;
mod fsutil;
mod handlers;
mod http;
mod module_file;
mod pool;
mod report;
mod requirements;
mod runner;
mod services;
mod sql;

pub use error::{Error, Location};
pub use handlers::{
    DatabasesHandler, DirectoriesHandler, DownloadsHandler, FilesHandler, TemplatesHandler,
};
pub use module_file::{MODULE_FILE_NAMES, discover};
pub use report::{Entry, Report, Status};
pub use requirements::{
    DatabaseSpec, DirSpec, DownloadSpec, FileSpec, Module, Requirements, Schema, Source,
    TemplateSpec,
};
pub use runner::Runner;
pub use services::{MANIFEST_SCHEMA, STORAGE_SCHEMA, chora_services_prepare};

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Priorities of the built-in handlers (lower runs first).
pub mod priority {
    pub const DIRECTORIES: i32 = 5;
    pub const DATABASES: i32 = 10;
    pub const FILES: i32 = 15;
    pub const TEMPLATES: i32 = 20;
    pub const DOWNLOADS: i32 = 30;
    /// What a handler that does not say gets.
    pub const DEFAULT: i32 = 100;
}

/// The directories every application gets under its root.
pub const STANDARD_DIRS: [&str; 4] = ["data", "logs", "cache", "temp"];

/// What handlers see: the application root, its modules, template variables and
/// the phase's deadline.
#[derive(Debug, Clone)]
pub struct Context {
    root: PathBuf,
    modules: Vec<Module>,
    vars: BTreeMap<String, String>,
    process_env: bool,
    deadline: Option<Instant>,
    dry_run: bool,
    /// Directories whose fsync the runner does once at the end of the phase.
    dir_syncs: Option<Arc<Mutex<BTreeSet<PathBuf>>>>,
}

impl Context {
    /// A context for `root` with no modules.
    pub fn new(root: impl Into<PathBuf>) -> Context {
        Context {
            root: root.into(),
            modules: Vec::new(),
            vars: BTreeMap::new(),
            process_env: true,
            deadline: None,
            dry_run: false,
            dir_syncs: None,
        }
    }

    /// A context for `root` with the modules found in `root/modules/*/`.
    pub fn discover(root: &Path) -> Result<Context, Error> {
        let modules = discover(root)?;
        Ok(Context::new(root).with_modules(modules))
    }

    pub fn with_modules(mut self, modules: Vec<Module>) -> Context {
        self.modules = modules;
        self
    }

    /// A template variable that wins over the process environment (but not over
    /// a module file's own variables).
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Context {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Whether templates may read the process environment (default: yes).
    pub fn with_process_env(mut self, yes: bool) -> Context {
        self.process_env = yes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// `rel` under the root.
    pub fn path(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// `p` for messages: relative to the root when it is under it.
    pub fn show(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    /// A variable from [`Context::with_var`], then the process environment.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .cloned()
            .or_else(|| self.process_env.then(|| std::env::var(name).ok()).flatten())
    }

    /// When the phase must be over, set by the runner.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None`: no deadline). Long handlers should
    /// bound their waits by it.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Makes a rename in `dir` durable: now, or once at the end of the runner's
    /// phase (before [`Runner::run`] returns).
    pub fn sync_dir_later(&self, dir: &Path) {
        match &self.dir_syncs {
            Some(set) => {
                set.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(dir.to_path_buf());
            }
            None => fsutil::sync_dir(dir),
        }
    }

    /// Whether this is a dry run (handlers are then only asked `should_run`).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// Whether a handler needs to run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing to do; the reason says why (e.g. "3 directories exist").
    Skip(String),
    /// These changes are needed (a dry run lists them).
    Run(Vec<Change>),
}

/// What a handler made (or, in a dry run, would make).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// What it is about, usually a path relative to the root.
    pub target: String,
    /// More about it: "tables: a, b", "mode 0750".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Change {
    pub fn create(target: impl Into<String>, detail: impl Into<String>) -> Change {
        Change {
            kind: ChangeKind::Create,
            target: target.into(),
            detail: detail.into(),
        }
    }

    pub fn repair(target: impl Into<String>, detail: impl Into<String>) -> Change {
        Change {
            kind: ChangeKind::Repair,
            target: target.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Something missing was made.
    Create,
    /// Something present but wrong (a missing table, a bad hash, a wrong mode)
    /// was put right.
    Repair,
}

/// What a handler's run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub changes: Vec<Change>,
}

impl Outcome {
    pub fn new(changes: Vec<Change>) -> Outcome {
        Outcome { changes }
    }
}

/// One preparation step. Object-safe: runners hold `Box<dyn Handler>`.
///
/// `should_run` must only look, never change anything: the runner may ask it
/// more than once, and asks several handlers at the same time from different
/// threads (hence `Sync`). `run` must be idempotent — it may be called again
/// after a failed attempt — and should leave nothing half-made when it fails.
pub trait Handler: Send + Sync {
    /// The concern, e.g. `databases`; shown in reports and errors.
    fn name(&self) -> &str;

    /// The module this handler prepares, if any.
    fn module(&self) -> Option<&str> {
        None
    }

    /// Lower runs first; ties keep the order handlers were added in.
    fn priority(&self) -> i32 {
        priority::DEFAULT
    }

    /// Whether the step is needed (and what it would change), or why not.
    fn should_run(&self, ctx: &Context) -> Result<Need, Error>;

    /// Does the step; lists what it created or repaired.
    fn run(&self, ctx: &Context) -> Result<Outcome, Error>;
}
