//! The typed async client of the Manifest, with fail-over between several URLs.
//!
//! With several URLs, a request goes first to the URL that answered last, and
//! on to the next one when a URL cannot be reached, answers 503, or does not
//! answer within the per-attempt timeout ([`ManifestClient::with_attempt_timeout`],
//! 1 s by default): a node that accepts connections but never answers (a
//! paused container, whose kernel still completes the TCP handshake) costs one
//! short attempt, not the whole timeout. The last URL tried gets what is left of
//! the request's timeout. Blocking reads (`?index=&wait=`) are not cut short:
//! each attempt has the wait plus the per-attempt timeout (with one URL, plus
//! the request's timeout), since a server cannot be told from a paused one
//! before its wait is over; a follower parked on a node that pauses moves on
//! then (the gateway waits 5 s at a time when it has several nodes).
//!
//! Every request is safe to send twice: heartbeats and deregistrations are
//! idempotent, and so is a registration that names its id. A registration
//! without one is given an id here (`<name>-<8 hex>`, the form the Manifest
//! would pick) whenever there is another URL to retry on, so that a retry after
//! a timeout cannot create a second instance.

use crate::manifest::{
    Health, Heartbeat, INDEX_HEADER, Instance, ListFilter, Registered, Registration, Service,
    Status,
};
use crate::{ErrorBody, root_cause};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The default per-attempt timeout of a request that has another URL to try.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);

/// What can go wrong talking to the Manifest.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No configured URL answered at all.
    #[error("cannot reach the Manifest at {urls}: {reason}")]
    Unreachable { urls: String, reason: String },
    /// The instance or service does not exist (404).
    #[error("{message}")]
    NotFound { message: String },
    /// Any other error answer.
    #[error("the Manifest answered {status}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The answer was not what the protocol says.
    #[error("the Manifest at {url} sent an unexpected answer: {message}")]
    Protocol { url: String, message: String },
    #[error("invalid Manifest URL `{0}` (expected http://host:port)")]
    BadUrl(String),
}

impl ClientError {
    /// True when nothing answered (the registry is down or unreachable).
    /// True when the write may have happened although it answered an error:
    /// the Manifest could not learn its outcome (`write_outcome_unknown`), or
    /// no node answered in time. Repeating it (the same id) is safe.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::Api { code, .. } => code == "write_outcome_unknown",
            // Unless every node refused the connection outright.
            ClientError::Unreachable { reason, .. } => {
                !reason.split("; ").all(|r| r.contains("refused"))
            }
            _ => false,
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }
}

/// A Manifest client. Cheap to clone; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct ManifestClient {
    http: reqwest::Client,
    urls: Arc<[String]>,
    /// Index into `urls` of the last URL that answered; tried first.
    preferred: Arc<AtomicUsize>,
    token: Option<Arc<str>>,
    timeout: Duration,
    /// How long one attempt may take when another URL is left to try.
    attempt_timeout: Duration,
}

