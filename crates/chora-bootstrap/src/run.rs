//! One run of `chora bootstrap` while it holds its locks: the phase machine.
//! A [`Run`] runs a phase bounded by its timeout and the run's, with its
//! hooks; starts each phase's services wave by wave (with `--parallel` a
//! whole wave at once), records each one in the state file the moment it is
//! healthy (and in `applied-specs.json`), and re-checks the services of
//! completed phases, restarting those that are gone. The state is saved
//! after every service, so a crash at any moment leaves a state the next run
//! resumes from. Phase 0 is in `phase0.rs`; what a whole run does with these
//! is `bootstrap_cmd.rs`.

use crate::applied::{Applied, AppliedSpec};
use crate::audit::Audit;
use crate::ctx::Ctx;
use crate::exit;
use crate::failure::{Failure, StepError};
use crate::local::Ensured;
use crate::output::Reporter;
use crate::session::save_state;
use chora_api::bootstrap_state::{Checkpoint, State};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

    pub(crate) fn checkpoint(&mut self, phase: u8) {
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
    pub(crate) async fn phase(&mut self, n: u8) -> Result<(), StepError> {
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
                if n == 1 && self.ctx.config.inventory.is_some() {
                    self.ctx.prefetch_fleet_images();
                }
                if n == 3 {
                    self.start_waves(3).await?;
                } else {
                    self.local_phase(n).await?;
                }
                // What an earlier system left in the registry never fails
                // this one (DESIGN.md §14).
                let t = Instant::now();
                let gone = self.ctx.prune_stale(n == 3).await;
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
    /// wave: with `--parallel` (and on a fleet) a whole wave at once, else one
    /// service at a time.
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
    pub(crate) async fn recheck(&mut self, upto: u8) -> Result<usize, (u8, StepError)> {
        let ctx = self.ctx.clone();
        let mut restarted = 0;
        for phase in 1..upto.min(4) {
            if !self.state.is_completed(phase) {
                continue;
            }
            // Phase 3 may hold many services (one orchestrator, any number
            // of capabilities): one list, and every service looked at at
            // once (a few at a time); only those not healthy are taken
            // one by one below.
            let mut healthy = std::collections::BTreeMap::new();
            if phase == 3
                && let Ok(deployed) = ctx.deployed().await
            {
                use futures_util::StreamExt;
                let names = ctx.config.phase_services(3);
                let looks = futures_util::stream::iter(names.iter().map(|n| {
                    let (ctx, deployed) = (&ctx, &deployed);
                    async move { (n.clone(), ctx.deployed_healthy(n, deployed).await) }
                }))
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
                healthy.extend(looks.into_iter().filter_map(|(n, r)| Some((n, r?))));
            }
            for name in ctx.config.phase_services(phase) {
                let t = Instant::now();
                let r = if let Some(rec) = healthy.remove(&name) {
                    Ok((Ensured::Healthy, rec))
                } else if phase == 3 {
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
