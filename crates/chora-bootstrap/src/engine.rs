//! `chora bootstrap`: phases 0-4 with checkpoints, resume, re-checks, hooks.

use crate::audit::Audit;
use crate::config::{Config, Environment};
use crate::ctx::{Ctx, Ensured, Home, StepError};
use crate::failure::{EXIT_CONFIG, Failure};
use crate::output::Reporter;
use crate::state::{Checkpoint, RunStatus, State};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PHASE_NAMES: [&str; 5] = [
    "Pre-Bootstrap Validation",
    "Core Services",
    "Infrastructure Services",
    "Capability Services",
    "Validation",
];
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
    pub verbose: bool,
    pub dry_run: bool,
    pub config: Option<PathBuf>,
    pub timeout: Duration,
    pub parallel: bool,
    pub json: bool,
}

/// A failure of phase `n`, with its documented exit code.
pub fn phase_failure(n: u8, e: StepError, log: &std::path::Path) -> Failure {
    let mut f = Failure::new(n + 1, PHASE_CODES[n as usize], e.message);
    f.causes = e.causes;
    f.actions = e.actions;
    f.actions
        .push("If still failing, run: chora bootstrap rollback".into());
    f.log(log.display().to_string())
}

/// Loads the config, writing it from the built-in template when it is missing
/// (unless `dry_run`, which changes nothing).
pub fn load_config(
    home: &Home,
    path: Option<&std::path::Path>,
    env: Option<Environment>,
    write: bool,
) -> Result<(Config, PathBuf), Failure> {
    let path = path
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| home.config());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let env = env.unwrap_or(Environment::Dev);
            let Some(t) = crate::template::template(env) else {
                return Err(Failure::new(
                    EXIT_CONFIG,
                    "CONFIG_ERROR",
                    format!(
                        "{} does not exist and there is no built-in `{}` template yet",
                        path.display(),
                        env.as_str()
                    ),
                )
                .action(format!(
                    "Write {} (start from `chora bootstrap config show` of the dev template)",
                    path.display()
                )));
            };
            if write {
                crate::state::write_atomic(&path, t.as_bytes(), 0o644).map_err(|e| {
                    Failure::new(
                        EXIT_CONFIG,
                        "CONFIG_ERROR",
                        format!("cannot write {}: {e}", path.display()),
                    )
                })?;
            }
            t
        }
        Err(e) => {
            return Err(Failure::new(
                EXIT_CONFIG,
                "CONFIG_ERROR",
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let config = Config::parse(&text, &path).map_err(config_failure)?;
    if let Some(want) = env
        && want != config.environment
    {
        return Err(Failure::new(
            EXIT_CONFIG,
            "CONFIG_ERROR",
            format!(
                "{} is for environment `{}`, not `{}`",
                path.display(),
                config.environment.as_str(),
                want.as_str()
            ),
        )
        .action("Pass --config with the file for that environment, or drop --environment"));
    }
    Ok((config, path))
}

pub fn config_failure(e: crate::config::ConfigError) -> Failure {
    let mut f = Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string());
    if !e.snippet.is_empty() {
        f = f.cause(format!("\n{}", e.snippet));
    }
    f.action(format!(
        "Fix {} and check it with `chora bootstrap config validate`",
        e.file.display()
    ))
}

pub fn load_state(home: &Home) -> Result<Option<State>, Failure> {
    State::load(&home.state()).map_err(|e| {
        Failure::new(8, "STATE_CORRUPTED", e.to_string())
            .action(format!(
                "Move {} aside and run `chora bootstrap` again",
                home.state().display()
            ))
            .action("Or start over: chora bootstrap reset --force")
    })
}

pub fn save(state: &mut State, home: &Home) -> Result<(), Failure> {
    state
        .save(&home.state())
        .map_err(|e| Failure::new(8, "STATE_CORRUPTED", e.to_string()))
}

/// Builds the shared context.
pub fn context(home: Home, config: Config, config_path: PathBuf) -> Result<Ctx, Failure> {
    let credentials = if home.credentials().exists() {
        Some(
            chora_api::auth::Credentials::load(&home.credentials()).map_err(|e| {
                Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string())
                    .action("Regenerate them: chora bootstrap config rotate-credentials")
            })?,
        )
    } else {
        None
    };
    Ok(Ctx {
        home,
        config,
        config_path,
        credentials,
        http: crate::health::client(),
        self_exe: std::env::current_exe()
            .map_err(|e| Failure::new(1, "RUNTIME", format!("cannot find this executable: {e}")))?,
        cwd: std::env::current_dir().map_err(|e| Failure::new(1, "RUNTIME", e.to_string()))?,
        fencing: None,
        docker: Default::default(),
        etcd_image: Default::default(),
    })
}

