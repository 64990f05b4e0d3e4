//! `chora restart|stop|start NAME`: phase 3 services through the
//! orchestrator's API, phases 1-2 through the bootstrap's own runtime seam
//! (under the home's lock, so never interleaved with a bootstrap; the state
//! file follows). A replicated service goes one unit at a time, each
//! restarted unit healthy before the next is touched. A stopped service
//! stays stopped until `start`; a later `chora bootstrap` starts it again.

use crate::ctx::Ctx;
use crate::failure::{Failure, StepError};
use crate::local::Ensured;
use crate::output::Reporter;
use crate::{exit, session, units};
use chora_api::orchestrator_client::Action;
use std::time::Instant;

pub async fn control(name: &str, action: Action) -> Result<(), Failure> {
    let ctx = session::open(None)?;
    crate::session::reach(&ctx).await?;
    let units = units::resolve(&ctx, name)?;
    let mut out = Reporter::new(false);
    let local: Vec<&String> = units.iter().filter(|u| ctx.spec(u).phase < 3).collect();
    // Phases 1-2 change what the state file records: hold the home's lock.
    let _lock = if local.is_empty() {
        None
    } else {
        Some(session::lock(
            &ctx.home,
            &format!("chora {} {name}", action.as_str()),
        )?)
    };
    let mut state = session::load_state(&ctx.home)?;
    for unit in &units {
        let t = Instant::now();
        let verb = action.as_str();
        out.begin(&format!("{verb} {unit}"));
        let r = if ctx.spec(unit).phase == 3 {
            remote(&ctx, unit, action).await
        } else {
            let record = state.as_ref().and_then(|s| s.services.get(unit)).cloned();
            let r = here(&ctx, unit, action, record.as_ref()).await;
            if let (Ok(Some(rec)), Some(s)) = (&r, state.as_mut()) {
                s.started(unit, rec.clone());
                session::save_state(s, &ctx.home)?;
                // It runs as the config says now.
                let mut applied = crate::applied::Applied::load(&ctx.home).unwrap_or_default();
                applied.record(
                    unit,
                    crate::applied::AppliedSpec::of(ctx.spec(unit), ctx.config.default_runtime()),
                );
                let _ = applied.save(&ctx.home, |u| s.services.contains_key(u));
            }
            r.map(|rec| match rec {
                Some(rec) => match (rec.pid, &rec.container) {
                    (Some(p), _) => format!("running, pid {p}"),
                    (_, Some(c)) => format!("running, container {}", &c[..c.len().min(12)]),
                    _ => "running".into(),
                },
                None => "stopped".into(),
            })
        };
        match r {
            Ok(what) => out.ok(&format!("{unit}: {what}"), Some(t.elapsed())),
            Err(e) => {
                out.fail(unit, Some(t.elapsed()), &e.message);
                let mut f = Failure::new(
                    exit::FAILURE,
                    "CONTROL_FAILED",
                    format!("{verb} {unit} failed: {}", e.message),
                );
                f.causes = e.causes;
                f.actions = e.actions;
                return Err(f);
            }
        }
    }
    Ok(())
}

/// A phase 3 service: the orchestrator acts; its answer is the new state.
async fn remote(ctx: &Ctx, unit: &str, action: Action) -> Result<String, StepError> {
    let answer = ctx
        .orchestrator()?
        .act(unit, action)
        .await
        .map_err(|e| StepError::new(e.to_string()))?;
    Ok(answer.state.as_str().to_owned())
}

/// A phase 1-2 unit: the new record when it runs afterwards, `None` when it
/// was stopped.
async fn here(
    ctx: &Ctx,
    unit: &str,
    action: Action,
    record: Option<&chora_api::bootstrap_state::ServiceRecord>,
) -> Result<Option<chora_api::bootstrap_state::ServiceRecord>, StepError> {
    match action {
        Action::Stop => {
            if ctx.stop_local(unit, record).await {
                Ok(None)
            } else {
                Err(StepError::new("it ignored SIGTERM and SIGKILL"))
            }
        }
        Action::Start => Ok(Some(ctx.ensure_local(unit, record).await?.1)),
        Action::Restart => {
            if !ctx.stop_local(unit, record).await {
                return Err(StepError::new("it ignored SIGTERM and SIGKILL"));
            }
            match ctx.ensure_local(unit, None).await? {
                (Ensured::Restarted | Ensured::Healthy, rec) => Ok(Some(rec)),
            }
        }
    }
}
