//! chora's own infrastructure, for phase 0 of `chora bootstrap`: the home's
//! directories and the SQLite databases of the Manifest and of the storage
//! capability, so the services themselves carry no cold-boot code.

use crate::Context;
use crate::{DatabaseSpec, DatabasesHandler, DirSpec, DirectoriesHandler, Runner, Schema};
use std::path::{Path, PathBuf};

/// The Manifest's table (`data/manifest.db`), as `chora-registry` reads it.
pub const MANIFEST_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS instances (
    name TEXT NOT NULL,
    id   TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (name, id)
) WITHOUT ROWID;
";

/// The storage capability's table (`data/storage.db`).
pub const STORAGE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL,
    updated_at TEXT NOT NULL
);
";

/// A runner that prepares a chora home: `logs/`, `data/` and `run/`, then
/// `data/manifest.db` (table `instances`) and `data/storage.db` (table
/// `objects`). A database that exists keeps its data; a missing table is added.
///
/// ```no_run
/// let report = chora_prepare::chora_services_prepare(".chora".as_ref()).run();
/// if !report.ok { eprint!("{report}") }
/// ```
pub fn chora_services_prepare(home: &Path) -> Runner {
    let ctx = Context::new(home).with_process_env(false);
    let dirs = ["logs", "data", "run"]
        .iter()
        .map(|d| DirSpec {
            path: PathBuf::from(d),
            mode: None,
        })
        .collect();
    let db = |file: &str, sql: &str| DatabaseSpec {
        path: Path::new("data").join(file),
        schema: Schema::Inline {
            name: format!("{file} schema (built in)"),
            sql: sql.to_owned(),
        },
    };
    Runner::empty(ctx)
        .with_handler(Box::new(DirectoriesHandler::new(
            Some("chora".into()),
            dirs,
        )))
        .with_handler(Box::new(DatabasesHandler::new(
            Some("manifest".into()),
            vec![db("manifest.db", MANIFEST_SCHEMA)],
        )))
        .with_handler(Box::new(DatabasesHandler::new(
            Some("storage".into()),
            vec![db("storage.db", STORAGE_SCHEMA)],
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_a_chora_home_then_has_nothing_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join(".chora");
        let report = chora_services_prepare(&home).run();
        assert!(report.ok, "{report}");
        for d in ["logs", "data", "run"] {
            assert!(home.join(d).is_dir());
        }
        let conn = rusqlite::Connection::open(home.join("data/manifest.db")).unwrap();
        conn.execute(
            "INSERT INTO instances (name, id, data) VALUES ('a', '1', '{}')",
            [],
        )
        .unwrap();
        drop(conn);
        let conn = rusqlite::Connection::open(home.join("data/storage.db")).unwrap();
        conn.execute(
            "INSERT INTO objects VALUES ('k', 'text/plain', x'00', '2026-11-23')",
            [],
        )
        .unwrap();
        drop(conn);
        let again = chora_services_prepare(&home).run();
        assert!(again.nothing_to_do(), "{again}");
        // The data is kept.
        let conn = rusqlite::Connection::open(home.join("data/manifest.db")).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM instances", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
