//! `.chora/bootstrap-config.yml`: the seed's section 5 schema plus how each
//! service runs (DESIGN.md §4). Loading checks everything before anything starts
//! and names the file, line and field of each mistake.

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A configuration mistake: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// The offending lines, as the YAML parser shows them (may be empty).
    pub snippet: String,
}

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Set by parsing on the entries it makes: which service this is a copy of.
    #[serde(skip)]
    pub replica: Option<Replica>,
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

pub use chora_api::orchestrator::Register;
pub use chora_runtime::RuntimeKind;

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

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: String,
    pub environment: Environment,
    pub services: BTreeMap<String, Spanned<ServiceSpec>>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub logging: Logging,
    #[serde(default)]
    pub validation: Validation,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub prerequisites: Prerequisites,
    #[serde(default)]
    pub etcd: Option<Etcd>,
    /// Container names `<project>-<name>`, the network `<project>`, volumes
    /// `<project>-<volume>` (default `chora`).
    #[serde(default)]
    pub project: Option<String>,
    /// Where built-in capabilities run: `process` (default for dev) or `docker`
    /// (default for staging and prod).
    #[serde(default)]
    pub runtime: Option<RuntimeKind>,
}

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// The service name of the etcd members chora runs.
pub const ETCD: &str = "etcd";

