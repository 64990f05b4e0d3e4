//! Supervision: one actor task per deployed service owns its unit, restarts it on
//! failure with exponential backoff up to a limit, deregisters an instance from
//! the Manifest the moment its process is seen to exit, and obeys stop / start /
//! restart commands. `GET /v1/services` reads the status each actor publishes.

use crate::actor::{Actor, Cmd};
use crate::ctx::UNIT_ENV;
pub use crate::ctx::{
    Ctx, LABEL_DEPLOY, LABEL_DIGEST, LABEL_STAND_IN, Placement, RestartPolicy, Runtimes, digest,
};
use chora_api::orchestrator::{DeploySpec, ServiceStatus, State};
use chora_runtime::{Found, Runtime, RuntimeError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// A deployed service as the supervisor holds it.
pub struct Deployment {
    pub spec: DeploySpec,
    /// [`digest`] of the request it was started for.
    pub digest: String,
    pub status: Arc<Mutex<ServiceStatus>>,
    /// Its unit's health URL as this orchestrator reaches it.
    pub(crate) probe: Arc<Mutex<Option<String>>>,
    tx: mpsc::Sender<Cmd>,
}

impl Deployment {
    /// Its unit's health URL as this orchestrator reaches it (once started).
    pub fn probe_url(&self) -> Option<String> {
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The instance ids its unit registers under, once started: one, or one
    /// per copy (see `Runtime::instance_ids`).
    pub fn instance_ids(&self) -> Vec<String> {
        self.snapshot().instance_ids()
    }

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

    /// Ends this deployment as its orchestrator goes (see `Cmd::Leave`).
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Ends this deployment without stopping its unit, which another
    /// deployment adopted (see `replace.rs`, a rolling update).
    pub async fn release(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Release(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn hand_over(actor: Actor, digest: String) -> Deployment {
    let (tx, rx) = mpsc::channel(8);
    let spec = actor.spec.clone();
    let status = actor.status.clone();
    let probe = actor.probe.clone();
    tokio::spawn(actor.run(rx));
    Deployment {
        spec,
        digest,
        status,
        probe,
        tx,
    }
}

/// Starts `spec` now and hands it to a new actor; when its runtime still runs
/// a unit started for the very same request (by an earlier incarnation of this
/// orchestrator), that unit is adopted instead. A start error is returned and
/// nothing is kept.
pub async fn deploy(ctx: &Arc<Ctx>, spec: DeploySpec) -> Result<Deployment, RuntimeError> {
    deploy_at(ctx, spec, None).await
}

/// [`deploy`], placed as `place` says (a stand-in: see `replace.rs`); a
/// stand-in is never an adopted unit.
pub async fn deploy_at(
    ctx: &Arc<Ctx>,
    spec: DeploySpec,
    place: Option<Placement>,
) -> Result<Deployment, RuntimeError> {
    if let Some(place) = place {
        let mut actor = Actor::new(ctx, &spec, place);
        actor.launch().await?;
        return Ok(hand_over(actor, digest(&spec)));
    }
    let mut actor = Actor::new(ctx, &spec, Placement::of(&spec));
    let digest = digest(&spec);
    let runtime = ctx.runtimes.for_spec(&spec)?;
    match runtime.find(&spec.name, None).await? {
        Some(found) if found.labels.get(LABEL_DIGEST) == Some(&digest) => {
            adopt_into(&mut actor, &*runtime, found).await;
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

async fn adopt_into(actor: &mut Actor, runtime: &dyn Runtime, found: Found) {
    let id = found
        .env
        .get("CHORA_INSTANCE_ID")
        .cloned()
        .unwrap_or_else(|| format!("{}-{}", actor.spec.name, chora_api::random_hex(4)));
    tracing::info!(service = %actor.spec.name, unit = %found.unit.id(), instance = %id, "adopted a running unit");
    let unit_spec = actor.ctx.unit_spec(&actor.spec, &actor.place, runtime, &id);
    actor.took(found.unit, runtime, &unit_spec, id).await;
}

/// The units the runtimes still run for deploy requests of an earlier
/// incarnation of this orchestrator (containers outlive it), as deployments.
pub async fn adopt_all(ctx: &Arc<Ctx>) -> Vec<Deployment> {
    let mut out = Vec::new();
    for runtime in ctx.runtimes.all() {
        let found = match runtime.list().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(runtime = runtime.name(), error = %e, "cannot list units to adopt");
                continue;
            }
        };
        for mut f in found {
            // A stand-in of a replacement this orchestrator did not finish:
            // the real unit is (or will be) deployed by its name.
            if f.labels.contains_key(LABEL_STAND_IN) {
                tracing::info!(unit = %f.name, "removing a stand-in left by an unfinished replacement");
                f.unit.stop(ctx.policy.stop_grace).await;
                continue;
            }
            let Some(mut spec) = f
                .labels
                .get(LABEL_DEPLOY)
                .and_then(|j| serde_json::from_str::<DeploySpec>(j).ok())
            else {
                continue;
            };
            spec.environment = f
                .env
                .iter()
                .filter(|(k, _)| !UNIT_ENV.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let digest = f.labels.get(LABEL_DIGEST).cloned().unwrap_or_default();
            let mut actor = Actor::new(ctx, &spec, Placement::of(&spec));
            adopt_into(&mut actor, &*runtime, f).await;
            out.push(hand_over(actor, digest));
        }
    }
    out
}

/// All deployments by name.
pub type Deployments = tokio::sync::Mutex<BTreeMap<String, Arc<Deployment>>>;
