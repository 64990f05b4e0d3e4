use super::{default_file_mode, in_module, need, plural, show};
use crate::fsutil::{fmt_mode, mode_differs, set_mode, write_atomic};
use crate::{Change, Context, Error, FileSpec, Handler, Need, Outcome, priority};

/// Makes files exist: a missing one is written (atomically) with its declared
/// content, an existing one is never rewritten; a wrong mode is put right.
pub struct FilesHandler {
    module: Option<String>,
    files: Vec<FileSpec>,
}

impl FilesHandler {
    pub fn new(module: Option<String>, files: Vec<FileSpec>) -> FilesHandler {
        FilesHandler { module, files }
    }

    fn plan(&self, ctx: &Context, f: &FileSpec) -> Result<Option<Change>, Error> {
        let path = ctx.path(&f.path);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(mode_differs(&path, f.mode)?.map(|actual| {
                Change::repair(
                    show(&f.path),
                    format!(
                        "mode {} -> {}",
                        fmt_mode(actual),
                        fmt_mode(f.mode.unwrap_or_default())
                    ),
                )
            })),
            Ok(_) => Err(
                Error::new(format!("{} exists and is not a file", path.display()))
                    .action("Move it aside so the file can be created")
                    .permanent(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(Change::create(
                show(&f.path),
                format!("{} bytes", f.content.len()),
            ))),
            Err(e) => Err(Error::io("inspect", &path, &e)),
        }
    }
}

impl Handler for FilesHandler {
    fn name(&self) -> &str {
        "files"
    }

    fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    fn priority(&self) -> i32 {
        priority::FILES
    }

    fn should_run(&self, ctx: &Context) -> Result<Need, Error> {
        let mut changes = Vec::new();
        for f in &self.files {
            changes.extend(self.plan(ctx, f).map_err(|e| in_module(e, &self.module))?);
        }
        Ok(need(
            changes,
            format!("{} exist", plural(self.files.len(), "file", "files")),
        ))
    }

    fn run(&self, ctx: &Context) -> Result<Outcome, Error> {
        let mut changes = Vec::new();
        for f in &self.files {
            let m = |e| in_module(e, &self.module);
            let Some(change) = self.plan(ctx, f).map_err(m)? else {
                continue;
            };
            let path = ctx.path(&f.path);
            if change.kind == crate::ChangeKind::Create {
                let mode = f.mode.unwrap_or_else(default_file_mode);
                write_atomic(ctx, &path, f.content.as_bytes(), Some(mode), false).map_err(m)?;
            } else if let Some(mode) = f.mode {
                set_mode(&path, mode).map_err(m)?;
            }
            changes.push(change);
        }
        Ok(Outcome::new(changes))
    }
}
