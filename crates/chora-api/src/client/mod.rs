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
//!
//! `failover.rs` holds that: the order URLs are tried in, each attempt's
//! timeout, and when a failed write's outcome is unknown. `error.rs` is
//! [`ClientError`], what an error answer becomes.

mod error;
mod failover;
#[cfg(test)]
mod tests;

pub use error::ClientError;

use crate::manifest::{
    Health, Heartbeat, INDEX_HEADER, Instance, ListFilter, Registered, Registration, Service,
    Status,
};
use crate::root_cause;
use failover::JsonBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

/// The default per-attempt timeout of a request that has another URL to try.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);

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
        let http = crate::tls::builder()
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
            Err(ClientError::from_answer(resp).await)
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
                body.as_ref().map(|b| b as &dyn JsonBody),
                None,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ClientError::from_answer(resp).await)
        }
    }

    /// Removes an instance. Succeeds when it was already gone.
    pub async fn deregister(&self, name: &str, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/services/{name}/{id}");
        let resp = self.send(Method::DELETE, &path, &[], None, None).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ClientError::from_answer(resp).await)
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
            Err(ClientError::from_answer(resp).await)
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
            return Err(ClientError::from_answer(resp).await);
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
            Err(ClientError::from_answer(resp).await)
        }
    }
}
