//! The API gateway (DESIGN.md §5, "Gateway").
//!
//! `ANY /api/v1/{service}/{path…}` goes, with the same method, path and query, to
//! the `REST` interface of an `up` instance of `{service}`: the one with the
//! fewest requests outstanding, ties round-robin, skipping for a while an
//! instance that let a request time out or refused a connection unless all are
//! so ([`balance`]). Unknown service 404, no up instance 503, upstream refused or
//! reset 502 (a refused connection, or a safe request that got no answer, is retried
//! on other instances, up to three in all), no
//! answer within the timeout 504 — all as JSON errors. Bodies stream both ways; a small request body is
//! kept so that a refused connection can be retried. Upstream connections are
//! pooled. The route table comes from [`table::follow`].
//!
//! The proxy itself is [`proxy`]'s; this file holds the server around it.
//!
//! With [`Https`], a second listener serves the same routes over TLS ([`tls`]):
//! its connections go through the same accept loop, hyper connection and proxy,
//! with `X-Forwarded-Proto: https`. The plain listener then answers every
//! request with a 308 to the same path and query on https ([`Plain::Redirect`],
//! the default), except the gateway's own `/health` and `/metrics`, or keeps
//! serving ([`Plain::Serve`]); either way it answers ACME http-01 challenges
//! first.

pub mod balance;
mod proxy;
pub mod table;
pub mod tls;
pub mod upstream;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chora_service::ApiError;
use chora_service::register::{SelfRegistration, keep_registered};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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

/// HTTPS beside the plain listener.
pub struct Https {
    /// Bound by the caller, as the plain one is.
    pub listener: tokio::net::TcpListener,
    pub tls: tls::Tls,
    /// What the plain listener does meanwhile.
    pub plain: Plain,
}

/// What the plain-HTTP listener does while HTTPS is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// 308 to the same path and query on https (ACME challenges aside).
    Redirect,
    /// Serve every route over plain HTTP too.
    Serve,
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
    https: Option<Https>,
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
        upstreams: upstream::Upstreams::new(Duration::from_secs(60)),
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
    let (secure, plain, certs) = match https {
        None => (None, None, None),
        Some(h) => {
            let side = PlainSide {
                challenges: h.tls.challenges(),
                redirect_port: match h.plain {
                    Plain::Redirect => Some(h.listener.local_addr()?.port()),
                    Plain::Serve => None,
                },
            };
            // Serving plain HTTP with nothing to intercept: the plain path is
            // the one without HTTPS.
            let side =
                (side.challenges.is_some() || side.redirect_port.is_some()).then(|| Arc::new(side));
            let secure = (h.listener, h.tls.acceptor());
            (Some(secure), side, Some(h.tls.keep_current()))
        }
    };
    serve(listener, secure, plain, gw, app, shutdown).await;
    if let Some(c) = certs {
        c.abort();
    }
    follower.abort();
    if let Err(e) = keeper.shutdown().await {
        tracing::warn!(error = %e, "could not deregister from the Manifest");
    }
    Ok(())
}