impl ManifestClient {
    /// A client for one or more Manifest base URLs (`http://127.0.0.1:8500`); each
    /// argument may itself be a comma-separated list. With several, a request
    /// that cannot connect, meets a 503 or gets no answer in time tries the next.
    pub fn new<I, S>(urls: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls
            .into_iter()
            .flat_map(|u| {
                u.as_ref()
                    .split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ClientError::BadUrl(String::new()));
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ClientError::BadUrl(u.clone()));
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::BadUrl(e.to_string()))?;
        Ok(ManifestClient {
            http,
            urls: urls.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            token: None,
            timeout: Duration::from_secs(10),
            attempt_timeout: ATTEMPT_TIMEOUT,
        })
    }

    /// Sends `Authorization: Bearer <token>` on writes (an API key or admin JWT).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// The per-request timeout (blocking reads add their wait to it).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long one attempt of a request that is not a blocking read may take
    /// while another URL is left to try (capped by the request timeout; the
    /// last URL gets the rest of the request timeout). With one URL it is unused.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The timeout of attempt `k` (of `n`), `elapsed` into the request.
    fn attempt_timeout(
        &self,
        k: usize,
        n: usize,
        wait: Option<Duration>,
        elapsed: Duration,
    ) -> Duration {
        let short = self.attempt_timeout.min(self.timeout);
        match wait {
            // A node answers a blocking read when its wait is over: one that
            // has not a moment later is paused or gone.
            Some(wait) if n > 1 => wait + short,
            Some(wait) => self.timeout + wait,
            None if n == 1 => self.timeout,
            None if k + 1 == n => self.timeout.saturating_sub(elapsed).max(short),
            None => short,
        }
    }

    /// Sends one request, failing over to the next URL when a URL cannot be
    /// reached, does not answer in time or answers 503 (see the module doc).
    /// `wait` is a blocking read's wait. Returns the response of the first URL
    /// that answered.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn erased::Body>,
        wait: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let n = self.urls.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let started = Instant::now();
        let mut reasons = Vec::new();
        let mut last_503 = None;
        let mut uncertain: Option<String> = None;
        for k in 0..n {
            let i = (first + k) % n;
            let timeout = self.attempt_timeout(k, n, wait, started.elapsed());
            let url = format!("{}{}", self.urls[i], path);
            let mut req = self.http.request(method.clone(), &url).timeout(timeout);
            if !query.is_empty() {
                req = req.query(query);
            }
            if let (Some(t), true) = (&self.token, method != Method::GET) {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_json());
            }
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && k + 1 < n => {
                    last_503 = Some(resp);
                }
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    return self.unavailable(resp, uncertain).await;
                }
                Ok(resp) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) if e.is_timeout() => {
                    let why = format!(
                        "{} did not answer within {} ms",
                        self.urls[i],
                        timeout.as_millis()
                    );
                    // A write sent to a node that did not answer may have
                    // happened there, whatever the other nodes say after.
                    if method != Method::GET {
                        uncertain.get_or_insert_with(|| why.clone());
                    }
                    reasons.push(why);
                }
                Err(e) if n > 1 => reasons.push(format!("{}: {}", self.urls[i], root_cause(&e))),
                Err(e) => reasons.push(root_cause(&e)),
            }
        }
        match last_503 {
            Some(resp) => self.unavailable(resp, uncertain).await,
            None => Err(ClientError::Unreachable {
                urls: self.urls.join(", "),
                reason: reasons.join("; "),
            }),
        }
    }

    /// A 503 to return: as it is, unless an earlier attempt of the same write
    /// went unanswered, which leaves its outcome open (`write_outcome_unknown`).
    async fn unavailable(
        &self,
        resp: reqwest::Response,
        uncertain: Option<String>,
    ) -> Result<reqwest::Response, ClientError> {
        let Some(why) = uncertain else {
            return Ok(resp);
        };
        let then = Self::error_of(resp).await;
        Err(ClientError::Api {
            status: 503,
            code: "write_outcome_unknown".into(),
            message: format!(
                "the write may or may not have happened (repeat it with the same id): {why}; then {then}"
            ),
        })
    }

    async fn error_of(resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let url = resp.url().to_string();
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.error, b.message),
            Err(_) => (String::new(), text.chars().take(200).collect()),
        };
        if status == StatusCode::NOT_FOUND {
            return ClientError::NotFound { message };
        }
        if code.is_empty() && message.is_empty() {
            return ClientError::Protocol {
                url,
                message: format!("status {status} with no body"),
            };
        }
        ClientError::Api {
            status: status.as_u16(),
            code,
            message,
        }
    }

    async fn json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Protocol {
            url: url.clone(),
            message: root_cause(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url,
            message: e.to_string(),
        })
    }

    /// Registers (or re-registers, with `reg.id` set) an instance. Without an id
    /// and with several URLs, the id is chosen here (see the module doc).
    pub async fn register(&self, reg: &Registration) -> Result<Registered, ClientError> {
        let chosen;
        let reg = if reg.id.is_none() && self.urls.len() > 1 {
            chosen = Registration {
                id: Some(format!("{}-{}", reg.name, crate::random_hex(4))),
                ..reg.clone()
            };
            &chosen
        } else {
            reg
        };
        let resp = self
            .send(Method::POST, "/v1/services", &[], Some(reg), None)
            .await?;
        if resp.status().is_success() {
            Self::json(resp).await
        } else {
            Err(Self::error_of(resp).await)
        }
    }

    /// Heartbeats an instance; `status` reports it up or unhealthy. A
    /// [`ClientError::NotFound`] means the registry no longer knows it: register again.
    pub async fn heartbeat(
        &self,
        name: &str,
        id: &str,
        status: Option<Status>,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/services/{name}/{id}/heartbeat");
        let body = status.map(|status| Heartbeat { status });
        let resp = self
            .send(
                Method::PUT,
                &path,
                &[],
                body.as_ref().map(|b| b as &dyn erased::Body),
                None,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::error_of(resp).await)
        }
    }

    /// Removes an instance. Succeeds when it was already gone.
    pub async fn deregister(&self, name: &str, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/services/{name}/{id}");
        let resp = self.send(Method::DELETE, &path, &[], None, None).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::error_of(resp).await)
        }
    }

    /// One service by exact name, with all its instances.
    pub async fn get(&self, name: &str) -> Result<Service, ClientError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v1/services/{name}"),
                &[],
                None,
                None,
            )
            .await?;
        if resp.status().is_success() {
            Self::json(resp).await
        } else {
            Err(Self::error_of(resp).await)
        }
    }

    /// All instances matching `filter`, sorted by name then id.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Instance>, ClientError> {
        Ok(self.watch(filter, None).await?.0)
    }

    /// A blocking read of the list: with `Some((index, wait))` the registry answers
    /// once its change index passes `index` or `wait` elapses. Returns the list and
    /// the index to pass next time.
    pub async fn watch(
        &self,
        filter: &ListFilter,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<Instance>, u64), ClientError> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(s) = filter.status {
            q.push(("status", s.to_string()));
        }
        if let Some(t) = &filter.tag {
            q.push(("tag", t.clone()));
        }
        if let Some(n) = &filter.name {
            q.push(("name", n.clone()));
        }
        if let Some((index, wait)) = block {
            q.push(("index", index.to_string()));
            q.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let resp = self
            .send(Method::GET, "/v1/services", &q, None, block.map(|b| b.1))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        let index = resp
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((Self::json(resp).await?, index))
    }

    /// `GET /v1/health`. A 503 answer is returned as `Ok` with status `unhealthy`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let resp = self
            .send(Method::GET, "/v1/health", &[], None, None)
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            Self::json(resp).await
        } else {
            Err(Self::error_of(resp).await)
        }
    }
}

