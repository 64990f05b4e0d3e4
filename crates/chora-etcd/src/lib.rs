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
//! member that vanished (killed, paused, cut off) costs one attempt. Every call is
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

mod stream;
pub mod wire;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use stream::Watch;
use wire::{
    ErrorBody, LeaseGrantResponse, LeaseKeepAliveResponse, RangeResponse, StatusResponse,
    TxnResponse, b64, prefix_end,
};

/// How long one attempt on one endpoint may take. A write takes milliseconds;
/// an election (500 ms in the prod template) fits in a try or two.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
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

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Puts `value` under `key`, attached to `lease` (0: none).
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

impl Op {
    fn json(&self) -> serde_json::Value {
        match self {
            Op::Put { key, value, lease } => serde_json::json!({"request_put": {
                "key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string(),
            }}),
            Op::Delete { key } => {
                serde_json::json!({"request_delete_range": {"key": b64(key.as_bytes())}})
            }
            Op::Get { key } => serde_json::json!({"request_range": {"key": b64(key.as_bytes())}}),
        }
    }
}

/// A transaction's condition: the key's create revision equals this one (0:
/// the key does not exist).
#[derive(Debug, Clone)]
pub struct CreatedAt {
    pub key: String,
    pub revision: i64,
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
                    Err(Failure::NotSent(m)) => last = m,
                    Err(Failure::Busy(m)) => {
                        reached = true;
                        last = m;
                    }
                    Err(Failure::Unknown(m)) => {
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

    async fn unary<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, Error> {
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        self.call(path, body, |bytes, url| {
            serde_json::from_slice(bytes)
                .map_err(|e| Failure::Unknown(format!("{url}: unexpected answer ({e})")))
        })
        .await
    }

    /// The key `key`, or with `prefix` every key that starts with it.
    pub async fn range(&self, key: &str, prefix: bool) -> Result<RangeResponse, Error> {
        let mut body = serde_json::json!({"key": b64(key.as_bytes())});
        if prefix {
            body["range_end"] = b64(&prefix_end(key.as_bytes())).into();
        }
        self.unary("/v3/kv/range", body).await
    }

    /// How many keys start with `prefix` (a linearizable read: a member
    /// that answers is part of a working cluster).
    pub async fn count(&self, prefix: &str) -> Result<i64, Error> {
        let body = serde_json::json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "count_only": true,
        });
        let r: RangeResponse = self.unary("/v3/kv/range", body).await?;
        Ok(r.count)
    }

    /// A transaction: when every condition holds, `success`, else `failure`.
    pub async fn txn(
        &self,
        when: &[CreatedAt],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResponse, Error> {
        let compare: Vec<serde_json::Value> = when
            .iter()
            .map(|c| {
                serde_json::json!({"target": "CREATE", "result": "EQUAL",
                    "key": b64(c.key.as_bytes()), "create_revision": c.revision.to_string()})
            })
            .collect();
        let body = serde_json::json!({
            "compare": compare,
            "success": success.iter().map(Op::json).collect::<Vec<_>>(),
            "failure": failure.iter().map(Op::json).collect::<Vec<_>>(),
        });
        self.unary("/v3/kv/txn", body).await
    }

    /// A new lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, Error> {
        let r: LeaseGrantResponse = self
            .unary(
                "/v3/lease/grant",
                serde_json::json!({"TTL": ttl.to_string()}),
            )
            .await?;
        if !r.error.is_empty() || r.id == 0 {
            return Err(Error::Refused {
                code: 0,
                message: format!("no lease granted: {}", r.error),
            });
        }
        Ok(r.id)
    }

    /// Revokes a lease (deleting every key on it): true when it was there,
    /// false when it was already gone.
    pub async fn revoke(&self, lease: i64) -> Result<bool, Error> {
        let body = serde_json::json!({"ID": lease.to_string()});
        match self
            .unary::<serde_json::Value>("/v3/lease/revoke", body)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews leases, all in one request (the gateway's keep-alive stream
    /// takes one message per lease and answers each); each lease's TTL
    /// left, 0 for one that is gone. Every lease asked is in the answer.
    pub async fn keep_alive(&self, leases: &[i64]) -> Result<Vec<(i64, i64)>, Error> {
        let mut body = Vec::with_capacity(leases.len() * 32);
        for l in leases {
            body.extend_from_slice(format!("{{\"ID\":\"{l}\"}}\n").as_bytes());
        }
        self.call("/v3/lease/keepalive", body, |bytes, url| {
            let mut out = Vec::with_capacity(leases.len());
            for line in bytes.split(|&b| b == b'\n') {
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let msg: wire::StreamLine<LeaseKeepAliveResponse> = serde_json::from_slice(line)
                    .map_err(|e| Failure::Unknown(format!("{url}: unexpected answer ({e})")))?;
                match (msg.result, msg.error) {
                    (Some(r), _) => out.push((r.id, r.ttl)),
                    (None, Some(e)) => return Err(Failure::from_etcd(e.grpc_code, e.message)),
                    (None, None) => {}
                }
            }
            if out.len() != leases.len() {
                return Err(Failure::Unknown(format!(
                    "{url}: {} of {} renewals answered",
                    out.len(),
                    leases.len()
                )));
            }
            Ok(out)
        })
        .await
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

    /// Watches every key that starts with `prefix`, from `start_revision`
    /// on: on the first endpoint (in the usual order) that sets it up within
    /// an attempt's time.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, Error> {
        let body = serde_json::json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "start_revision": start_revision.to_string(),
        }})
        .to_string();
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let mut last = Failure::NotSent("no endpoint".into());
        for k in 0..n {
            let i = (start + k) % n;
            let url = format!("{}/v3/watch", self.inner.endpoints[i]);
            let open = async {
                let resp = self
                    .post(&url, body.clone())
                    .send()
                    .await
                    .map_err(|e| Failure::from_reqwest(&e, true))?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    return Err(Failure::Unknown(format!("{url}: HTTP {status}: {text}")));
                }
                let mut lines = stream::Lines::new(resp, url.clone());
                match lines.next::<wire::WatchResponse>().await? {
                    Some(first) if first.created && !first.canceled => {
                        Ok(Watch { lines, endpoint: i })
                    }
                    Some(first) => Err(Failure::Refused {
                        code: 0,
                        message: format!("watch not created: {}", first.cancel_reason),
                    }),
                    None => Err(Failure::Unknown(format!("{url}: the watch ended at once"))),
                }
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, open).await {
                Ok(Ok(w)) => {
                    self.answered(i);
                    return Ok(w);
                }
                Ok(Err(f)) => last = f,
                Err(_) => last = Failure::Unknown(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
            }
        }
        Err(last.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_fail_over_renew_in_one_request_and_say_when_nothing_happened() {
        if !chora_testkit::etcd_available("chora_etcd::calls_fail_over") {
            return;
        }
        let mut cluster = chora_testkit::EtcdCluster::start(1);
        let dead = format!("http://127.0.0.1:{}", chora_testkit::free_port());
        let client = Client::new(&[dead, cluster.urls()[0].clone()]).unwrap();

        // The first endpoint refuses: the call goes on to the second.
        let lease = client.grant(30).await.unwrap();
        let put = Op::Put {
            key: "/t/a".into(),
            value: b"1".to_vec(),
            lease,
        };
        let r = client.txn(&[], &[put], &[]).await.unwrap();
        assert!(r.header.revision > 0);
        let got = client.range("/t/", true).await.unwrap();
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(
            (got.kvs[0].key_str(), &got.kvs[0].value[..]),
            (Some("/t/a"), &b"1"[..])
        );
        assert_eq!(got.kvs[0].lease, lease);
        assert_eq!(client.count("/t/").await.unwrap(), 1);

        // One request renews several leases; a gone one says so.
        let renewed = client.keep_alive(&[lease, 12345, lease]).await.unwrap();
        assert_eq!(renewed.len(), 3);
        assert!(renewed[0].1 > 0 && renewed[2].1 > 0, "{renewed:?}");
        assert_eq!(renewed[1], (12345, 0));

        // A definite refusal is not a failure to reach etcd.
        let late = Op::Put {
            key: "/t/b".into(),
            value: b"1".to_vec(),
            lease: 12345,
        };
        let e = client.txn(&[], &[late], &[]).await.unwrap_err();
        assert!(e.is_not_found() && !e.may_have_happened(), "{e:?}");
        assert!(client.revoke(lease).await.unwrap());
        assert!(!client.revoke(lease).await.unwrap());

        // Nothing listens: known not to have happened, at once. (The first
        // call may meet a pooled connection the dead member closed: a request
        // written there may have been read, so that one may be unknown.)
        cluster.members[0].kill();
        let t = Instant::now();
        let _ = client.grant(30).await.unwrap_err();
        let e = client.grant(30).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        assert!(!e.may_have_happened());
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
