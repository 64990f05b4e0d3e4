//! Supervision: one actor task per deployed service owns its unit, restarts it on
//! failure with exponential backoff up to a limit, deregisters an instance from
//! the Manifest the moment its process is seen to exit, and obeys stop / start /
//! restart commands. `GET /v1/services` reads the status each actor publishes.

use chora_api::ManifestClient;
use chora_api::auth::Credentials;
use chora_api::orchestrator::{DeploySpec, Register, ServiceStatus, State};
use chora_runtime::behalf::{Behalf, OnBehalf};
use chora_runtime::docker::DockerRuntime;
use chora_runtime::process::ProcessRuntime;
use chora_runtime::{Exit, Found, Runtime, RuntimeError, RuntimeKind, Unit, UnitSpec, Volume};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

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
pub struct Runtimes {
    pub process: Arc<ProcessRuntime>,
    pub docker: Option<Arc<DockerRuntime>>,
    pub default: RuntimeKind,
    /// The image of this binary, for built-in capabilities in containers.
    pub chora_image: String,
}

/// Label: the deploy request a container was started for (no environment: no
/// secret), so a restarted orchestrator can adopt it.
pub const LABEL_DEPLOY: &str = "io.chora.deploy";
/// Label: a digest of the whole deploy request, environment included, so a
/// repeated identical deploy adopts instead of replacing.
pub const LABEL_DIGEST: &str = "io.chora.deploy-digest";

