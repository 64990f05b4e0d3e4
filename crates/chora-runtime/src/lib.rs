//! The one runtime seam (DESIGN.md §9): how chora starts a service, finds it
//! again after a restart of whoever started it, stops it with a grace period,
//! waits for it and reads its logs, whether it is a local process
//! ([`process::ProcessRuntime`]) or a Docker container
//! ([`docker::DockerRuntime`]). The orchestrator (phase 3) and the bootstrap
//! (phases 1-2) both use it; nothing else in chora spawns a service.
//!
//! - [`proc`]: processes identified by pid *and* start time, pid files, who
//!   holds a port.
//! - [`check`]: one health check (`http(s)://…` GET or `tcp://HOST:PORT`).

pub mod behalf;
pub mod check;
pub mod compose;
pub mod docker;
pub mod proc;
pub mod process;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use proc::{ProcId, write_atomic};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which runtime runs a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Process,
    Docker,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        }
    }
}

/// A named volume (`NAME:/path`, created as `<project>-NAME`) or a bind mount of
/// a host path (`/host/path:/path`), optionally read-only (`…:ro`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Volume {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

impl Volume {
    /// Parses `NAME:/path[:ro|:rw]` or `/host:/path[:ro|:rw]`.
    pub fn parse(s: &str) -> Result<Volume, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [a, b] => (*a, *b, None),
            [a, b, m] => (*a, *b, Some(*m)),
            _ => {
                return Err(format!(
                    "`{s}` is not `NAME:/path` or `/host/path:/path` (with an optional `:ro`)"
                ));
            }
        };
        if source.is_empty() {
            return Err(format!("`{s}`: the volume name or host path is empty"));
        }
        if !source.starts_with('/')
            && !source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(format!(
                "`{s}`: a volume name may hold only letters, digits, `_`, `.` and `-` (or give an absolute host path)"
            ));
        }
        if !target.starts_with('/') {
            return Err(format!(
                "`{s}`: the path inside the container must be absolute"
            ));
        }
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(format!("`{s}`: unknown mode `{m}` (expected ro or rw)")),
        };
        Ok(Volume {
            source: source.to_owned(),
            target: target.to_owned(),
            read_only,
        })
    }

    pub fn is_bind(&self) -> bool {
        self.source.starts_with('/')
    }
}

/// What to run. A process runs `argv`; a container runs `image` with `argv` as
/// its command (empty: the image's own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    /// The service name: the log file `<name>.log`, the pid file, the container
    /// name `<project>-<name>` and its `io.chora.service` label.
    pub name: String,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Secrets travel here, never in argv, labels or images.
    #[serde(default, skip_serializing)]
    pub env: BTreeMap<String, String>,
    /// Published on 127.0.0.1 (containers); the port the service listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The port inside the container (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Extra labels (never secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl UnitSpec {
    pub fn inner_port(&self) -> Option<u16> {
        self.container_port.or(self.port)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start `{program}`: {message}")]
    Spawn { program: String, message: String },
    #[error("{0}")]
    Docker(String),
    #[error("{0}")]
    Unsupported(String),
}

/// How a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What identifies a running unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitId {
    Process(ProcId),
    Container(String),
}

impl UnitId {
    pub fn pid(&self) -> Option<u32> {
        match self {
            UnitId::Process(p) => Some(p.pid),
            UnitId::Container(_) => None,
        }
    }
    pub fn container(&self) -> Option<&str> {
        match self {
            UnitId::Container(c) => Some(c),
            UnitId::Process(_) => None,
        }
    }
}

impl std::fmt::Display for UnitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitId::Process(p) => write!(f, "pid {}", p.pid),
            UnitId::Container(c) => write!(f, "container {}", &c[..c.len().min(12)]),
        }
    }
}

/// One started (or found) unit.
pub trait Unit: Send {
    fn id(&self) -> UnitId;
    /// Resolves when the unit has exited (by itself or after `stop`).
    fn wait(&mut self) -> BoxFuture<'_, Exit>;
    /// Asks the unit to stop (SIGTERM), kills it after `grace`, and waits for it.
    /// A stopped container is removed.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit>;
}

/// A unit found again, with the labels and environment it was started with
/// (containers; empty for processes).
pub struct Found {
    pub unit: Box<dyn Unit>,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// Starts, finds, and reads the logs of units of one kind.
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;
    fn start<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Unit>, RuntimeError>>;
    /// The running unit of service `name` that this runtime started earlier,
    /// from this home (pid file + start time; container label).
    fn find<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Found>, RuntimeError>>;
    /// The last `lines` lines of the unit's output.
    fn logs<'a>(&'a self, name: &'a str, lines: usize) -> BoxFuture<'a, String>;
    /// The base URL other services reach `spec` at (`http://HOST:PORT`).
    fn advertise(&self, spec: &UnitSpec) -> Option<String>;
    /// Where this machine reaches unit `name` when it publishes no port: its
    /// address on the project network (a container), `None` when it has none.
    fn address<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<String>> {
        let _ = name;
        Box::pin(async { None })
    }
    /// `url` (written as seen from this machine: `127.0.0.1:<port>`) as this
    /// runtime's caller reaches it.
    fn reach(&self, spec: &UnitSpec, url: &str) -> String {
        let _ = spec;
        url.to_owned()
    }
}

/// The last `n` lines of a file ("" when unreadable).
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_names_and_binds_and_refuse_the_rest() {
        let v = Volume::parse("data:/data").unwrap();
        assert_eq!((v.source.as_str(), v.target.as_str()), ("data", "/data"));
        assert!(!v.is_bind() && !v.read_only);
        let b = Volume::parse("/var/run/docker.sock:/var/run/docker.sock:ro").unwrap();
        assert!(b.is_bind() && b.read_only);
        for bad in [
            "data",
            "data:relative",
            ":/x",
            "a:/b:/c:d",
            "da ta:/x",
            "d:/x:rx",
        ] {
            assert!(Volume::parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
