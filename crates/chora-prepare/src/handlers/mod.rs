//! The built-in handlers. Each prepares one concern of one module (or of the
//! framework, `module() == None`); `should_run` looks without touching, `run`
//! makes what is missing and repairs what is wrong, item by item, idempotently.

mod databases;
mod directories;
mod downloads;
mod files;
mod templates;

pub use databases::DatabasesHandler;
pub use directories::DirectoriesHandler;
pub use downloads::DownloadsHandler;
pub use files::FilesHandler;
pub use templates::TemplatesHandler;

use crate::{Change, Error, Handler, Module, Need};
use std::path::{Path, PathBuf};

/// The built-in handlers a module's requirements call for, each with the
/// databases it writes (handlers of one priority that write different ones may
/// run side by side).
pub(crate) fn for_module(m: &Module) -> Vec<(Box<dyn Handler>, Vec<PathBuf>)> {
    let r = &m.requirements;
    let id = Some(m.id.clone());
    let mut out: Vec<Box<dyn Handler>> = Vec::new();
    if !r.directories.is_empty() {
        out.push(Box::new(DirectoriesHandler::new(
            id.clone(),
            r.directories.clone(),
        )));
    }
    if !r.databases.is_empty() {
        out.push(Box::new(DatabasesHandler::new(
            id.clone(),
            r.databases.clone(),
        )));
    }
    if !r.files.is_empty() {
        out.push(Box::new(FilesHandler::new(id.clone(), r.files.clone())));
    }
    if !r.templates.is_empty() {
        out.push(Box::new(
            TemplatesHandler::new(id.clone(), r.templates.clone())
                .with_variables(m.variables.clone())
                .with_module_dir(m.dir.clone()),
        ));
    }
    if !r.downloads.is_empty() {
        out.push(Box::new(DownloadsHandler::new(id, r.downloads.clone())));
    }
    let dbs: Vec<PathBuf> = r.databases.iter().map(|d| d.path.clone()).collect();
    out.into_iter()
        .map(|h| {
            let claims = if h.name() == "databases" {
                dbs.clone()
            } else {
                Vec::new()
            };
            (h, claims)
        })
        .collect()
}

/// `Need` from a list of planned changes: skip with `why_not` when empty.
pub(crate) fn need(changes: Vec<Change>, why_not: String) -> Need {
    if changes.is_empty() {
        Need::Skip(why_not)
    } else {
        Need::Run(changes)
    }
}

/// Attaches the module to an error.
pub(crate) fn in_module(e: Error, module: &Option<String>) -> Error {
    match (module, &e.module) {
        (Some(m), None) => e.module(m),
        _ => e,
    }
}

pub(crate) fn show(p: &Path) -> String {
    p.display().to_string()
}

pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// 0o666 less the process umask: what a plain file create would give.
pub(crate) fn default_file_mode() -> u32 {
    static MODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let umask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022);
        0o666 & !umask
    })
}