/// Variables the orchestrator sets for each unit (not part of its request).
const UNIT_ENV: &[&str] = &[
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

/// What the supervisor shares with every actor.
pub struct Ctx {
    pub runtimes: Runtimes,
    pub policy: RestartPolicy,
    pub manifest_url: String,
    pub credentials: Option<Credentials>,
    /// For health checks of services registered on their behalf.
    pub http: reqwest::Client,
    /// This binary, for the default `capability serve` command.
    pub self_exe: PathBuf,
    pub restarts_total: prometheus_client::metrics::family::Family<
        crate::ServiceLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Every status an actor publishes, in order (the dashboard follows it).
    pub events: tokio::sync::broadcast::Sender<ServiceStatus>,
}

impl Ctx {
    /// The runtime `spec` runs on.
    pub fn runtime_for(&self, spec: &DeploySpec) -> Result<Arc<dyn Runtime>, RuntimeError> {
        let kind = match (&spec.image, &spec.command) {
            (Some(_), _) => RuntimeKind::Docker,
            (None, Some(_)) => RuntimeKind::Process,
            (None, None) => self.runtimes.default,
        };
        match kind {
            RuntimeKind::Process => Ok(self.runtimes.process.clone()),
            RuntimeKind::Docker => match &self.runtimes.docker {
                Some(d) => Ok(d.clone()),
                None => Err(RuntimeError::Unsupported(
                    "this orchestrator runs local processes (--runtime process); `image` needs --runtime docker".into(),
                )),
            },
        }
    }

    /// What the runtime runs for `spec` under instance `id`.
    fn unit_spec(&self, spec: &DeploySpec, runtime: &dyn Runtime, id: &str) -> UnitSpec {
        let docker = runtime.kind() == RuntimeKind::Docker;
        let inner = spec.container_port.unwrap_or(spec.port);
        let (argv, image) = match (&spec.command, &spec.image) {
            (c, Some(i)) => (c.clone().unwrap_or_default(), Some(i.clone())),
            (Some(c), None) => (c.clone(), None),
            (None, None) if docker => (
                capability_args(spec, "0.0.0.0", inner),
                Some(self.runtimes.chora_image.clone()),
            ),
            (None, None) => {
                let mut argv = vec![self.self_exe.display().to_string()];
                argv.extend(capability_args(spec, "127.0.0.1", spec.port));
                (argv, None)
            }
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
        let mut unit = UnitSpec {
            name: spec.name.clone(),
            argv,
            image,
            env,
            port: Some(spec.port),
            container_port: spec.container_port,
            volumes: spec
                .volumes
                .iter()
                .filter_map(|v| Volume::parse(v).ok())
                .collect(),
            labels: [
                (
                    LABEL_DEPLOY.to_string(),
                    serde_json::to_string(&deploy).expect("a spec serializes"),
                ),
                (LABEL_DIGEST.to_string(), digest(spec)),
            ]
            .into(),
        };
        if let Some(url) = runtime.advertise(&unit) {
            unit.env.insert("CHORA_ADVERTISE_URL".into(), url);
        }
        unit
    }

    /// The client a registration on behalf of `spec` keeps using: with the
    /// service's own API key when its request carries one, else a long-lived
    /// admin token (when auth is on).
    fn manifest_for(&self, spec: &DeploySpec) -> Option<ManifestClient> {
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
    fn manifest(&self) -> Option<ManifestClient> {
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
    async fn deregister(&self, name: &str, id: &str) {
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

enum Cmd {
    Stop(oneshot::Sender<State>),
    Start(oneshot::Sender<State>),
    Restart(oneshot::Sender<State>),
    /// Stop for good (delete, replace, shutdown).
    Remove(oneshot::Sender<()>),
}

/// A deployed service as the supervisor holds it.
pub struct Deployment {
    pub spec: DeploySpec,
    /// [`digest`] of the request it was started for.
    pub digest: String,
    pub status: Arc<Mutex<ServiceStatus>>,
    tx: mpsc::Sender<Cmd>,
}

impl Deployment {
    pub fn snapshot(&self) -> ServiceStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<State>) -> Cmd) -> State {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(make(tx)).await.is_err() {
            return self.snapshot().state;
        }
        rx.await.unwrap_or_else(|_| self.snapshot().state)
    }

    pub async fn stop(&self) -> State {
        self.ask(Cmd::Stop).await
    }
    pub async fn start(&self) -> State {
        self.ask(Cmd::Start).await
    }
    pub async fn restart(&self) -> State {
        self.ask(Cmd::Restart).await
    }
    pub async fn remove(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Remove(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The arguments of `chora capability serve --name NAME --listen HOST:PORT`.
fn capability_args(spec: &DeploySpec, host: &str, port: u16) -> Vec<String> {
    vec![
        "capability".into(),
        "serve".into(),
        "--name".into(),
        spec.name.clone(),
        "--listen".into(),
        format!("{host}:{port}"),
    ]
}

/// The actor's own state.
struct Actor {
    ctx: Arc<Ctx>,
    spec: DeploySpec,
    status: Arc<Mutex<ServiceStatus>>,
    unit: Option<Box<dyn Unit>>,
    /// The registration kept on the unit's behalf (`register: chora`).
    behalf: Option<OnBehalf>,
    started: Option<Instant>,
    failures: u32,
}

impl Actor {
    fn publish(&self, f: impl FnOnce(&mut ServiceStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        let _ = self.ctx.events.send(s.clone());
    }

    fn state(&self) -> State {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).state
    }

    /// Starts a new unit under a fresh instance id.
    async fn launch(&mut self) -> Result<(), RuntimeError> {
        let id = format!("{}-{}", self.spec.name, chora_api::random_hex(4));
        let runtime = self.ctx.runtime_for(&self.spec)?;
        let unit_spec = self.ctx.unit_spec(&self.spec, &*runtime, &id);
        let unit = runtime.start(&unit_spec).await?;
        tracing::info!(service = %self.spec.name, unit = %unit.id(), instance = %id, "started");
        self.took(unit, &*runtime, &unit_spec, id);
        Ok(())
    }

    /// Takes `unit` (started or adopted) as this deployment's, under instance `id`.
    fn took(
        &mut self,
        unit: Box<dyn Unit>,
        runtime: &dyn Runtime,
        unit_spec: &UnitSpec,
        id: String,
    ) {
        let uid = unit.id();
        self.publish(|s| {
            s.state = State::Running;
            s.pid = uid.pid();
            s.container = uid.container().map(str::to_owned);
            s.runtime = runtime.kind().as_str().to_owned();
            s.started_at = Some(chora_api::rfc3339(SystemTime::now()));
            s.instance_id = Some(id.clone());
        });
        if self.spec.registers() == Register::Chora
            && let Some(client) = self.ctx.manifest_for(&self.spec)
        {
            let b = Behalf {
                name: self.spec.name.clone(),
                id,
                version: self.spec.version.clone(),
                rest: runtime
                    .advertise(unit_spec)
                    .unwrap_or_else(|| self.spec.url()),
                health_url: runtime.reach(unit_spec, &self.spec.health_url()),
                dependencies: self.spec.dependencies.clone(),
                every: self.ctx.policy.check_every,
            };
            self.behalf = Some(OnBehalf::spawn(client, self.ctx.http.clone(), b));
        }
        self.unit = Some(unit);
        self.started = Some(Instant::now());
    }

    /// Stops keeping the registration on behalf, deregistering it.
    async fn drop_behalf(&mut self) {
        if let Some(b) = self.behalf.take() {
            b.stop().await;
        }
    }

    async fn launch_or_fail(&mut self) -> State {
        if let Err(e) = self.launch().await {
            tracing::error!(service = %self.spec.name, error = %e, "cannot start");
            self.publish(|s| {
                s.state = State::Failed;
                s.pid = None;
                s.last_exit = Some(e.to_string());
            });
        }
        self.state()
    }

    fn instance_id(&self) -> Option<String> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instance_id
            .clone()
    }

    /// Stops the unit if there is one, deregisters it, and settles in `state`.
    async fn halt(&mut self, state: State) {
        self.drop_behalf().await;
        if let Some(mut u) = self.unit.take() {
            let exit = u.stop(self.ctx.policy.stop_grace).await;
            self.publish(|s| s.last_exit = Some(exit.to_string()));
        }
        if let Some(id) = self.instance_id() {
            self.ctx.deregister(&self.spec.name, &id).await;
        }
        self.publish(|s| {
            s.state = state;
            s.pid = None;
        });
    }

    /// The unit died unasked. Returns when to restart it, if at all.
    async fn exited(&mut self, exit: Exit) -> Option<Instant> {
        self.unit = None;
        self.drop_behalf().await;
        let name = self.spec.name.clone();
        if let Some(id) = self.instance_id() {
            self.ctx.deregister(&name, &id).await;
        }
        let ran = self.started.map(|t| t.elapsed()).unwrap_or_default();
        tracing::warn!(service = %name, %exit, ran = ?ran, "exited");
        self.publish(|s| {
            s.last_exit = Some(exit.to_string());
            s.pid = None;
        });
        if exit.success() {
            self.publish(|s| s.state = State::Exited);
            return None;
        }
        let p = self.ctx.policy;
        if ran >= p.stable_after {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures > p.max_restarts {
            tracing::error!(service = %name, failures = self.failures - 1, "restart limit reached; giving up");
            self.publish(|s| s.state = State::Failed);
            return None;
        }
        let backoff =
            (p.initial_backoff * 2u32.saturating_pow(self.failures - 1)).min(p.max_backoff);
        self.publish(|s| s.state = State::Restarting);
        Some(Instant::now() + backoff)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut restart_at: Option<Instant> = None;
        loop {
            enum Ev {
                Exited(Exit),
                RestartDue,
                Cmd(Option<Cmd>),
            }
            let ev = if let Some(u) = self.unit.as_mut() {
                tokio::select! {
                    e = u.wait() => Ev::Exited(e),
                    c = rx.recv() => Ev::Cmd(c),
                }
            } else if let Some(at) = restart_at {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => Ev::RestartDue,
                    c = rx.recv() => Ev::Cmd(c),
                }
            } else {
                Ev::Cmd(rx.recv().await)
            };
            match ev {
                Ev::Exited(exit) => restart_at = self.exited(exit).await,
                Ev::RestartDue => {
                    restart_at = None;
                    self.ctx
                        .restarts_total
                        .get_or_create(&crate::ServiceLabel {
                            service: self.spec.name.clone(),
                        })
                        .inc();
                    self.publish(|s| s.restarts += 1);
                    if self.launch_or_fail().await == State::Failed {
                        // A spawn error counts as a failure too.
                        restart_at = self.exited(Exit::Code(-1)).await;
                    }
                }
                Ev::Cmd(None) => {
                    self.halt(State::Stopped).await;
                    return;
                }
                Ev::Cmd(Some(cmd)) => {
                    restart_at = None;
                    match cmd {
                        Cmd::Stop(reply) => {
                            self.halt(State::Stopped).await;
                            let _ = reply.send(State::Stopped);
                        }
                        Cmd::Start(reply) => {
                            if self.unit.is_none() {
                                self.failures = 0;
                                self.launch_or_fail().await;
                            }
                            let _ = reply.send(self.state());
                        }
                        Cmd::Restart(reply) => {
                            self.halt(State::Stopped).await;
                            self.failures = 0;
                            let _ = reply.send(self.launch_or_fail().await);
                        }
                        Cmd::Remove(reply) => {
                            self.halt(State::Stopped).await;
                            let _ = reply.send(());
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn new_status(spec: &DeploySpec) -> Arc<Mutex<ServiceStatus>> {
    Arc::new(Mutex::new(ServiceStatus {
        name: spec.name.clone(),
        version: spec.version.clone(),
        state: State::Stopped,
        pid: None,
        container: None,
        runtime: String::new(),
        restarts: 0,
        url: spec.url(),
        started_at: None,
        instance_id: None,
        last_exit: None,
    }))
}

fn new_actor(ctx: &Arc<Ctx>, spec: &DeploySpec) -> Actor {
    Actor {
        ctx: ctx.clone(),
        spec: spec.clone(),
        status: new_status(spec),
        unit: None,
        behalf: None,
        started: None,
        failures: 0,
    }
}

fn hand_over(actor: Actor, digest: String) -> Deployment {
    let (tx, rx) = mpsc::channel(8);
    let spec = actor.spec.clone();
    let status = actor.status.clone();
    tokio::spawn(actor.run(rx));
    Deployment {
        spec,
        digest,
        status,
        tx,
    }
}

/// Starts `spec` now and hands it to a new actor; when its runtime still runs
/// a unit started for the very same request (by an earlier incarnation of this
/// orchestrator), that unit is adopted instead. A start error is returned and
/// nothing is kept.
pub async fn deploy(ctx: &Arc<Ctx>, spec: DeploySpec) -> Result<Deployment, RuntimeError> {
    let mut actor = new_actor(ctx, &spec);
    let digest = digest(&spec);
    let runtime = ctx.runtime_for(&spec)?;
    match runtime.find(&spec.name).await? {
        Some(found) if found.labels.get(LABEL_DIGEST) == Some(&digest) => {
            adopt_into(&mut actor, &*runtime, found);
        }
        Some(mut other) => {
            tracing::info!(service = %spec.name, "replacing a unit started for another request");
            other.unit.stop(ctx.policy.stop_grace).await;
            actor.launch().await?;
        }
        None => actor.launch().await?,
    }
    Ok(hand_over(actor, digest))
}

fn adopt_into(actor: &mut Actor, runtime: &dyn Runtime, found: Found) {
    let id = found
        .env
        .get("CHORA_INSTANCE_ID")
        .cloned()
        .unwrap_or_else(|| format!("{}-{}", actor.spec.name, chora_api::random_hex(4)));
    tracing::info!(service = %actor.spec.name, unit = %found.unit.id(), instance = %id, "adopted a running unit");
    let unit_spec = actor.ctx.unit_spec(&actor.spec, runtime, &id);
    actor.took(found.unit, runtime, &unit_spec, id);
}

/// The units a runtime still runs for deploy requests of an earlier
/// incarnation of this orchestrator (containers outlive it), as deployments.
pub async fn adopt_all(ctx: &Arc<Ctx>) -> Vec<Deployment> {
    let Some(docker) = ctx.runtimes.docker.clone() else {
        return Vec::new();
    };
    let names: Vec<String> = match docker.containers().await {
        Ok(all) => all
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(LABEL_DEPLOY))
            })
            .filter_map(|c| c.labels?.get(chora_runtime::docker::LABEL_SERVICE).cloned())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list containers to adopt");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for name in names {
        let Ok(Some(found)) = docker.find(&name).await else {
            continue;
        };
        let Some(mut spec) = found
            .labels
            .get(LABEL_DEPLOY)
            .and_then(|j| serde_json::from_str::<DeploySpec>(j).ok())
        else {
            continue;
        };
        spec.environment = found
            .env
            .iter()
            .filter(|(k, _)| !UNIT_ENV.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let digest = found.labels.get(LABEL_DIGEST).cloned().unwrap_or_default();
        let mut actor = new_actor(ctx, &spec);
        adopt_into(&mut actor, &*docker, found);
        out.push(hand_over(actor, digest));
    }
    out
}

/// All deployments by name.
pub type Deployments = tokio::sync::Mutex<BTreeMap<String, Arc<Deployment>>>;
