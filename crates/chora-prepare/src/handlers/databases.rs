use super::{default_file_mode, in_module, need, plural, show};
use crate::fsutil::{commit, exists, temp_beside};
use crate::sql::{Kind, Statement, split};
use crate::{Change, Context, DatabaseSpec, Error, Handler, Need, Outcome, Schema, priority};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Creates SQLite databases with the tables of their schema, and adds declared
/// tables (indexes, views, triggers) that an existing database lacks.
///
/// A new database is built in a temp file beside the target — schema `PRAGMA`s
/// first, then every other statement in one transaction — and renamed into place
/// only once complete, so a failure leaves no file at all. An existing database
/// gets only the statements that create its missing objects (and the `INSERT`s
/// into tables created now), in one transaction, rolled back on failure. A
/// statement that fails is named in the error with the module, the schema file
/// and its line.
pub struct DatabasesHandler {
    module: Option<String>,
    databases: Vec<DatabaseSpec>,
}

enum Plan {
    Ready,
    Create(Vec<Statement>),
    AddMissing {
        statements: Vec<Statement>,
        missing: Vec<String>,
    },
}

impl DatabasesHandler {
    pub fn new(module: Option<String>, databases: Vec<DatabaseSpec>) -> DatabasesHandler {
        DatabasesHandler { module, databases }
    }

    fn schema(&self, db: &DatabaseSpec) -> Result<(PathBuf, Vec<Statement>), Error> {
        let (file, text) = match &db.schema {
            Schema::File(f) => (
                f.clone(),
                std::fs::read_to_string(f)
                    .map_err(|e| Error::io("read the schema", f, &e).permanent())?,
            ),
            Schema::Inline { name, sql } => (PathBuf::from(name), sql.clone()),
        };
        let statements = split(&text).map_err(|m| {
            Error::new(format!("schema {}: {m}", file.display()))
                .at(&file, 0, 0)
                .permanent()
        })?;
        Ok((file, statements))
    }

    fn plan(&self, ctx: &Context, db: &DatabaseSpec) -> Result<(PathBuf, Plan), Error> {
        let (file, statements) = self.schema(db)?;
        let path = ctx.path(&db.path);
        if !exists(&path) {
            return Ok((file, Plan::Create(statements)));
        }
        let conn = open_existing(&path, ctx)?;
        let present = objects(&conn).map_err(|e| {
            Error::new(format!(
                "{} is not a usable SQLite database: {e}",
                path.display()
            ))
            .action("Move the file aside to have it created again, or restore it from a backup")
            .permanent()
        })?;
        drop(conn);
        let missing_objects: BTreeSet<(&str, &str)> = statements
            .iter()
            .filter_map(|s| s.kind.object())
            .filter(|(t, n)| !present.contains(&(t.to_string(), n.to_string())))
            .collect();
        if missing_objects.is_empty() {
            return Ok((file, Plan::Ready));
        }
        let new_tables: BTreeSet<&str> = missing_objects
            .iter()
            .filter(|(t, _)| *t == "table")
            .map(|(_, n)| *n)
            .collect();
        let run: Vec<Statement> = statements
            .iter()
            .filter(|s| match &s.kind {
                Kind::Insert(t) => new_tables.contains(t.as_str()),
                k => k.object().is_some_and(|o| missing_objects.contains(&o)),
            })
            .cloned()
            .collect();
        let missing = missing_objects
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        Ok((
            file,
            Plan::AddMissing {
                statements: run,
                missing,
            },
        ))
    }

