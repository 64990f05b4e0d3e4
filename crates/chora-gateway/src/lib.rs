//! The API gateway (DESIGN.md §5, "Gateway").
//!
//! `ANY /api/v1/{service}/{path…}` goes, with the same method, path and query, to
//! the `REST` interface of an `up` instance of `{service}`, round-robin. Unknown
//! service 404, no up instance 503, upstream refused or reset 502 (a refused
//! connection is retried once on another instance), no answer within the timeout
//! 504 — all as JSON errors. Bodies stream both ways; a small request body is
//! kept so that a refused connection can be retried. Upstream connections are
//! pooled. The route table comes from [`table::follow`].

pub mod table;
pub mod upstream;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chora_service::ApiError;
use chora_service::register::{SelfRegistration, keep_registered};
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Request bodies up to this size are kept for a retry on another instance.
const RETRY_BODY: u64 = 256 * 1024;

/// Everything `chora gateway serve` needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Manifest URL(s), comma-separated.
    pub manifest_url: String,
    /// The gateway's own API key, for its registration (`CHORA_API_KEY`).
    pub api_key: Option<String>,
    /// How long an upstream may take to answer (504 beyond).
    pub upstream_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid Manifest URL: {0}")]
    Manifest(#[from] chora_api::ClientError),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

struct Gateway {
    routes: Arc<table::Shared>,
    upstreams: Arc<upstream::Upstreams>,
    timeout: Duration,
    metrics: Arc<chora_service::HttpMetrics>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabels, Histogram>,
}

pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr()?;
    let manifest = chora_api::ManifestClient::new([config.manifest_url.as_str()])?;
    let routes = Arc::new(table::Shared::default());
    let follower = tokio::spawn(table::follow(manifest, routes.clone()));

    let metrics = chora_service::HttpMetrics::new("gateway");
    let requests = Family::<RequestLabels, Counter>::default();
    metrics.register(
        "gateway_requests",
        "Proxied requests by service and status",
        requests.clone(),
    );
    let latency = Family::<ServiceLabels, Histogram>::new_with_constructor(
        chora_service::metrics::latency_histogram,
    );
    metrics.register(
        "gateway_request_duration_seconds",
        "Proxied request latency (to response headers) by service",
        latency.clone(),
    );
    let gw = Arc::new(Gateway {
        routes,
        upstreams: upstream::Upstreams::new(Duration::from_secs(2), Duration::from_secs(60)),
        timeout: config.upstream_timeout,
        metrics,
        requests,
        latency,
    });
    let app = router(gw.clone());
    let keeper = keep_registered(SelfRegistration {
        manifest_url: config.manifest_url.clone(),
        token: config.api_key.clone(),
        name: "gateway".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        addr,
        description: Some("Routes /api/v1/{service}/… to healthy instances".into()),
        tags: vec!["infrastructure".into()],
        dependencies: vec!["manifest".into()],
        instance_id: std::env::var("CHORA_INSTANCE_ID").ok(),
    })?;
    serve(listener, gw, app, shutdown).await;
    follower.abort();
    if let Err(e) = keeper.shutdown().await {
        tracing::warn!(error = %e, "could not deregister from the Manifest");
    }
    Ok(())
}

