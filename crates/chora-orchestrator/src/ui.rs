//! The dashboard (DESIGN.md §12): `GET /ui` and its routes, served by the
//! orchestrator itself. One server-rendered page (HTML, CSS and a little script
//! embedded with `include_str!`; no CDN, no build step), live through
//! server-sent events (`/ui/events`), with stop / start / restart buttons and a
//! log tail that follows (`/ui/logs/{name}`). Each service's row charts its
//! request rate and p99 latency over the last 15 minutes (DESIGN.md §16), from
//! a Prometheus when one is configured, else from the services' own `/metrics`.
//!
//! Auth: `chora bootstrap ui` prints `/ui/login?token=…`, a one-time token
//! ([`chora_api::login`]); spending it opens a session (random id in an HttpOnly,
//! SameSite=Strict cookie, server-side table, [`session`]). Every other /ui
//! route needs that session; POSTs also need the session's CSRF token and, when
//! the browser sends one, a same-origin `Origin`. No secret reaches the page.
//! With auth off (`--no-auth`) the dashboard is open.

pub mod bootstrap;
pub mod charts;
pub mod feed;
pub mod model;
pub mod page;
pub mod prom;
pub mod rows;
pub mod scrape;
pub mod session;

use crate::http::AppState;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chora_api::orchestrator::StateChange;
use session::{Session, Sessions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const CSS: &str = include_str!("ui/app.css");
const JS: &str = include_str!("ui/app.js");

/// How much of a log the tail starts with.
const LOG_BACKLOG: u64 = 64 * 1024;
/// How often a followed log is looked at for new lines.
const LOG_POLL: Duration = Duration::from_millis(200);
/// An event-stream comment this often keeps proxies and the browser patient.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the dashboard needs besides the orchestrator's state.
pub struct UiConfig {
    pub manifest_url: String,
    /// The chora home: bootstrap state, audit log, persisted sessions.
    pub home: Option<PathBuf>,
    pub logs_dir: PathBuf,
    /// `None`: auth is off and the dashboard is open.
    pub jwt_secret: Option<String>,
    /// A Prometheus that scrapes the services (through the Manifest's
    /// discovery): the charts' numbers then come from it.
    pub prometheus_url: Option<String>,
}

pub struct Ui {
    app: Arc<AppState>,
    feed: Arc<feed::Feed>,
    sessions: Sessions,
    jwt_secret: Option<String>,
    /// The CSRF token of everyone when auth is off.
    open_csrf: String,
    logs_dir: PathBuf,
    /// Changes the asset URLs when the assets change.
    assets: String,
    closing: watch::Sender<bool>,
}

impl Ui {
    /// Starts following the Manifest and the deployments.
    pub fn start(app: Arc<AppState>, config: UiConfig) -> Arc<Ui> {
        let feed = feed::start(app.clone(), config.manifest_url, config.home.clone());
        let http = app.ctx().http.clone();
        let source = match &config.prometheus_url {
            Some(url) => {
                charts::Source::Prometheus(prom::Prometheus::new(url, http.clone(), charts::SAMPLE))
            }
            None => charts::Source::Metrics(scrape::Sampler::default()),
        };
        charts::start(&feed, source, http);
        let hash = format!("{CSS}{JS}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        Arc::new(Ui {
            app,
            feed,
            sessions: Sessions::new(config.home.as_deref()),
            jwt_secret: config.jwt_secret,
            open_csrf: chora_api::random_hex(32),
            logs_dir: config.logs_dir,
            assets: format!("{:08x}", hash as u32),
            closing: watch::channel(false).0,
        })
    }

    /// Ends every event stream and log tail, so that a graceful shutdown does not
    /// wait for open pages.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

type Shared = Arc<Ui>;

pub fn router(ui: Shared) -> Router {
    let private = Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.css", get(css))
        .route("/ui/app.js", get(js))
        .route("/ui/session", get(|| async { StatusCode::NO_CONTENT }))
        .route("/ui/events", get(events))
        .route("/ui/logs/{name}", get(logs))
        .route("/ui/services/{name}/{action}", post(act))
        .route("/ui/logout", post(logout))
        .route_layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            require_session,
        ));
    private
        .route("/ui/login", get(login))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(ui)
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// A small page for refusals (login needed, link spent or expired).
fn refusal(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>chora · dashboard</title>\
         <body style=\"font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em\">\
         <h1>chora dashboard</h1><p>{}</p><p>Get a login link with <code>chora bootstrap ui</code> \
         and open it in this browser.</p></body></html>\n",
        page::esc(message)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn require_session(State(ui): State<Shared>, mut req: Request, next: Next) -> Response {
    let session = if ui.jwt_secret.is_none() {
        Some(Session {
            csrf: ui.open_csrf.clone(),
            expires: u64::MAX,
        })
    } else {
        session::cookie(req.headers(), session::COOKIE).and_then(|id| ui.sessions.get(id))
    };
    match session {
        Some(s) => {
            req.extensions_mut().insert(s);
            next.run(req).await
        }
        None => refusal(
            StatusCode::UNAUTHORIZED,
            "This page needs a dashboard session, and this browser has none (or it expired).",
        ),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn login(State(ui): State<Shared>, Query(q): Query<LoginQuery>) -> Response {
    let see_ui = || {
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static("/ui"))],
        )
    };
    let Some(secret) = &ui.jwt_secret else {
        return see_ui().into_response();
    };
    let Some(token) = q.token else {
        return refusal(StatusCode::UNAUTHORIZED, "The login link has no token.");
    };
    let claims = match chora_api::login::verify_login_token(secret, &token) {
        Ok(c) => c,
        Err(e) => return refusal(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let Some((id, _)) = ui.sessions.login(&claims.jti, claims.exp) else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "This login link was used already; each one works once.",
        );
    };
    tracing::info!(subject = %claims.sub, "dashboard login");
    let mut r = see_ui().into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::set_cookie(&id)).expect("hex is a valid header"),
    );
    r
}