/// Member `n` of the etcd cluster chora runs: configured through the
/// environment (`ETCD_*`), so the same spec runs etcd's own image and one
/// `chora image build` made from a local binary. Members find each other by
/// container name on the project network; the client port 2379 is not
/// published.
fn etcd_member(e: &Etcd, units: &[String], n: u32, project: &str) -> ServiceSpec {
    let unit = format!("{ETCD}-{n}");
    let host = format!("{project}-{unit}");
    let cluster: Vec<String> = units
        .iter()
        .map(|u| format!("{u}=http://{project}-{u}:2380"))
        .collect();
    let env: BTreeMap<String, String> = [
        ("ETCD_NAME", unit.clone()),
        ("ETCD_DATA_DIR", "/data/etcd".into()),
        ("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379".into()),
        ("ETCD_ADVERTISE_CLIENT_URLS", format!("http://{host}:2379")),
        ("ETCD_LISTEN_PEER_URLS", "http://0.0.0.0:2380".into()),
        (
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://{host}:2380"),
        ),
        ("ETCD_INITIAL_CLUSTER", cluster.join(",")),
        ("ETCD_INITIAL_CLUSTER_STATE", "new".into()),
        ("ETCD_INITIAL_CLUSTER_TOKEN", format!("chora-{project}")),
        ("ETCD_HEARTBEAT_INTERVAL", e.heartbeat_ms.to_string()),
        ("ETCD_ELECTION_TIMEOUT", e.election_ms.to_string()),
        ("ETCD_PRE_VOTE", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    ServiceSpec {
        phase: 1,
        command: None,
        image: Some("${ETCD_IMAGE}".into()),
        docker_compose: None,
        port: None,
        // From the host its address on the project network (see Ctx::reach).
        health_endpoint: Some(format!("http://{unit}:2379/health")),
        env,
        dependencies: Vec::new(),
        timeout: Some(60.0),
        deploy_via: None,
        version: None,
        register: Some(Register::Itself),
        volumes: vec![spanned(format!("{unit}-data:/data"))],
        container_port: Some(2379),
        replicas: None,
        replica: Some(Replica {
            service: ETCD.into(),
            n,
            unregistered: true,
        }),
    }
}

/// The built-in names of the four validation tests.
pub const BUILTIN_TESTS: [&str; 4] = [
    "service_discovery",
    "gateway_routing",
    "orchestrator_control",
    "health_dashboard",
];

impl Config {
    /// Parses and checks the YAML text of `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let full = e.to_string();
            // The parser's message is "line L column C: what" followed by a snippet.
            let mut lines = full.lines();
            let first = lines.next().unwrap_or_default();
            let message = first
                .split_once(": ")
                .filter(|(head, _)| head.contains("line"))
                .map(|(_, m)| m)
                .unwrap_or(first)
                .trim_start_matches("error: ")
                .to_owned();
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                message,
                snippet: lines.collect::<Vec<_>>().join("\n"),
            }
        })?;
        let mut config = config;
        let etcd_line = text
            .lines()
            .position(|l| l.starts_with("etcd:"))
            .map_or(1, |i| i as u64 + 1);
        config.expand(file, etcd_line)?;
        config.check(file)?;
        Ok(config)
    }

    /// The units of service `name`: itself, or its replicas `name-1` … `name-N`.
    pub fn units_of(&self, name: &str) -> Vec<String> {
        if self.services.contains_key(name) {
            return vec![name.to_owned()];
        }
        self.services
            .iter()
            .filter(|(_, s)| s.value.replica.as_ref().is_some_and(|r| r.service == name))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every unit that is in the Manifest (all but the etcd members).
    pub fn registered_units(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|(_, s)| !s.value.replica.as_ref().is_some_and(|r| r.unregistered))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The etcd members chora runs (`etcd-1` …), in order.
    pub fn etcd_members(&self) -> Vec<String> {
        self.units_of(ETCD)
            .into_iter()
            .filter(|u| u != ETCD)
            .collect()
    }

    /// Replicas become entries of their own, and a managed etcd cluster its
    /// members; a dependency on a replicated service means on all its replicas.
    fn expand(&mut self, file: &Path, etcd_line: u64) -> Result<(), ConfigError> {
        let fail = |loc: serde_saphyr::Location, message: String| ConfigError {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message,
            snippet: String::new(),
        };
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let s = &self.services[&name];
            let Some(n) = s.value.replicas else { continue };
            let loc = s.referenced;
            if n == 0 || n > 9 {
                return Err(fail(
                    loc,
                    format!("services.{name}.replicas: {n} is not between 1 and 9"),
                ));
            }
            if s.value.phase == 3 || name == "orchestrator" {
                return Err(fail(
                    loc,
                    format!(
                        "services.{name}.replicas: only phase 1-2 services other than the orchestrator run as replicas"
                    ),
                ));
            }
            if n == 1 {
                continue;
            }
            let base = self.services.remove(&name).expect("listed above");
            let mut units = Vec::new();
            for i in 1..=n {
                let unit = format!("{name}-{i}");
                if self.services.contains_key(&unit) {
                    return Err(fail(
                        loc,
                        format!("services.{name}.replicas: `{unit}` is also a service of its own"),
                    ));
                }
                let mut spec = base.value.clone();
                spec.replica = Some(Replica {
                    service: name.clone(),
                    n: i,
                    unregistered: false,
                });
                spec.replicas = None;
                spec.port = spec.port.map(|p| p + (i - 1) as u16);
                let r = i.to_string();
                let port = spec.port.map(|p| p.to_string()).unwrap_or_default();
                let sub = |t: &String| t.replace("${REPLICA}", &r).replace("${PORT}", &port);
                spec.command = spec.command.map(|c| c.iter().map(sub).collect());
                spec.env = spec.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect();
                for v in &mut spec.volumes {
                    v.value = sub(&v.value);
                }
                spec.health_endpoint = spec.health_endpoint.as_ref().map(sub);
                self.services.insert(
                    unit.clone(),
                    Spanned {
                        value: spec,
                        referenced: base.referenced,
                        defined: base.defined,
                    },
                );
                units.push(unit);
            }
            groups.insert(name, units);
        }
        let at_etcd = |message: String| ConfigError {
            file: file.to_owned(),
            line: etcd_line,
            column: 1,
            message,
            snippet: String::new(),
        };
        if let Some(e) = self.etcd.clone().filter(|e| e.managed() > 0) {
            let n = e.managed();
            if !e.endpoints.is_empty() {
                return Err(at_etcd(
                    "etcd: give `members` (chora runs the cluster) or `endpoints` (one that runs already), not both".into(),
                ));
            }
            if n > 9 {
                return Err(at_etcd(format!("etcd.members: {n} is not between 1 and 9")));
            }
            let units: Vec<String> = (1..=n).map(|i| format!("{ETCD}-{i}")).collect();
            for (i, unit) in units.iter().enumerate() {
                if let Some(s) = self.services.get(unit).or_else(|| self.services.get(ETCD)) {
                    return Err(fail(
                        s.referenced,
                        format!(
                            "services: `{unit}` is a member of the etcd cluster chora runs (etcd.members); rename the service"
                        ),
                    ));
                }
                let spec = etcd_member(&e, &units, i as u32 + 1, self.project());
                self.services.insert(unit.clone(), spanned(spec));
            }
            // The Manifest stands on the cluster.
            for m in groups
                .get("manifest")
                .cloned()
                .unwrap_or_else(|| vec!["manifest".into()])
            {
                if let Some(s) = self.services.get_mut(&m) {
                    for u in &units {
                        s.value.dependencies.push(spanned(u.clone()));
                    }
                }
            }
            groups.insert(ETCD.into(), units);
        }
        for s in self.services.values_mut() {
            let deps = std::mem::take(&mut s.value.dependencies);
            for d in deps {
                match groups.get(&d.value) {
                    Some(units) => s.value.dependencies.extend(units.iter().map(|u| Spanned {
                        value: u.clone(),
                        referenced: d.referenced,
                        defined: d.defined,
                    })),
                    None => s.value.dependencies.push(d),
                }
            }
        }
        Ok(())
    }

    /// Reads and checks a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
            snippet: String::new(),
        })?;
        Config::parse(&text, file)
    }

    pub fn project(&self) -> &str {
        self.project.as_deref().unwrap_or("chora")
    }

    /// The runtime of built-in capabilities.
    pub fn default_runtime(&self) -> RuntimeKind {
        self.runtime.unwrap_or(match self.environment {
            Environment::Dev => RuntimeKind::Process,
            Environment::Staging | Environment::Prod => RuntimeKind::Docker,
        })
    }

    /// True when some service runs in a container.
    pub fn needs_docker(&self) -> bool {
        let default = self.default_runtime();
        self.services
            .values()
            .any(|s| s.value.runtime(default) == RuntimeKind::Docker)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.get(name).map(|s| &s.value)
    }

    /// Names of the services of `phase`, in dependency order (dependencies first,
    /// then by name).
    pub fn phase_services(&self, phase: u8) -> Vec<String> {
        self.waves(phase).into_iter().flatten().collect()
    }

    /// The services of `phase` in waves: each wave depends only on earlier ones,
    /// so a wave can start all at once.
    pub fn waves(&self, phase: u8) -> Vec<Vec<String>> {
        let members: BTreeSet<&str> = self
            .services
            .iter()
            .filter(|(_, s)| s.value.phase == phase)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut waves = Vec::new();
        while done.len() < members.len() {
            let wave: Vec<&str> = members
                .iter()
                .filter(|n| !done.contains(*n))
                .filter(|n| {
                    self.services[**n]
                        .value
                        .deps()
                        .all(|d| !members.contains(d) || done.contains(d))
                })
                .copied()
                .collect();
            if wave.is_empty() {
                break; // a cycle: `check` refuses such a config
            }
            done.extend(wave.iter().copied());
            waves.push(wave.into_iter().map(str::to_owned).collect());
        }
        waves
    }

    /// All services, dependency order across phases.
    pub fn start_order(&self) -> Vec<String> {
        (1..=3).flat_map(|p| self.phase_services(p)).collect()
    }

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let err = |loc: serde_saphyr::Location, message: String| ConfigError {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message,
            snippet: String::new(),
        };
        if self.version.trim().is_empty() {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: "`version` must not be empty".into(),
                snippet: String::new(),
            });
        }
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        for (name, s) in &self.services {
            let loc = s.referenced;
            let spec = &s.value;
            let at = |m: String| err(loc, format!("services.{name}: {m}"));
            if !chora_api::manifest::is_valid_name(name) {
                return Err(at("the name must match ^[a-z0-9][a-z0-9._-]{0,62}$".into()));
            }
            if !(1..=3).contains(&spec.phase) {
                return Err(at(format!(
                    "`phase` is {} but must be 1, 2 or 3",
                    spec.phase
                )));
            }
            // `command` with `image` is the container's command, as in Compose.
            let ways = [
                spec.command.is_some() || spec.image.is_some(),
                spec.docker_compose.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if ways > 1 {
                return Err(at(
                    "give `command` (a process), `image` (a container, with an optional `command`) or `docker_compose`, not several".into(),
                ));
            }
            if spec
                .command
                .as_ref()
                .is_some_and(|c| c.first().is_none_or(|p| p.is_empty()))
            {
                return Err(at("`command` must name a program".into()));
            }
            match (spec.phase, spec.deploy_via) {
                (3, None) => {
                    return Err(at("phase 3 services are deployed through the orchestrator: add `deploy_via: orchestrator`".into()));
                }
                (1 | 2, Some(_)) => {
                    return Err(at("`deploy_via` is for phase 3 services only".into()));
                }
                _ => {}
            }
            if spec.phase == 3 && spec.docker_compose.is_some() {
                return Err(at(
                    "`docker_compose` is for phase 1-2 services (the orchestrator deploys `command` or `image`)".into(),
                ));
            }
            if spec.phase < 3 && ways == 0 {
                return Err(at(
                    "needs `command`, `image` or `docker_compose`: how to run it".into(),
                ));
            }
            if spec.phase == 3 && ways == 0 && !chora_api::CAPABILITIES.contains(&name.as_str()) {
                return Err(at(format!(
                    "`{name}` is not a built-in capability: give a `command` or `image`"
                )));
            }
            if spec.phase == 3 && spec.port.is_none() {
                return Err(at("phase 3 services need a `port`".into()));
            }
            if spec.port.is_none() && spec.health_endpoint.is_none() {
                return Err(at("needs a `port` or a `health_endpoint`".into()));
            }
            if let Some(h) = &spec.health_endpoint
                && !chora_runtime::check::is_checkable(h)
            {
                return Err(at(format!(
                    "`health_endpoint` `{h}` must be http(s)://… or tcp://HOST:PORT"
                )));
            }
            for v in &spec.volumes {
                // `${CHORA_HOME}` is an absolute path once expanded.
                if let Err(m) =
                    chora_runtime::Volume::parse(&v.value.replace("${CHORA_HOME}", "/home"))
                {
                    return Err(err(v.referenced, format!("services.{name}.volumes: {m}")));
                }
                if spec.image.is_none() && !(spec.phase == 3 && spec.command.is_none()) {
                    return Err(err(
                        v.referenced,
                        format!("services.{name}.volumes: only containers (`image:`) take volumes"),
                    ));
                }
            }
            if let Some(t) = spec.timeout
                && !(t.is_finite() && t > 0.0)
            {
                return Err(at("`timeout` must be a positive number of seconds".into()));
            }
            if let Some(p) = spec.port
                && let Some(other) = ports.insert(p, name)
            {
                return Err(at(format!("port {p} is also used by `{other}`")));
            }
            for d in &spec.dependencies {
                let Some(dep) = self.services.get(&d.value) else {
                    return Err(err(
                        d.referenced,
                        format!(
                            "services.{name}.dependencies: unknown service `{}`",
                            d.value
                        ),
                    ));
                };
                if dep.value.phase > spec.phase {
                    return Err(err(
                        d.referenced,
                        format!(
                            "services.{name}.dependencies: `{}` starts in phase {}, after `{name}` (phase {})",
                            d.value, dep.value.phase, spec.phase
                        ),
                    ));
                }
                if d.value == *name {
                    return Err(err(
                        d.referenced,
                        format!("services.{name}.dependencies: a service cannot depend on itself"),
                    ));
                }
            }
        }
        // Cycles: whatever `waves` cannot place.
        for phase in 1..=3 {
            let placed: usize = self.waves(phase).iter().map(Vec::len).sum();
            let members: Vec<(&String, &Spanned<ServiceSpec>)> = self
                .services
                .iter()
                .filter(|(_, s)| s.value.phase == phase)
                .collect();
            if placed < members.len() {
                let placed: BTreeSet<String> = self.waves(phase).into_iter().flatten().collect();
                let stuck: Vec<&str> = members
                    .iter()
                    .filter(|(n, _)| !placed.contains(*n))
                    .map(|(n, _)| n.as_str())
                    .collect();
                let first = self.services[stuck[0]].referenced;
                return Err(err(
                    first,
                    format!("services: dependency cycle among {}", stuck.join(", ")),
                ));
            }
        }
        if let Some(p) = &self.project
            && !chora_api::manifest::is_valid_name(p)
        {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: format!("project: `{p}` must match ^[a-z0-9][a-z0-9._-]{{0,62}}$"),
                snippet: String::new(),
            });
        }
        for required in ["manifest"] {
            if self.units_of(required).is_empty() {
                return Err(ConfigError {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "services: `{required}` is required (the registry everything else finds itself in)"
                    ),
                    snippet: String::new(),
                });
            }
        }
        if self.services.values().any(|s| s.value.phase == 3)
            && !self.services.contains_key("orchestrator")
        {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: "services: phase 3 services need an `orchestrator` service to deploy them"
                    .into(),
                snippet: String::new(),
            });
        }
        for t in &self.validation.tests {
            if t.value.script.is_none() && !BUILTIN_TESTS.contains(&t.value.name.as_str()) {
                return Err(err(
                    t.referenced,
                    format!(
                        "validation.tests: `{}` is not a built-in test ({}) and has no `script`",
                        t.value.name,
                        BUILTIN_TESTS.join(", ")
                    ),
                ));
            }
        }
        let r = &self.retry;
        if !(r.initial_delay > 0.0 && r.max_delay >= r.initial_delay && r.backoff_factor >= 1.0) {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message:
                    "retry: need initial_delay > 0, max_delay >= initial_delay, backoff_factor >= 1"
                        .into(),
                snippet: String::new(),
            });
        }
        Ok(())
    }
}
