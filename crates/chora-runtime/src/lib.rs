//! The one runtime seam (DESIGN.md §9): how chora starts a service, finds it
//! again after a restart of whoever started it, stops it with a grace period,
//! waits for it and reads its logs, whether it is a local process
//! ([`process::ProcessRuntime`]), a Docker container
//! ([`docker::DockerRuntime`]) or a compose file ([`compose::ComposeRuntime`]).
//! The orchestrator (phase 3) and the bootstrap (phases 1-2) both use it;
//! nothing else in chora spawns a service.
//!
//! # The seam hides its kinds
//!
//! Callers hold a `dyn Runtime` and never ask which one it is: what differs
//! between kinds is a method. How a unit listens ([`Runtime::bind`]), how this
//! chora binary runs as a unit ([`Runtime::chora`]), how it is reached from
//! here ([`Runtime::reach`]) and from other services ([`Runtime::advertise`]),
//! where its logs are ([`Runtime::log_hint`]), how it is found again
//! ([`Runtime::find`], [`Runtime::list`]) and how everything of a home goes
//! ([`Runtime::remove_all`]). Only a runtime touches its own bookkeeping (pid
//! files, container labels): a caller never reads, writes or deletes them.
//! [`RuntimeKind`] is the config's choice of runtime, used only to pick one.
//!
//! - [`proc`]: processes identified by pid *and* start time, pid files, who
//!   holds a port.
//! - [`check`]: one health check (`http(s)://…` GET or `tcp://HOST:PORT`).
//! - [`behalf`]: registration on behalf of a unit that does not register itself.

pub mod behalf;
pub mod check;
pub mod compose;
pub mod docker;
mod logfile;
pub mod proc;
pub mod process;
pub mod swarm;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub use futures_util::future::BoxFuture;
pub use futures_util::stream::BoxStream;
pub use logfile::{file_stream, tail};
pub use proc::{ProcId, write_atomic};

/// Which runtime a config chooses for a unit: used to pick a [`Runtime`],
/// never to branch on one.
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
    /// More ports it listens on, published as they are (the gateway's HTTPS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Extra labels (never secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its health URL as the unit itself reaches it (inside its container):
    /// for a runtime that checks health where the unit runs (a Swarm
    /// service's HEALTHCHECK, `chora probe URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// A CA file to trust for its `https://` health URL (besides the
    /// system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Where it runs on a cluster; one machine's runtimes ignore it.
    #[serde(default, skip_serializing_if = "Placement::is_default")]
    pub placement: Placement,
}

/// Where a unit runs on a cluster of hosts (a Swarm): pinned to one host
/// (by its `io.chora.host` node label), on every host, or as `replicas`
/// copies spread one per host where it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub global: bool,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Runs only on managers (the orchestrator, which drives the Swarm).
    #[serde(default)]
    pub manager: bool,
    /// Publishes its `port` on the hosts it runs on (host mode): the
    /// gateway, the only port of a fleet that answers on a host's address.
    #[serde(default)]
    pub publish: bool,
    /// Runs only on hosts carrying this node label (`("chora.gateway",
    /// "true")`: the gateway on the hosts so labelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelled: Option<(String, String)>,
}

fn one() -> u32 {
    1
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            host: None,
            global: false,
            replicas: 1,
            manager: false,
            publish: false,
            labelled: None,
        }
    }
}

impl Placement {
    pub fn is_default(&self) -> bool {
        *self == Placement::default()
    }
}

impl UnitSpec {
    pub fn inner_port(&self) -> Option<u16> {
        self.container_port.or(self.port)
    }

