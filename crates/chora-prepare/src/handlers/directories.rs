use super::{in_module, need, plural, show};
use crate::fsutil::{fmt_mode, mode_differs, set_mode};
use crate::{Change, Context, DirSpec, Error, Handler, Need, Outcome, STANDARD_DIRS, priority};
use std::path::PathBuf;

/// Makes directories (and their parents) exist, with the declared permissions;
/// puts a wrong mode right.
pub struct DirectoriesHandler {
    module: Option<String>,
    dirs: Vec<DirSpec>,
}

impl DirectoriesHandler {
    pub fn new(module: Option<String>, dirs: Vec<DirSpec>) -> DirectoriesHandler {
        DirectoriesHandler { module, dirs }
    }

    /// `data/`, `logs/`, `cache/` and `temp/` under the root.
    pub fn standard() -> DirectoriesHandler {
        DirectoriesHandler::new(
            None,
            STANDARD_DIRS
                .iter()
                .map(|d| DirSpec {
                    path: PathBuf::from(d),
                    mode: None,
                })
                .collect(),
        )
    }

    fn plan(&self, ctx: &Context, d: &DirSpec) -> Result<Option<Change>, Error> {
        let path = ctx.path(&d.path);
        let detail = d.mode.map(|m| format!("mode {}", fmt_mode(m)));
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(mode_differs(&path, d.mode)?.map(|actual| {
                Change::repair(
                    show(&d.path),
                    format!(
                        "mode {} -> {}",
                        fmt_mode(actual),
                        fmt_mode(d.mode.unwrap_or_default())
                    ),
                )
            })),
            Ok(_) => Err(
                Error::new(format!("{} exists and is not a directory", path.display()))
                    .action("Move the file aside so the directory can be created")
                    .permanent(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(Change::create(
                show(&d.path),
                detail.unwrap_or_default(),
            ))),
            Err(e) => Err(Error::io("inspect", &path, &e)),
        }
    }
}

impl Handler for DirectoriesHandler {
    fn name(&self) -> &str {
        "directories"
    }

    fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    fn priority(&self) -> i32 {
        priority::DIRECTORIES
    }

    fn should_run(&self, ctx: &Context) -> Result<Need, Error> {
        let mut changes = Vec::new();
        for d in &self.dirs {
            changes.extend(self.plan(ctx, d).map_err(|e| in_module(e, &self.module))?);
        }
        Ok(need(
            changes,
            format!(
                "{} exist",
                plural(self.dirs.len(), "directory", "directories")
            ),
        ))
    }

    fn run(&self, ctx: &Context) -> Result<Outcome, Error> {
        let mut changes = Vec::new();
        for d in &self.dirs {
            let Some(change) = self.plan(ctx, d).map_err(|e| in_module(e, &self.module))? else {
                continue;
            };
            let path = ctx.path(&d.path);
            std::fs::create_dir_all(&path)
                .map_err(|e| in_module(Error::io("create directory", &path, &e), &self.module))?;
            if let Some(mode) = d.mode {
                set_mode(&path, mode).map_err(|e| in_module(e, &self.module))?;
            }
            changes.push(change);
        }
        Ok(Outcome::new(changes))
    }
}
