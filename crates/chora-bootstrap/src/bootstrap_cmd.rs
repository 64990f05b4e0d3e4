//! `chora bootstrap` as a whole (DESIGN.md §2, §14): take the home's lock
//! (and the etcd lock when the config names a cluster), load the state, and
//! then either resume the phases where the last run stopped, start over, or,
//! on a completed system, apply what the config changed (else re-check and
//! restart what died). `--dry-run` prints the plan (or the changes) instead.
//! Every failure ends as the documented exit code of its phase.

use crate::applied::Applied;
use crate::audit::Audit;
use crate::config::Environment;
use crate::ctx::Ctx;
use crate::exit;
use crate::failure::{Failure, StepError};
use crate::home::Home;
use crate::output::Reporter;
use crate::run::Run;
use crate::session::{context, load_config, load_state};
use chora_api::bootstrap_state::{RunStatus, State};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use chora_api::bootstrap_state::PHASE_NAMES;
const PHASE_CODES: [&str; 5] = [
    "PREREQ_FAILED",
    "CORE_FAILED",
    "INFRA_FAILED",
    "CAP_FAILED",
    "VALIDATION_FAILED",
];

/// The flags of `chora bootstrap`.
#[derive(Debug, Clone)]
pub struct Options {
    pub environment: Option<Environment>,
    pub resume: bool,
    pub skip_validation: bool,
    pub dry_run: bool,
    pub config: Option<PathBuf>,
    /// `--inventory`: the hosts of a fleet, recorded in the config.
    pub inventory: Option<PathBuf>,
    pub timeout: Duration,
    pub parallel: bool,
    pub json: bool,
}

/// A failure of phase `n`, with its documented exit code.
pub fn phase_failure(n: u8, e: StepError, log: &std::path::Path) -> Failure {
    let mut f = Failure::new(
        exit::bootstrap::phase(n),
        e.code.unwrap_or(PHASE_CODES[n as usize]),
        e.message,
    );
    f.causes = e.causes;
    f.actions = e.actions;
    f.actions
        .push("If still failing, run: chora bootstrap rollback".into());
    f.log(log.display().to_string())
}

/// The whole of `chora bootstrap`.
pub async fn bootstrap(opts: Options) -> Result<(), Failure> {
    let home = Home::from_env();
    let mut out = Reporter::new(opts.json);
    let (config, config_path) = load_config(
        &home,
        opts.config.as_deref(),
        opts.environment,
        !opts.dry_run,
    )?;
    let config = match &opts.inventory {
        Some(inv) => crate::session::record_inventory(config, &config_path, inv, !opts.dry_run)?,
        None => config,
    };
    let ctx = context(home.clone(), config, config_path)?;
    if opts.dry_run {
        // A completed system: what the config changes; else the whole plan.
        match load_state(&home)? {
            Some(state) if state.status == RunStatus::Completed && opts.resume => {
                let applied = Applied::load(&home).unwrap_or_default();
                let plan = crate::apply::plan(&ctx, &state, &applied);
                crate::apply::print_plan(&ctx, &plan, &mut out);
            }
            _ => crate::plan::dry_run(&ctx, &mut out),
        }
        return Ok(());
    }
    let _lock = crate::lock::acquire(&home.lock(), "chora bootstrap").map_err(|m| {
        Failure::new(exit::bootstrap::PREREQUISITES, "LOCKED", m)
            .cause("another bootstrap, rollback or reset is running in this directory")
            .action("Wait for it to finish, then run `chora bootstrap` again")
    })?;
    let etcd_lock = match ctx.config.etcd.as_ref().filter(|e| !e.endpoints.is_empty()) {
        Some(e) => Some(
            crate::etcdlock::acquire(&e.endpoints, "chora bootstrap")
                .await
                .map_err(|m| {
                    Failure::new(exit::bootstrap::PREREQUISITES, "LOCKED", m)
                        .cause("another bootstrap against the same etcd cluster is running")
                        .action("Wait for it to finish, then run `chora bootstrap` again")
                })?,
        ),
        None => None,
    };
    let mut ctx = ctx;
    ctx.fencing = etcd_lock.as_ref().map(|l| l.token);
    let r = run_phases(ctx, out, home, &opts).await;
    if let Some(l) = etcd_lock {
        l.release().await;
    }
    r
}

