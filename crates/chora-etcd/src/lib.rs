//! etcd's v3 API through its JSON gateway (`POST /v3/…`, the grpc-gateway every
//! etcd ≥ 3.4 serves on its client port), so that building chora needs no
//! `protoc` and talking to etcd needs no gRPC stack: one pooled HTTP/1.1
//! client, JSON in and out ([`wire`]), and a watch read as a stream of JSON
//! lines ([`Watch`]). The registry's etcd backend and the bootstrap's etcd
//! lock both use it; nothing else in chora talks to etcd.
//!
//! # Failover, and what an error says about the call
//!
//! A [`Client`] holds several endpoints. A call goes first to the endpoint that
//! answered last, and on to the next when one fails; rounds over all of them
//! go on, backing off, for up to [`CALL_BUDGET`], except when no endpoint took
//! the request at all (nothing to wait for: the whole cluster is gone, and the
//! caller hears so at once, and for [`GONE_FOR`] the next calls too). Each
//! attempt gets [`ATTEMPT_TIMEOUT`], its connection [`CONNECT_TIMEOUT`]: a
//! member that vanished (killed, paused, cut off) costs one attempt, and the
//! next round and the next call start past it (not at it again while the rest
//! elect a leader). Every call is
//! sent as "requires a leader" (`hasleader` metadata), so a member cut off
//! from its quorum refuses at once instead of holding the call.
//!
//! Invariant: **a call's error says whether it may have happened.**
//! [`Error::Unavailable`] only when no attempt can have been applied: every
//! endpoint refused the connection (or its name, or its route), or etcd
//! answered that it did nothing (`no leader`, `too many requests`).
//! [`Error::Refused`] when etcd answered with a definite error (`lease not
//! found`). [`Error::Unknown`] as soon as one attempt was sent and not
//! answered (a timeout, a connection lost mid-call, etcd's own `request timed
//! out`): that attempt may still be applied. Callers repeat only calls that are
//! safe to repeat; every call here is (a repeated grant leaves a spare lease
//! that expires).

mod ops;
mod stream;
pub mod wire;

use bytes::Bytes;
pub use ops::{CreatedAt, Op};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use stream::Watch;
use wire::{ErrorBody, StatusResponse};

/// How long one attempt on one endpoint may take. A write takes milliseconds;
/// an election (500 ms in the prod template) fits in a try or two. A leader
/// cut off from its peers holds a call until it times out, and so does a
/// follower that still forwards to it, so two attempts in a row can be lost
/// to one partition: at 1 s each, the leader's partition cost 2.04 s of
/// writes under load, over DESIGN §10's 2 s.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(700);
/// How long a call goes on trying endpoints while they fail in ways that may
/// pass (a timeout, no leader yet).
pub const CALL_BUDGET: Duration = Duration::from_secs(3);
/// How long a connection may take to open: on a LAN, milliseconds. A member
/// that is cut off (no answer, not even a refusal) or a name that no longer
/// resolves costs this, not an attempt, and is known as such: nothing was
/// sent. Three endpoints in a row fit in a second (DESIGN §15).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Once a call found that no endpoint takes a request, calls in the next
/// `GONE_FOR` fail at once the same way (nothing was sent: it is as true);
/// the first call after that tries again. So during a whole-cluster outage a
/// write costs nothing but one call's connection attempts every `GONE_FOR`.
pub const GONE_FOR: Duration = Duration::from_millis(500);

/// How a call failed (see the module doc for what each one promises).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// etcd answered with a definite error (gRPC `code`): nothing was done.
    #[error("{message}")]
    Refused { code: i32, message: String },
    /// No attempt can have been applied: nothing took it, or etcd said it did
    /// nothing.
    #[error("{0}")]
    Unavailable(String),
    /// An attempt was sent and not answered: it may have been applied.
    #[error("{0}")]
    Unknown(String),
}

