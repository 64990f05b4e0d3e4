//! `chora bootstrap` on a completed system (DESIGN.md §14): the config is
//! compared with what runs (`applied.rs`), and only what changed is done.
//! Unchanged units keep their process or container (a dead one is started
//! again, as on every run). A changed unit is replaced and must be healthy:
//!
//! - phase 3, by its orchestrator: start-first where the unit can run
//!   elsewhere for a moment, else stop-first (see the orchestrator's
//!   `replace.rs`); a new version that fails its health check gives way to
//!   the old one there;
//! - phases 1-2, by the bootstrap: one unit at a time, stop then start (a
//!   replicated service keeps serving on its other units; a single one has a
//!   restart's gap, and the output says so); a unit whose new version fails
//!   is started again with its old spec.
//!
//! A unit added to the config is started; one removed is stopped and leaves
//! the registry. A change that was rolled back ends the run with exit 4
//! naming it, the system as it was. `--dry-run` prints [`Plan`] and changes
//! nothing.

use crate::applied::{Applied, AppliedSpec};
use crate::ctx::Ctx;
use crate::failure::StepError;
use crate::local::Ensured;
use crate::output::Reporter;
use crate::run::Run;
use chora_api::bootstrap_state::State;
use std::time::Instant;

/// What the next run does to one unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added,
    Changed {
        what: Vec<String>,
        old: Box<AppliedSpec>,
    },
    Removed {
        phase: u8,
    },
}

/// Every change, in the order they are made: the config's start order, then
/// the removed units from the last phase back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<(String, Change)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn get(&self, unit: &str) -> Option<&Change> {
        self.changes.iter().find(|(u, _)| u == unit).map(|(_, c)| c)
    }

    /// One line per change.
    pub fn lines(&self, ctx: &Ctx) -> Vec<String> {
        self.changes
            .iter()
            .map(|(u, c)| match c {
                Change::Added => format!("+ {u}: added (phase {})", ctx.spec(u).phase),
                Change::Changed { what, .. } => {
                    format!("~ {u}: {} ({})", what.join(", "), how(ctx, u))
                }
                Change::Removed { phase } => {
                    format!("- {u}: removed (phase {phase}): stopped and deregistered")
                }
            })
            .collect()
    }
}

/// How a changed unit is replaced, as the plan says it.
fn how(ctx: &Ctx, unit: &str) -> String {
    let spec = ctx.spec(unit);
    if spec.phase == 3 {
        return if spec.command.is_some() && spec.image.is_none() {
            "stop-first: a process's port is fixed in its command, a restart's gap".into()
        } else {
            "start-first, health-gated".into()
        };
    }
    if spec.replica.is_some() {
        "one replica at a time, health-gated; the others keep serving".into()
    } else {
        "stop-first: its clients know only its port, a restart's gap".into()
    }
}

/// What differs between the config and what runs. A unit the state records
/// but `applied` does not (started by a chora before it kept applied specs)
/// counts as unchanged.
pub fn plan(ctx: &Ctx, state: &State, applied: &Applied) -> Plan {
    let default = ctx.config.default_runtime();
    let mut changes = Vec::new();
    let order = ctx.config.start_order();
    for unit in &order {
        let now = AppliedSpec::of(ctx.spec(unit), default);
        match applied.units.get(unit) {
            Some(old) if *old != now => changes.push((
                unit.clone(),
                Change::Changed {
                    what: old.changes(&now),
                    old: Box::new(old.clone()),
                },
            )),
            Some(_) => {}
            None if state.services.contains_key(unit) => {}
            None => changes.push((unit.clone(), Change::Added)),
        }
    }
    let mut gone: Vec<(String, u8)> = applied
        .units
        .iter()
        .map(|(u, a)| (u.clone(), a.phase))
        .chain(state.services.iter().map(|(u, r)| (u.clone(), r.phase)))
        .filter(|(u, _)| !order.contains(u))
        .collect();
    gone.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    gone.dedup();
    changes.extend(
        gone.into_iter()
            .map(|(u, phase)| (u, Change::Removed { phase })),
    );
    Plan { changes }
}

/// `--dry-run` on a completed system.
pub fn print_plan(ctx: &Ctx, plan: &Plan, out: &mut Reporter) {
    if plan.is_empty() {
        out.line(
            "No changes: what runs matches the config (a dead service would be started again)",
        );
        return;
    }
    out.line(&format!(
        "Changes the next `chora bootstrap` makes ({}; nothing is changed now):",
        plan.changes.len()
    ));
    for l in plan.lines(ctx) {
        out.line(&format!("  {l}"));
    }
}