    /// For a runtime of one machine, which runs one copy of a unit: an
    /// error when this spec asks for more.
    pub fn one_copy(&self) -> Result<(), RuntimeError> {
        match self.placement.replicas {
            0 | 1 => Ok(()),
            n => Err(RuntimeError::Unsupported(format!(
                "`{}` asks for {n} replicas; one machine runs one copy of a unit (replicas of a phase 3 service run on a fleet, DESIGN.md §13)",
                self.name
            ))),
        }
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
    /// A Swarm service (its id).
    Service(String),
}

impl UnitId {
    pub fn pid(&self) -> Option<u32> {
        match self {
            UnitId::Process(p) => Some(p.pid),
            _ => None,
        }
    }
    pub fn container(&self) -> Option<&str> {
        match self {
            UnitId::Container(c) => Some(c),
            _ => None,
        }
    }
}

impl std::fmt::Display for UnitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitId::Process(p) => write!(f, "pid {}", p.pid),
            UnitId::Container(c) => write!(f, "container {}", &c[..c.len().min(12)]),
            UnitId::Service(s) => write!(f, "service {}", &s[..s.len().min(12)]),
        }
    }
}

impl UnitId {
    /// `process:PID:START_TIME` or `container:ID`: how a unit is named on a
    /// command line (`chora keep-registered --unit`); [`UnitId::parse_arg`]
    /// reads it back.
    pub fn arg(&self) -> String {
        match self {
            UnitId::Process(p) => format!("process:{}:{}", p.pid, p.start_time),
            UnitId::Container(c) => format!("container:{c}"),
            UnitId::Service(s) => format!("service:{s}"),
        }
    }

