//! `chora bootstrap`: phases 0-4 with checkpoints, resume, re-checks and
//! hooks (DESIGN.md §2). [`bootstrap`] takes the locks and runs
//! [`run_phases`]; a [`Run`] saves the state after every service and every
//! phase, so a crash at any moment leaves a state the next run resumes from:
//! a completed phase is re-checked (its services restarted when gone), an
//! interrupted one runs again. Phase 0 is in `phase0.rs`; `--dry-run`
//! prints the plan (`plan.rs`) instead.

use crate::applied::{Applied, AppliedSpec};
use crate::audit::Audit;
use crate::config::Environment;
use crate::ctx::Ctx;
use crate::exit;
use crate::failure::{Failure, StepError};
use crate::home::Home;
use crate::local::Ensured;
use crate::output::Reporter;
use crate::session::{context, load_config, load_state, save_state};
use chora_api::bootstrap_state::{Checkpoint, RunStatus, State};
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
    pub timeout: Duration,
    pub parallel: bool,
    pub json: bool,
}

/// A failure of phase `n`, with its documented exit code.
pub fn phase_failure(n: u8, e: StepError, log: &std::path::Path) -> Failure {
    let mut f = Failure::new(
        exit::bootstrap::phase(n),
        PHASE_CODES[n as usize],
        e.message,
    );
    f.causes = e.causes;
    f.actions = e.actions;
    f.actions
        .push("If still failing, run: chora bootstrap rollback".into());
    f.log(log.display().to_string())
}

/// One run of `chora bootstrap` while it holds its locks: the context, the
/// state it keeps saving, its output and audit log.
pub struct Run {
    pub ctx: Arc<Ctx>,
    pub state: State,
    /// The spec each running unit was started with (saved with the state).
    pub applied: Applied,
    pub out: Reporter,
    pub audit: Audit,
    pub parallel: bool,
    pub deadline: Instant,
}

impl Run {
    pub(crate) fn save(&mut self) -> Result<(), Failure> {
        save_state(&mut self.state, &self.ctx.home)?;
        let services = &self.state.services;
        self.applied
            .save(&self.ctx.home, |u| services.contains_key(u))
            .map_err(|e| {
                Failure::new(
                    exit::FAILURE,
                    "STATE_WRITE",
                    format!("cannot write {}: {e}", self.ctx.home.applied().display()),
                )
            })
    }

    /// Records that `name` runs as the config says now.
    pub(crate) fn started(
        &mut self,
        name: &str,
        record: chora_api::bootstrap_state::ServiceRecord,
    ) {
        self.state.started(name, record);
        let spec = AppliedSpec::of(self.ctx.spec(name), self.ctx.config.default_runtime());
        self.applied.record(name, spec);
    }

    fn checkpoint(&mut self, phase: u8) {
        let running: Vec<String> = self.state.services_started.clone();
        let health = running.iter().map(|s| (s.clone(), true)).collect();
        self.state.checkpoints.push(Checkpoint {
            phase,
            timestamp: chora_api::bootstrap_state::now(),
            services_running: running,
            health_status: health,
        });
    }

    fn time_left(&self, phase: u8) -> Duration {
        let phase_limit = Duration::from_secs_f64(self.ctx.config.timeouts.phase(phase));
        phase_limit.min(self.deadline.saturating_duration_since(Instant::now()))
    }

    /// Runs one phase, bounded by its timeout and the run's.
    async fn phase(&mut self, n: u8) -> Result<(), StepError> {
        let limit = self.time_left(n);
        let t = Instant::now();
        self.audit
            .record("INFO", Some(n), "phase_start", None, "started", None, None);
        self.hooks(n, true).await?;
        let r = match tokio::time::timeout(limit, self.phase_body(n)).await {
            Ok(r) => r,
            Err(_) => Err(
                StepError::new(format!("phase {n} did not finish within {limit:?}"))
                    .cause("a service is slow to become healthy")
                    .action("Raise `timeouts.phase_N` in the config or --timeout"),
            ),
        };
        let r = match r {
            Ok(()) => self.hooks(n, false).await,
            e => e,
        };
        let ms = Some(t.elapsed().as_millis() as u64);
        match &r {
            Ok(()) => {
                self.audit
                    .record("INFO", Some(n), "phase_complete", None, "success", ms, None)
            }
            Err(e) => self.audit.record(
                "ERROR",
                Some(n),
                "phase_failed",
                None,
                "failure",
                ms,
                Some(&e.message),
            ),
        }
        r
    }