    fn tables(statements: &[Statement]) -> String {
        let names: Vec<&str> = statements
            .iter()
            .filter_map(|s| match &s.kind {
                Kind::Table(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            "no tables".into()
        } else {
            format!("tables: {}", names.join(", "))
        }
    }

    fn change(db: &DatabaseSpec, plan: &Plan) -> Option<Change> {
        match plan {
            Plan::Ready => None,
            Plan::Create(s) => Some(Change::create(show(&db.path), Self::tables(s))),
            Plan::AddMissing { missing, .. } => Some(Change::repair(
                show(&db.path),
                format!("added {}", missing.join(", ")),
            )),
        }
    }
}

impl Handler for DatabasesHandler {
    fn name(&self) -> &str {
        "databases"
    }

    fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    fn priority(&self) -> i32 {
        priority::DATABASES
    }

    fn should_run(&self, ctx: &Context) -> Result<Need, Error> {
        let mut changes = Vec::new();
        for db in &self.databases {
            let (_, plan) = self.plan(ctx, db).map_err(|e| in_module(e, &self.module))?;
            changes.extend(Self::change(db, &plan));
        }
        Ok(need(
            changes,
            format!(
                "{} have their tables",
                plural(self.databases.len(), "database", "databases")
            ),
        ))
    }

    fn run(&self, ctx: &Context) -> Result<Outcome, Error> {
        let mut changes = Vec::new();
        for db in &self.databases {
            let m = |e| in_module(e, &self.module);
            let (file, plan) = self.plan(ctx, db).map_err(m)?;
            let path = ctx.path(&db.path);
            match &plan {
                Plan::Ready => continue,
                Plan::Create(statements) => create(&path, &file, statements, ctx).map_err(m)?,
                Plan::AddMissing { statements, .. } => {
                    add_missing(&path, &file, statements, ctx).map_err(m)?
                }
            }
            changes.extend(Self::change(db, &plan));
        }
        Ok(Outcome::new(changes))
    }
}

fn open_existing(path: &Path, ctx: &Context) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))?;
    let wait = ctx
        .remaining()
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    conn.busy_timeout(wait)
        .map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))?;
    Ok(conn)
}

fn objects(conn: &Connection) -> rusqlite::Result<BTreeSet<(String, String)>> {
    let mut stmt = conn.prepare("SELECT type, lower(name) FROM sqlite_master")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    rows.collect()
}

fn statement_error(
    ctx: &Context,
    file: &Path,
    db: &Path,
    s: &Statement,
    e: &rusqlite::Error,
    kept: &str,
) -> Error {
    Error::new(format!(
        "schema {}, statement {} (line {}) `{}` failed: {e}",
        ctx.show(file),
        s.number,
        s.line,
        s.head()
    ))
    .at(file, s.line, 0)
    .action(format!(
        "Fix the statement in {}; {kept} {}",
        ctx.show(file),
        ctx.show(db)
    ))
    .permanent()
}

/// Builds the database in a temp file and renames it into place.
fn create(path: &Path, file: &Path, statements: &[Statement], ctx: &Context) -> Result<(), Error> {
    let tmp = temp_beside(path)?;
    let fail = |e: rusqlite::Error| Error::new(format!("cannot create {}: {e}", path.display()));
    {
        let mut conn = Connection::open(tmp.path()).map_err(fail)?;
        // The file is renamed into place only once complete and synced, so the
        // build itself needs no journal on disk and no syncs.
        conn.pragma_update(None, "journal_mode", "MEMORY")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "OFF")
            .map_err(fail)?;
        for s in statements.iter().filter(|s| s.kind == Kind::Pragma) {
            conn.execute_batch(&s.sql)
                .map_err(|e| statement_error(ctx, file, path, s, &e, "nothing was created at"))?;
        }
        let tx = conn.transaction().map_err(fail)?;
        for s in statements.iter().filter(|s| s.kind != Kind::Pragma) {
            tx.execute_batch(&s.sql)
                .map_err(|e| statement_error(ctx, file, path, s, &e, "nothing was created at"))?;
        }
        tx.commit().map_err(fail)?;
        conn.close().map_err(|(_, e)| fail(e))?;
    }
    commit(ctx, tmp, path, Some(default_file_mode()), false)
}

/// Adds the missing objects in one transaction.
fn add_missing(
    path: &Path,
    file: &Path,
    statements: &[Statement],
    ctx: &Context,
) -> Result<(), Error> {
    let fail = |e: rusqlite::Error| Error::new(format!("cannot update {}: {e}", path.display()));
    let mut conn = open_existing(path, ctx)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    for s in statements {
        // Dropping `tx` on the error path rolls everything back.
        tx.execute_batch(&s.sql)
            .map_err(|e| statement_error(ctx, file, path, s, &e, "nothing was changed in"))?;
    }
    tx.commit().map_err(fail)?;
    conn.close().map_err(|(_, e)| fail(e))?;
    Ok(())
}
