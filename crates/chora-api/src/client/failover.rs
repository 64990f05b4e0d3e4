//! Fail-over: one request tried on each Manifest URL in turn (the module doc
//! of [`super`] says the rules), with each attempt's timeout, and the one place
//! a write's outcome is declared unknown.
//!
//! Invariants: the URL that answered last is tried first; only an unreachable
//! URL, a 503 or an attempt timeout moves on to the next; any other answer,
//! error or not, is the request's answer. A write (not a GET) that went
//! unanswered on one node is never reported as a plain failure, since the
//! silent node may have applied it: a later 503 becomes `write_outcome_unknown`,
//! and when no node answers [`ClientError::outcome_unknown`] says so (unless
//! every node refused the connection).

use super::{ClientError, ManifestClient};
use crate::root_cause;
use reqwest::{Method, StatusCode};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl ManifestClient {
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
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&dyn JsonBody>,
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
        let then = ClientError::from_answer(resp).await;
        Err(ClientError::Api {
            status: 503,
            code: "write_outcome_unknown".into(),
            message: format!(
                "the write may or may not have happened (repeat it with the same id): {why}; then {then}"
            ),
        })
    }
}

/// A request body: any wire type, sent as JSON, without making `send`
/// generic over it.
pub(super) trait JsonBody: Sync {
    fn to_json(&self) -> Vec<u8>;
}

impl<T: serde::Serialize + Sync> JsonBody for T {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("wire types serialize")
    }
}
