//! logger: `POST /logs` appends JSON lines, `GET /logs?since=` reads them back.
//!
//! Each entry is a JSON object; the logger adds `seq` (1, 2, …) and `ts` (RFC 3339)
//! and appends it as one line to `logs.jsonl` in the data directory. `since` is a
//! sequence number (entries after it) or an RFC 3339 time (entries at or after it).

use crate::CapabilityError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use chora_service::{ApiError, body};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

struct Log {
    path: PathBuf,
    /// The file and the last sequence number written, under one lock.
    file: Mutex<(std::fs::File, u64)>,
}

pub fn router(data_dir: &std::path::Path) -> Result<Router, CapabilityError> {
    let path = data_dir.join("logs.jsonl");
    let fail = |e: std::io::Error| CapabilityError::Data {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let last = read_entries(&path)
        .map_err(fail)?
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(fail)?;
    let st = Arc::new(Log {
        path: path.clone(),
        file: Mutex::new((file, last)),
    });
    Ok(Router::new()
        .route("/logs", get(read).post(append))
        .with_state(st))
}

fn read_entries(path: &std::path::Path) -> std::io::Result<Vec<Value>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        // A torn last line (a crash mid-write) is skipped, not fatal.
        if let Ok(v) = serde_json::from_str::<Value>(&line?) {
            out.push(v);
        }
    }
    Ok(out)
}

async fn append(
    State(st): State<Arc<Log>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let v: Value = body::json(&body::bytes(b)?)?;
    let entries: Vec<Map<String, Value>> = match v {
        Value::Object(o) => vec![o],
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::Object(o) => Ok(o),
                _ => Err(ApiError::bad_request(
                    "every log entry must be a JSON object",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad_request(
                "expected a JSON object or an array of objects",
            ));
        }
    };
    let st2 = st.clone();
    let (first, last) = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, u64)> {
        let mut guard = st2.file.lock().unwrap_or_else(|e| e.into_inner());
        let (file, seq) = &mut *guard;
        let first = *seq + 1;
        let mut buf = Vec::new();
        let mut n = *seq;
        for mut e in entries {
            n += 1;
            e.insert("seq".into(), json!(n));
            e.insert(
                "ts".into(),
                json!(chora_api::rfc3339(std::time::SystemTime::now())),
            );
            serde_json::to_writer(&mut buf, &Value::Object(e)).expect("JSON serializes");
            buf.push(b'\n');
        }
        file.write_all(&buf)?;
        file.sync_data()?;
        *seq = n;
        Ok((first, n))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::unavailable("log_unavailable", e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "first_seq": first, "last_seq": last })),
    ))
}

async fn read(
    State(st): State<Arc<Log>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    for k in q.keys() {
        if k != "since" && k != "limit" {
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{k}` (expected since, limit)"
            )));
        }
    }
    let limit: usize = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request("`limit` must be a positive integer"))?,
        None => 1000,
    };
    enum Since {
        Seq(u64),
        Time(std::time::SystemTime),
    }
    let since = match q.get("since") {
        None => Since::Seq(0),
        Some(s) => match s.parse::<u64>() {
            Ok(n) => Since::Seq(n),
            Err(_) => Since::Time(chora_api::parse_rfc3339(s).ok_or_else(|| {
                ApiError::bad_request("`since` is a sequence number or an RFC 3339 time")
            })?),
        },
    };
    let path = st.path.clone();
    let all = tokio::task::spawn_blocking(move || read_entries(&path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::unavailable("log_unavailable", e.to_string()))?;
    let entries: Vec<Value> = all
        .into_iter()
        .filter(|e| match &since {
            Since::Seq(n) => e["seq"].as_u64().is_some_and(|s| s > *n),
            Since::Time(t) => e["ts"]
                .as_str()
                .and_then(chora_api::parse_rfc3339)
                .is_some_and(|ts| ts >= *t),
        })
        .take(limit)
        .collect();
    let next = entries.last().and_then(|e| e["seq"].as_u64());
    Ok(axum::Json(json!({ "entries": entries, "next": next })))
}