impl Run {
    /// Makes the changes of `plan`; see the module doc. Returns how many
    /// units it changed; an error names the unit whose change was rolled
    /// back (the state is saved either way).
    pub(crate) async fn apply(&mut self, plan: &Plan) -> Result<usize, StepError> {
        let ctx = self.ctx.clone();
        for l in plan.lines(&ctx) {
            self.out.line(&format!("  {l}"));
        }
        let mut done = 0;
        for unit in ctx.config.start_order() {
            let t = Instant::now();
            let phase = ctx.spec(&unit).phase;
            let record = self.state.services.get(&unit).cloned();
            let r = match plan.get(&unit) {
                Some(Change::Added) => {
                    self.out.begin(&format!("Adding {unit}"));
                    let r = if phase == 3 {
                        ctx.deploy(&unit).await
                    } else {
                        ctx.ensure_local(&unit, None).await.map(|(_, r)| r)
                    };
                    // Added means in discovery too (when it registers at all).
                    let registered = ctx.config.registered_units().contains(&unit);
                    match r {
                        Ok(r) if registered => {
                            let limit = ctx.health_timeout(ctx.spec(&unit));
                            crate::validate::wait_registered(
                                &ctx,
                                std::slice::from_ref(&unit),
                                limit,
                            )
                            .await
                            .map(|()| (r, format!("{unit} added")))
                            .map_err(|m| {
                                StepError::new(format!("`{unit}` is not in the Manifest: {m}"))
                            })
                        }
                        r => r.map(|r| (r, format!("{unit} added"))),
                    }
                }
                Some(Change::Changed { what, old }) => {
                    self.out
                        .begin(&format!("Replacing {unit} ({})", what.join(", ")));
                    self.replace(&unit, old, record.as_ref()).await
                }
                Some(Change::Removed { .. }) | None => {
                    match self.ensure(&unit, record.as_ref()).await? {
                        Some(r) => Ok((r, format!("{unit} was not running: restarted"))),
                        None => continue,
                    }
                }
            };
            match r {
                Ok((rec, label)) => {
                    done += usize::from(plan.get(&unit).is_some());
                    self.out.ok(&label, Some(t.elapsed()));
                    self.started(&unit, rec);
                    self.save().map_err(|f| StepError::new(f.message))?;
                }
                Err(e) => {
                    self.out.fail(&unit, Some(t.elapsed()), &e.message);
                    self.save().map_err(|f| StepError::new(f.message))?;
                    return Err(e);
                }
            }
        }
        for (unit, change) in &plan.changes {
            let Change::Removed { phase } = change else {
                continue;
            };
            let t = Instant::now();
            self.out.begin(&format!("Removing {unit}"));
            let record = self.state.services.get(unit).cloned();
            let stopped = if *phase == 3 {
                ctx.undeploy(unit).await.is_ok()
            } else {
                ctx.stop_local(unit, record.as_ref()).await
            };
            if !stopped {
                self.out
                    .fail(&format!("{unit} still running"), None, "it did not stop");
                return Err(StepError::new(format!(
                    "`{unit}` (removed from the config) did not stop"
                )));
            }
            self.out.ok(&format!("{unit} removed"), Some(t.elapsed()));
            self.state.stopped(unit);
            self.applied.units.remove(unit);
            done += 1;
            self.save().map_err(|f| StepError::new(f.message))?;
        }
        Ok(done)
    }

    /// An unchanged unit: running and healthy → `None`; else started again.
    async fn ensure(
        &mut self,
        unit: &str,
        record: Option<&chora_api::bootstrap_state::ServiceRecord>,
    ) -> Result<Option<chora_api::bootstrap_state::ServiceRecord>, StepError> {
        let ctx = self.ctx.clone();
        let (how, rec) = if ctx.spec(unit).phase == 3 {
            ctx.ensure_deployed(unit).await?
        } else {
            ctx.ensure_local(unit, record).await?
        };
        match how {
            Ensured::Healthy => {
                self.started(unit, rec);
                Ok(None)
            }
            Ensured::Restarted => Ok(Some(rec)),
        }
    }

    /// A changed unit, replaced health-gated; its old spec back on failure.
    async fn replace(
        &mut self,
        unit: &str,
        old: &AppliedSpec,
        record: Option<&chora_api::bootstrap_state::ServiceRecord>,
    ) -> Result<(chora_api::bootstrap_state::ServiceRecord, String), StepError> {
        let ctx = self.ctx.clone();
        let spec = ctx.spec(unit);
        if spec.phase == 3 {
            let (rec, replaced) = ctx.deploy_with(unit, spec).await?;
            let how = replaced.unwrap_or_else(|| "deployed".into());
            return Ok((rec, format!("{unit} replaced ({how})")));
        }
        if !ctx.stop_local(unit, record).await {
            return Err(StepError::new(format!(
                "`{unit}`'s old version did not stop"
            )));
        }
        match ctx.start_local(unit).await {
            Ok(rec) => Ok((rec, format!("{unit} replaced ({})", how(&ctx, unit)))),
            Err(e) => {
                let back = ctx.start_with(unit, &old.restore(spec)).await;
                let mut err = StepError::new(match &back {
                    Ok(_) => format!(
                        "the new version of `{unit}` did not become healthy; the old version runs again: {}",
                        e.message
                    ),
                    Err(b) => format!(
                        "the new version of `{unit}` did not become healthy ({}); the old version did not come back either: {}",
                        e.message, b.message
                    ),
                });
                err.causes = e.causes;
                err.actions = e.actions;
                if let Ok(rec) = back {
                    // What runs is the old spec: the applied file keeps it.
                    self.state.started(unit, rec);
                }
                Err(err)
            }
        }
    }
}
