//! The typed async client of the Manifest, with fail-over between several URLs.

use crate::manifest::{
    Health, Heartbeat, INDEX_HEADER, Instance, ListFilter, Registered, Registration, Service,
    Status,
};
use crate::{ErrorBody, root_cause};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
}

impl ManifestClient {
    /// A client for one or more Manifest base URLs (`http://127.0.0.1:8500`). With
    /// several, a request that cannot connect (or meets a 503) tries the next one.
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

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Sends one request, failing over to the next URL when a URL cannot be
    /// reached or answers 503. Returns the response of the first URL that answered.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn erased::Body>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let n = self.urls.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last_reason = String::new();
        let mut last_503 = None;
        for k in 0..n {
            let i = (first + k) % n;
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
                Ok(resp) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => last_reason = root_cause(&e),
            }
        }
        match last_503 {
            Some(resp) => Ok(resp),
            None => Err(ClientError::Unreachable {
                urls: self.urls.join(", "),
                reason: last_reason,
            }),
        }
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

    /// Registers (or re-registers, with `reg.id` set) an instance.
    pub async fn register(&self, reg: &Registration) -> Result<Registered, ClientError> {
        let resp = self
            .send(Method::POST, "/v1/services", &[], Some(reg), self.timeout)
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
                self.timeout,
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
        let resp = self
            .send(Method::DELETE, &path, &[], None, self.timeout)
            .await?;
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
                self.timeout,
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
        let mut timeout = self.timeout;
        if let Some((index, wait)) = block {
            q.push(("index", index.to_string()));
            q.push(("wait", format!("{}ms", wait.as_millis())));
            timeout += wait;
        }
        let resp = self
            .send(Method::GET, "/v1/services", &q, None, timeout)
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
            .send(Method::GET, "/v1/health", &[], None, self.timeout)
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
