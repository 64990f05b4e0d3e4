//! The orchestrator's wire types (DESIGN.md §5, "Orchestrator").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/deploy` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    pub name: String,
    pub version: String,
    pub port: u16,
    /// argv of a local process. Without `command` and `image`, a capability name
    /// runs as `chora capability serve --name NAME --listen 127.0.0.1:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A Docker image (the Docker runtime only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The child's environment; this is how secrets reach it (never argv).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Who registers it in the Manifest (default: `chora`, the orchestrator on
    /// its behalf; a built-in capability registers itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<Register>,
    /// What the orchestrator checks to keep a registration on behalf alive:
    /// `http(s)://…` (2xx) or `tcp://HOST:PORT`. Default
    /// `http://127.0.0.1:<port>/health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_endpoint: Option<String>,
    /// Containers: `NAME:/path` (volume `<project>-NAME`) or `/host:/path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Containers: the port inside (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    /// Seconds a new version replacing a running one may take to be healthy
    /// before the old one is brought back (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<u32>,
    /// A CA file (on the orchestrator's machine) to trust for an `https://`
    /// health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// How many copies run (default 1): on a fleet, one Swarm service of
    /// this many tasks spread over the hosts (DESIGN.md §13). A runtime of
    /// one machine refuses more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// Who keeps a service registered in the Manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Register {
    /// The service registers and heartbeats itself (chora's own services).
    #[serde(rename = "self")]
    Itself,
    /// Whoever started it registers it and keeps it alive while its health
    /// check passes.
    Chora,
}

impl DeploySpec {
    /// The `url` of a deployed service.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Who registers it: as asked, else a built-in capability (no command, no
    /// image) itself and anything else chora.
    pub fn registers(&self) -> Register {
        self.register.unwrap_or(
            if self.command.is_none()
                && self.image.is_none()
                && crate::CAPABILITIES.contains(&self.name.as_str())
            {
                Register::Itself
            } else {
                Register::Chora
            },
        )
    }

    pub fn health_url(&self) -> String {
        self.health_endpoint
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}/health", self.port))
    }
}

/// `POST /v1/deploy` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    pub status: State,
    pub url: String,
    /// When it replaced a running deployment of another spec: how
    /// (`start-first`, or `stop-first: why`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

impl ServiceStatus {
    /// Every Manifest instance id its current unit registers under: each
    /// copy's, or the one `instance_id` (none before it started).
    pub fn instance_ids(&self) -> Vec<String> {
        if self.instance_ids.is_empty() {
            self.instance_id.iter().cloned().collect()
        } else {
            self.instance_ids.clone()
        }
    }
}

/// The state of a deployed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its process is running.
    Running,
    /// It died unasked and waits out its restart backoff.
    Restarting,
    /// Stopped on request.
    Stopped,
    /// It exited by itself with status 0: not restarted.
    Exited,
    /// It kept failing: restarts gave up.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Restarting => "restarting",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
}

/// `POST /v1/services/{name}/stop|start|restart` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub name: String,
    pub state: State,
}

/// One row of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub version: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `process` or `docker`.
    #[serde(default)]
    pub runtime: String,
    pub restarts: u32,
    pub url: String,
    /// When the current (or last) process started, RFC 3339.
    pub started_at: Option<String>,
    /// The Manifest instance id the current process registers under.
    pub instance_id: Option<String>,
    /// When its copies register under ids of their own (the tasks of a
    /// replicated Swarm service, DESIGN.md §13): every one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_ids: Vec<String>,
    /// How the last process ended, when it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}