impl Error {
    /// etcd's `NotFound` (a lease that expired or was revoked).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Refused { code: 5, .. })
    }

    /// Whether the call may have happened despite the error.
    pub fn may_have_happened(&self) -> bool {
        matches!(self, Error::Unknown(_))
    }
}

/// How one attempt on one endpoint failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing reached etcd.
    NotSent(String),
    /// etcd answered that it did nothing, for now (another member, or later,
    /// may do it).
    Busy(String),
    /// etcd answered with a definite error.
    Refused { code: i32, message: String },
    /// Sent, not answered: may have happened.
    Unknown(String),
}

impl Failure {
    /// `sent`: whether the request may have been written by then.
    pub(crate) fn from_reqwest(e: &reqwest::Error, sent: bool) -> Failure {
        let why = if e.is_timeout() {
            "no answer in time".to_owned()
        } else {
            chora_api::root_cause(e)
        };
        if e.is_connect() || !sent {
            Failure::NotSent(why)
        } else {
            Failure::Unknown(why)
        }
    }

    /// An error etcd answered, by its gRPC code (rpctypes' errors).
    pub(crate) fn from_etcd(code: i32, message: String) -> Failure {
        match code {
            // Unavailable: some of these are answered before anything is
            // proposed; the rest (`request timed out`, `leader changed`) after.
            14 if ["no leader", "not capable", "not leader"]
                .iter()
                .any(|m| message.contains(m)) =>
            {
                Failure::Busy(message)
            }
            // ResourceExhausted: `too many requests`.
            8 => Failure::Busy(message),
            // Canceled, Unknown, DeadlineExceeded, Aborted, Internal,
            // Unavailable: may have been applied.
            1 | 2 | 4 | 10 | 13 | 14 => Failure::Unknown(message),
            _ => Failure::Refused { code, message },
        }
    }

    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::NotSent(m) | Failure::Busy(m) => Error::Unavailable(m),
            Failure::Refused { code, message } => Error::Refused { code, message },
            Failure::Unknown(m) => Error::Unknown(m),
        }
    }
}

/// etcd through its JSON gateway, over several endpoints. Cheap to clone
/// (one pool, one idea of which endpoint answers).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Base URLs (`http://host:port`), as given.
    endpoints: Vec<String>,
    /// The endpoint to try first: the last one that answered.
    preferred: AtomicUsize,
    /// Since when no endpoint takes a request, and why (see [`GONE_FOR`]).
    gone: Mutex<Option<(Instant, String)>>,
}

