//! The orchestrator: deploys services and keeps them running (DESIGN.md §5).
//!
//! [`run`] serves the API on a listener the caller bound until `shutdown`
//! resolves, then stops every child (SIGTERM, then SIGKILL after the grace period),
//! deregisters itself and returns. A fleet's capabilities are Swarm services,
//! not children: they run on, and the next orchestrator adopts them. Units
//! are started through the [`chora_runtime::Runtime`] seam; [`supervisor`]
//! restarts them on failure.

mod actor;
mod ctx;
pub mod http;
mod replace;
pub mod supervisor;
pub mod ui;

use chora_api::auth::Credentials;
use chora_service::register::{SelfRegistration, keep_registered};
use prometheus_client::encoding::EncodeLabelSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

pub use chora_runtime::RuntimeKind;

/// Everything `chora orchestrator serve` needs besides its listener.
#[derive(Debug)]
pub struct Config {
    /// Manifest URL(s), comma-separated; passed on to children as `MANIFEST_URL`.
    pub manifest_url: String,
    /// `None` turns auth off (local play and tests only).
    pub credentials: Option<Credentials>,
    /// Where built-in capabilities run; with `Docker`, images can be deployed.
    pub runtime: RuntimeKind,
    /// The absolute chora home (the `io.chora.home` label of its containers).
    pub home: String,
    /// The project: container names `<project>-<name>`, network `<project>`.
    pub project: String,
    /// The image built-in capabilities run from in containers.
    pub chora_image: String,
    /// Where children's `<name>.log` files go.
    pub logs_dir: PathBuf,
    pub policy: supervisor::RestartPolicy,
    /// This binary (for the default capability command).
    pub self_exe: PathBuf,
    /// A Prometheus scraping the services: the dashboard's charts read it
    /// (else the orchestrator samples the services' `/metrics` itself).
    pub prometheus_url: Option<String>,
    /// Containers run as Swarm services of this engine's swarm (a fleet,
    /// DESIGN.md §13) on the overlay `<project>`, made with this MTU when
    /// missing; `None`: containers of this engine.
    pub swarm_mtu: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("{0}")]
    Docker(#[from] chora_runtime::RuntimeError),
    #[error("invalid Manifest URL: {0}")]
    Manifest(#[from] chora_api::ClientError),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OrchestratorError> {
    let mut process = chora_runtime::process::ProcessRuntime::new(
        config.logs_dir.clone(),
        None,
        chora_runtime::process::Lifetime::WithParent,
    );
    process.exe = config.self_exe.clone();
    let process = Arc::new(process);
    // The container runtime: this engine's containers, or (a fleet) its
    // swarm's services. Either is a `dyn Runtime`; nothing after asks which.
    let docker: Option<Arc<dyn chora_runtime::Runtime>> = match (config.runtime, config.swarm_mtu) {
        (RuntimeKind::Process, _) => None,
        (RuntimeKind::Docker, Some(mtu)) => {
            let mut s = chora_runtime::swarm::SwarmRuntime::new(
                chora_runtime::docker::connect().await?,
                config.home.clone(),
                config.project.clone(),
                mtu,
            );
            s.chora_image = config.chora_image.clone();
            Some(Arc::new(s))
        }
        (RuntimeKind::Docker, None) => {
            let mut d = chora_runtime::docker::DockerRuntime::new(
                chora_runtime::docker::connect().await?,
                config.home.clone(),
                config.project.clone(),
                config.logs_dir.clone(),
            );
            d.follow_logs = true;
            d.chora_image = config.chora_image.clone();
            Some(Arc::new(d))
        }
    };
    let addr = listener.local_addr()?;
    let metrics = chora_service::HttpMetrics::new("orchestrator");
    let restarts_total = prometheus_client::metrics::family::Family::default();
    metrics.register(
        "orchestrator_restarts",
        "Restarts of deployed services after a failure",
        restarts_total.clone(),
    );
    let token = config.credentials.as_ref().and_then(|c| {
        c.api_key("orchestrator").map(str::to_owned).or_else(|| {
            c.jwt_secret().map(|s| {
                chora_api::auth::mint_admin_token(
                    s,
                    "orchestrator",
                    std::time::Duration::from_secs(30 * 86400),
                )
            })
        })
    });
    let ctx = Arc::new(supervisor::Ctx {
        runtimes: supervisor::Runtimes {
            process,
            docker,
            default: config.runtime,
        },
        http: chora_api::tls::builder()
            .connect_timeout(std::time::Duration::from_millis(500))
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .expect("a plain HTTP client builds"),
        policy: config.policy,
        manifest_url: config.manifest_url.clone(),
        credentials: config.credentials.clone(),
        restarts_total,
        events: tokio::sync::broadcast::channel(1024).0,
    });
    let ctx_for_adoption = ctx.clone();
    let state = Arc::new(http::AppState::new(
        ctx,
        config.credentials.as_ref(),
        metrics,
    ));
    state
        .adopt(supervisor::adopt_all(&ctx_for_adoption).await)
        .await;
    let dashboard = ui::Ui::start(
        state.clone(),
        ui::UiConfig {
            manifest_url: config.manifest_url.clone(),
            home: Some(PathBuf::from(&config.home)),
            logs_dir: config.logs_dir.clone(),
            jwt_secret: config
                .credentials
                .as_ref()
                .and_then(|c| c.jwt_secret().map(str::to_owned)),
            prometheus_url: config.prometheus_url.clone(),
        },
    );
    let app = http::router(state.clone()).merge(ui::router(dashboard.clone()));
    // Open pages' event streams end first, or the graceful shutdown would wait on them.
    let shutdown = async move {
        shutdown.await;
        dashboard.close();
    };
    let keeper = keep_registered(SelfRegistration {
        manifest_url: config.manifest_url.clone(),
        token,
        name: "orchestrator".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        addr,
        description: Some("Deploys and supervises chora services".into()),
        tags: vec!["infrastructure".into()],
        dependencies: vec!["manifest".into()],
        instance_id: std::env::var("CHORA_INSTANCE_ID").ok(),
    })?;
    let served = axum::serve(chora_service::nodelay(listener), app)
        .with_graceful_shutdown(shutdown)
        .await;
    // Children first, then ourselves (a fleet's services run on: Swarm's).
    state.leave_all().await;
    if let Err(e) = keeper.shutdown().await {
        tracing::warn!(error = %e, "could not deregister from the Manifest");
    }
    served.map_err(OrchestratorError::Io)
}
