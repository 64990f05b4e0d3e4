//! The shared context of a command: this home, its config and credentials,
//! and what every step asks of them (service specs, URLs, tokens, the
//! Manifest and orchestrator clients, instance ids). How a service starts,
//! stops or is found lives beside it, one concept a file: `local.rs`
//! (phases 1-2), `deploy.rs` (phase 3), `runtimes.rs` (which runtime runs
//! what), `substitute.rs` (`${…}` in the config).
//!
//! A `Ctx` is cheap to clone and never changes under a running step: phase 0
//! makes a new one once it has generated the credentials.

use crate::config::{Config, ServiceSpec};
use crate::home::Home;
use chora_api::auth::Credentials;
use chora_runtime::docker::DockerRuntime;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Ctx {
    pub home: Home,
    pub config: Config,
    pub config_path: PathBuf,
    pub credentials: Option<Credentials>,
    pub http: reqwest::Client,
    pub self_exe: PathBuf,
    pub cwd: PathBuf,
    /// The fencing token of the etcd lock this run holds, sent with deploys.
    pub fencing: Option<u64>,
    /// The Docker runtime, connected the first time a container is needed.
    pub docker: tokio::sync::OnceCell<Arc<DockerRuntime>>,
    /// The image the etcd members run, once known (see [`Ctx::ensure_etcd_image`]).
    pub etcd_image: tokio::sync::OnceCell<String>,
    /// The image Prometheus runs, once known.
    pub prometheus_image: tokio::sync::OnceCell<String>,
    /// A fleet's swarm (`inventory:`), reached the first time it is needed.
    pub fleet: tokio::sync::OnceCell<Arc<crate::fleet::handle::Fleet>>,
}

impl Ctx {
    pub fn spec(&self, name: &str) -> &ServiceSpec {
        self.config
            .service(name)
            .expect("names come from the config")
    }

    /// The URL of service `name` (of its first replica, if it has several).
    pub fn url_of(&self, name: &str) -> Option<String> {
        let unit = self.config.units_of(name).into_iter().next()?;
        self.config.service(&unit).and_then(ServiceSpec::url)
    }

    /// Every Manifest node's URL as this machine reaches it, comma-separated
    /// (clients fail over between them).
    pub fn manifest_url(&self) -> String {
        let urls: Vec<String> = self
            .config
            .units_of("manifest")
            .iter()
            .filter_map(|u| self.config.service(u).and_then(ServiceSpec::url))
            .collect();
        if urls.is_empty() {
            "http://127.0.0.1:8500".into()
        } else {
            urls.join(",")
        }
    }

    /// A short-lived admin JWT, when there are credentials.
    pub fn admin_token(&self) -> Option<String> {
        let secret = self.credentials.as_ref()?.jwt_secret()?;
        Some(chora_api::auth::mint_admin_token(
            secret,
            "chora-bootstrap",
            Duration::from_secs(600),
        ))
    }

    pub fn manifest(&self) -> chora_api::ManifestClient {
        let c = chora_api::ManifestClient::new([self.manifest_url()]).expect("a valid URL");
        match self.admin_token() {
            Some(t) => c.with_token(t),
            None => c,
        }
    }

    /// The Manifest instance id of a local service: the same for every start of
    /// that service from this state directory on this host, so that a restarted
    /// process (after a crash or a reboot) takes over its old registration instead
    /// of leaving it to linger, unhealthy, until its TTL.
    pub fn instance_id(&self, name: &str) -> String {
        let host = crate::proc::hostname();
        let seed = format!("{host}\0{}\0{name}", self.home.root.display());
        // FNV-1a: stable across builds, unlike std's hasher.
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{name}-{:08x}", hash as u32)
    }

    /// The instance id unit `name` registers under when the bootstrap starts
    /// it (its `env` may say otherwise).
    pub fn given_instance_id(&self, name: &str) -> String {
        self.config
            .service(name)
            .and_then(|s| s.env.get("CHORA_INSTANCE_ID").cloned())
            .unwrap_or_else(|| self.instance_id(name))
    }

