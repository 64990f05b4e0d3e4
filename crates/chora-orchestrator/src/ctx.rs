//! What the supervisor shares with every actor: the runtimes units start on,
//! the restart policy, the Manifest clients (a registration on behalf keeps
//! the service's own key; a deregistration carries a short-lived admin
//! token), and how a deploy request becomes a unit spec. A unit's labels
//! carry its request without the environment (no secret) and a digest of
//! the whole request, so a restarted orchestrator adopts what it finds.

use chora_api::ManifestClient;
use chora_api::auth::Credentials;
use chora_api::orchestrator::{DeploySpec, ServiceStatus};
use chora_runtime::process::ProcessRuntime;
use chora_runtime::{Runtime, RuntimeError, RuntimeKind, UnitSpec, Volume};
use std::sync::Arc;
use std::time::Duration;

/// When and how often a failed service is restarted.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Failures in a row (each within `stable_after` of its start) before giving up.
    pub max_restarts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A process that ran this long resets the failure count.
    pub stable_after: Duration,
    /// SIGTERM → SIGKILL grace when stopping.
    pub stop_grace: Duration,
    /// Time between health checks of a service registered on its behalf.
    pub check_every: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
            check_every: Duration::from_millis(500),
        }
    }
}

/// The runtimes units start on: a spec with an `image` runs on Docker, one
/// with a `command` as a local process, a built-in capability on `default`.
/// Choosing one is the only place the orchestrator names a kind.
pub struct Runtimes {
    pub process: Arc<ProcessRuntime>,
    /// Containers: this engine's, or its swarm's services.
    pub docker: Option<Arc<dyn Runtime>>,
    pub default: RuntimeKind,
}

impl Runtimes {
    /// The runtime `spec` runs on.
    pub fn for_spec(&self, spec: &DeploySpec) -> Result<Arc<dyn Runtime>, RuntimeError> {
        let kind = match (&spec.image, &spec.command) {
            (Some(_), _) => RuntimeKind::Docker,
            (None, Some(_)) => RuntimeKind::Process,
            (None, None) => self.default,
        };
        match kind {
            RuntimeKind::Process => Ok(self.process.clone()),
            RuntimeKind::Docker => match &self.docker {
                Some(d) => Ok(d.clone()),
                None => Err(RuntimeError::Unsupported(
                    "this orchestrator runs local processes (--runtime process); `image` needs --runtime docker".into(),
                )),
            },
        }
    }

    /// Every runtime this orchestrator holds.
    pub fn all(&self) -> Vec<Arc<dyn Runtime>> {
        let mut all: Vec<Arc<dyn Runtime>> = vec![self.process.clone()];
        if let Some(d) = &self.docker {
            all.push(d.clone());
        }
        all
    }
}

/// Label: the deploy request a container was started for (no environment: no
/// secret), so a restarted orchestrator can adopt it.
pub const LABEL_DEPLOY: &str = "io.chora.deploy";
/// Label: a digest of the whole deploy request, environment included, so a
/// repeated identical deploy adopts instead of replacing.
pub const LABEL_DIGEST: &str = "io.chora.deploy-digest";

/// Variables the orchestrator sets for each unit (not part of its request).
pub(crate) const UNIT_ENV: &[&str] = &[
    "CHORA_INSTANCE_ID",
    "CHORA_SERVICE_NAME",
    "CHORA_SERVICE_VERSION",
    "PORT",
    "CHORA_ADVERTISE_URL",
    "CHORA_NETWORK",
    "PATH",
];

/// The digest of a deploy request (hex SHA-256 of its JSON).
pub fn digest(spec: &DeploySpec) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        serde_json::to_vec(spec).expect("a spec serializes"),
    ))
}

/// Label: a stand-in of a start-first replacement (`true`): never adopted by
/// a restarted orchestrator, which removes it instead.
pub const LABEL_STAND_IN: &str = "io.chora.stand-in";

/// Where a unit of a deploy request runs: normally as the service itself on
/// its port; a stand-in (while a start-first replacement runs) under a unit
/// name and port of its own, so the old unit, the stand-in and the new unit
/// never collide. A container stand-in publishes no port: it is reached on
/// the project network by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub unit: String,
    pub port: Option<u16>,
    pub stand_in: bool,
}

impl Placement {
    pub fn of(spec: &DeploySpec) -> Placement {
        Placement {
            unit: spec.name.clone(),
            port: Some(spec.port),
            stand_in: false,
        }
    }

    /// The unit name of `spec`'s stand-in. Service names have no `--`
    /// at their end in practice; a config that has one of this name gets a
    /// stop-first replacement instead (see `replace.rs`).
    pub fn stand_in_name(spec: &DeploySpec) -> String {
        format!("{}--next", spec.name)
    }

    /// `spec`'s health URL as this placement answers it.
    pub fn health_url(&self, spec: &DeploySpec) -> String {
        let url = spec.health_url();
        if !self.stand_in {
            return url;
        }
        let inner = spec.container_port.unwrap_or(spec.port);
        let to = match self.port {
            Some(p) => format!("127.0.0.1:{p}"),
            None => format!("{}:{inner}", self.unit),
        };
        url.replace(&format!("127.0.0.1:{}", spec.port), &to)
            .replace(&format!("localhost:{}", spec.port), &to)
    }
}

