//! The capability services of the default ecosystem (DESIGN.md §5, "Capability
//! services"). Each is small but real work, registers itself in the Manifest with
//! its own API key, heartbeats, serves `/health` and `/metrics`, and deregisters
//! when it shuts down.
//!
//! [`run`] serves one of them on a listener the caller bound.

mod analyzer;
mod executor;
mod logger;
mod monitor;
mod storage;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use chora_service::HttpMetrics;
use chora_service::register::{SelfRegistration, keep_registered};
use std::future::Future;
use std::path::PathBuf;

pub use analyzer::{Analysis, WordCount, analyze};

/// Which capability to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Analyzer,
    Executor,
    Storage,
    Monitor,
    Logger,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Analyzer,
        Capability::Executor,
        Capability::Storage,
        Capability::Monitor,
        Capability::Logger,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Analyzer => "analyzer",
            Capability::Executor => "executor",
            Capability::Storage => "storage",
            Capability::Monitor => "monitor",
            Capability::Logger => "logger",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Capability::Analyzer => "Text analysis: word, character and line counts, top words",
            Capability::Executor => "Runs named built-in tasks",
            Capability::Storage => "Object storage on SQLite",
            Capability::Monitor => "Health of every registered service",
            Capability::Logger => "Append-only JSON log",
        }
    }
}

impl std::str::FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown capability `{s}` (expected analyzer, executor, storage, monitor or logger)")
            })
    }
}

/// Everything a capability needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    pub capability: Capability,
    /// Manifest URL(s), comma-separated.
    pub manifest_url: String,
    /// The service's API key (from `CHORA_API_KEY`); `None` when auth is off.
    pub api_key: Option<String>,
    /// Fixed instance id (from `CHORA_INSTANCE_ID`, set by the orchestrator).
    pub instance_id: Option<String>,
    /// Where storage and logger keep their files.
    pub data_dir: PathBuf,
    /// The version it registers under (`CHORA_SERVICE_VERSION`, set by the
    /// orchestrator from the deploy request).
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("cannot open {path}: {message}")]
    Data { path: String, message: String },
    #[error("invalid Manifest URL: {0}")]
    Manifest(#[from] chora_api::ClientError),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves `config.capability` on `listener` until `shutdown` resolves; then
/// it leaves discovery, drains, and stops (see `leave_then_stop`).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CapabilityError> {
    let cap = config.capability;
    let addr = listener.local_addr()?;
    let metrics = HttpMetrics::new(cap.name());
    let routes = match cap {
        Capability::Analyzer => analyzer::router(),
        Capability::Executor => executor::router(&config)?,
        Capability::Storage => storage::router(&config.data_dir)?,
        Capability::Monitor => monitor::router(&config)?,
        Capability::Logger => logger::router(&config.data_dir)?,
    };
    let health = serde_json::json!({
        "status": "healthy",
        "service": cap.name(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let m = metrics.clone();
    let app = chora_service::json_fallbacks(
        routes
            .route(
                "/health",
                get(move || std::future::ready(axum::Json(health.clone()))),
            )
            .route("/metrics", get(move || std::future::ready(m.response()))),
    )
    .layer(axum::middleware::from_fn_with_state(
        metrics,
        chora_service::metrics::track,
    ))
    .layer(DefaultBodyLimit::max(body_limit(cap)));

    let keeper = keep_registered(SelfRegistration {
        manifest_url: config.manifest_url.clone(),
        token: config.api_key.clone(),
        name: cap.name().to_owned(),
        version: config.version.clone(),
        addr,
        description: Some(cap.description().to_owned()),
        tags: vec!["capability".to_owned()],
        dependencies: match cap {
            Capability::Executor => vec!["gateway".to_owned(), "analyzer".to_owned()],
            _ => Vec::new(),
        },
        instance_id: config.instance_id.clone(),
    })?;
    axum::serve(chora_service::nodelay(listener), app)
        .with_graceful_shutdown(chora_service::register::leave_then_stop(shutdown, keeper))
        .await
        .map_err(CapabilityError::Io)
}

fn body_limit(cap: Capability) -> usize {
    match cap {
        Capability::Storage => storage::MAX_OBJECT,
        _ => 1024 * 1024,
    }
}

/// Shared by services that call others over HTTP.
fn http_client() -> reqwest::Client {
    chora_api::tls::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("a plain HTTP client builds")
}