/// Everything a run does once it holds its locks.
async fn run_phases(ctx: Ctx, out: Reporter, home: Home, opts: &Options) -> Result<(), Failure> {
    let loaded = load_state(&home)?;
    let audit = Audit::new(
        &home.audit(),
        ctx.config.logging.max_bytes,
        ctx.config.logging.backup_count,
    );
    let env = ctx.config.environment.as_str().to_owned();
    // A fleet starts each wave at once, as `docker stack deploy` starts a
    // stack: its hosts work side by side.
    let parallel = opts.parallel || ctx.config.inventory.is_some();
    let mut run = Run {
        applied: Applied::load(&home).unwrap_or_default(),
        ctx: Arc::new(ctx),
        state: State::fresh(&env),
        out,
        audit,
        parallel,
        deadline: Instant::now() + opts.timeout,
    };
    run.out
        .header(&format!("Chora Bootstrap v{}", env!("CARGO_PKG_VERSION")));
    let log = home.audit();

    let completed_before = match loaded {
        Some(s) if !opts.resume => {
            // --no-resume: start over, stopping what the old run started.
            run.out
                .line("Starting over (--no-resume): stopping what the previous run started");
            crate::stop::stop_all(&run.ctx, &s, &mut run.out).await;
            false
        }
        // The config was switched to another environment (`config init`):
        // the old state describes a system of the other one.
        Some(s) if s.environment != env => {
            run.out.line(&format!(
                "The state is of a `{}` system and the config is for `{env}`: starting over",
                s.environment
            ));
            crate::stop::stop_all(&run.ctx, &s, &mut run.out).await;
            false
        }
        Some(s) => {
            let completed = s.status == RunStatus::Completed;
            if !completed {
                run.out.line(&format!(
                    "Resuming from phase {} (previous run: {}{})",
                    first_incomplete(&s),
                    s.status.as_str(),
                    s.last_error
                        .as_deref()
                        .map(|e| format!(", {e}"))
                        .unwrap_or_default()
                ));
            }
            run.state = s;
            run.state.retry_count += u32::from(!completed);
            completed
        }
        None => false,
    };
    run.audit
        .record("INFO", None, "bootstrap_start", None, "started", None, None);

    if completed_before {
        // A completed system: apply what the config changed (DESIGN.md §14),
        // else re-check everything and restart what died.
        let plan = crate::apply::plan(&run.ctx, &run.state, &run.applied);
        if !plan.is_empty() {
            run.out.phase(1, "Applying changes");
            return match run.apply(&plan).await {
                Ok(n) => {
                    let gone = run.ctx.prune_stale(true).await;
                    if gone > 0 {
                        run.out.ok(&format!("Removed {gone} stale record(s)"), None);
                    }
                    run.out.phase_done("completed");
                    run.state.completed_at = Some(chora_api::bootstrap_state::now());
                    run.save()?;
                    run.audit.record(
                        "INFO",
                        None,
                        "changes_applied",
                        None,
                        "success",
                        Some(run.out.elapsed().as_millis() as u64),
                        None,
                    );
                    run.out.line(&format!("\n✓ Applied {n} change(s)"));
                    let services = services_json(&run.ctx, &run.state);
                    run.out.finish("changed", services, None);
                    Ok(())
                }
                Err(e) => {
                    run.out.phase_done("failed");
                    run.audit.record(
                        "ERROR",
                        None,
                        "change_rolled_back",
                        None,
                        "failure",
                        None,
                        Some(&e.message),
                    );
                    let mut f = Failure::new(
                        exit::bootstrap::CAPABILITIES,
                        e.code.unwrap_or("CHANGE_ROLLED_BACK"),
                        e.message,
                    );
                    f.causes = e.causes;
                    f.actions = e.actions;
                    let f = f.log(log.display().to_string());
                    let services = services_json(&run.ctx, &run.state);
                    run.out.finish("failed", services, Some(&f));
                    Err(f)
                }
            };
        }
        run.out.phase(1, "Re-checking services");
        let r = run.recheck(4).await;
        match r {
            Ok(0) => {
                run.out.ok(
                    &format!("All {} services healthy", run.ctx.config.services.len()),
                    None,
                );
                run.out.phase_done("completed");
                run.save()?;
                run.out.line("\n✓ Already bootstrapped; nothing to do");
                let services = services_json(&run.ctx, &run.state);
                run.out.finish("unchanged", services, None);
                return Ok(());
            }
            Ok(n) => {
                run.out.phase_done("completed");
                run.save()?;
                run.out.line(&format!(
                    "\n✓ Restarted {n} service(s); the system is healthy again"
                ));
                let services = services_json(&run.ctx, &run.state);
                run.out.finish("completed", services, None);
                return Ok(());
            }
            Err((phase, e)) => return Err(fail_run(&mut run, phase, e, &log)),
        }
    }

    run.state.status = RunStatus::InProgress;
    run.state.last_error = None;
    run.save()?;
    let start_at = first_incomplete(&run.state);
    if start_at > 1 {
        run.out
            .phase(start_at.min(4), "Re-checking services of earlier phases");
        if let Err((phase, e)) = run.recheck(start_at).await {
            return Err(fail_run(&mut run, phase, e, &log));
        }
        run.out.phase_done("completed");
        run.out.phases.pop();
    }
    for n in start_at..=4 {
        run.state.current_phase = n;
        run.save()?;
        if n == 4 && opts.skip_validation {
            run.out
                .line("\nPhase 4: Validation (skipped: --skip-validation)");
            continue;
        }
        let count = if (1..=3).contains(&n) {
            format!(" ({} services)", run.ctx.config.phase_services(n).len())
        } else {
            String::new()
        };
        run.out
            .phase(n, &format!("{}{count}", PHASE_NAMES[n as usize]));
        if let Err(e) = run.phase(n).await {
            return Err(fail_run(&mut run, n, e, &log));
        }
        run.out.phase_done("completed");
        run.state.complete_phase(n);
        if (1..=3).contains(&n) {
            run.checkpoint(n);
        }
        run.save()?;
    }
    run.state.status = RunStatus::Completed;
    run.state.current_phase = 4;
    run.state.completed_at = Some(chora_api::bootstrap_state::now());
    run.save()?;
    run.audit.record(
        "INFO",
        None,
        "bootstrap_complete",
        None,
        "success",
        Some(run.out.elapsed().as_millis() as u64),
        None,
    );
    let services = services_json(&run.ctx, &run.state);
    run.out.finish("completed", services, None);
    run.out
        .line(&crate::output::closing_block(&run.ctx, &run.state));
    Ok(())
}