impl Client {
    /// A client of these endpoints (`http://host:port`, or `host:port`).
    pub fn new(endpoints: &[String]) -> Result<Client, Error> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| {
                let e = e.trim_end_matches('/');
                if e.contains("://") {
                    e.to_owned()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(Error::Unavailable("no etcd endpoint given".into()));
        }
        let http = chora_api::tls::builder()
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Unavailable(chora_api::root_cause(&e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                preferred: AtomicUsize::new(0),
                gone: Mutex::default(),
            }),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// A request as every call sends it: JSON, and only to a member that
    /// follows a leader (etcd's `hasleader` metadata, which the gateway takes
    /// from `Grpc-Metadata-*` headers).
    fn post(&self, url: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        self.inner
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("grpc-metadata-hasleader", "true")
            .body(body)
    }

    /// One attempt: POST `body` to `path` on endpoint `i`, parse the answer.
    async fn attempt<T>(
        &self,
        i: usize,
        path: &str,
        body: Bytes,
        timeout: Duration,
        parse: &impl Fn(&[u8], &str) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.inner.endpoints[i]);
        let go = async {
            let resp = self
                .post(&url, body)
                .send()
                .await
                .map_err(|e| Failure::from_reqwest(&e, true))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| Failure::from_reqwest(&e, true))?;
            if status.is_success() {
                return parse(&bytes, &url);
            }
            Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) if e.code != 0 => Failure::from_etcd(
                    e.code,
                    if e.message.is_empty() {
                        e.error
                    } else {
                        e.message
                    },
                ),
                _ => {
                    let text = format!("{url}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
                    if status.is_server_error() {
                        Failure::Unknown(text)
                    } else {
                        Failure::Refused {
                            code: 0,
                            message: text,
                        }
                    }
                }
            })
        };
        match tokio::time::timeout(timeout, go).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Unknown(format!("no answer within {timeout:?}"))),
        }
    }

    fn gone_lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        self.inner.gone.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why no endpoint took a request less than [`GONE_FOR`] ago, if so.
    fn gone(&self) -> Option<String> {
        match &*self.gone_lock() {
            Some((since, why)) if since.elapsed() < GONE_FOR => Some(why.clone()),
            _ => None,
        }
    }

    /// Endpoint `i` answered: it is tried first from now on.
    fn answered(&self, i: usize) {
        self.inner.preferred.store(i, Ordering::Relaxed);
        *self.gone_lock() = None;
    }

    /// A call with failover (see the module doc).
    async fn call<T>(
        &self,
        path: &str,
        body: Vec<u8>,
        parse: impl Fn(&[u8], &str) -> Result<T, Failure>,
    ) -> Result<T, Error> {
        if let Some(why) = self.gone() {
            return Err(Error::Unavailable(why));
        }
        let body = Bytes::from(body);
        let n = self.inner.endpoints.len();
        let deadline = tokio::time::Instant::now() + CALL_BUDGET;
        let mut unknown = None;
        let mut last = String::new();
        let mut delay = Duration::from_millis(50);
        loop {
            let start = self.inner.preferred.load(Ordering::Relaxed);
            let mut reached = false;
            for k in 0..n {
                let i = (start + k) % n;
                match self
                    .attempt(i, path, body.clone(), ATTEMPT_TIMEOUT, &parse)
                    .await
                {
                    Ok(v) => {
                        self.answered(i);
                        return Ok(v);
                    }
                    Err(Failure::Refused { code, message }) => {
                        self.answered(i);
                        return Err(Error::Refused { code, message });
                    }
                    // An endpoint that took nothing or never answered is
                    // not where the next round starts: a member cut off
                    // from its peers would cost every round its timeout
                    // while the others elect a leader.
                    Err(Failure::NotSent(m)) => {
                        self.avoid(i);
                        last = m;
                    }
                    Err(Failure::Busy(m)) => {
                        reached = true;
                        last = m;
                    }
                    Err(Failure::Unknown(m)) => {
                        self.avoid(i);
                        reached = true;
                        unknown = Some(m.clone());
                        last = m;
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            if !reached {
                // Nobody took it: nothing to wait for.
                *self.gone_lock() = Some((Instant::now(), last.clone()));
                break;
            }
            *self.gone_lock() = None;
            if tokio::time::Instant::now() + delay >= deadline {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        Err(match unknown {
            Some(m) => Error::Unknown(m),
            None => Error::Unavailable(last),
        })
    }

    /// Whether endpoint `i` answers within `timeout` and follows a leader:
    /// how a watch that fell silent is told apart from one with nothing to say.
    pub async fn serves(&self, i: usize, timeout: Duration) -> bool {
        let r = self
            .attempt(
                i,
                "/v3/maintenance/status",
                Bytes::from_static(b"{}"),
                timeout,
                &|bytes, url| {
                    serde_json::from_slice::<StatusResponse>(bytes)
                        .map_err(|e| Failure::Unknown(format!("{url}: {e}")))
                },
            )
            .await;
        matches!(r, Ok(s) if s.leader != 0)
    }

    /// Calls start elsewhere than endpoint `i` (one that stopped serving).
    pub fn avoid(&self, i: usize) {
        let n = self.inner.endpoints.len();
        let _ = self.inner.preferred.compare_exchange(
            i,
            (i + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}
