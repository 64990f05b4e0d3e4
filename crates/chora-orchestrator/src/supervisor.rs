//! Supervision: one actor task per deployed service owns its unit, restarts it on
//! failure with exponential backoff up to a limit, deregisters an instance from
//! the Manifest the moment its process is seen to exit, and obeys stop / start /
//! restart commands. `GET /v1/services` reads the status each actor publishes.

use crate::runtime::{Exit, Runtime, RuntimeError, Unit, UnitId};
use chora_api::ManifestClient;
use chora_api::auth::Credentials;
use chora_api::orchestrator::{DeploySpec, ServiceStatus, State};
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
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// What the supervisor shares with every actor.
pub struct Ctx {
    pub runtime: Arc<dyn Runtime>,
    pub policy: RestartPolicy,
    pub manifest_url: String,
    pub credentials: Option<Credentials>,
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

/// The argv a spec runs: its `command`, or this binary's capability server.
pub fn argv_of(ctx: &Ctx, spec: &DeploySpec) -> Vec<String> {
    match &spec.command {
        Some(c) => c.clone(),
        None => vec![
            ctx.self_exe.display().to_string(),
            "capability".into(),
            "serve".into(),
            "--name".into(),
            spec.name.clone(),
            "--listen".into(),
            format!("127.0.0.1:{}", spec.port),
        ],
    }
}

/// The actor's own state.
struct Actor {
    ctx: Arc<Ctx>,
    spec: DeploySpec,
    status: Arc<Mutex<ServiceStatus>>,
    unit: Option<Box<dyn Unit>>,
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
    fn launch(&mut self) -> Result<(), RuntimeError> {
        let id = format!("{}-{}", self.spec.name, chora_api::random_hex(4));
        let mut env = self.spec.environment.clone();
        env.entry("MANIFEST_URL".into())
            .or_insert_with(|| self.ctx.manifest_url.clone());
        env.insert("CHORA_INSTANCE_ID".into(), id.clone());
        env.insert("CHORA_SERVICE_NAME".into(), self.spec.name.clone());
        env.insert("CHORA_SERVICE_VERSION".into(), self.spec.version.clone());
        env.insert("PORT".into(), self.spec.port.to_string());
        let argv = argv_of(&self.ctx, &self.spec);
        let unit = self.ctx.runtime.start(&self.spec, &argv, &env)?;
        let uid = unit.id();
        tracing::info!(service = %self.spec.name, unit = ?uid, instance = %id, "started");
        self.publish(|s| {
            s.state = State::Running;
            s.pid = match &uid {
                UnitId::Pid(p) => Some(*p),
                UnitId::Container(_) => None,
            };
            s.container = match uid {
                UnitId::Container(c) => Some(c),
                UnitId::Pid(_) => None,
            };
            s.started_at = Some(chora_api::rfc3339(SystemTime::now()));
            s.instance_id = Some(id);
        });
        self.unit = Some(unit);
        self.started = Some(Instant::now());
        Ok(())
    }

    fn launch_or_fail(&mut self) -> State {
        if let Err(e) = self.launch() {
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
                    if self.launch_or_fail() == State::Failed {
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
                                self.launch_or_fail();
                            }
                            let _ = reply.send(self.state());
                        }
                        Cmd::Restart(reply) => {
                            self.halt(State::Stopped).await;
                            self.failures = 0;
                            let _ = reply.send(self.launch_or_fail());
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

/// Starts `spec` now and hands it to a new actor. A spawn error is returned and
/// nothing is kept.
pub fn deploy(ctx: &Arc<Ctx>, spec: DeploySpec) -> Result<Deployment, RuntimeError> {
    let status = Arc::new(Mutex::new(ServiceStatus {
        name: spec.name.clone(),
        version: spec.version.clone(),
        state: State::Stopped,
        pid: None,
        container: None,
        restarts: 0,
        url: spec.url(),
        started_at: None,
        instance_id: None,
        last_exit: None,
    }));
    let mut actor = Actor {
        ctx: ctx.clone(),
        spec: spec.clone(),
        status: status.clone(),
        unit: None,
        started: None,
        failures: 0,
    };
    actor.launch()?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(actor.run(rx));
    Ok(Deployment { spec, status, tx })
}

/// All deployments by name.
pub type Deployments = tokio::sync::Mutex<BTreeMap<String, Arc<Deployment>>>;