/// The first phase the state has not completed.
pub fn first_incomplete(s: &State) -> u8 {
    (0..=4).find(|p| !s.is_completed(*p)).unwrap_or(4)
}

fn fail_run(run: &mut Run, phase: u8, e: StepError, log: &std::path::Path) -> Failure {
    run.out.phase_done("failed");
    run.state.status = RunStatus::Failed;
    run.state.current_phase = phase;
    run.state.last_error = Some(e.message.clone());
    let _ = run.save();
    run.audit.record(
        "ERROR",
        Some(phase),
        "bootstrap_failed",
        None,
        "failure",
        None,
        Some(&e.message),
    );
    let f = phase_failure(phase, e, log);
    let services = services_json(&run.ctx, &run.state);
    run.out.finish("failed", services, Some(&f));
    f
}

fn services_json(ctx: &Ctx, s: &State) -> serde_json::Value {
    ctx.config
        .start_order()
        .iter()
        .map(|n| {
            let started = s.services.get(n);
            serde_json::json!({
                "name": n,
                "phase": ctx.spec(n).phase,
                "status": if started.is_some() { "up" } else { "not started" },
                "health": if s.services_healthy.contains(n) { "healthy" } else { "unknown" },
                "url": ctx.spec(n).url(),
                "pid": started.and_then(|r| r.pid),
            })
        })
        .collect()
}
