//! One actor task per deployment: it owns the deployment's unit, restarts it
//! with exponential backoff when it dies unasked (up to `max_restarts`
//! failures in a row), drops its registration at once when it exits, and
//! obeys the commands of its `Deployment` handle (`supervisor.rs`), answering each when it is done. Every status change is published
//! on the supervisor's event channel, in order.

use crate::ctx::{Ctx, Placement};
use chora_api::orchestrator::{DeploySpec, Register, ServiceStatus, State};
use chora_runtime::behalf::{Behalf, OnBehalf};
use chora_runtime::{Exit, Runtime, RuntimeError, Unit, UnitSpec};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

pub(crate) enum Cmd {
    Stop(oneshot::Sender<State>),
    Start(oneshot::Sender<State>),
    Restart(oneshot::Sender<State>),
    /// Stop for good (delete, replace, shutdown).
    Remove(oneshot::Sender<()>),
    /// Let go of the unit without stopping it: another deployment took it
    /// over (a runtime's rolling update replaced it in place).
    Release(oneshot::Sender<()>),
    /// The orchestrator is going: a unit its engine keeps running
    /// (`Runtime::keeps_units`: a Swarm service) runs on, registered, for
    /// the next orchestrator to adopt; any other stops for good.
    Leave(oneshot::Sender<()>),
}

/// The actor's own state.
pub(crate) struct Actor {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) spec: DeploySpec,
    pub(crate) place: Placement,
    pub(crate) status: Arc<Mutex<ServiceStatus>>,
    /// The unit's health URL as this orchestrator reaches it, once started.
    pub(crate) probe: Arc<Mutex<Option<String>>>,
    unit: Option<Box<dyn Unit>>,
    /// The registration kept on the unit's behalf (`register: chora`).
    behalf: Option<OnBehalf>,
    started: Option<Instant>,
    failures: u32,
}

impl Actor {
    pub(crate) fn new(ctx: &Arc<Ctx>, spec: &DeploySpec, place: Placement) -> Actor {
        Actor {
            ctx: ctx.clone(),
            spec: spec.clone(),
            place,
            probe: Arc::default(),
            status: Arc::new(Mutex::new(ServiceStatus {
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
                instance_ids: Vec::new(),
                last_exit: None,
            })),
            unit: None,
            behalf: None,
            started: None,
            failures: 0,
        }
    }

    fn publish(&self, f: impl FnOnce(&mut ServiceStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        let _ = self.ctx.events.send(s.clone());
    }

    fn state(&self) -> State {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).state
    }

    /// Starts a new unit under a fresh instance id.
    pub(crate) async fn launch(&mut self) -> Result<(), RuntimeError> {
        let id = format!("{}-{}", self.spec.name, chora_api::random_hex(4));
        let runtime = self.ctx.runtimes.for_spec(&self.spec)?;
        let unit_spec = self.ctx.unit_spec(&self.spec, &self.place, &*runtime, &id);
        let unit = runtime.start(&unit_spec).await?;
        tracing::info!(service = %self.spec.name, unit = %unit.id(), instance = %id, "started");
        self.took(unit, &*runtime, &unit_spec, id).await;
        Ok(())
    }

    /// Takes `unit` (started or adopted) as this deployment's, under instance `id`.
    pub(crate) async fn took(
        &mut self,
        unit: Box<dyn Unit>,
        runtime: &dyn Runtime,
        unit_spec: &UnitSpec,
        id: String,
    ) {
        let uid = unit.id();
        let health = runtime
            .reach(unit_spec, &self.place.health_url(&self.spec))
            .await;
        // A registration on its behalf is one instance, whatever runs; copies
        // that register themselves each do so under an id of their own.
        let instances = match self.spec.registers() {
            Register::Chora => vec![id.clone()],
            Register::Itself => runtime.instance_ids(unit_spec, &id),
        };
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(health.clone());
        self.publish(|s| {
            s.state = State::Running;
            s.pid = uid.pid();
            s.container = uid.container().map(str::to_owned);
            s.runtime = runtime.name().to_owned();
            s.started_at = Some(chora_api::rfc3339(SystemTime::now()));
            s.instance_id = Some(id.clone());
            s.instance_ids = match instances.as_slice() {
                [one] if *one == id => Vec::new(),
                many => many.to_vec(),
            };
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
                health_url: health,
                dependencies: self.spec.dependencies.clone(),
                every: self.ctx.policy.check_every,
            };
            // An https:// health endpoint with a CA of its own.
            let http = match self.spec.ca.as_deref() {
                Some(ca) => chora_runtime::check::client(Some(std::path::Path::new(ca)))
                    .unwrap_or_else(|e| {
                        tracing::warn!(service = %self.spec.name, error = %e, "cannot use its CA");
                        self.ctx.http.clone()
                    }),
                None => self.ctx.http.clone(),
            };
            self.behalf = Some(OnBehalf::spawn(client, http, b));
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

    /// The instance ids its unit registered under (none before it started).
    fn instance_ids(&self) -> Vec<String> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instance_ids()
    }

    /// Stops the unit if there is one, deregisters it, and settles in `state`.
    async fn halt(&mut self, state: State) {
        self.drop_behalf().await;
        let ids = self.instance_ids();
        if let Some(mut u) = self.unit.take() {
            // Out of discovery at once, while it stops (a Swarm service's
            // tasks take a while to): nothing is routed to what is going.
            let out = async {
                for id in &ids {
                    self.ctx.deregister(&self.spec.name, id).await;
                }
            };
            let (exit, ()) = tokio::join!(u.stop(self.ctx.policy.stop_grace), out);
            self.publish(|s| s.last_exit = Some(exit.to_string()));
        }
        // Again once it stopped: a copy whose heartbeat was answered 404 in
        // between registered itself again.
        for id in &ids {
            self.ctx.deregister(&self.spec.name, id).await;
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
        for id in self.instance_ids() {
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

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
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
                        Cmd::Leave(reply) => {
                            let kept = self
                                .ctx
                                .runtimes
                                .for_spec(&self.spec)
                                .is_ok_and(|r| r.keeps_units());
                            if kept {
                                // Dropped, not stopped: its registration
                                // stays until the next orchestrator keeps
                                // it again (or its TTL lapses).
                                tracing::info!(service = %self.spec.name, "left running for the next orchestrator");
                                self.behalf = None;
                                self.unit = None;
                            } else {
                                self.halt(State::Stopped).await;
                            }
                            let _ = reply.send(());
                            return;
                        }
                        Cmd::Release(reply) => {
                            // Its registrations are the old spec's (the new
                            // deployment registers under ids of its own),
                            // and its copies have stopped: none is left.
                            self.drop_behalf().await;
                            self.unit = None;
                            for id in self.instance_ids() {
                                self.ctx.deregister(&self.spec.name, &id).await;
                            }
                            let _ = reply.send(());
                            return;
                        }
                    }
                }
            }
        }
    }
}