/// The CSRF token a POST carries: `X-CSRF-Token`, or the form field `csrf`.
fn csrf_of(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(v) = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        return Some(v.to_owned());
    }
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "csrf")
        .map(|(_, v)| v.to_owned())
}

/// A POST must come from this origin (when the browser says) with the token.
fn check_post(headers: &HeaderMap, body: &[u8], s: &Session) -> Result<(), Box<Response>> {
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) && origin.split_once("://").map(|(_, h)| h) != Some(host)
    {
        return Err(Box::new(refusal(
            StatusCode::FORBIDDEN,
            "Cross-origin request refused.",
        )));
    }
    match csrf_of(headers, body) {
        Some(t) if session::same(&t, &s.csrf) => Ok(()),
        _ => Err(Box::new(refusal(
            StatusCode::FORBIDDEN,
            "The request lacks this session's CSRF token.",
        ))),
    }
}

async fn logout(
    State(ui): State<Shared>,
    axum::Extension(s): axum::Extension<Session>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_post(&headers, &body, &s) {
        return *r;
    }
    if let Some(id) = session::cookie(&headers, session::COOKIE) {
        ui.sessions.logout(id);
    }
    let mut r = refusal(StatusCode::OK, "You are logged out.");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("chora_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn index(State(ui): State<Shared>, axum::Extension(s): axum::Extension<Session>) -> Response {
    let html = {
        let m = ui.feed.model.lock().unwrap_or_else(|e| e.into_inner());
        page::page(&m, &s.csrf, &ui.assets)
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

async fn act(
    State(ui): State<Shared>,
    axum::Extension(s): axum::Extension<Session>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_post(&headers, &body, &s) {
        return *r;
    }
    let d = ui.app.deployments().lock().await.get(&name).cloned();
    let Some(d) = d else {
        return chora_service::ApiError::not_found(format!("no service `{name}` is deployed"))
            .into_response();
    };
    tracing::info!(service = %name, %action, "dashboard action");
    let state = match action.as_str() {
        "stop" => d.stop().await,
        "start" => d.start().await,
        "restart" => d.restart().await,
        _ => {
            return chora_service::ApiError::not_found(format!(
                "unknown action `{action}` (expected stop, start or restart)"
            ))
            .into_response();
        }
    };
    if headers.contains_key("x-csrf-token") {
        axum::Json(StateChange { name, state }).into_response()
    } else {
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static("/ui"))],
        )
            .into_response()
    }
}

