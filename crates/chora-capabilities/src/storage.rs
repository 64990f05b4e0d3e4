//! storage: `PUT/GET/DELETE /objects/{key}` on SQLite in the data directory.
//! A PUT is committed (WAL, `synchronous=FULL`) before it is answered, so no
//! acknowledged object is lost across a restart or a crash.

use crate::CapabilityError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chora_service::{ApiError, body};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::{Arc, Mutex};

/// The largest object accepted (8 MiB).
pub const MAX_OBJECT: usize = 8 * 1024 * 1024;

type Db = Arc<Mutex<Connection>>;

pub fn router(data_dir: &std::path::Path) -> Result<Router, CapabilityError> {
    let path = data_dir.join("storage.db");
    let fail = |e: &dyn std::fmt::Display| CapabilityError::Data {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(|e| fail(&e))?;
    let conn = Connection::open(&path).map_err(|e| fail(&e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| fail(&e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| fail(&e))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS objects (
             key TEXT PRIMARY KEY,
             content_type TEXT NOT NULL,
             data BLOB NOT NULL,
             updated_at TEXT NOT NULL
         )",
    )
    .map_err(|e| fail(&e))?;
    let db: Db = Arc::new(Mutex::new(conn));
    Ok(Router::new()
        .route("/objects", get(list))
        .route("/objects/{*key}", get(fetch).put(store).delete(remove))
        .with_state(db))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 512 || key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "object keys are 1-512 characters without control characters",
        ));
    }
    Ok(())
}

async fn with_db<T: Send + 'static>(
    db: Db,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let conn = db.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::unavailable("storage_unavailable", e.to_string()))
}

async fn store(
    State(db): State<Db>,
    Path(key): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let data = body::bytes(b)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let size = data.len();
    let k = key.clone();
    let created = with_db(db, move |c| {
        let existed: bool = c
            .query_row("SELECT 1 FROM objects WHERE key = ?1", [&k], |_| Ok(()))
            .optional()?
            .is_some();
        c.execute(
            "INSERT INTO objects (key, content_type, data, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET content_type = excluded.content_type,
                 data = excluded.data, updated_at = excluded.updated_at",
            params![
                k,
                ct,
                data.as_ref(),
                chora_api::rfc3339(std::time::SystemTime::now())
            ],
        )?;
        Ok(!existed)
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(serde_json::json!({ "key": key, "size": size })),
    )
        .into_response())
}

async fn fetch(State(db): State<Db>, Path(key): Path<String>) -> Result<Response, ApiError> {
    check_key(&key)?;
    let k = key.clone();
    let row = with_db(db, move |c| {
        c.query_row(
            "SELECT content_type, data FROM objects WHERE key = ?1",
            [&k],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()
    })
    .await?;
    let (ct, data) = row.ok_or_else(|| ApiError::not_found(format!("no object `{key}`")))?;
    let ct = HeaderValue::from_str(&ct)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok(([(header::CONTENT_TYPE, ct)], data).into_response())
}

async fn remove(State(db): State<Db>, Path(key): Path<String>) -> Result<StatusCode, ApiError> {
    check_key(&key)?;
    with_db(db, move |c| {
        c.execute("DELETE FROM objects WHERE key = ?1", [&key])
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(db): State<Db>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let keys = with_db(db, |c| {
        let mut stmt = c.prepare("SELECT key FROM objects ORDER BY key")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })
    .await?;
    Ok(axum::Json(serde_json::json!({ "keys": keys })))
}