/// Lets `send` take any serializable body without being generic over it.
mod erased {
    pub trait Body: Sync {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize + Sync> Body for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("wire types serialize")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Json;
    use axum::extract::{Query, State};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A port whose kernel completes TCP handshakes but whose owner never
    /// accepts nor answers: what a paused process or container looks like.
    fn silent() -> (std::net::TcpListener, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        (l, url)
    }

    /// A stand-in Manifest that records the registrations it gets and answers
    /// a blocking read after its wait.
    async fn answering() -> (String, Arc<Mutex<Vec<Registration>>>) {
        type Seen = Arc<Mutex<Vec<Registration>>>;
        async fn register(
            State(seen): State<Seen>,
            Json(reg): Json<Registration>,
        ) -> Json<Registered> {
            seen.lock().unwrap().push(reg.clone());
            Json(Registered {
                id: reg.id.unwrap_or_else(|| format!("{}-server01", reg.name)),
                name: reg.name,
                version: reg.version,
                status: Status::Up,
                registered_at: "2026-01-01T00:00:00Z".into(),
                heartbeat_interval: 10.0,
                heartbeat_timeout: 30.0,
            })
        }
        async fn list(Query(q): Query<HashMap<String, String>>) -> Json<Vec<Instance>> {
            if let Some(wait) = q.get("wait") {
                let ms: u64 = wait.trim_end_matches("ms").parse().unwrap();
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Json(Vec::new())
        }
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/v1/services", axum::routing::post(register).get(list))
            .with_state(seen.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (url, seen)
    }

    fn reg() -> Registration {
        Registration {
            name: "svc".into(),
            version: "1".into(),
            interfaces: Default::default(),
            metadata: None,
            id: None,
        }
    }

    #[tokio::test]
    async fn a_url_that_never_answers_costs_one_short_attempt_and_the_id_is_chosen_first() {
        let (_held, mute) = silent();
        let (good, seen) = answering().await;
        let client = ManifestClient::new([mute, good])
            .unwrap()
            .with_attempt_timeout(Duration::from_millis(300));
        let t = Instant::now();
        let out = client.register(&reg()).await.unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // The id was chosen before the first attempt, in the Manifest's form,
        // so the retry on the second URL carried the same one.
        let sent = seen.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let id = sent[0].id.clone().expect("the client chose an id");
        assert_eq!(out.id, id);
        let hex = id.strip_prefix("svc-").unwrap();
        assert!(
            hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        // The URL that answered is tried first from now on.
        assert_eq!(client.preferred.load(Ordering::Relaxed), 1);
        client.list(&ListFilter::default()).await.unwrap();
        assert_eq!(client.preferred.load(Ordering::Relaxed), 1);
        // Two registrations without an id are two instances.
        client.register(&reg()).await.unwrap();
        let sent = seen.lock().unwrap().clone();
        assert_ne!(sent[0].id, sent[1].id);
    }

    #[tokio::test]
    async fn with_one_url_the_manifest_picks_the_id() {
        let (good, seen) = answering().await;
        let out = ManifestClient::new([good])
            .unwrap()
            .register(&reg())
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap()[0].id, None);
        assert_eq!(out.id, "svc-server01");
    }

    #[tokio::test]
    async fn a_blocking_read_keeps_its_wait() {
        let (good, _) = answering().await;
        let (_held, mute) = silent();
        let client = ManifestClient::new([good, mute])
            .unwrap()
            .with_timeout(Duration::from_secs(2))
            .with_attempt_timeout(Duration::from_millis(100));
        let t = Instant::now();
        let block = Some((7, Duration::from_millis(500)));
        client.watch(&ListFilter::default(), block).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(500));
        assert_eq!(client.preferred.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_blocking_read_parked_on_a_silent_node_moves_on_after_its_wait() {
        let (good, _) = answering().await;
        let (_held, mute) = silent();
        let client = ManifestClient::new([mute, good])
            .unwrap()
            .with_timeout(Duration::from_secs(10))
            .with_attempt_timeout(Duration::from_millis(100));
        let t = Instant::now();
        let block = Some((7, Duration::from_millis(300)));
        client.watch(&ListFilter::default(), block).await.unwrap();
        let took = t.elapsed();
        // 300 + 100 ms on the silent node, then the good one's 300 ms wait.
        assert!(took >= Duration::from_millis(700), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(client.preferred.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn when_no_url_answers_the_request_keeps_to_its_timeout_and_says_why() {
        let (_a, a) = silent();
        let (_b, b) = silent();
        let client = ManifestClient::new([format!("{a},{b}")])
            .unwrap()
            .with_timeout(Duration::from_millis(800))
            .with_attempt_timeout(Duration::from_millis(200));
        let t = Instant::now();
        let e = client.heartbeat("svc", "svc-1", None).await.unwrap_err();
        let took = t.elapsed();
        // 200 ms on the first URL, the remaining 600 ms on the last.
        assert!(took >= Duration::from_millis(800), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(e.is_unreachable(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("{a} did not answer within 200 ms")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{b} did not answer within")),
            "{text}"
        );
    }
}