    async fn phase_body(&mut self, n: u8) -> Result<(), StepError> {
        match n {
            0 => self.phase0().await,
            1..=3 => {
                if n == 3 {
                    self.start_waves(3).await?;
                } else {
                    self.local_phase(n).await?;
                }
                // What an earlier system left in the registry never fails
                // this one (DESIGN.md §14).
                let t = Instant::now();
                let gone = self.ctx.prune_stale().await;
                if gone > 0 {
                    self.out.ok(
                        &format!("Removed {gone} stale record(s) an earlier system left"),
                        Some(t.elapsed()),
                    );
                }
                Ok(())
            }
            _ => {
                let tests = crate::validate::run_all(
                    &self.ctx,
                    &mut self.out,
                    crate::validate::Skip::default(),
                )
                .await;
                crate::validate::verdict(&tests)
            }
        }
    }

    async fn hooks(&mut self, phase: u8, pre: bool) -> Result<(), StepError> {
        let hooks = self.ctx.config.hooks.of(phase, pre).to_vec();
        for h in hooks {
            let label = format!("{} hook {}", if pre { "pre" } else { "post" }, h.script);
            self.out.begin(&label);
            let t = Instant::now();
            let env = [("CHORA_PHASE".to_string(), phase.to_string())];
            match crate::validate::run_script(
                &self.ctx,
                &h.script,
                &h.args,
                Duration::from_secs_f64(h.timeout),
                &env,
            )
            .await
            {
                Ok(()) => self.out.ok(&label, Some(t.elapsed())),
                Err(e) => {
                    self.out.fail(&label, Some(t.elapsed()), &e);
                    return Err(
                        StepError::new(format!("{label} failed: {e}")).action(format!(
                            "Fix {} or remove it from `hooks` in the config",
                            h.script
                        )),
                    );
                }
            }
        }
        Ok(())
    }

