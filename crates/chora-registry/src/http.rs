//! The HTTP API of DESIGN.md §5 ("Manifest"), and §16's discovery document for
//! Prometheus (`GET /v1/prometheus/targets`, [`crate::prometheus`]).

use crate::catalog::{Read, Record};
use crate::store::Store;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use chora_api::auth::{AuthError, Principal, Verifier};
use chora_api::manifest::{
    Health, Heartbeat, INDEX_HEADER, ListFilter, Registered, Registration, STALE_HEADER, Status,
    is_valid_id, is_valid_name,
};
use chora_service::body::{MAX_BODY, is_blank};
use chora_service::{ApiError, HttpMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Longest blocking read.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Who may write.
pub enum Auth {
    /// `--no-auth`: anyone.
    Disabled,
    Enabled(Box<Verifier>),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// The HTTP metrics plus `manifest_services_registered{status}`.
pub struct RegistryMetrics {
    http: Arc<HttpMetrics>,
    registered: Family<StatusLabels, Gauge>,
}

impl RegistryMetrics {
    pub fn new() -> RegistryMetrics {
        let http = HttpMetrics::new("manifest");
        let registered = Family::<StatusLabels, Gauge>::default();
        http.register(
            "manifest_services_registered",
            "Registered instances by status",
            registered.clone(),
        );
        RegistryMetrics { http, registered }
    }

    fn response(&self, (up, unhealthy): (usize, usize)) -> Response {
        self.registered
            .get_or_create(&StatusLabels { status: "up" })
            .set(up as i64);
        self.registered
            .get_or_create(&StatusLabels {
                status: "unhealthy",
            })
            .set(unhealthy as i64);
        self.http.response()
    }
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: Auth,
    pub metrics: RegistryMetrics,
    /// Turns true when the server shuts down; blocking reads then answer at once.
    pub closing: watch::Receiver<bool>,
}

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/v1/services", get(list).post(register))
        .route("/v1/services/{name}", get(get_service))
        .route("/v1/services/{name}/{id}", delete(deregister))
        .route("/v1/services/{name}/{id}/heartbeat", put(heartbeat))
        .route("/v1/prometheus/targets", get(prometheus_targets))
        .route("/v1/health", get(health))
        .route("/health", get(health))
        .route("/v1/metrics", get(metrics))
        .route("/metrics", get(metrics));
    chora_service::json_fallbacks(routes)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.http.clone(),
            chora_service::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!(
                "`{name}` is not a valid service name (lower-case letters, digits, `.`, `_`, `-`; 1-63 characters, starting with a letter or digit)"
            ),
        ))
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!(
                "`{id}` is not a valid instance id (letters, digits, `.`, `_`, `-`; 1-128 characters)"
            ),
        ))
    }
}

/// The caller, when auth is on: 401 without a valid token.
fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let Auth::Enabled(v) = &st.auth else {
        return Ok(None);
    };
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|h| h.to_str().unwrap_or(""));
    v.verify_header(header).map(Some).map_err(|e| {
        let code = match e {
            AuthError::Expired => "token_expired",
            _ => "unauthorized",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    })
}

/// 403 when the caller's key belongs to another service.
fn authorize(who: &Option<Principal>, name: &str) -> Result<(), ApiError> {
    match who {
        Some(p) if !p.may_act_on(name) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key may not act on service `{name}`"),
        )),
        _ => Ok(()),
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    chora_service::body::bytes(body)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    chora_service::body::json(bytes)
}

fn with_index(index: u64, resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    resp.headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    resp
}

/// Adds `X-Chora-Stale: since <RFC 3339>: <reason>` to a read while the
/// backend has lost touch with its storage (see [`Store::stale`]).
fn with_staleness(st: &AppState, mut resp: Response) -> Response {
    if let Some(stale) = st.store.stale() {
        let text = format!(
            "since {}: {}",
            chora_api::rfc3339(stale.since),
            stale.reason
        );
        // A header value is visible ASCII; anything else becomes `?`.
        let text: String = text
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().insert(STALE_HEADER, v);
        }
    }
    resp
}

fn json_bytes(status: StatusCode, read: Read) -> Response {
    with_index(
        read.index,
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            read.body,
        ),
    )
}

/// `?index=N&wait=D` and the other query parameters of a read.
struct ReadParams {
    block: Option<(u64, Duration)>,
    filter: ListFilter,
}

fn parse_params(q: &[(String, String)], allowed_filters: bool) -> Result<ReadParams, ApiError> {
    let mut index = None;
    let mut wait = None;
    let mut filter = ListFilter::default();
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", m);
    for (k, v) in q {
        match k.as_str() {
            "index" => {
                index = Some(v.parse::<u64>().map_err(|_| {
                    bad(format!("`index` must be a non-negative integer, not `{v}`"))
                })?)
            }
            "wait" => {
                wait = Some(chora_api::duration::parse(v).map_err(|e| bad(format!("`wait`: {e}")))?)
            }
            "status" if allowed_filters => {
                filter.status = Some(
                    v.parse::<Status>()
                        .map_err(|e| bad(format!("`status`: {e}")))?,
                )
            }
            "tag" if allowed_filters => filter.tag = Some(v.clone()),
            "name" if allowed_filters => {
                check_name(v).map_err(|e| bad(format!("`name`: {}", e.message)))?;
                filter.name = Some(v.clone());
            }
            _ => {
                let known = if allowed_filters {
                    "status, tag, name, index, wait"
                } else {
                    "index, wait"
                };
                return Err(bad(format!("unknown parameter `{k}` (expected {known})")));
            }
        }
    }
    if wait.is_some() && index.is_none() {
        return Err(bad("`wait` needs `index`".into()));
    }
    Ok(ReadParams {
        block: index.map(|i| (i, wait.unwrap_or(MAX_WAIT).min(MAX_WAIT))),
        filter,
    })
}