/// Accepts connections until `shutdown`, then lets the open ones finish.
///
/// The proxy path is the hot path: it goes straight from hyper's HTTP/1
/// connection to [`proxy`], without the router, the per-connection protocol
/// sniffing of `axum::serve`, or its per-connection shutdown `select!`. The other
/// routes (`/health`, `/metrics`, the JSON fallbacks) go to `rest`.
async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    rest: Router,
    shutdown: impl Future<Output = ()>,
) {
    let reaper = tokio::spawn(upstream::Upstreams::reap(Arc::downgrade(&gw.upstreams)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let rest = hyper_util::service::TowerToHyperService::new(rest);
    let mut shutdown = std::pin::pin!(shutdown);
    // TCP_NODELAY on each connection; accept errors (out of file descriptors and
    // the like) are waited out, as axum::serve does.
    let mut listener = chora_service::nodelay(listener);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let front = Front {
            gw: gw.clone(),
            rest: rest.clone(),
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP is a header value"),
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), front);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    reaper.abort();
}

/// One client connection's service: the proxy for `/api/v1/{service}…`, the
/// router for the rest.
#[derive(Clone)]
struct Front {
    gw: Arc<Gateway>,
    rest: hyper_util::service::TowerToHyperService<Router>,
    /// The peer's address as an `X-Forwarded-For` value, made once per connection.
    peer_ip: HeaderValue,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for Front {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        if proxied(req.uri().path()) {
            let (gw, peer_ip) = (self.gw.clone(), self.peer_ip.clone());
            Box::pin(async move { Ok(proxy(gw, peer_ip, req.map(Body::new)).await) })
        } else {
            Box::pin(self.rest.call(req))
        }
    }
}

/// `/api/v1/{service}` or `/api/v1/{service}/…` with a non-empty service name.
fn proxied(path: &str) -> bool {
    path.strip_prefix("/api/v1/")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

fn router(gw: Arc<Gateway>) -> Router {
    chora_service::json_fallbacks(Router::new().route("/health", get(health)).route(
        "/metrics",
        get(|State(gw): State<Arc<Gateway>>| async move { gw.metrics.response() }),
    ))
    .with_state(gw)
}

async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let table = gw.routes.get();
    let connected = gw.routes.connected.load(Ordering::Relaxed);
    axum::Json(serde_json::json!({
        "status": "healthy",
        "service": "gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "routes": table.services.len(),
        "registry": if connected { "connected" } else { "unreachable: serving the last known routes" },
    }))
    .into_response()
}

/// Hop-by-hop headers, never forwarded.
const HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of eight lookups.
    if !h.keys().any(|k| HOP.contains(k)) {
        return;
    }
    for name in &HOP {
        h.remove(name);
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The request body: kept in memory when small (so it can be sent twice), else
/// streamed.
enum ReqBody {
    Kept(axum::body::Bytes),
    Stream(Body),
}

async fn proxy(gw: Arc<Gateway>, peer_ip: HeaderValue, req: Request) -> Response {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    // The upstream request gets its own URI; this one is only read.
    let uri = std::mem::take(&mut parts.uri);
    let rest = uri.path().strip_prefix("/api/v1/").unwrap_or_default();
    let (service, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let query = uri.query();

    let table = gw.routes.get();
    let (resp, label) = match table.services.get(service) {
        None => (
            ApiError::not_found(format!("no service `{service}` is registered")).into_response(),
            "_unknown",
        ),
        Some(r) if r.up.is_empty() => (
            ApiError::unavailable("no_instance", format!("no instance of `{service}` is up"))
                .into_response(),
            service,
        ),
        Some(r) => {
            let request_id = parts
                .headers
                .get(&X_REQUEST_ID)
                .cloned()
                .unwrap_or_else(new_request_id);
            let small = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|n| n <= RETRY_BODY)
                .unwrap_or(!parts.headers.contains_key(header::TRANSFER_ENCODING));
            strip_hop(&mut parts.headers);
            parts.headers.remove(header::HOST);
            let xff = match parts
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => {
                    let ip = peer_ip.to_str().expect("made from an IP");
                    HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
                }
                None => Some(peer_ip),
            };
            if let Some(v) = xff {
                parts.headers.insert(&X_FORWARDED_FOR, v);
            }
            parts
                .headers
                .insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            parts.headers.insert(&X_REQUEST_ID, request_id.clone());

            let mut body = if small {
                match body.collect().await {
                    Ok(c) => ReqBody::Kept(c.to_bytes()),
                    Err(e) => {
                        let r = ApiError::bad_request(format!("cannot read the request body: {e}"))
                            .into_response();
                        return finish(&gw, service, r, start);
                    }
                }
            } else {
                ReqBody::Stream(body)
            };
            let first = r.next.fetch_add(1, Ordering::Relaxed);
            let mut attempt = 0;
            let mut resp = loop {
                let upstream = &r.up[(first + attempt) % r.up.len()];
                let base = &upstream.base;
                let target = upstream
                    .target
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|t| {
                        let mut pq = String::with_capacity(
                            t.prefix.len() + tail.len() + query.map_or(0, |q| q.len() + 1),
                        );
                        pq.push_str(&t.prefix);
                        pq.push_str(tail);
                        if let Some(q) = query {
                            pq.push('?');
                            pq.push_str(q);
                        }
                        Ok((t, Uri::try_from(pq).map_err(|e| e.to_string())?))
                    });
                let (target, uri) = match target {
                    Ok(t) => t,
                    Err(e) => {
                        break ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "bad_upstream",
                            format!("`{base}` is not a usable address: {e}"),
                        )
                        .into_response();
                    }
                };
                let b = match &mut body {
                    ReqBody::Kept(bytes) => Body::from(bytes.clone()),
                    ReqBody::Stream(s) => std::mem::take(s),
                };
                // Another attempt needs the head again; only then is it copied.
                let retry_possible = attempt + 1 < r.up.len().min(2);
                let head = if retry_possible {
                    parts.clone()
                } else {
                    std::mem::replace(&mut parts, Request::new(()).into_parts().0)
                };
                let mut up = axum::http::Request::from_parts(head, b);
                *up.uri_mut() = uri;
                *up.version_mut() = axum::http::Version::HTTP_11;
                up.headers_mut().insert(header::HOST, target.host.clone());
                let sent = gw.upstreams.send(&target.authority, up);
                match tokio::time::timeout(gw.timeout, sent).await {
                    Ok(Ok(mut resp)) => {
                        strip_hop(resp.headers_mut());
                        break resp;
                    }
                    Ok(Err(e)) => {
                        let retry =
                            e.is_connect() && matches!(body, ReqBody::Kept(_)) && retry_possible;
                        if retry {
                            tracing::debug!(%service, upstream = %base, error = %e, "cannot connect; retrying on another instance");
                            attempt += 1;
                            continue;
                        }
                        break ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_failed",
                            format!(
                                "`{service}` at {base} failed: {}",
                                chora_api::root_cause(&e)
                            ),
                        )
                        .into_response();
                    }
                    Err(_) => {
                        break ApiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream_timeout",
                            format!("`{service}` did not answer within {:?}", gw.timeout),
                        )
                        .into_response();
                    }
                }
            };
            resp.headers_mut().insert(&X_REQUEST_ID, request_id);
            (resp, service)
        }
    };
    finish(&gw, label, resp, start)
}

/// A fresh `X-Request-Id`: 32 hex digits, a random per-process prefix and a
/// counter. Unique, not secret, and without a system call per request.
fn new_request_id() -> HeaderValue {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| chora_api::random_hex(8));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&prefix.as_bytes()[..16]);
    for (i, b) in id[16..].iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex is a header value")
}

fn finish(gw: &Gateway, service: &str, resp: Response, start: Instant) -> Response {
    gw.latency
        .get_or_create(&ServiceLabels {
            service: service.to_owned(),
        })
        .observe(start.elapsed().as_secs_f64());
    gw.requests
        .get_or_create(&RequestLabels {
            service: service.to_owned(),
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
