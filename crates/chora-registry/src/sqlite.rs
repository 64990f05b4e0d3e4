//! The embedded SQLite backend.
//!
//! One writer thread owns the connection. Writes queue to it; it takes everything
//! queued, applies it in one transaction (WAL, `synchronous=FULL`), commits, and only
//! then applies the batch to the catalog and answers. So a 201 or a deregistration's
//! 204 has reached the disk (it survives `kill -9` and power loss), concurrent
//! writers share one fsync, and the catalog never shows what was not committed.
//! Heartbeats stay in memory: after a restart every stored instance gets one full
//! TTL to heartbeat again. Expiry runs through the same queue, so it is ordered
//! with registrations of the same instance.

use crate::catalog::{Catalog, Liveness, Record};
use crate::store::{Store, StoreError};
use chora_api::manifest::{Instance, Status};
use futures_util::future::BoxFuture;
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::oneshot;

const SCHEMA_VERSION: i64 = 1;
const MAX_BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the registry database {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
}

enum Op {
    Register(
        Record,
        oneshot::Sender<Result<(Instance, bool), StoreError>>,
    ),
    Deregister(String, String, oneshot::Sender<Result<(), StoreError>>),
    Expire(Vec<(String, String)>),
    Ping(oneshot::Sender<Result<(), StoreError>>),
}