    pub fn parse_arg(s: &str) -> Result<UnitId, String> {
        let bad = || format!("`{s}` is not process:PID:START_TIME or container:ID");
        match s.split_once(':').ok_or_else(bad)? {
            ("process", rest) => {
                let (pid, start) = rest.split_once(':').ok_or_else(bad)?;
                Ok(UnitId::Process(ProcId {
                    pid: pid.parse().map_err(|_| bad())?,
                    start_time: start.parse().map_err(|_| bad())?,
                }))
            }
            ("container", id) if !id.is_empty() => Ok(UnitId::Container(id.to_owned())),
            ("service", id) if !id.is_empty() => Ok(UnitId::Service(id.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// Resolves once unit `id` has exited, whoever started it (a process by pid
/// and start time, a container through the local engine).
pub async fn exited(id: &UnitId) {
    match id {
        UnitId::Process(p) => p.exited().await,
        UnitId::Container(c) => docker::exited(c).await,
        // A service outlives its tasks: followed by whoever holds its manager.
        UnitId::Service(_) => std::future::pending().await,
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
    /// The unit's name (its spec's `name`).
    pub name: String,
    pub unit: Box<dyn Unit>,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// Starts, finds, stops and reads the logs of units of one kind (see the
/// module doc: callers never ask which kind).
pub trait Runtime: Send + Sync + 'static {
    /// What people call this runtime (`process`, `docker`, `compose`): shown
    /// in `status` and `ps`, never branched on.
    fn name(&self) -> &'static str;
    fn start<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Unit>, RuntimeError>>;
    /// The running unit `name` that this runtime started earlier, from this
    /// home (pid file + start time; container by name and label). `recorded`
    /// is how the starter last saw it (its state file), for a runtime whose
    /// own bookkeeping may be lost (a deleted pid file). Whatever is left of
    /// a unit that no longer runs (a stale pid file, an exited container) is
    /// cleaned up on the way.
    fn find<'a>(
        &'a self,
        name: &'a str,
        recorded: Option<&'a UnitId>,
    ) -> BoxFuture<'a, Result<Option<Found>, RuntimeError>>;
    /// Every unit of this home this runtime runs now.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Found>, RuntimeError>>;
    /// Whether the engine keeps this runtime's units running by itself
    /// (Swarm restarts and reschedules its services' tasks): a supervisor
    /// that goes away leaves them running, for the next one to adopt,
    /// instead of stopping them as it does its children.
    fn keeps_units(&self) -> bool {
        false
    }
    /// Stops and removes every unit of this home this runtime knows, and its
    /// own bookkeeping (networks; volumes and data stay). Returns what went.
    fn remove_all(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>>;
    /// What of another chora home stands where a unit of `spec` would go (a
    /// container or a volume of the name it needs, labelled with another
    /// home): one sentence each. Nothing of another home is reused silently.
    fn conflicts<'a>(&'a self, spec: &'a UnitSpec) -> BoxFuture<'a, Vec<String>> {
        let _ = spec;
        Box::pin(async { Vec::new() })
    }
    /// The hosts unit `name` runs on now, by name (a cluster's runtime;
    /// on one machine: none, it runs here).
    fn hosts<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<String>> {
        let _ = name;
        Box::pin(async { Vec::new() })
    }
    /// The last `lines` lines of the unit's output.
    fn logs<'a>(&'a self, name: &'a str, lines: usize) -> BoxFuture<'a, String>;
    /// The unit's output as it comes: the last `tail` lines, then, with
    /// `follow`, what it writes next, for as long as the stream is polled.
    /// Without `follow` the stream ends after the tail.
    fn log_stream<'a>(&'a self, name: &'a str, tail: usize, follow: bool)
    -> BoxStream<'a, Vec<u8>>;
    /// Where a person reads unit `name`'s log (a path, or a command).
    fn log_hint(&self, name: &str) -> String;
    /// The base URL other services reach `spec` at (`http://HOST:PORT`).
    fn advertise(&self, spec: &UnitSpec) -> Option<String>;
    /// Replaces the running unit `spec.name` by `spec` in place, copy by
    /// copy, each new copy healthy before an old one stops, and back to the
    /// old spec when the new one is not all healthy within `timeout`: where
    /// this runtime does that itself (a Swarm service's rolling update).
    /// `None` where it does not: the caller replaces the unit (a stand-in
    /// first, see the orchestrator's `replace.rs`).
    fn roll<'a>(
        &'a self,
        spec: &'a UnitSpec,
        timeout: Duration,
    ) -> Option<BoxFuture<'a, Result<(), RuntimeError>>> {
        let _ = (spec, timeout);
        None
    }
    /// The instance ids the copies of `spec`, started under instance `id`,
    /// register themselves under: `id` (one copy), or one per copy (a
    /// Swarm service of several tasks: one per task slot).
    fn instance_ids(&self, spec: &UnitSpec, id: &str) -> Vec<String> {
        let _ = spec;
        vec![id.to_owned()]
    }
    /// `url`, written as seen from this machine (`127.0.0.1:<port>`, or the
    /// unit's name where it publishes no port), as this runtime's caller
    /// reaches it.
    /// Default: as written (a runtime whose units are reached at their
    /// published address from here).
    fn reach<'a>(&'a self, spec: &'a UnitSpec, url: &'a str) -> BoxFuture<'a, String> {
        let _ = spec;
        Box::pin(async move { url.to_owned() })
    }
    /// The address a unit of `spec` listens on (`127.0.0.1:<port>` for a
    /// process; every interface of a container, on its inner port).
    fn bind(&self, spec: &UnitSpec) -> String;
    /// How this chora binary runs as a unit with `args`: the argv and the
    /// image (a process runs this executable; a container the chora image).
    fn chora(&self, args: Vec<String>) -> (Vec<String>, Option<String>);
    /// Whether unit `spec` answers its health check `url` (written as seen
    /// from this machine) now. Default: an HTTP or TCP check of the URL as
    /// this caller reaches it. A runtime whose units are checked where they
    /// run (Swarm: a task is `running` only once its HEALTHCHECK passed)
    /// asks that instead.
    fn probe<'a>(&'a self, spec: &'a UnitSpec, url: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let url = self.reach(spec, url).await;
            match &spec.ca {
                Some(ca) => {
                    let http = crate::check::client(Some(std::path::Path::new(ca)))?;
                    crate::check::check(&http, &url).await
                }
                None => crate::check::check(probe_client(), &url).await,
            }
        })
    }
}

/// The client of [`Runtime::probe`]'s default: short timeouts, made once.
fn probe_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        chora_api::tls::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .build()
            .expect("a plain HTTP client builds")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_id_reads_back_what_it_writes_as_an_argument() {
        for id in [
            UnitId::Process(ProcId {
                pid: 42,
                start_time: 9_000_001,
            }),
            UnitId::Container("0123456789abcdef".into()),
        ] {
            assert_eq!(UnitId::parse_arg(&id.arg()), Ok(id));
        }
        for bad in ["42", "process:42", "process:x:1", "container:", "pod:1"] {
            assert!(UnitId::parse_arg(bad).is_err(), "{bad} must be refused");
        }
    }

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
