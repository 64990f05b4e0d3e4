//! Replacing a running deployment with a request of another spec (DESIGN.md
//! §14), health-gated, so that requests through the gateway keep succeeding:
//!
//! - **Start-first** where the unit can run somewhere else for a moment (a
//!   built-in capability, which listens where it is told; an image, whose
//!   container has a port of its own): a *stand-in* of the new spec starts
//!   under a unit name and port of its own and must be healthy and `up` in
//!   the Manifest; only then the old unit stops (it deregisters on the way
//!   out, and a request that still reaches it is refused and retried by the
//!   gateway on another instance); the new unit starts in the old one's
//!   place and must be healthy and `up`; then the stand-in goes. At every
//!   moment an `up` instance answers.
//! - **Stop-first** otherwise (a process whose port is written in its
//!   command): the old unit stops, the new one starts; the gap is a
//!   restart's, and the answer says so.
//!
//! - **Rolling**, where the runtime replaces a unit in place itself
//!   (`Runtime::roll`: a Swarm service's rolling update, one task at a time,
//!   start-first, each new task healthy before an old one stops): the
//!   runtime rolls the unit to the new spec, a deployment of the new spec
//!   adopts it and must be ready (`up` under each of its instance ids), and
//!   the old deployment lets go of it without stopping it. A new version
//!   that fails is rolled back by the runtime; the old deployment keeps the
//!   unit, which runs the old spec again.
//!
//! A new version that does not become healthy within its `health_timeout`
//! never replaces the old one: start-first, the old unit never stopped;
//! stop-first (or a new unit that fails in the old one's place), the old
//! spec is deployed again. Either way the answer is an error that says so.

use crate::supervisor::{self, Ctx, Deployment, Placement};
use chora_api::manifest::Status;
use chora_api::orchestrator::{DeploySpec, State};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a replacement went, for the deploy answer.
pub enum Replaced {
    StartFirst,
    StopFirst(&'static str),
    Rolling,
}

impl Replaced {
    pub fn describe(&self) -> String {
        match self {
            Replaced::StartFirst => "start-first".into(),
            Replaced::StopFirst(why) => format!("stop-first: {why}"),
            Replaced::Rolling => "rolling: one copy at a time, start-first".into(),
        }
    }
}

/// A replacement that did not happen. `running` is what runs under the
/// name afterwards (the old deployment, or the old spec deployed again).
pub struct Failed {
    pub message: String,
    pub running: Option<Deployment>,
}

/// Why this spec cannot have a stand-in, if it cannot.
fn stop_first_because(ctx: &Ctx, old: &DeploySpec, new: &DeploySpec) -> Option<&'static str> {
    if new.command.is_some() && new.image.is_none() {
        return Some("a process's port is fixed in its command");
    }
    if new.port != old.port {
        return None;
    }
    // A container stand-in publishes no port: who reaches it must do so on
    // the project network, by name.
    let place = stand_in_place(ctx, new);
    match ctx.runtimes.for_spec(new) {
        Ok(rt) if place.port.is_none() => {
            let unit = ctx.unit_spec(new, &place, &*rt, "probe");
            rt.advertise(&unit)
                .is_none()
                .then_some("its consumers reach it only on its published port")
        }
        Ok(_) => None,
        Err(_) => Some("its runtime is not available"),
    }
}

