//! `OrchestratorClient`: the orchestrator's API (DESIGN.md §5) as typed calls.
//! The bootstrap, `validate` and the operator commands talk to the
//! orchestrator only through it. Every call carries the admin token it was
//! given and, when set, the caller's fencing token (`X-Chora-Fencing-Token`,
//! DESIGN §15); an error keeps the orchestrator's own JSON message.

use crate::orchestrator::{DeploySpec, Deployed, ServiceStatus, StateChange};
use std::time::Duration;

/// The header that carries a bootstrap's fencing token.
pub const FENCING_HEADER: &str = "x-chora-fencing-token";

/// Why an orchestrator call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrchestratorError {
    /// Nothing answered at the URL (refused, reset, timed out).
    #[error("the orchestrator at {url} did not answer: {reason}")]
    Unreachable {
        url: String,
        reason: String,
        /// The connection was refused: nothing listens there.
        refused: bool,
    },
    /// It answered with an error.
    #[error("the orchestrator answered {}: {message}", status_text(*status))]
    Status {
        status: u16,
        /// The JSON body's `error` code (`stale_fencing_token`, …), if any.
        code: Option<String>,
        message: String,
    },
    #[error("the orchestrator sent an unexpected answer: {0}")]
    Decode(String),
}

/// `409 Conflict`.
fn status_text(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| status.to_string())
}

impl OrchestratorError {
    /// The orchestrator refused a stale fencing token: this caller lost its
    /// lock to a newer one.
    pub fn lost_lock(&self) -> bool {
        matches!(self, OrchestratorError::Status { status: 409, code: Some(c), .. } if c == "stale_fencing_token")
    }
}

#[derive(Debug, Clone)]
pub struct OrchestratorClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    fencing: Option<u64>,
    timeout: Duration,
}

impl OrchestratorClient {
    /// A client of the orchestrator at `base` (`http://HOST:PORT`).
    pub fn new(base: impl Into<String>, http: reqwest::Client) -> Self {
        OrchestratorClient {
            base: base.into().trim_end_matches('/').to_owned(),
            http,
            token: None,
            fencing: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends `Authorization: Bearer TOKEN` (an admin JWT).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Sends the caller's fencing token with every call.
    pub fn with_fencing(mut self, token: Option<u64>) -> Self {
        self.fencing = token;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(f) = self.fencing {
            req = req.header(FENCING_HEADER, f.to_string());
        }
        req
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, OrchestratorError> {
        let resp = req
            .send()
            .await
            .map_err(|e| OrchestratorError::Unreachable {
                url: self.base.clone(),
                reason: crate::root_cause(&e),
                refused: e.is_connect(),
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<crate::ErrorBody>(&text) {
            Ok(b) => OrchestratorError::Status {
                status,
                code: Some(b.error),
                message: b.message,
            },
            Err(_) => OrchestratorError::Status {
                status,
                code: None,
                message: text,
            },
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, OrchestratorError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| OrchestratorError::Decode(e.to_string()))
    }

    /// `GET /v1/services`: every deployment.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, OrchestratorError> {
        self.json(self.request(reqwest::Method::GET, "/v1/services"))
            .await
    }

    /// `POST /v1/deploy`; a repeat with the same `idempotency_key` deploys
    /// nothing new.
    pub async fn deploy(
        &self,
        spec: &DeploySpec,
        idempotency_key: &str,
    ) -> Result<Deployed, OrchestratorError> {
        let req = self
            .request(reqwest::Method::POST, "/v1/deploy")
            .header("idempotency-key", idempotency_key)
            .json(spec);
        self.json(req).await
    }

    /// `POST /v1/services/{name}/{stop|start|restart}`.
    pub async fn act(&self, name: &str, action: Action) -> Result<StateChange, OrchestratorError> {
        let path = format!("/v1/services/{name}/{}", action.as_str());
        self.json(self.request(reqwest::Method::POST, &path)).await
    }

    /// `DELETE /v1/services/{name}`: stops it and forgets it.
    pub async fn remove(&self, name: &str) -> Result<(), OrchestratorError> {
        let path = format!("/v1/services/{name}");
        self.send(self.request(reqwest::Method::DELETE, &path))
            .await
            .map(drop)
    }
}

/// What `POST /v1/services/{name}/{action}` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    Restart,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Restart => "restart",
        }
    }
}
