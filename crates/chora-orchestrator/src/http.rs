//! The orchestrator's HTTP API. Every `/v1` route needs an admin JWT.

use crate::supervisor::{self, Ctx, Deployment, Deployments};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chora_api::auth::{Credentials, Principal, Verifier};
use chora_api::manifest::is_valid_name;
use chora_api::orchestrator::{
    DeploySpec, Deployed, ServiceStatus, State as RunState, StateChange,
};
use chora_service::{ApiError, HttpMetrics, body};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How many Idempotency-Keys are remembered.
const IDEMPOTENCY_KEYS: usize = 10_000;

#[derive(Default)]
struct Idempotency {
    answers: HashMap<String, (DeploySpec, Deployed)>,
    order: VecDeque<String>,
}

pub struct AppState {
    /// The highest fencing token a request carried (`X-Chora-Fencing-Token`):
    /// a bootstrap holding an older etcd lock may not act any more.
    fencing: std::sync::atomic::AtomicU64,
    ctx: Arc<Ctx>,
    deployments: Deployments,
    idempotency: Mutex<Idempotency>,
    /// One lock per service name, held by its deploy.
    name_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    verifier: Option<Verifier>,
    metrics: Arc<HttpMetrics>,
}

impl AppState {
    pub fn new(
        ctx: Arc<Ctx>,
        credentials: Option<&Credentials>,
        metrics: Arc<HttpMetrics>,
    ) -> Self {
        AppState {
            fencing: Default::default(),
            ctx,
            deployments: Default::default(),
            idempotency: Default::default(),
            name_locks: Default::default(),
            verifier: credentials.map(Verifier::new),
            metrics,
        }
    }

    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.name_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Takes over deployments an earlier incarnation left running.
    pub async fn adopt(&self, found: Vec<Deployment>) {
        let mut all = self.deployments.lock().await;
        for d in found {
            all.insert(d.spec.name.clone(), Arc::new(d));
        }
    }

    /// The deployments by name (the dashboard reads and acts on them).
    pub fn deployments(&self) -> &Deployments {
        &self.deployments
    }

    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Ends every deployment, all at once, as the orchestrator goes: its
    /// children stop; units their engine keeps (a fleet's Swarm services)
    /// run on for the next orchestrator to adopt.
    pub async fn leave_all(&self) {
        let all: Vec<Arc<Deployment>> = std::mem::take(&mut *self.deployments.lock().await)
            .into_values()
            .collect();
        let tasks: Vec<_> = all
            .into_iter()
            .map(|d| tokio::spawn(async move { d.leave().await }))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let v1 = Router::new()
        .route("/v1/deploy", post(deploy))
        .route("/v1/services", get(list))
        .route("/v1/services/{name}", delete(remove))
        .route("/v1/services/{name}/{action}", post(act))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ));
    let m = state.metrics.clone();
    chora_service::json_fallbacks(
        v1.route(
            "/health",
            get(|| async {
                axum::Json(serde_json::json!({
                    "status": "healthy",
                    "service": "orchestrator",
                    "version": env!("CARGO_PKG_VERSION"),
                }))
            }),
        )
        .route("/metrics", get(move || std::future::ready(m.response()))),
    )
    .layer(axum::middleware::from_fn_with_state(
        state.metrics.clone(),
        chora_service::metrics::track,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY))
    .with_state(state)
}

async fn require_admin(
    State(st): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(v) = &st.verifier {
        let h = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|h| h.to_str().unwrap_or(""));
        match v.verify_header(h) {
            Ok(Principal::Admin { .. }) => {}
            Ok(Principal::Service(s)) => {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("the API key of `{s}` may not use the orchestrator; an admin token is required"),
                )
                .into_response();
            }
            Err(e) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
                    .into_response();
            }
        }
    }
    next.run(req).await
}

