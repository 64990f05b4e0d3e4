//! monitor: `GET /status`, the health of every registered service: what the
//! Manifest says and what each instance's `/health` answers right now.

use crate::Config;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chora_api::ManifestClient;
use chora_api::manifest::ListFilter;
use chora_service::ApiError;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Monitor {
    manifest: ManifestClient,
    http: reqwest::Client,
}

pub fn router(config: &Config) -> Result<Router, crate::CapabilityError> {
    let st = Arc::new(Monitor {
        manifest: ManifestClient::new([config.manifest_url.as_str()])?,
        http: chora_api::tls::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1))
            .build()
            .expect("a plain HTTP client builds"),
    });
    Ok(Router::new().route("/status", get(status)).with_state(st))
}

async fn status(State(st): State<Arc<Monitor>>) -> Result<axum::Json<Value>, ApiError> {
    let instances = st
        .manifest
        .list(&ListFilter::default())
        .await
        .map_err(|e| ApiError::unavailable("dependency_unavailable", e.to_string()))?;
    let probes = instances.into_iter().map(|i| {
        let http = st.http.clone();
        async move {
            let url = i.rest_url().map(str::to_owned);
            let t = Instant::now();
            let health = match &url {
                None => "unknown",
                Some(u) => match http.get(format!("{u}/health")).send().await {
                    Ok(r) if r.status().is_success() => "healthy",
                    Ok(_) => "unhealthy",
                    Err(_) => "unreachable",
                },
            };
            json!({
                "name": i.name,
                "id": i.id,
                "url": url,
                "registry_status": i.status,
                "health": health,
                "latency_ms": t.elapsed().as_secs_f64() * 1000.0,
            })
        }
    });
    let services: Vec<Value> = join_all(probes).await;
    let healthy = services
        .iter()
        .filter(|s| s["health"] == "healthy" && s["registry_status"] == "up")
        .count();
    let unhealthy = services.len() - healthy;
    Ok(axum::Json(json!({
        "status": if unhealthy == 0 { "healthy" } else { "degraded" },
        "healthy": healthy,
        "unhealthy": unhealthy,
        "services": services,
    })))
}

/// Runs the futures concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future<Output = Value> + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<Value> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or(Value::Null));
    }
    out
}