type QueryPairs = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

fn query_pairs(q: QueryPairs) -> Result<Vec<(String, String)>, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", e.body_text()))
}

async fn block(st: &AppState, block: Option<(u64, Duration)>) {
    if let Some((index, wait)) = block {
        let mut closing = st.closing.clone();
        tokio::select! {
            _ = st.store.catalog().wait_past(index, wait) => {}
            _ = closing.wait_for(|&c| c) => {}
        }
    }
}

async fn list(State(st): State<Shared>, q: QueryPairs) -> Result<Response, ApiError> {
    let p = parse_params(&query_pairs(q)?, true)?;
    block(&st, p.block).await;
    let read = st.store.catalog().list(&p.filter);
    Ok(with_staleness(&st, json_bytes(StatusCode::OK, read)))
}

async fn get_service(
    State(st): State<Shared>,
    Path(name): Path<String>,
    q: QueryPairs,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let p = parse_params(&query_pairs(q)?, false)?;
    block(&st, p.block).await;
    let resp = match st.store.catalog().service(&name) {
        Ok(read) => json_bytes(StatusCode::OK, read),
        Err(index) => with_index(
            index,
            ApiError::not_found(format!("no service named `{name}` is registered")),
        ),
    };
    Ok(with_staleness(&st, resp))
}

/// `GET /v1/prometheus/targets`: the `up` instances as Prometheus' HTTP service
/// discovery document ([`crate::prometheus`]); a blocking read like the others.
async fn prometheus_targets(State(st): State<Shared>, q: QueryPairs) -> Result<Response, ApiError> {
    let p = parse_params(&query_pairs(q)?, false)?;
    block(&st, p.block).await;
    let read = st.store.catalog().list(&ListFilter {
        status: Some(Status::Up),
        ..Default::default()
    });
    let instances: Vec<chora_api::manifest::Instance> = serde_json::from_slice(&read.body)
        .map_err(|e| ApiError::internal(format!("the catalog's listing does not parse: {e}")))?;
    let body = serde_json::to_vec(&crate::prometheus::target_groups(&instances))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let read = Read {
        body: body.into(),
        index: read.index,
    };
    Ok(with_staleness(&st, json_bytes(StatusCode::OK, read)))
}

/// Runs a write to its end in a task of its own, so that a client that gives up
/// (its timeout, then a retry on another node) does not cut short the
/// backend's finding out what became of it.
async fn to_the_end<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(write)
        .await
        .map_err(|e| ApiError::internal(format!("the write failed: {e}")))?
        .map_err(ApiError::from)
}

async fn register(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = authenticate(&st, &headers)?;
    let bytes = body_bytes(body)?;
    if is_blank(&bytes) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected {\"name\", \"version\", \"interfaces\"}",
        ));
    }
    let reg: Registration = parse_json(&bytes)?;
    check_name(&reg.name)?;
    if reg.version.trim().is_empty() {
        return Err(ApiError::bad_request("`version` must not be empty"));
    }
    for (kind, addr) in &reg.interfaces {
        if kind.is_empty() || addr.is_empty() {
            return Err(ApiError::bad_request(
                "`interfaces` maps a non-empty kind (e.g. REST) to a non-empty address",
            ));
        }
    }
    if let Some(id) = &reg.id {
        check_id(id)?;
    }
    authorize(&who, &reg.name)?;
    let id = reg
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", reg.name, chora_api::random_hex(4)));
    let record = Record::new(reg, id, SystemTime::now());
    let store = st.store.clone();
    let (inst, created) = to_the_end(async move { store.register(record).await }).await?;
    let l = st.store.catalog().liveness();
    let out = Registered {
        id: inst.id,
        name: inst.name,
        version: inst.version,
        status: inst.status,
        registered_at: inst.registered_at,
        heartbeat_interval: l.heartbeat_interval.as_secs_f64(),
        heartbeat_timeout: l.ttl.as_secs_f64(),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(out)).into_response())
}

async fn heartbeat(
    State(st): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let who = authenticate(&st, &headers)?;
    let bytes = body_bytes(body)?;
    check_name(&name)?;
    check_id(&id)?;
    authorize(&who, &name)?;
    let status = if is_blank(&bytes) {
        None
    } else {
        Some(parse_json::<Heartbeat>(&bytes)?.status)
    };
    st.store.heartbeat(&name, &id, status).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deregister(
    State(st): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let who = authenticate(&st, &headers)?;
    check_name(&name)?;
    check_id(&id)?;
    authorize(&who, &name)?;
    let store = st.store.clone();
    to_the_end(async move { store.deregister(&name, &id).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn health(State(st): State<Shared>) -> Response {
    let catalog = st.store.catalog();
    let ping = tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await;
    let problem = match ping {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("storage did not answer within 2 s".to_owned()),
    };
    let body = Health {
        status: if problem.is_none() {
            "healthy"
        } else {
            "unhealthy"
        }
        .to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        services_registered: catalog.len() as u64,
        storage: st.store.kind().to_owned(),
        message: problem.clone(),
    };
    let status = if problem.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_index(catalog.index(), (status, axum::Json(body)))
}

async fn metrics(State(st): State<Shared>) -> Response {
    st.metrics.response(st.store.catalog().counts())
}