/// Prints what a run would do, changing nothing.
pub fn dry_run(ctx: &Ctx, out: &mut Reporter) {
    out.header(&format!(
        "Chora Bootstrap v{} — dry run (nothing is changed)",
        env!("CARGO_PKG_VERSION")
    ));
    out.line(&format!("Config: {}", ctx.config_path.display()));
    out.line(&format!("\nPhase 0: {}", PHASE_NAMES[0]));
    let ports: Vec<String> = ctx
        .config
        .services
        .values()
        .filter_map(|s| s.value.port)
        .map(|p| p.to_string())
        .collect();
    out.line(&format!("  - check ports {} are free", ports.join(", ")));
    out.line(&format!(
        "  - check {} GiB of disk under {}",
        ctx.config.prerequisites.min_disk_gb,
        ctx.home.root.display()
    ));
    out.line(&format!(
        "  - create {}/{{logs,data,run}} and credentials (0600) if missing",
        ctx.home.root.display()
    ));
    for phase in 1..=3u8 {
        out.line(&format!("\nPhase {phase}: {}", PHASE_NAMES[phase as usize]));
        for (i, wave) in ctx.config.waves(phase).iter().enumerate() {
            for name in wave {
                let spec = ctx.spec(name);
                let how = match (ctx.argv(spec), &spec.image) {
                    (Some(argv), _) => argv.join(" "),
                    (None, Some(img)) => format!("image {}", ctx.expand(img)),
                    (None, None) => format!(
                        "{} capability serve --name {name} --listen 127.0.0.1:{}",
                        ctx.self_exe.display(),
                        spec.port.unwrap_or(0)
                    ),
                };
                let mut env: Vec<String> = ctx.env_for(name, spec).into_keys().collect();
                if !env.iter().any(|k| k == "CHORA_API_KEY") {
                    env.push("CHORA_API_KEY".into()); // from the credentials phase 0 writes
                    env.sort();
                }
                let verb = if phase == 3 {
                    "deploy via orchestrator"
                } else {
                    "start"
                };
                out.line(&format!("  {}. {verb} {name}: {how}", i + 1));
                out.line(&format!(
                    "       env: {} (values not shown)",
                    env.join(", ")
                ));
                if let Some(h) = spec.health_url() {
                    out.line(&format!("       wait healthy: {h}"));
                }
            }
        }
    }
    out.line(&format!("\nPhase 4: {}", PHASE_NAMES[4]));
    for t in &ctx.config.validation.tests {
        if t.value.enabled {
            out.line(&format!("  - {}", t.value.name));
        }
    }
}

pub struct Run {
    pub ctx: Arc<Ctx>,
    pub state: State,
    pub out: Reporter,
    pub audit: Audit,
    pub parallel: bool,
    pub deadline: Instant,
}

impl Run {
    fn save(&mut self) -> Result<(), Failure> {
        save(&mut self.state, &self.ctx.home)
    }