fn validate(ctx: &Ctx, spec: &DeploySpec) -> Result<(), ApiError> {
    if !is_valid_name(&spec.name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("`{}` is not a valid service name", spec.name),
        ));
    }
    if spec.port == 0 {
        return Err(ApiError::bad_request("`port` must be between 1 and 65535"));
    }
    if let Some(c) = &spec.command
        && c.first().is_none_or(|p| p.is_empty())
    {
        return Err(ApiError::bad_request("`command` must name a program"));
    }
    for v in &spec.volumes {
        chora_runtime::Volume::parse(v)
            .map_err(|e| ApiError::bad_request(format!("`volumes`: {e}")))?;
    }
    if let Some(h) = &spec.health_endpoint
        && !chora_runtime::check::is_checkable(h)
    {
        return Err(ApiError::bad_request(format!(
            "`health_endpoint` `{h}` must be http(s)://… or tcp://HOST:PORT"
        )));
    }
    if spec.image.is_none()
        && spec.command.is_none()
        && !chora_api::CAPABILITIES.contains(&spec.name.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "`{}` is not a built-in capability; give a `command` or an `image` to run",
            spec.name
        )));
    }
    ctx.runtimes
        .for_spec(spec)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn deploy(
    State(st): State<Shared>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: DeploySpec = body::json(&body::bytes(b)?)?;
    validate(&st.ctx, &spec)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))
        })
        .transpose()?;
    // One deploy of a name at a time (a retried request cannot race its
    // original); other names, and reads of the list, go on meanwhile.
    let name_lock = st.name_lock(&spec.name);
    let _one = name_lock.lock().await;
    check_fencing(&st, &headers)?;
    if let Some(k) = &key {
        let idem = st.idempotency.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((first_spec, answer)) = idem.answers.get(k) {
            if *first_spec != spec {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different deploy request",
                ));
            }
            return Ok((StatusCode::CREATED, axum::Json(answer.clone())).into_response());
        }
    }
    let existing = st.deployments.lock().await.get(&spec.name).cloned();
    let running = |d: &Deployment| d.snapshot().state == RunState::Running;
    let answer = match existing {
        Some(d) if d.digest == supervisor::digest(&spec) && running(&d) => Deployed {
            name: spec.name.clone(),
            status: RunState::Running,
            url: spec.url(),
            replaced: None,
        },
        // Another spec of a running service: replaced health-gated.
        Some(old) if running(&old) => {
            match crate::replace::replace(&st.ctx, old, spec.clone()).await {
                Ok((d, how)) => {
                    let status = d.snapshot().state;
                    st.deployments
                        .lock()
                        .await
                        .insert(spec.name.clone(), Arc::new(d));
                    Deployed {
                        name: spec.name.clone(),
                        status,
                        url: spec.url(),
                        replaced: Some(how.describe()),
                    }
                }
                Err(failed) => {
                    if let Some(d) = failed.running {
                        st.deployments
                            .lock()
                            .await
                            .insert(spec.name.clone(), Arc::new(d));
                    }
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "replacement_failed",
                        failed.message,
                    ));
                }
            }
        }
        other => {
            if let Some(old) = other {
                tracing::info!(service = %spec.name, "replacing a deployment that does not run");
                old.remove().await;
                st.deployments.lock().await.remove(&spec.name);
            }
            let d = supervisor::deploy(&st.ctx, spec.clone())
                .await
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "spawn_failed", e.to_string())
                })?;
            let status = d.snapshot().state;
            st.deployments
                .lock()
                .await
                .insert(spec.name.clone(), Arc::new(d));
            Deployed {
                name: spec.name.clone(),
                status,
                url: spec.url(),
                replaced: None,
            }
        }
    };
    if let Some(k) = key {
        let mut idem = st.idempotency.lock().unwrap_or_else(|e| e.into_inner());
        if idem.order.len() >= IDEMPOTENCY_KEYS
            && let Some(old) = idem.order.pop_front()
        {
            idem.answers.remove(&old);
        }
        idem.order.push_back(k.clone());
        idem.answers.insert(k, (spec, answer.clone()));
    }
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

/// A bootstrap's fencing token (`X-Chora-Fencing-Token`, DESIGN.md §15):
/// one lower than the highest any request carried is refused with 409
/// `stale_fencing_token`; a token raises the bar for every action alike
/// (deploy, stop, start, restart, remove). A request without one (an
/// operator's) is not fenced.
fn check_fencing(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get(chora_api::orchestrator_client::FENCING_HEADER) else {
        return Ok(());
    };
    let token: u64 = v
        .to_str()
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ApiError::bad_request("X-Chora-Fencing-Token must be a number"))?;
    let seen = st
        .fencing
        .fetch_max(token, std::sync::atomic::Ordering::SeqCst);
    if token < seen {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_fencing_token",
            format!(
                "fencing token {token} is older than {seen}: another bootstrap holds the lock now"
            ),
        ));
    }
    Ok(())
}

async fn find(st: &AppState, name: &str) -> Result<Arc<Deployment>, ApiError> {
    st.deployments
        .lock()
        .await
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no service `{name}` is deployed")))
}

async fn act(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Result<axum::Json<StateChange>, ApiError> {
    let d = find(&st, &name).await?;
    check_fencing(&st, &headers)?;
    let state = match action.as_str() {
        "stop" => d.stop().await,
        "start" => d.start().await,
        "restart" => d.restart().await,
        _ => {
            return Err(ApiError::not_found(format!(
                "unknown action `{action}` (expected stop, start or restart)"
            )));
        }
    };
    Ok(axum::Json(StateChange { name, state }))
}

async fn remove(
    State(st): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_fencing(&st, &headers)?;
    let d = st.deployments.lock().await.remove(&name);
    if let Some(d) = d {
        d.remove().await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(st): State<Shared>) -> axum::Json<Vec<ServiceStatus>> {
    let all: Vec<Arc<Deployment>> = st.deployments.lock().await.values().cloned().collect();
    axum::Json(all.iter().map(|d| d.snapshot()).collect())
}
