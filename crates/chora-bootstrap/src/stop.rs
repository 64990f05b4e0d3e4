//! Stopping what a run started, in reverse dependency order: phase 3
//! through the orchestrator (unless the orchestrator goes too: it stops its
//! children itself), phases 2 and 1 through the runtime seam. Used by
//! rollback, reset, `--no-resume` and `apply-credentials`.

use crate::ctx::Ctx;
use crate::output::Reporter;
use chora_api::bootstrap_state::State;

/// Stops everything `state` recorded, in reverse dependency order: phase 3
/// through the orchestrator, then phases 2 and 1 by pid. Returns the names still
/// running.
pub async fn stop_all(ctx: &Ctx, state: &State, out: &mut Reporter) -> Vec<String> {
    stop_phases_above(ctx, state, 0, out).await
}

pub async fn stop_phases_above(
    ctx: &Ctx,
    state: &State,
    target: u8,
    out: &mut Reporter,
) -> Vec<String> {
    let mut still = Vec::new();
    for phase in (target + 1..=3).rev() {
        let mut names = ctx.config.phase_services(phase);
        names.reverse();
        for name in names {
            let record = state.services.get(&name);
            let t = std::time::Instant::now();
            if phase == 3 {
                // When the orchestrator goes too, it stops its children itself
                // (first, on SIGTERM); undeploying them one by one would only
                // need tokens the running orchestrator may no longer accept.
                if record.is_none() || target < 2 {
                    continue;
                }
                out.begin(&format!("Undeploying {name}"));
                match ctx.undeploy(&name).await {
                    Ok(()) => out.ok(&format!("{name} undeployed"), Some(t.elapsed())),
                    Err(e) => {
                        out.fail(&format!("{name} not undeployed"), None, &e.message);
                        still.push(name);
                    }
                }
            } else {
                if ctx.find_local(&name, record).await.is_none() {
                    continue;
                }
                out.begin(&format!("Stopping {name}"));
                if ctx.stop_local(&name, record).await {
                    out.ok(&format!("{name} stopped"), Some(t.elapsed()));
                } else {
                    out.fail(
                        &format!("{name} still running"),
                        None,
                        "it ignored SIGTERM and SIGKILL",
                    );
                    still.push(name);
                }
            }
        }
    }
    still
}