    fn checkpoint(&mut self, phase: u8) {
        let running: Vec<String> = self.state.services_started.clone();
        let health = running.iter().map(|s| (s.clone(), true)).collect();
        self.state.checkpoints.push(Checkpoint {
            phase,
            timestamp: crate::state::now(),
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
            1 | 2 => self.local_phase(n).await,
            3 => self.start_waves(3).await,
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

    async fn phase0(&mut self) -> Result<(), StepError> {
        let ctx = self.ctx.clone();
        // Runtime.
        let t = Instant::now();
        if ctx.config.needs_docker() {
            let docker = ctx.docker_runtime().await;
            let v = match &docker {
                Ok(d) => chora_docker::engine_version(d.docker())
                    .await
                    .map_err(|e| StepError::new(e.to_string())),
                Err(e) => Err(e.clone()),
            }
            .map_err(|e| {
                self.out.fail("Docker", None, &e.message);
                let mut err =
                    StepError::new(format!("Docker is needed by this config but {}", e.message));
                err.causes = e.causes;
                err.action("Start Docker (systemctl start docker), or use `command:` services")
            })?;
            if !chora_docker::version_at_least(&v, (20, 10)) {
                self.out
                    .fail("Docker", None, &format!("{v} is older than 20.10"));
                return Err(
                    StepError::new(format!("Docker {v} is too old (need 20.10 or newer)"))
                        .action("Upgrade the Docker engine"),
                );
            }
            self.out
                .ok(&format!("Docker {v} detected"), Some(t.elapsed()));
            // chora's own image, built from this binary when missing (no registry).
            if ctx.needs_chora_image() {
                let t = Instant::now();
                let d = docker.expect("connected above");
                let tag = chora_docker::image::chora_tag();
                match chora_docker::image::ensure_chora_image(d.docker()).await {
                    Ok(None) => self.out.ok(&format!("Image {tag} present"), None),
                    Ok(Some(b)) => self.out.ok(
                        &format!(
                            "Built image {tag} ({} files, {:.1} MB, no registry)",
                            b.files.len(),
                            b.size as f64 / 1e6
                        ),
                        Some(t.elapsed()),
                    ),
                    Err(e) => {
                        self.out
                            .fail(&format!("Image {tag}"), Some(t.elapsed()), &e.to_string());
                        return Err(StepError::new(format!("cannot build the image {tag}: {e}"))
                            .action("Try it alone: chora image build"));
                    }
                }
            }
            // The etcd cluster's image: present, pulled, or built from a local etcd.
            if !ctx.config.etcd_members().is_empty() {
                let t = Instant::now();
                match ctx.ensure_etcd_image().await {
                    Ok((_, how)) => self.out.ok(&how, Some(t.elapsed())),
                    Err(e) => {
                        self.out.fail("etcd image", Some(t.elapsed()), &e.message);
                        return Err(e);
                    }
                }
            }
        } else {
            self.out.ok(
                &format!(
                    "Runtime: local processes (chora {})",
                    env!("CARGO_PKG_VERSION")
                ),
                None,
            );
        }
        // Ports.
        let mut taken = Vec::new();
        for (name, s) in &ctx.config.services {
            let Some(port) = s.value.port else { continue };
            if s.value.phase < 3
                && ctx
                    .find_local(name, self.state.services.get(name))
                    .await
                    .is_some()
            {
                continue; // ours, from an earlier run
            }
            if !crate::proc::port_free(port) {
                let who = match crate::proc::port_holder(port) {
                    Some((pid, cmd)) => format!("port {port} ({name}) is held by pid {pid}: {cmd}"),
                    None => format!("port {port} ({name}) is in use"),
                };
                taken.push((port, who));
            }
        }
        if !taken.is_empty() {
            let detail: Vec<String> = taken.iter().map(|(_, w)| w.clone()).collect();
            self.out.fail("Ports available", None, &detail.join("; "));
            let mut e = StepError::new(format!(
                "{} of the configured ports are in use",
                taken.len()
            ));
            for (_, w) in &taken {
                e = e.cause(w.clone());
            }
            let (p, _) = taken[0];
            return Err(e
                .action(format!("See who holds a port: ss -ltnp 'sport = :{p}'"))
                .action("Stop that process, or change the service's `port` in the config"));
        }
        let ports: Vec<u16> = ctx
            .config
            .services
            .values()
            .filter_map(|s| s.value.port)
            .collect();
        let span = match (ports.iter().min(), ports.iter().max()) {
            (Some(a), Some(b)) => format!("Ports {a}-{b} available"),
            _ => "No ports to check".into(),
        };
        self.out.ok(&span, None);
        // Disk.
        std::fs::create_dir_all(&ctx.home.root).map_err(|e| {
            StepError::new(format!("cannot create {}: {e}", ctx.home.root.display()))
        })?;
        let free = free_gib(&ctx.home.root);
        let need = ctx.config.prerequisites.min_disk_gb;
        if free < need {
            self.out.fail(
                "Disk space",
                None,
                &format!("{free:.1} GiB free, need {need} GiB"),
            );
            return Err(StepError::new(format!(
                "only {free:.1} GiB free under {} (need {need} GiB)",
                ctx.home.root.display()
            ))
            .action("Free some disk space or lower `prerequisites.min_disk_gb`"));
        }
        self.out
            .ok(&format!("Disk space: {free:.1} GiB available"), None);
        // Directories and the services' databases: the same runner as
        // `chora prepare`, so the services carry no cold-boot code.
        let t = Instant::now();
        let home = ctx.home.root.clone();
        let report =
            tokio::task::spawn_blocking(move || chora_prepare::chora_services_prepare(&home).run())
                .await
                .map_err(|e| StepError::new(e.to_string()))?;
        if !report.ok {
            let why = report
                .first_failure()
                .map(|e| e.to_string())
                .unwrap_or_default();
            self.out
                .fail("Prepare directories and databases", Some(t.elapsed()), &why);
            return Err(StepError::new(format!(
                "preparing {} failed: {why}",
                ctx.home.root.display()
            ))
            .action("Check the permissions of the chora home directory"));
        }
        let made = report.changes().count();
        if made == 0 {
            self.out
                .ok("Directories and databases in place", Some(t.elapsed()));
        } else {
            self.out.ok(
                &format!("Prepared directories and databases ({made} created)"),
                Some(t.elapsed()),
            );
        }
        // Credentials: generated once.
        let path = ctx.home.credentials();
        if path.exists() {
            self.out.ok("Credentials present", None);
        } else {
            let names: Vec<&str> = ctx.config.services.keys().map(String::as_str).collect();
            let creds = chora_api::auth::Credentials::generate(names);
            crate::state::write_atomic(&path, creds.to_json().as_bytes(), 0o600)
                .map_err(|e| StepError::new(format!("cannot write {}: {e}", path.display())))?;
            self.state.credentials_generated = true;
            self.state.credential_files = vec![path.display().to_string()];
            self.out.ok(
                &format!(
                    "Generated credentials (stored in {}, mode 0600)",
                    path.display()
                ),
                None,
            );
            self.ctx = Arc::new(Ctx {
                credentials: Some(creds),
                ..clone_ctx(&ctx)
            });
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
        r: Result<(Ensured, crate::state::ServiceRecord), StepError>,
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
                self.state.started(name, record);
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
                        self.state.started(&name, rec);
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
                        self.state.started(&name, rec);
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

fn clone_ctx(c: &Ctx) -> Ctx {
    Ctx {
        home: c.home.clone(),
        config: c.config.clone(),
        config_path: c.config_path.clone(),
        credentials: c.credentials.clone(),
        http: c.http.clone(),
        self_exe: c.self_exe.clone(),
        cwd: c.cwd.clone(),
        fencing: c.fencing,
        docker: c.docker.clone(),
        etcd_image: c.etcd_image.clone(),
    }
}

fn free_gib(path: &std::path::Path) -> f64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return f64::INFINITY;
    }
    (s.f_bavail as f64) * (s.f_frsize as f64) / (1024.0 * 1024.0 * 1024.0)
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
        dry_run(&ctx, &mut out);
        return Ok(());
    }
    let _lock = crate::lock::acquire(&home.lock(), "chora bootstrap").map_err(|m| {
        Failure::new(1, "LOCKED", m)
            .cause("another bootstrap, rollback or reset is running in this directory")
            .action("Wait for it to finish, then run `chora bootstrap` again")
    })?;
    let etcd_lock = match ctx.config.etcd.as_ref().filter(|e| !e.endpoints.is_empty()) {
        Some(e) => Some(
            crate::etcdlock::acquire(&e.endpoints, "chora bootstrap")
                .await
                .map_err(|m| {
                    Failure::new(1, "LOCKED", m)
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
            crate::commands::stop_all(&run.ctx, &s, &mut run.out).await;
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
        // A completed system: re-check everything, restart what died.
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
    run.state.completed_at = Some(crate::state::now());
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
        .line(&crate::ui::closing_block(&run.ctx, &run.state));
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
