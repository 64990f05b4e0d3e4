//! The proxy path: one request to an `up` instance of its service (DESIGN.md
//! §5), the one [`balance::choose`] picks: hop-by-hop headers dropped,
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id` set, a refused
//! connection, or one whose host stays silent ([`HEDGED`]) (and a safe request,
//! GET or HEAD, that got no answer) retried on other instances (up to
//! [`MAX_TRIES`] in all), the upstream's answer streamed
//! back; per-service counters and latency. The upstream's [`balance::Load`]
//! counts the request until its response head comes, and a timeout, a failed
//! connection or a silent host ejects the upstream.

use crate::Gateway;
use crate::balance;
use crate::upstream::Patience;
use crate::{RequestLabels, ServiceLabels};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chora_service::ApiError;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Request bodies up to this size are kept for a retry on another instance.
const RETRY_BODY: u64 = 256 * 1024;

/// How many instances one request tries at most: a request that could not
/// connect (or, when it is safe, got no answer) goes to another instance,
/// each one once. Several may fail at once while a service is replaced (a
/// new task registered before its address resolves, an old one stopping).
const MAX_TRIES: usize = 3;

/// How long an upstream's host may stay silent when another instance is
/// left to try. A connection on a host's network is made in well under a
/// millisecond, and one not made in 500 ms lost its first SYN (the next is
/// sent after a second) or its host is gone (a lost host drops SYNs, it
/// does not refuse them). A request on a kept connection to a lost host is
/// never acknowledged: the kernel resends it after 200-400 ms and ends the
/// connection 300 ms later, about 0.7 s after it went (measured: the
/// gateway test of a lost host). Either way the request goes to another
/// instance (a GET also after it was sent), within the second a client may
/// wait, rather than after [`LAST`], and the silent one is ejected.
const HEDGED: Patience = Patience {
    connect: Duration::from_millis(500),
    unacknowledged: Duration::from_millis(300),
};

/// How long the last instance tried may stay silent.
const LAST: Patience = Patience {
    connect: Duration::from_secs(2),
    unacknowledged: Duration::from_secs(2),
};

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

pub(crate) async fn proxy(
    gw: Arc<Gateway>,
    peer_ip: HeaderValue,
    proto: HeaderValue,
    req: Request,
) -> Response {
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
            parts.headers.insert(&X_FORWARDED_PROTO, proto);
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
            // The time the request came is recent enough for the ejections.
            let now = balance::millis(start);
            // Bit i: upstream i was tried (see `balance::choose`).
            let mut tried = 0u64;
            let mut attempt = 0;
            // A request that cannot change anything may go again after it
            // was sent, when no answer came (its connection reset, as an
            // instance that stops does).
            let safe = parts.method.is_safe();
            let mut resp = loop {
                let i = balance::choose(r.up.len(), |i| &r.up[i].load, first, now, tried);
                let upstream = &r.up[i];
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
                let retry_possible = attempt + 1 < r.up.len().min(MAX_TRIES);
                // This request could still go to another instance.
                let elsewhere = retry_possible && matches!(body, ReqBody::Kept(_));
                let head = if retry_possible {
                    parts.clone()
                } else {
                    std::mem::replace(&mut parts, Request::new(()).into_parts().0)
                };
                let mut up = axum::http::Request::from_parts(head, b);
                *up.uri_mut() = uri;
                *up.version_mut() = axum::http::Version::HTTP_11;
                up.headers_mut().insert(header::HOST, target.host.clone());
                let load = &upstream.load;
                let outstanding = load.begin();
                // A silent host is given up sooner when the request can go
                // to another instance instead.
                let patience = if elsewhere { HEDGED } else { LAST };
                let sent = gw.upstreams.send(&target.authority, up, patience);
                let sent = tokio::time::timeout(gw.timeout, sent).await;
                drop(outstanding);
                match sent {
                    Ok(Ok(mut resp)) => {
                        load.answered();
                        strip_hop(resp.headers_mut());
                        break resp;
                    }
                    Ok(Err(e)) => {
                        if e.is_connect() {
                            eject(load, service, base, "cannot connect");
                        } else if e.host_silent() {
                            eject(load, service, base, "its host acknowledged nothing");
                        }
                        let retry = (e.is_connect() || safe) && elsewhere;
                        if retry {
                            tracing::debug!(%service, upstream = %base, error = %e, "failed before an answer; retrying on another instance");
                            if i < 64 {
                                tried |= 1 << i;
                            }
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
                        eject(load, service, base, "no answer within the timeout");
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

/// Ejects `load` (its upstream is skipped for a while, [`balance::EJECTION`]),
/// saying so once per ejection. The failed request's path, not the hot one: the
/// clock is read afresh.
fn eject(load: &balance::Load, service: &str, base: &str, why: &str) {
    if load.eject(balance::millis(Instant::now())) {
        tracing::warn!(%service, upstream = %base, "{why}: skipped for {:?} while another instance is not", balance::EJECTION);
    }
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