/// What the supervisor shares with every actor.
pub struct Ctx {
    pub runtimes: Runtimes,
    pub policy: RestartPolicy,
    pub manifest_url: String,
    pub credentials: Option<Credentials>,
    /// For health checks of services registered on their behalf.
    pub http: reqwest::Client,
    pub restarts_total: prometheus_client::metrics::family::Family<
        crate::ServiceLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Every status an actor publishes, in order (the dashboard follows it).
    pub events: tokio::sync::broadcast::Sender<ServiceStatus>,
}

impl Ctx {
    /// What the runtime runs for `spec` under instance `id`, placed as
    /// `place` says.
    pub(crate) fn unit_spec(
        &self,
        spec: &DeploySpec,
        place: &Placement,
        runtime: &dyn Runtime,
        id: &str,
    ) -> UnitSpec {
        let mut unit = UnitSpec {
            name: place.unit.clone(),
            port: place.port,
            container_port: match place.port {
                Some(_) => spec.container_port,
                None => Some(spec.container_port.unwrap_or(spec.port)),
            },
            ..Default::default()
        };
        let inner = unit.inner_port().unwrap_or(spec.port);
        let (argv, image) = match (&spec.command, &spec.image) {
            (c, Some(i)) => (c.clone().unwrap_or_default(), Some(i.clone())),
            (Some(c), None) => (c.clone(), None),
            // A built-in capability: this chora, as the runtime runs it.
            (None, None) => runtime.chora(capability_args(spec, &runtime.bind(&unit))),
        };
        let mut env = spec.environment.clone();
        env.entry("MANIFEST_URL".into())
            .or_insert_with(|| self.manifest_url.clone());
        env.insert("CHORA_INSTANCE_ID".into(), id.to_owned());
        env.insert("CHORA_SERVICE_NAME".into(), spec.name.clone());
        env.insert("CHORA_SERVICE_VERSION".into(), spec.version.clone());
        env.insert("PORT".into(), inner.to_string());
        let mut deploy = spec.clone();
        deploy.environment.clear();
        unit.argv = argv;
        unit.image = image;
        unit.env = env;
        unit.volumes = spec
            .volumes
            .iter()
            .filter_map(|v| Volume::parse(v).ok())
            .collect();
        unit.labels = [
            (
                LABEL_DEPLOY.to_string(),
                serde_json::to_string(&deploy).expect("a spec serializes"),
            ),
            (LABEL_DIGEST.to_string(), digest(spec)),
        ]
        .into();
        if place.stand_in {
            unit.labels.insert(LABEL_STAND_IN.into(), "true".into());
        }
        unit.ca = spec.ca.clone();
        unit.placement.replicas = spec.replicas.unwrap_or(1).max(1);
        // Its health check as the unit itself reaches it (a runtime that
        // checks where the unit runs: a Swarm service's HEALTHCHECK).
        unit.health = Some(spec.health_url().replace(
            &format!("127.0.0.1:{}", spec.port),
            &format!("127.0.0.1:{inner}"),
        ));
        if let Some(url) = runtime.advertise(&unit) {
            unit.env.insert("CHORA_ADVERTISE_URL".into(), url);
        }
        unit
    }

    /// The client a registration on behalf of `spec` keeps using: with the
    /// service's own API key when its request carries one, else a long-lived
    /// admin token (when auth is on).
    pub(crate) fn manifest_for(&self, spec: &DeploySpec) -> Option<ManifestClient> {
        let client = ManifestClient::new([self.manifest_url.as_str()])
            .ok()?
            .with_timeout(Duration::from_secs(2));
        let key = spec.environment.get("CHORA_API_KEY").cloned().or_else(|| {
            let secret = self.credentials.as_ref()?.jwt_secret()?;
            Some(chora_api::auth::mint_admin_token(
                secret,
                "orchestrator",
                Duration::from_secs(30 * 86400),
            ))
        });
        Some(match key {
            Some(k) => client.with_token(k),
            None => client,
        })
    }

    /// A Manifest client carrying a fresh short-lived admin token (when auth is on).
    pub(crate) fn manifest(&self) -> Option<ManifestClient> {
        let client = ManifestClient::new([self.manifest_url.as_str()])
            .ok()?
            .with_timeout(Duration::from_secs(2));
        Some(
            match self.credentials.as_ref().and_then(|c| c.jwt_secret()) {
                Some(secret) => client.with_token(chora_api::auth::mint_admin_token(
                    secret,
                    "orchestrator",
                    Duration::from_secs(60),
                )),
                None => client,
            },
        )
    }

    /// Removes a dead instance from discovery at once instead of waiting for its TTL.
    pub(crate) async fn deregister(&self, name: &str, id: &str) {
        let Some(client) = self.manifest() else {
            return;
        };
        match client.deregister(name, id).await {
            Ok(()) => tracing::info!(service = name, instance = id, "deregistered"),
            Err(e) => {
                tracing::warn!(service = name, instance = id, error = %e, "could not deregister")
            }
        }
    }
}

/// The arguments of `chora capability serve --name NAME --listen HOST:PORT`.
fn capability_args(spec: &DeploySpec, listen: &str) -> Vec<String> {
    vec![
        "capability".into(),
        "serve".into(),
        "--name".into(),
        spec.name.clone(),
        "--listen".into(),
        listen.to_owned(),
    ]
}
