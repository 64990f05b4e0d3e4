//! `chora bootstrap rollback` and `reset`: stop what later phases (or all
//! phases) started, in reverse dependency order, and set the state to match.
//! Rollback keeps data except where the seed's table says otherwise; reset
//! deletes the state, the logs and (unless kept) the credentials, and keeps
//! volumes and `.chora/data/`. Both ask for confirmation unless `--force`.

use crate::exit;
use crate::failure::Failure;
use crate::home::Home;
use crate::output::Reporter;
use crate::session;
use crate::stop::{stop_all, stop_phases_above};
use chora_api::bootstrap_state::{RunStatus, State};
use chora_runtime::Runtime;
use chora_runtime::process::{Lifetime, ProcessRuntime};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

/// Asks on a terminal unless `force`; refuses without `--force` when stdin
/// is not a terminal (DESIGN.md §2).
fn confirm(question: &str, force: bool) -> Result<(), Failure> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            exit::rollback::CANCELLED,
            "CANCELLED",
            "refusing without --force: stdin is not a terminal to confirm on",
        )
        .action("Run it again with --force"));
    }
    eprint!("{question} (yes/no): ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(
            exit::rollback::CANCELLED,
            "CANCELLED",
            "cancelled; nothing was changed",
        ))
    }
}

/// `chora bootstrap rollback [--to-phase N] [--force] [--keep-data]`.
pub async fn rollback(to_phase: Option<u8>, force: bool, keep_data: bool) -> Result<(), Failure> {
    let ctx = session::open(None)?;
    crate::session::reach(&ctx).await?;
    let _lock = session::lock(&ctx.home, "chora bootstrap rollback")?;
    let Some(mut state) = session::load_state(&ctx.home)? else {
        return Err(Failure::new(
            exit::rollback::INVALID_PHASE,
            "INVALID_PHASE",
            "there is nothing to roll back: no bootstrap has run here",
        ));
    };
    let highest = state
        .completed_phases
        .iter()
        .copied()
        .filter(|p| *p <= 3)
        .max();
    let current = highest
        .map(|h| h.max(state.current_phase.min(3)))
        .unwrap_or(state.current_phase.min(3));
    let target = to_phase.unwrap_or(current.saturating_sub(1));
    if target > 3 || (target >= current && state.services.values().all(|r| r.phase <= target)) {
        return Err(Failure::new(
            exit::rollback::INVALID_PHASE,
            "INVALID_PHASE",
            format!("cannot roll back to phase {target}: the system is at phase {current}"),
        )
        .action(format!(
            "Pick a phase from 0 to {}",
            current.saturating_sub(1)
        )));
    }
    let stopping: Vec<String> = (target + 1..=3)
        .rev()
        .flat_map(|p| ctx.config.phase_services(p))
        .filter(|n| state.services.contains_key(n))
        .collect();
    confirm(
        &format!(
            "Roll back to phase {target}? This stops: {}",
            if stopping.is_empty() {
                "nothing".into()
            } else {
                stopping.join(", ")
            }
        ),
        force,
    )?;
    let mut out = Reporter::new(false);
    out.line(&format!("Rolling back to Phase {target}..."));
    let still = stop_phases_above(&ctx, &state, target, &mut out).await;
    for n in stopping.iter().filter(|n| !still.contains(n)) {
        state.stopped(n);
    }
    if target == 0 {
        // The seed's table: rolling back phase 1 deletes the credentials and,
        // unless --keep-data, the Manifest's data.
        let _ = std::fs::remove_file(ctx.home.credentials());
        state.credentials_generated = false;
        state.credential_files.clear();
        out.ok("Credentials deleted", None);
        if !keep_data {
            for f in ["manifest.db", "manifest.db-wal", "manifest.db-shm"] {
                let _ = std::fs::remove_file(ctx.home.data().join(f));
            }
            out.ok("Manifest data deleted", None);
        }
    }
    // With the credentials gone, phase 0 must run again.
    state
        .completed_phases
        .retain(|p| *p <= target && !(target == 0 && *p == 0));
    state.checkpoints.retain(|c| c.phase <= target);
    state.current_phase = target;
    state.status = RunStatus::RolledBack;
    state.completed_at = None;
    session::save_state(&mut state, &ctx.home)?;
    if let Some(mut applied) = crate::applied::Applied::load(&ctx.home) {
        let _ = applied.save(&ctx.home, |u| state.services.contains_key(u));
    }
    out.ok(&format!("Updated state to Phase {target}"), None);
    if !still.is_empty() {
        return Err(Failure::new(
            exit::rollback::STILL_RUNNING,
            "ROLLBACK_FAILED",
            format!("still running: {}", still.join(", ")),
        )
        .action("Stop them by hand, then run the rollback again"));
    }
    out.line("\nRollback completed. Run 'chora bootstrap' to resume.");
    Ok(())
}

/// `chora bootstrap reset [--force] [--keep-credentials]`.
pub async fn reset(force: bool, keep_credentials: bool) -> Result<(), Failure> {
    let home = Home::from_env();
    let state = session::load_state(&home).unwrap_or(None);
    confirm(
        "⚠️  This stops all services and deletes the bootstrap state. Are you sure?",
        force,
    )?;
    let _lock = session::lock(&home, "chora bootstrap reset")?;
    let mut out = Reporter::new(false);
    out.line("Resetting system...");
    // The config may be broken or gone: stop by what the runtimes know then.
    let ctx = session::open(None);
    let still = match (&ctx, &state) {
        (Ok(ctx), Some(s)) => stop_all(ctx, s, &mut out).await,
        (Ok(ctx), None) => stop_all(ctx, &State::fresh("dev"), &mut out).await,
        (Err(_), _) => Vec::new(),
    };
    // Whatever else of this home a runtime still runs is ours too: containers
    // and networks labelled with it (volumes are kept), processes with a pid
    // file in its run directory.
    let runtimes: Vec<Arc<dyn Runtime>> = match &ctx {
        Ok(ctx) => ctx.all_runtimes().await,
        Err(_) => vec![Arc::new(ProcessRuntime::new(
            home.logs(),
            Some(home.run_dir()),
            Lifetime::Detached,
        ))],
    };
    for rt in runtimes {
        match rt.remove_all().await {
            Ok(gone) if !gone.is_empty() => out.ok(&format!("Removed {}", gone.join(", ")), None),
            Ok(_) => {}
            Err(e) => out.fail(
                &format!("{} units not removed", rt.name()),
                None,
                &e.to_string(),
            ),
        }
    }
    out.ok("All services stopped", None);
    let _ = std::fs::remove_file(home.state());
    let _ = std::fs::remove_file(home.applied());
    out.ok("State deleted", None);
    if let Ok(dir) = std::fs::read_dir(home.logs()) {
        for e in dir.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    out.ok("Logs deleted", None);
    if !keep_credentials {
        let _ = std::fs::remove_file(home.credentials());
        out.ok("Credentials deleted", None);
    }
    if !still.is_empty() {
        return Err(Failure::new(
            exit::rollback::STILL_RUNNING,
            "RESET_FAILED",
            format!("still running: {}", still.join(", ")),
        ));
    }
    out.line("\nReset complete. Run 'chora bootstrap' to start fresh.");
    Ok(())
}