/// Accepts connections on both listeners until `shutdown`, then lets the open
/// ones finish.
///
/// The proxy path is the hot path: it goes straight from hyper's HTTP/1
/// connection to [`proxy`], without the router, the per-connection protocol
/// sniffing of `axum::serve`, or its per-connection shutdown `select!`. The other
/// routes (`/health`, `/metrics`, the JSON fallbacks) go to `rest`. A TLS
/// connection is the same hyper connection over the TLS stream; its handshake
/// runs in the connection's task.
async fn serve(
    listener: tokio::net::TcpListener,
    secure: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    plain: Option<Arc<PlainSide>>,
    gw: Arc<Gateway>,
    rest: Router,
    shutdown: impl Future<Output = ()>,
) {
    let reaper = tokio::spawn(upstream::Upstreams::reap(Arc::downgrade(&gw.upstreams)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let rest = hyper_util::service::TowerToHyperService::new(rest);
    let mut shutdown = std::pin::pin!(shutdown);
    // Handshakes in progress give up when shutdown begins.
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
    // TCP_NODELAY on each connection; accept errors (out of file descriptors and
    // the like) are waited out, as axum::serve does.
    let mut listener = chora_service::nodelay(listener);
    let (mut tls_listener, acceptor) = match secure {
        Some((l, a)) => (Some(chora_service::nodelay(l)), Some(a)),
        None => (None, None),
    };
    loop {
        let (tcp, peer, tls) = tokio::select! {
            (tcp, peer) = axum::serve::Listener::accept(&mut listener) => (tcp, peer, None),
            (tcp, peer) = accept_on(&mut tls_listener) => (tcp, peer, acceptor.clone()),
            () = &mut shutdown => break,
        };
        let front = Front {
            gw: gw.clone(),
            rest: rest.clone(),
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP is a header value"),
            proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
            plain: if tls.is_some() { None } else { plain.clone() },
        };
        match tls {
            None => {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), front);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let watcher = graceful.watcher();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        s = handshake => s,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    let stream = match stream {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), front);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    drop(tls_listener);
    stopping.send_replace(true);
    graceful.shutdown().await;
    reaper.abort();
}

/// The next connection on `listener`; never, when there is none.
async fn accept_on(
    listener: &mut Option<chora_service::Nodelay>,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    match listener {
        Some(l) => axum::serve::Listener::accept(l).await,
        None => std::future::pending().await,
    }
}

/// One client connection's service: the proxy for `/api/v1/{service}…`, the
/// router for the rest.
#[derive(Clone)]
struct Front {
    gw: Arc<Gateway>,
    rest: hyper_util::service::TowerToHyperService<Router>,
    /// The peer's address as an `X-Forwarded-For` value, made once per connection.
    peer_ip: HeaderValue,
    /// `X-Forwarded-Proto`: `http` or `https`.
    proto: HeaderValue,
    /// A plain connection while HTTPS is on.
    plain: Option<Arc<PlainSide>>,
}

/// What a plain connection answers itself while HTTPS is on.
struct PlainSide {
    /// ACME http-01 challenges, answered first.
    challenges: Option<Arc<tls::acme::Challenges>>,
    /// The HTTPS port to redirect to; `None` serves plain HTTP too.
    redirect_port: Option<u16>,
}

impl PlainSide {
    /// The answer to `req` when it is not served as usual.
    fn intercept<B>(&self, req: &Request<B>) -> Option<Response> {
        let path = req.uri().path();
        if let Some(challenges) = &self.challenges
            && let Some(token) = path.strip_prefix(tls::acme::CHALLENGE_PREFIX)
        {
            return Some(match challenges.answer(token) {
                Some(answer) => ([(header::CONTENT_TYPE, "text/plain")], answer).into_response(),
                None => ApiError::not_found("no such ACME challenge").into_response(),
            });
        }
        let port = self.redirect_port?;
        // The gateway's own health and metrics stay on plain HTTP: health
        // checks and Prometheus find the gateway at its registered http://
        // address, and neither carries proxied traffic.
        if matches!(path, "/health" | "/metrics") {
            return None;
        }
        Some(redirect(req, port))
    }
}

/// 308 to the same host, path and query on https at `port`.
fn redirect<B>(req: &Request<B>, port: u16) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(host_only)
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost");
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    match HeaderValue::try_from(location) {
        Ok(v) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => ApiError::bad_request("the Host header cannot make a URL").into_response(),
    }
}

/// `host[:port]` without the port (`[v6]` keeps its brackets).
fn host_only(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.split(':').next().unwrap_or(authority)
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for Front {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(plain) = &self.plain
            && let Some(resp) = plain.intercept(&req)
        {
            return Box::pin(std::future::ready(Ok(resp)));
        }
        if proxied(req.uri().path()) {
            let (gw, peer_ip, proto) = (self.gw.clone(), self.peer_ip.clone(), self.proto.clone());
            Box::pin(async move { Ok(proxy::proxy(gw, peer_ip, proto, req.map(Body::new)).await) })
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
