//! The config's types (DESIGN.md §4): the seed's section 5 schema plus how
//! each service runs. Unknown keys are refused (`deny_unknown_fields`).

use super::RuntimeKind;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

pub use chora_api::orchestrator::Register;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Dev,
    Staging,
    Prod,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Dev => "dev",
            Environment::Staging => "staging",
            Environment::Prod => "prod",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployVia {
    Orchestrator,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// 1 core, 2 infrastructure, 3 capabilities.
    pub phase: u8,
    /// argv of a local process (`chora` as the program means this binary), or
    /// with `image` the container's command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub docker_compose: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Default: `http://127.0.0.1:<port>/health`.
    #[serde(default)]
    pub health_endpoint: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub dependencies: Vec<Spanned<String>>,
    /// Seconds to wait for the service to be healthy.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub deploy_via: Option<DeployVia>,
    #[serde(default)]
    pub version: Option<String>,
    /// Who registers it in the Manifest: `self` (chora's own services) or
    /// `chora` (the default: whoever starts it, on its behalf).
    #[serde(default)]
    pub register: Option<Register>,
    /// Containers: `NAME:/path` (volume `<project>-NAME`) or `/host/path:/path`.
    #[serde(default)]
    pub volumes: Vec<Spanned<String>>,
    /// Containers: the port the service listens on inside (default: `port`).
    #[serde(default)]
    pub container_port: Option<u16>,
    /// Phases 1-2: run N copies (`<name>-1` … `<name>-N`, DESIGN.md §9-10).
    /// Replica n publishes `port + n - 1`; in `command`, `env`, `volumes` and
    /// `health_endpoint`, `${REPLICA}` is n and `${PORT}` that port (what a
    /// local process must listen on). Parsing expands a replicated
    /// service into one entry per replica (see [`Replica`]).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// The gateway: HTTPS at the edge (DESIGN.md §15): `self-signed`,
    /// `{cert, key}` or `{acme: {directory, domains, email, ca}}`.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The gateway: where HTTPS listens (default 8443).
    #[serde(default)]
    pub tls_port: Option<u16>,
    /// The gateway with `tls`: plain HTTP `redirect`s to HTTPS (the default)
    /// or `serve`s as well.
    #[serde(default)]
    pub http: Option<HttpMode>,
    /// A CA file to trust for this service's `https://` health endpoint (for
    /// the gateway with `tls`: for its HTTPS).
    #[serde(default)]
    pub ca: Option<String>,
    /// Set by parsing on the entries it makes: which service this is a copy of.
    #[serde(skip)]
    pub replica: Option<Replica>,
}

/// Where the gateway's certificate comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tls {
    /// `self-signed`: a CA and a certificate chora makes under `.chora/tls/`.
    Named(TlsNamed),
    /// `{cert: PATH, key: PATH}`: files, picked up again when replaced.
    Files { cert: String, key: String },
    /// `{acme: {…}}`: from an ACME server, renewed before expiry.
    Acme { acme: Acme },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsNamed {
    SelfSigned,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    pub directory: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// A CA file to trust for the directory itself (pebble's, in tests).
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    Redirect,
    Serve,
}

/// One copy of a replicated service (or a member of the etcd cluster chora
/// runs): the unit `<service>-<n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub service: String,
    pub n: u32,
    /// Not in the Manifest at all (the etcd members the Manifest stands on).
    pub unregistered: bool,
}

impl ServiceSpec {
    /// As configured; else a built-in capability (nothing says how to run it:
    /// chora's own) registers itself and anything else is registered by chora.
    pub fn registers(&self) -> Register {
        self.register.unwrap_or(
            if self.command.is_none() && self.image.is_none() && self.docker_compose.is_none() {
                Register::Itself
            } else {
                Register::Chora
            },
        )
    }

    /// The runtime it runs on when started by the bootstrap or deployed with
    /// neither `command` nor `image` (a built-in capability): `default`.
    pub fn runtime(&self, default: RuntimeKind) -> RuntimeKind {
        match (&self.command, &self.image, &self.docker_compose) {
            (_, Some(_), _) | (_, _, Some(_)) => RuntimeKind::Docker,
            (Some(_), None, None) => RuntimeKind::Process,
            (None, None, None) => default,
        }
    }

    pub fn volume_list(&self) -> Vec<chora_runtime::Volume> {
        self.volumes
            .iter()
            .filter_map(|v| {
                let mut vol =
                    chora_runtime::Volume::parse(&v.value.replace("${CHORA_HOME}", "/home"))
                        .ok()?;
                // Parsed with a stand-in; the caller expands the real text.
                let (src, dst) = v.value.split_once(':')?;
                vol.source = src.to_owned();
                vol.target = dst.split(':').next()?.to_owned();
                Some(vol)
            })
            .collect()
    }

    pub fn health_url(&self) -> Option<String> {
        self.health_endpoint
            .clone()
            .or_else(|| self.port.map(|p| format!("http://127.0.0.1:{p}/health")))
    }