pub struct SqliteStore {
    catalog: Arc<Catalog>,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn start_index() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // A small page cache: the catalog holds the working set, not SQLite.
    conn.pragma_update(None, "cache_size", -1024)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {version} is newer than this chora understands ({SCHEMA_VERSION})"
        )));
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS instances (
             name TEXT NOT NULL,
             id   TEXT NOT NULL,
             data TEXT NOT NULL,
             PRIMARY KEY (name, id)
         ) WITHOUT ROWID;",
    )?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path` and loads every stored
    /// instance into a new catalog.
    pub fn open(path: &Path, liveness: Liveness) -> Result<Arc<SqliteStore>, OpenError> {
        let fail = |message: String| OpenError::Open {
            path: path.to_owned(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let conn = open_conn(path).map_err(|e| fail(e.to_string()))?;
        let records = {
            let mut stmt = conn
                .prepare("SELECT data FROM instances ORDER BY name, id")
                .map_err(|e| fail(e.to_string()))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| fail(e.to_string()))?;
            let mut out = Vec::new();
            for row in rows {
                let text = row.map_err(|e| fail(e.to_string()))?;
                match serde_json::from_str::<Record>(&text) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::error!(error = %e, "skipping an unreadable stored instance"),
                }
            }
            out
        };
        let catalog = Arc::new(Catalog::new(liveness, start_index()));
        let loaded = records.len();
        catalog.load(records);
        tracing::info!(instances = loaded, path = %path.display(), "registry database opened");

        let (tx, rx) = mpsc::channel();
        let cat = catalog.clone();
        let writer = std::thread::Builder::new()
            .name("manifest-sqlite".into())
            .spawn(move || writer_loop(conn, rx, &cat))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Arc::new(SqliteStore {
            catalog,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        }))
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(tx) => tx
                .send(op)
                .map_err(|_| StoreError::Unavailable("the database writer has stopped".into())),
            None => Err(StoreError::Unavailable(
                "the registry is shutting down".into(),
            )),
        }
    }

    /// Runs the expiry sweep every `tick` until the store is closed: marks overdue
    /// instances unhealthy and durably removes those past their TTL.
    pub fn spawn_sweeper(self: &Arc<Self>, tick: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let expired = store.catalog.sweep();
                if !expired.is_empty() && store.send(Op::Expire(expired)).is_err() {
                    return;
                }
            }
        })
    }

    /// Finishes queued writes and stops the writer thread.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    rx.await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "the database writer has stopped".into(),
        ))
    })
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn register(&self, record: Record) -> BoxFuture<'_, Result<(Instance, bool), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Register(record, tx));
        Box::pin(async move {
            sent?;
            answer(rx).await
        })
    }

    fn heartbeat<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
        status: Option<Status>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let r = self
            .catalog
            .heartbeat(name, id, status)
            .map_err(|_| StoreError::NotFound {
                name: name.to_owned(),
                id: id.to_owned(),
            });
        Box::pin(std::future::ready(r))
    }

    fn deregister<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Deregister(name.to_owned(), id.to_owned(), tx));
        Box::pin(async move {
            sent?;
            answer(rx).await
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Ping(tx));
        Box::pin(async move {
            sent?;
            answer(rx).await
        })
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, catalog: &Catalog) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch, catalog);
    }
    // A clean close leaves no WAL behind.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// A queued op, settled against the catalog and the rest of its batch.
enum Step {
    Register(
        Record,
        bool,
        oneshot::Sender<Result<(Instance, bool), StoreError>>,
    ),
    Deregister(String, String, oneshot::Sender<Result<(), StoreError>>),
    Expire(Vec<(String, String)>),
    Ping(oneshot::Sender<Result<(), StoreError>>),
}

/// Settles each op: whether a registration is new (looking at the catalog and at
/// earlier ops of the batch), which registration time it keeps, which expired
/// instances were registered again meanwhile.
fn settle(batch: Vec<Op>, catalog: &Catalog) -> Vec<Step> {
    let mut exists: HashMap<(String, String), bool> = HashMap::new();
    let mut steps = Vec::with_capacity(batch.len());
    for op in batch {
        match op {
            Op::Register(mut record, reply) => {
                let key = (record.name.clone(), record.id.clone());
                let was = *exists
                    .entry(key.clone())
                    .or_insert_with(|| catalog.contains(&key.0, &key.1));
                if was && let Some(at) = catalog.registered_at_ms(&key.0, &key.1) {
                    record.registered_at_ms = at;
                }
                exists.insert(key, true);
                steps.push(Step::Register(record, !was, reply));
            }
            Op::Deregister(name, id, reply) => {
                exists.insert((name.clone(), id.clone()), false);
                steps.push(Step::Deregister(name, id, reply));
            }
            Op::Expire(keys) => {
                let keys = keys
                    .into_iter()
                    .filter(|k| exists.get(k) != Some(&true))
                    .collect();
                steps.push(Step::Expire(keys));
            }
            Op::Ping(reply) => steps.push(Step::Ping(reply)),
        }
    }
    steps
}

fn write_steps(conn: &mut Connection, steps: &[Step]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO instances (name, id, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (name, id) DO UPDATE SET data = excluded.data",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM instances WHERE name = ?1 AND id = ?2")?;
        for step in steps {
            match step {
                Step::Register(record, _, _) => {
                    let data = serde_json::to_string(record).expect("records serialize");
                    put.execute(params![record.name, record.id, data])?;
                }
                Step::Deregister(name, id, _) => {
                    del.execute(params![name, id])?;
                }
                Step::Expire(keys) => {
                    for (name, id) in keys {
                        del.execute(params![name, id])?;
                    }
                }
                Step::Ping(_) => {
                    tx.query_row("SELECT count(*) FROM instances", [], |r| r.get::<_, i64>(0))?;
                }
            }
        }
    }
    tx.commit()
}

fn run_batch(conn: &mut Connection, batch: Vec<Op>, catalog: &Catalog) {
    let steps = settle(batch, catalog);
    match write_steps(conn, &steps) {
        Ok(()) => {
            for step in steps {
                match step {
                    Step::Register(record, created, reply) => {
                        let inst = catalog.upsert(record);
                        let _ = reply.send(Ok((inst, created)));
                    }
                    Step::Deregister(name, id, reply) => {
                        catalog.remove(&name, &id);
                        let _ = reply.send(Ok(()));
                    }
                    Step::Expire(keys) => {
                        let n = catalog.remove_expired(&keys);
                        if n > 0 {
                            tracing::info!(instances = n, "expired instances removed");
                        }
                    }
                    Step::Ping(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "registry write failed; nothing in this batch was stored");
            let err = StoreError::Unavailable(format!("the database refused the write: {e}"));
            for step in steps {
                match step {
                    Step::Register(_, _, reply) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Step::Deregister(_, _, reply) | Step::Ping(reply) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Step::Expire(_) => {}
                }
            }
        }
    }
}
