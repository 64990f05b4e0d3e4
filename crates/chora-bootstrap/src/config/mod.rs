//! `.chora/bootstrap-config.yml`: the seed's section 5 schema plus how each
//! service runs (DESIGN.md §4). Loading checks everything before anything starts
//! and names the file, line and field of each mistake.

mod check;
mod order;
mod schema;
mod units;

pub use chora_runtime::RuntimeKind;
pub use schema::*;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
pub use units::{ETCD, PROMETHEUS, PROMETHEUS_ENV, PROMETHEUS_FLAGS};

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
    /// A Prometheus of this system's own (DESIGN.md §16).
    #[serde(default)]
    pub monitoring: Option<Monitoring>,
    /// The hosts of a fleet (DESIGN.md §13): `chora infra`'s inventory file
    /// (relative to the config's directory). With one, every container runs
    /// as a Swarm service on those hosts, reached over SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    /// What parsing decided and a person should hear (Prometheus asked for
    /// but not on this machine), said by phase 0.
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// The built-in names of the validation tests: the four of DESIGN.md §6,
/// and, where the system runs its own Prometheus, that it scrapes every
/// service (§16).
pub const BUILTIN_TESTS: [&str; 5] = [
    "service_discovery",
    "gateway_routing",
    "orchestrator_control",
    "health_dashboard",
    "prometheus_scraping",
];

impl Config {
    /// Parses and checks the YAML text of `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| {
            let y = chora_text::YamlError::new(&e);
            ConfigError {
                file: file.to_owned(),
                line: y.line.max(1),
                column: y.column.max(1),
                message: y.message,
                snippet: y.snippet,
            }
        })?;
        let mut config = config;
        let etcd_line = text
            .lines()
            .position(|l| l.starts_with("etcd:"))
            .map_or(1, |i| i as u64 + 1);
        config.expand_units(file, etcd_line)?;
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
}