    pub fn url(&self) -> Option<String> {
        self.port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    pub fn deps(&self) -> impl Iterator<Item = &str> {
        self.dependencies.iter().map(|d| d.value.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub health_check: f64,
    pub phase_0: f64,
    pub phase_1: f64,
    pub phase_2: f64,
    pub phase_3: f64,
    pub phase_4: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            health_check: 120.0,
            phase_0: 300.0,
            phase_1: 300.0,
            phase_2: 600.0,
            phase_3: 900.0,
            phase_4: 120.0,
        }
    }
}

impl Timeouts {
    pub fn phase(&self, n: u8) -> f64 {
        match n {
            0 => self.phase_0,
            1 => self.phase_1,
            2 => self.phase_2,
            3 => self.phase_3,
            _ => self.phase_4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    pub initial_delay: f64,
    pub max_delay: f64,
    pub backoff_factor: f64,
    pub max_attempts: u32,
    /// Health checks in a row that must answer 200.
    pub required_consecutive: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial_delay: 1.0,
            max_delay: 30.0,
            backoff_factor: 2.0,
            max_attempts: 10,
            required_consecutive: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    pub jwt_secret_bits: u32,
    pub api_key_bits: u32,
    pub storage_path: Option<String>,
    pub storage_permissions: String,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            jwt_secret_bits: 256,
            api_key_bits: 256,
            storage_path: None,
            storage_permissions: "0600".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    pub level: String,
    pub format: Option<String>,
    pub file: Option<String>,
    pub max_bytes: u64,
    pub backup_count: u32,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: "info".into(),
            format: None,
            file: None,
            max_bytes: 10 * 1024 * 1024,
            backup_count: 5,
        }
    }
}

/// A built-in validation test (by name) or a custom one (with `script`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "thirty")]
    pub timeout: f64,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// A failing required test fails the bootstrap; otherwise it is a warning.
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}
fn thirty() -> f64 {
    30.0
}
fn sixty() -> f64 {
    60.0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Validation {
    pub tests: Vec<Spanned<TestSpec>>,
}

/// A script run before or after a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub script: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "sixty")]
    pub timeout: f64,
}

/// Scripts run before and after each phase (`pre_phase_N`, `post_phase_N`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    pub pre_phase_0: Vec<Hook>,
    pub post_phase_0: Vec<Hook>,
    pub pre_phase_1: Vec<Hook>,
    pub post_phase_1: Vec<Hook>,
    pub pre_phase_2: Vec<Hook>,
    pub post_phase_2: Vec<Hook>,
    pub pre_phase_3: Vec<Hook>,
    pub post_phase_3: Vec<Hook>,
    pub pre_phase_4: Vec<Hook>,
    pub post_phase_4: Vec<Hook>,
}

impl Hooks {
    /// The hooks to run before (`pre`) or after a phase.
    pub fn of(&self, phase: u8, pre: bool) -> &[Hook] {
        match (phase, pre) {
            (0, true) => &self.pre_phase_0,
            (0, false) => &self.post_phase_0,
            (1, true) => &self.pre_phase_1,
            (1, false) => &self.post_phase_1,
            (2, true) => &self.pre_phase_2,
            (2, false) => &self.post_phase_2,
            (3, true) => &self.pre_phase_3,
            (3, false) => &self.post_phase_3,
            (4, true) => &self.pre_phase_4,
            _ => &self.post_phase_4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prerequisites {
    /// Free disk space needed under the chora home, in GiB.
    pub min_disk_gb: f64,
}

impl Default for Prerequisites {
    fn default() -> Self {
        Prerequisites { min_disk_gb: 1.0 }
    }
}

/// The etcd cluster under the Manifest: one chora runs (`members`, DESIGN.md
/// §10) or one that is there already (`endpoints`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Etcd {
    /// An etcd cluster that runs already (not started by chora).
    pub endpoints: Vec<String>,
    /// Start a cluster of this many members as containers in phase 1.
    pub members: Option<u32>,
    /// Their image; when it is missing and cannot be pulled, phase 0 builds
    /// `chora-etcd:<version>` from an etcd binary on this machine.
    pub image: String,
    /// The etcd binary to build the image from (default: `etcd` on the PATH).
    pub binary: Option<String>,
    /// Raft timings for a LAN (etcd's defaults are 100 ms and 1000 ms).
    pub heartbeat_ms: u32,
    pub election_ms: u32,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            endpoints: Vec::new(),
            members: None,
            image: DEFAULT_ETCD_IMAGE.into(),
            binary: None,
            heartbeat_ms: 50,
            election_ms: 500,
        }
    }
}

pub const DEFAULT_ETCD_IMAGE: &str = "quay.io/coreos/etcd:v3.5.17";

impl Etcd {
    /// The number of members chora runs (0: none).
    pub fn managed(&self) -> u32 {
        self.members.unwrap_or(0)
    }
}

/// Metrics you can see (DESIGN.md §16): a Prometheus of this system's own,
/// started in phase 2, discovering every service through the Manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    pub prometheus: bool,
    /// Published on 127.0.0.1 (and reached through the gateway at
    /// `/api/v1/prometheus/`).
    pub port: u16,
    /// The Prometheus binary to run (a process) or build the image from (a
    /// container). Default: `prometheus` on the PATH.
    pub binary: Option<String>,
    /// An image to run instead of building one from the binary.
    pub image: Option<String>,
    /// Seconds between scrapes (and between refreshes of its targets).
    pub scrape_interval: u32,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            prometheus: false,
            port: 9090,
            binary: None,
            image: None,
            scrape_interval: 5,
        }
    }
}

impl Monitoring {
    /// The Prometheus binary: as configured, else `prometheus` on the PATH.
    pub fn binary_path(&self) -> Option<std::path::PathBuf> {
        match &self.binary {
            Some(b) => Some(std::path::PathBuf::from(b)).filter(|p| p.is_file()),
            None => on_path("prometheus"),
        }
    }
}

/// `name` on the PATH, if it is there.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}