    /// Starts (phases 1-2) or deploys (phase 3) the services of phase `n`, wave by
    /// wave: with `--parallel` a whole wave at once, else one service at a time.
    async fn start_waves(&mut self, n: u8) -> Result<(), StepError> {
        let ctx = self.ctx.clone();
        let total = ctx.config.phase_services(n).len();
        let mut done = 0;
        for wave in ctx.config.waves(n) {
            // Replicas of one service always start together: an etcd member
            // is healthy only once a quorum of its peers runs.
            let groups: Vec<Vec<String>> = if self.parallel {
                vec![wave.clone()]
            } else {
                let mut groups: Vec<Vec<String>> = Vec::new();
                let mut last: Option<&str> = None;
                for w in &wave {
                    let of = ctx.spec(w).replica.as_ref().map(|r| r.service.as_str());
                    match groups.last_mut() {
                        Some(g) if of.is_some() && of == last => g.push(w.clone()),
                        _ => groups.push(vec![w.clone()]),
                    }
                    last = of;
                }
                groups
            };
            for group in groups {
                let mut set = tokio::task::JoinSet::new();
                for name in &group {
                    done += 1;
                    let label = if n == 3 {
                        format!("Deploying {name} ({done}/{total})")
                    } else {
                        format!("Starting {name}")
                    };
                    self.out.begin(&label);
                    let ctx = ctx.clone();
                    let name = name.clone();
                    let record = self.state.services.get(&name).cloned();
                    set.spawn(async move {
                        let t = Instant::now();
                        let r = if n == 3 {
                            ctx.ensure_deployed(&name).await
                        } else {
                            ctx.ensure_local(&name, record.as_ref()).await
                        };
                        (name, t.elapsed(), r)
                    });
                }
                let mut first_err = None;
                while let Some(j) = set.join_next().await {
                    let (name, took, r) = j.expect("start tasks do not panic");
                    self.service_result(n, &name, took, r, &mut first_err);
                }
                self.save().map_err(|f| StepError::new(f.message))?;
                if let Some(e) = first_err {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Phases 1 and 2: local processes, then their registration.
    async fn local_phase(&mut self, n: u8) -> Result<(), StepError> {
        self.start_waves(n).await?;
        let ctx = self.ctx.clone();
        // The services of this phase must have registered themselves (all
        // but the etcd members, which the Manifest stands on).
        let names: Vec<String> = ctx
            .config
            .phase_services(n)
            .into_iter()
            .filter(|u| !ctx.spec(u).replica.as_ref().is_some_and(|r| r.unregistered))
            .collect();
        let t = Instant::now();
        self.out.begin("Checking registration in the Manifest");
        let limit = Duration::from_secs_f64(ctx.config.timeouts.health_check.min(30.0));
        match crate::validate::wait_registered(&ctx, &names, limit).await {
            Ok(()) => {
                let what = if n == 1 {
                    "Manifest self-registered".to_string()
                } else {
                    format!("{} registered in the Manifest", names.join(" and "))
                };
                self.out.ok(&what, Some(t.elapsed()));
                Ok(())
            }
            Err(missing) => {
                self.out.fail("Registration", Some(t.elapsed()), &missing);
                Err(StepError::new(format!("not registered in the Manifest: {missing}"))
                    .cause("the service cannot reach the Manifest or was refused (check its API key)")
                    .action(format!("Read its log in {}", ctx.home.logs().display())))
            }
        }
    }

    fn service_result(
        &mut self,
        phase: u8,
        name: &str,
        took: Duration,
        r: Result<(Ensured, chora_api::bootstrap_state::ServiceRecord), StepError>,
        first_err: &mut Option<StepError>,
    ) {
        let ms = Some(took.as_millis() as u64);
        match r {
            Ok((how, record)) => {
                let unit = match (record.pid, &record.container) {
                    (Some(pid), _) => format!(" (pid {pid})"),
                    (None, Some(c)) => format!(" (container {})", &c[..c.len().min(12)]),
                    (None, None) => String::new(),
                };
                let label = match (how, phase) {
                    (Ensured::Healthy, _) => format!("{name} already running{unit}"),
                    (Ensured::Restarted, 3) => format!("{name} deployed{unit}"),
                    (Ensured::Restarted, _) => format!("{name} started{unit}"),
                };
                self.out.ok(&label, Some(took));
                self.out.service_started(name);
                self.audit.record(
                    "INFO",
                    Some(phase),
                    if phase == 3 {
                        "deploy_service"
                    } else {
                        "start_service"
                    },
                    Some(name),
                    "success",
                    ms,
                    None,
                );
                self.started(name, record);
            }
            Err(e) => {
                self.out
                    .fail(&format!("{name} failed"), Some(took), &e.message);
                self.audit.record(
                    "ERROR",
                    Some(phase),
                    "start_service",
                    Some(name),
                    "failure",
                    ms,
                    Some(&e.message),
                );
                first_err.get_or_insert(e);
            }
        }
    }

    /// Re-checks every service of the completed phases below `upto`, restarting
    /// (in dependency order) those that are gone. Returns how many were restarted.
    async fn recheck(&mut self, upto: u8) -> Result<usize, (u8, StepError)> {
        let ctx = self.ctx.clone();
        let mut restarted = 0;
        for phase in 1..upto.min(4) {
            if !self.state.is_completed(phase) {
                continue;
            }
            for name in ctx.config.phase_services(phase) {
                let t = Instant::now();
                let r = if phase == 3 {
                    ctx.ensure_deployed(&name).await
                } else {
                    let rec = self.state.services.get(&name).cloned();
                    ctx.ensure_local(&name, rec.as_ref()).await
                };
                match r {
                    Ok((Ensured::Healthy, rec)) => {
                        self.started(&name, rec);
                    }
                    Ok((Ensured::Restarted, rec)) => {
                        restarted += 1;
                        let pid = rec.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
                        self.out.ok(
                            &format!("{name} was not running: restarted{pid}"),
                            Some(t.elapsed()),
                        );
                        self.audit.record(
                            "WARN",
                            Some(phase),
                            "restart_service",
                            Some(&name),
                            "success",
                            Some(t.elapsed().as_millis() as u64),
                            None,
                        );
                        self.started(&name, rec);
                    }
                    Err(e) => {
                        self.out.fail(
                            &format!("{name} could not be restarted"),
                            Some(t.elapsed()),
                            &e.message,
                        );
                        return Err((phase, e));
                    }
                }
            }
        }
        Ok(restarted)
    }
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
    let mut run = Run {
        applied: Applied::load(&home).unwrap_or_default(),
        ctx: Arc::new(ctx),
        state: State::fresh(&env),
        out,
        audit,
        parallel: opts.parallel,
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
                    let gone = run.ctx.prune_stale().await;
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
                        "CHANGE_ROLLED_BACK",
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