    /// Which Manifest instances are unit `name`'s: those under the ids it
    /// was given (phases 1-2: one, by the bootstrap; phase 3: by its
    /// orchestrator, one per copy, as `ours` says), of its service's name. A program that registers
    /// itself and is not chora's own may ignore the id it is given: any
    /// instance of its name is its then. So is any instance of a phase 3
    /// service while its orchestrator did not say.
    pub fn instance_matcher(
        &self,
        ours: &Ours,
        name: &str,
    ) -> impl Fn(&chora_api::manifest::Instance) -> bool + use<> {
        let spec = self.config.service(name);
        let service = spec
            .and_then(|s| s.replica.as_ref())
            .map_or(name, |r| r.service.as_str())
            .to_owned();
        let ids = match spec {
            Some(s) if !honours_instance_id(s) => None,
            Some(s) if s.phase < 3 => Some(vec![self.given_instance_id(name)]),
            Some(_) => ours
                .deployed
                .as_ref()
                .map(|d| d.get(name).cloned().unwrap_or_default()),
            None => None,
        };
        move |i| i.name == service && ids.as_ref().is_none_or(|ids| ids.contains(&i.id))
    }

    /// [`Ctx::ours`] when telling `names`' instances apart needs it (one of
    /// them is a phase 3 service that registers under the ids its
    /// orchestrator gives), else nothing is asked. Before phase 3 the
    /// orchestrator may not run yet, and asking one that is not there
    /// costs the whole time-out: through a fleet's door a name the overlay
    /// does not know yet fails only after seconds.
    pub async fn ours_for(&self, names: &[String]) -> Ours {
        let needed = names.iter().any(|n| {
            self.config
                .service(n)
                .is_some_and(|s| s.phase >= 3 && honours_instance_id(s))
        });
        if needed {
            self.ours().await
        } else {
            Ours::default()
        }
    }

    /// This system's instances as its orchestrator reports them now.
    pub async fn ours(&self) -> Ours {
        let Ok(orch) = self.orchestrator() else {
            return Ours::default();
        };
        let asked = orch
            .with_timeout(std::time::Duration::from_secs(2))
            .services()
            .await;
        let deployed = asked.ok().map(|list| {
            list.into_iter()
                .filter_map(|d| {
                    let ids = d.instance_ids();
                    (!ids.is_empty()).then_some((d.name, ids))
                })
                .collect()
        });
        Ours { deployed }
    }

    pub fn health_timeout(&self, spec: &ServiceSpec) -> Duration {
        Duration::from_secs_f64(spec.timeout.unwrap_or(self.config.timeouts.health_check))
    }

    /// The orchestrator's client, with an admin token and this run's
    /// fencing token.
    pub fn orchestrator(&self) -> Result<chora_api::OrchestratorClient, crate::failure::StepError> {
        let url = self.url_of("orchestrator").ok_or_else(|| {
            crate::failure::StepError::new(
                "no `orchestrator` service in the config to deploy through",
            )
        })?;
        Ok(chora_api::OrchestratorClient::new(url, self.http.clone())
            .with_token(self.admin_token())
            .with_fencing(self.fencing))
    }
}

/// What the orchestrator says of this system's phase 3 instances: each
/// deployment's current instance id (`None`: it did not answer).
#[derive(Debug, Clone, Default)]
pub struct Ours {
    /// Each deployed service's instance ids (one, or one per copy).
    pub deployed: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Whether a service registers under the instance id it is given: chora's
/// own services and whatever chora registers on its behalf do; another
/// program registering itself may not.
pub fn honours_instance_id(spec: &ServiceSpec) -> bool {
    use crate::config::Register;
    let chora_own = spec.docker_compose.is_none()
        && match (&spec.command, &spec.image) {
            (None, None) => true,
            (Some(c), None) => c.first().is_some_and(|p| p == "chora"),
            (_, Some(i)) => i.starts_with("chora:") || i.starts_with("chora-etcd:"),
        };
    spec.registers() == Register::Chora || chora_own
}