/// Where `spec`'s stand-in runs: processes on a free port of this machine,
/// containers on the project network only.
fn stand_in_place(ctx: &Ctx, spec: &DeploySpec) -> Placement {
    let process = spec.image.is_none()
        && ctx
            .runtimes
            .for_spec(spec)
            .is_ok_and(|rt| rt.name() == "process");
    Placement {
        unit: Placement::stand_in_name(spec),
        port: process.then(free_port).flatten(),
        stand_in: true,
    }
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

/// Waits until `d` runs, answers its health check twice in a row and (when
/// it registers at all) is `up` in the Manifest under each of its instance
/// ids (every copy of it).
pub async fn ready(ctx: &Ctx, d: &Deployment, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut streak = 0;
    let mut last = String::from("no answer yet");
    let mut delay = Duration::from_millis(20);
    let manifest = ctx.manifest();
    loop {
        let s = d.snapshot();
        if matches!(s.state, State::Failed | State::Exited) {
            return Err(format!(
                "it exited ({})",
                s.last_exit.as_deref().unwrap_or("unknown")
            ));
        }
        if let Some(url) = d.probe_url().filter(|_| s.state == State::Running) {
            match chora_runtime::check::check(&ctx.http, &url).await {
                Ok(()) => streak += 1,
                Err(e) => {
                    streak = 0;
                    last = e;
                }
            }
        }
        if streak >= 2 {
            let ids = d.instance_ids();
            let registered = match &manifest {
                Some(m) if !ids.is_empty() => m.get(&d.spec.name).await.ok().is_some_and(|svc| {
                    ids.iter().all(|id| {
                        svc.instances
                            .iter()
                            .any(|i| i.id == *id && i.status == Status::Up)
                    })
                }),
                _ => true,
            };
            if registered {
                return Ok(());
            }
            last = "healthy but not yet up in the Manifest".into();
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "did not become healthy within {timeout:?} (last: {last})"
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_millis(250));
    }
}

/// Replaces `old` (running) by a deployment of `spec`; see the module doc.
pub async fn replace(
    ctx: &Arc<Ctx>,
    old: Arc<Deployment>,
    spec: DeploySpec,
) -> Result<(Deployment, Replaced), Failed> {
    let timeout = Duration::from_secs(u64::from(spec.health_timeout.unwrap_or(60).clamp(1, 3600)));
    let name = spec.name.clone();
    let how = match stop_first_because(ctx, &old.spec, &spec) {
        Some(why) => Replaced::StopFirst(why),
        None => Replaced::StartFirst,
    };
    let fail = |m: String| format!("the new version of `{name}` {m}");
    if let Some(rolled) = roll(ctx, &old, &spec, timeout).await {
        return rolled.map_err(|e| Failed {
            message: fail(e),
            running: None,
        });
    }
    if let Replaced::StopFirst(why) = how {
        tracing::info!(service = %name, why, "replacing stop-first");
        old.remove().await;
        return match start_ready(ctx, spec, None, timeout).await {
            Ok(d) => Ok((d, how)),
            Err(e) => Err(restore(ctx, &old.spec, timeout, fail(e)).await),
        };
    }
    tracing::info!(service = %name, "replacing start-first");
    let stand_in = start_ready(ctx, spec.clone(), Some(stand_in_place(ctx, &spec)), timeout)
        .await
        .map_err(|e| Failed {
            message: format!("{}; the old one keeps running", fail(e)),
            running: None,
        })?;
    old.remove().await;
    match start_ready(ctx, spec, None, timeout).await {
        Ok(d) => {
            stand_in.remove().await;
            Ok((d, how))
        }
        Err(e) => {
            // The stand-in serves until the old spec runs again.
            let failed = restore(ctx, &old.spec, timeout, fail(e)).await;
            stand_in.remove().await;
            Err(failed)
        }
    }
}

/// Replaces `old` by `spec` through the runtime's rolling update, where it
/// has one (see the module doc); `None` where it has not. An error leaves
/// `old` in charge of the unit, rolled back.
async fn roll(
    ctx: &Arc<Ctx>,
    old: &Arc<Deployment>,
    spec: &DeploySpec,
    timeout: Duration,
) -> Option<Result<(Deployment, Replaced), String>> {
    let rt = ctx.runtimes.for_spec(spec).ok()?;
    // The new spec under an instance id of its own: its copies register
    // beside the old ones' until those stop.
    let id = format!("{}-{}", spec.name, chora_api::random_hex(4));
    let unit = ctx.unit_spec(spec, &Placement::of(spec), &*rt, &id);
    // Each copy may take the whole health timeout.
    let copies = spec.replicas.unwrap_or(1).max(1);
    let rolling = rt.roll(&unit, timeout * copies)?;
    tracing::info!(service = %spec.name, "replacing by the runtime's rolling update");
    Some(
        async move {
            rolling.await.map_err(|e| e.to_string())?;
            // The unit now runs the new spec: a deployment of it adopts the
            // unit (by its digest label), then the old one lets go of it.
            let d = supervisor::deploy(ctx, spec.clone())
                .await
                .map_err(|e| format!("was rolled out but not taken over: {e}"))?;
            if let Err(e) = ready(ctx, &d, timeout).await {
                // Not ours to stop: the old deployment keeps the unit.
                d.release().await;
                return Err(e);
            }
            old.release().await;
            Ok((d, Replaced::Rolling))
        }
        .await,
    )
}

/// Deploys `spec` (placed as `place` says) and waits until it is ready; a
/// deployment that is not ready is removed.
async fn start_ready(
    ctx: &Arc<Ctx>,
    spec: DeploySpec,
    place: Option<Placement>,
    timeout: Duration,
) -> Result<Deployment, String> {
    let d = supervisor::deploy_at(ctx, spec, place)
        .await
        .map_err(|e| format!("did not start: {e}"))?;
    match ready(ctx, &d, timeout).await {
        Ok(()) => Ok(d),
        Err(e) => {
            d.remove().await;
            Err(e)
        }
    }
}

/// Deploys the old spec again after a failed replacement.
async fn restore(ctx: &Arc<Ctx>, old: &DeploySpec, timeout: Duration, why: String) -> Failed {
    tracing::warn!(service = %old.name, reason = %why, "bringing the old version back");
    match start_ready(ctx, old.clone(), None, timeout).await {
        Ok(d) => Failed {
            message: format!("{why}; the old version runs again"),
            running: Some(d),
        },
        Err(e) => Failed {
            message: format!("{why}; the old version did not come back either: {e}"),
            running: None,
        },
    }
}
