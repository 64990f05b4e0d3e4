//! executor: `POST /execute {task, input}` runs a named built-in task.
//!
//! - `analyze`: `{text}` (or a string) sent to analyzer *through the gateway*,
//!   which it finds in the Manifest: the end-to-end path of the ecosystem.
//! - `sleep`: `{ms}` (or a number), at most 60 000.
//! - `checksum`: SHA-256 of a string (or of the JSON text of any other input).

use crate::Config;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::routing::post;
use chora_api::ManifestClient;
use chora_service::{ApiError, body};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TASKS: &str = "analyze, sleep, checksum";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    task: String,
    #[serde(default)]
    input: Value,
}

struct Executor {
    manifest: ManifestClient,
    http: reqwest::Client,
}

pub fn router(config: &Config) -> Result<Router, crate::CapabilityError> {
    let st = Arc::new(Executor {
        manifest: ManifestClient::new([config.manifest_url.as_str()])?,
        http: crate::http_client(),
    });
    Ok(Router::new().route("/execute", post(handle)).with_state(st))
}

async fn handle(
    State(st): State<Arc<Executor>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let req: Request = body::json(&body::bytes(b)?)?;
    let start = Instant::now();
    let result = match req.task.as_str() {
        "sleep" => sleep(&req.input).await?,
        "checksum" => checksum(&req.input),
        "analyze" => analyze(&st, &req.input).await?,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_task",
                format!("unknown task `{other}` (expected {TASKS})"),
            ));
        }
    };
    Ok(axum::Json(json!({
        "task": req.task,
        "result": result,
        "duration_ms": start.elapsed().as_secs_f64() * 1000.0,
    })))
}

async fn sleep(input: &Value) -> Result<Value, ApiError> {
    let ms = input
        .get("ms")
        .unwrap_or(input)
        .as_u64()
        .filter(|&ms| ms <= 60_000)
        .ok_or_else(|| ApiError::bad_request("`sleep` takes {\"ms\": N} with N ≤ 60000"))?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({ "slept_ms": ms }))
}

fn checksum(input: &Value) -> Value {
    let text = match input {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    json!({
        "algorithm": "sha256",
        "hex": hex::encode(sha2::Sha256::digest(text.as_bytes())),
    })
}

async fn analyze(st: &Executor, input: &Value) -> Result<Value, ApiError> {
    let text = match input {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("`analyze` takes {\"text\": \"…\"}"))?
            .to_owned(),
        _ => return Err(ApiError::bad_request("`analyze` takes {\"text\": \"…\"}")),
    };
    let unavailable = |m: String| ApiError::unavailable("dependency_unavailable", m);
    let gateway = st
        .manifest
        .get("gateway")
        .await
        .map_err(|e| unavailable(format!("cannot find the gateway in the Manifest: {e}")))?;
    let base = gateway
        .instances
        .iter()
        .filter(|i| i.status == chora_api::manifest::Status::Up)
        .find_map(|i| i.rest_url())
        .ok_or_else(|| unavailable("no gateway instance is up".into()))?
        .to_owned();
    let resp = st
        .http
        .post(format!("{base}/api/v1/analyzer/analyze"))
        .json(&json!({ "text": text }))
        .send()
        .await
        .map_err(|e| unavailable(format!("the gateway did not answer: {e}")))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| unavailable(format!("the gateway sent no JSON: {e}")))?;
    if !status.is_success() {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "dependency_failed",
            format!("analyzer answered {status} through the gateway: {body}"),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_sha256_of_the_text() {
        assert_eq!(
            checksum(&json!("abc"))["hex"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