fn stream_response(kind: &'static str, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

async fn events(State(ui): State<Shared>) -> Response {
    let (snapshot, _, rx) = ui.feed.subscribe();
    let first = format!("retry: 1000\n\n{snapshot}");
    let closing = ui.closing.subscribe();
    let st = (ui, rx, closing, Some(first));
    let s = futures_util::stream::unfold(st, |(ui, mut rx, mut closing, first)| async move {
        if let Some(f) = first {
            return Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(f)),
                (ui, rx, closing, None),
            ));
        }
        if *closing.borrow() {
            return None;
        }
        let out = tokio::select! {
            r = tokio::time::timeout(KEEP_ALIVE, rx.recv()) => match r {
                Err(_) => ": keep-alive\n\n".to_owned(),
                Ok(Ok(u)) => u.sse.clone(),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    // Too slow to follow: start again from a snapshot.
                    let (snap, _, fresh) = ui.feed.subscribe();
                    rx = fresh;
                    snap
                }
                Ok(Err(_)) => return None,
            },
            _ = closing.changed() => return None,
        };
        Some((Ok(Bytes::from(out)), (ui, rx, closing, None)))
    });
    stream_response("text/event-stream", Body::from_stream(s))
}

/// `<logs>/<name>.log`: its last 64 KiB, then whatever is appended, as a
/// chunked `text/plain` stream (a truncated or replaced file starts over).
async fn logs(State(ui): State<Shared>, Path(name): Path<String>) -> Response {
    if !chora_api::manifest::is_valid_name(&name) {
        return chora_service::ApiError::bad_request("not a service name").into_response();
    }
    let path = ui.logs_dir.join(format!("{name}.log"));
    let Ok(meta) = std::fs::metadata(&path) else {
        return chora_service::ApiError::not_found(format!("no log for `{name}`")).into_response();
    };
    let start = meta.len().saturating_sub(LOG_BACKLOG);
    let closing = ui.closing.subscribe();
    let s = futures_util::stream::unfold(
        (path, start, start > 0, closing),
        |(path, mut pos, mut skip_partial, mut closing)| async move {
            loop {
                if *closing.borrow() {
                    return None;
                }
                let chunk = read_from(&path, &mut pos);
                if !chunk.is_empty() {
                    let mut chunk = chunk.as_slice();
                    if std::mem::take(&mut skip_partial)
                        && let Some(nl) = chunk.iter().position(|b| *b == b'\n')
                    {
                        chunk = &chunk[nl + 1..];
                    }
                    let text = String::from_utf8_lossy(chunk).into_owned();
                    return Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(text)),
                        (path, pos, skip_partial, closing),
                    ));
                }
                tokio::select! {
                    _ = tokio::time::sleep(LOG_POLL) => {}
                    _ = closing.changed() => return None,
                }
            }
        },
    );
    stream_response("text/plain; charset=utf-8", Body::from_stream(s))
}

/// Reads what the file holds past `pos` (at most 256 KiB) and moves `pos`. A
/// small read of a local file: not worth a blocking-pool hop.
fn read_from(path: &std::path::Path, pos: &mut u64) -> Vec<u8> {
    use std::io::{Read, Seek};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *pos {
        *pos = 0;
    }
    if len == *pos || f.seek(std::io::SeekFrom::Start(*pos)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = (&mut f).take(256 * 1024).read_to_end(&mut buf);
    *pos += buf.len() as u64;
    buf
}
