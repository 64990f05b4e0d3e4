//! `chora bootstrap status | rollback | reset | validate | config …`.

use crate::ctx::{Ctx, Home};
use crate::engine::{context, load_config, load_state, save};
use crate::failure::{EXIT_CONFIG, Failure};
use crate::output::{Reporter, human};
use crate::state::{RunStatus, State};
use chora_api::manifest::{Instance, ListFilter, Status};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

fn ctx_for(config: Option<&Path>) -> Result<Ctx, Failure> {
    let home = Home::from_env();
    let (config, path) = load_config(&home, config, None, false)?;
    context(home, config, path)
}

/// Stops everything `state` recorded, in reverse dependency order: phase 3
/// through the orchestrator, then phases 2 and 1 by pid. Returns the names still
/// running.
pub async fn stop_all(ctx: &Ctx, state: &State, out: &mut Reporter) -> Vec<String> {
    stop_phases_above(ctx, state, 0, out).await
}

async fn stop_phases_above(
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
                    let _ = std::fs::remove_file(ctx.home.pidfile(&name));
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

fn confirm(question: &str, force: bool) -> Result<(), Failure> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            3,
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
            3,
            "CANCELLED",
            "cancelled; nothing was changed",
        ))
    }
}

fn lock(home: &Home, what: &str) -> Result<crate::lock::Lock, Failure> {
    crate::lock::acquire(&home.lock(), what).map_err(|m| {
        Failure::new(1, "LOCKED", m).action("Wait for the other run to finish, then try again")
    })
}

/// `chora bootstrap rollback [--to-phase N] [--force] [--keep-data]`.
pub async fn rollback(to_phase: Option<u8>, force: bool, keep_data: bool) -> Result<(), Failure> {
    let ctx = ctx_for(None)?;
    let _lock = lock(&ctx.home, "chora bootstrap rollback")?;
    let Some(mut state) = load_state(&ctx.home)? else {
        return Err(Failure::new(
            2,
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
            2,
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
    save(&mut state, &ctx.home)?;
    out.ok(&format!("Updated state to Phase {target}"), None);
    if !still.is_empty() {
        return Err(Failure::new(
            1,
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
    let state = load_state(&home).unwrap_or(None);
    confirm(
        "⚠️  This stops all services and deletes the bootstrap state. Are you sure?",
        force,
    )?;
    let _lock = lock(&home, "chora bootstrap reset")?;
    let mut out = Reporter::new(false);
    out.line("Resetting system...");
    // The config may be broken or gone: stop by pid files alone then.
    let still = match (ctx_for(None), &state) {
        (Ok(ctx), Some(s)) => stop_all(&ctx, s, &mut out).await,
        (Ok(ctx), None) => stop_all(&ctx, &State::fresh("dev"), &mut out).await,
        (Err(_), _) => Vec::new(),
    };
    // Containers and networks labelled with this home are ours too (volumes
    // are kept).
    if let Ok(ctx) = ctx_for(None)
        && ctx.config.needs_docker()
    {
        match ctx.docker_runtime().await {
            Ok(d) => match d.remove_all().await {
                Ok(gone) if !gone.is_empty() => {
                    out.ok(&format!("Removed {}", gone.join(", ")), None)
                }
                Ok(_) => {}
                Err(e) => out.fail("Containers not removed", None, &e.to_string()),
            },
            Err(e) => out.fail("Containers not removed", None, &e.message),
        }
    }
    // Anything else that left a pid file in run/ is ours too.
    if let Ok(dir) = std::fs::read_dir(home.run()) {
        for e in dir.flatten() {
            if let Some(id) = crate::proc::read_pidfile(&e.path()) {
                id.stop(Duration::from_secs(5)).await;
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    out.ok("All services stopped", None);
    let _ = std::fs::remove_file(home.state());
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
            1,
            "RESET_FAILED",
            format!("still running: {}", still.join(", ")),
        ));
    }
    out.line("\nReset complete. Run 'chora bootstrap' to start fresh.");
    Ok(())
}

/// `chora bootstrap validate`: 0 all passed, 1 a check failed, 2 not running.
pub async fn validate(skip: crate::validate::Skip, json: bool) -> Result<(), Failure> {
    let ctx = ctx_for(None)?;
    if ctx.manifest().health().await.is_err() {
        return Err(Failure::new(
            2,
            "NOT_RUNNING",
            format!("the Manifest at {} is not running", ctx.manifest_url()),
        )
        .action("Start the system: chora bootstrap"));
    }
    let mut out = Reporter::new(json);
    out.line("Running validation checks...\n");
    let results = crate::validate::run_all(&ctx, &mut out, skip).await;
    let ok = crate::validate::verdict(&results).is_ok();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "passed": ok, "tests": results }))
                .expect("serializes")
        );
    } else {
        out.line(&"━".repeat(61));
        out.line(if ok {
            "✓ All validation checks passed"
        } else {
            "✗ Some validation checks failed"
        });
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            1,
            "VALIDATION_FAILED",
            "one or more validation checks failed",
        ))
    }
}

/// What `status` shows of one service.
#[derive(Debug, Clone, serde::Serialize)]
struct ServiceView {
    name: String,
    phase: u8,
    version: Option<String>,
    url: Option<String>,
    status: String,
    health: String,
    last_heartbeat: Option<String>,
    heartbeat_age_seconds: Option<f64>,
    /// `process` or `docker`.
    runtime: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    /// A replica: its service and number (`manifest`, 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<u32>,
    /// An etcd member: `leader` or `follower` (absent when it does not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
}

/// Each etcd member chora runs, as etcd itself reports it.
type Members = std::collections::BTreeMap<String, crate::ctx::EtcdMember>;

async fn members(ctx: &Ctx) -> Members {
    let mut m = Members::new();
    for u in ctx.config.etcd_members() {
        let s = ctx.etcd_member(&u).await;
        m.insert(u, s);
    }
    m
}

/// Where each service runs (pid or container): phases 1-2 from the state file,
/// phase 3 from the orchestrator.
type Units = std::collections::BTreeMap<String, (Option<u32>, Option<String>)>;

async fn units(ctx: &Ctx, state: Option<&State>) -> Units {
    let mut u: Units = state
        .map(|s| {
            s.services
                .iter()
                .map(|(n, r)| (n.clone(), (r.pid, r.container.clone())))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(rows) = ctx.deployed().await {
        for r in rows {
            u.insert(r.name, (r.pid, r.container));
        }
    }
    u
}

fn view(
    ctx: &Ctx,
    list: Option<&[Instance]>,
    filter: &[String],
    units: &Units,
    members: &Members,
) -> Vec<ServiceView> {
    let now = std::time::SystemTime::now();
    ctx.config
        .start_order()
        .into_iter()
        .filter(|n| filter.is_empty() || filter.contains(n))
        .map(|name| {
            let spec = ctx.spec(&name);
            let replica = spec.replica.as_ref();
            let ours = ctx.instance_matcher(&name);
            let inst = list.and_then(|l| {
                l.iter()
                    .filter(|i| ours(i))
                    .max_by_key(|i| i.status == Status::Up)
            });
            let member = members.get(&name);
            let status = match (member, list, inst) {
                (Some(m), _, _) if m.healthy => "up".to_string(),
                (Some(_), _, _) => "down".to_string(),
                (None, None, _) => "unknown".to_string(),
                (None, Some(_), None) => "down".to_string(),
                (None, Some(_), Some(i)) => i.status.to_string(),
            };
            let age = inst
                .and_then(|i| chora_api::parse_rfc3339(&i.last_heartbeat))
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0);
            ServiceView {
                phase: spec.phase,
                version: inst
                    .map(|i| i.version.clone())
                    .or_else(|| spec.version.clone()),
                url: spec.url(),
                health: if status == "up" {
                    "healthy".into()
                } else {
                    "unhealthy".into()
                },
                last_heartbeat: inst.map(|i| i.last_heartbeat.clone()),
                heartbeat_age_seconds: age,
                runtime: spec.runtime(ctx.config.default_runtime()).as_str(),
                pid: units.get(&name).and_then(|u| u.0),
                container: units.get(&name).and_then(|u| u.1.clone()),
                service: replica.map(|r| r.service.clone()),
                replica: replica.map(|r| r.n),
                role: member
                    .and_then(|m| m.leader)
                    .map(|l| if l { "leader" } else { "follower" }),
                status,
                name,
            }
        })
        .collect()
}

/// `chora bootstrap status`: 0 all healthy, 1 some unhealthy, 2 not completed,
/// 3 failed.
pub async fn status(format: &str, watch: bool, services: Vec<String>) -> Result<(), Failure> {
    let ctx = ctx_for(None)?;
    let client = ctx.manifest();
    let mut index: Option<u64> = None;
    loop {
        let state = load_state(&ctx.home)?;
        let (list, idx) = match client
            .watch(
                &ListFilter::default(),
                index.map(|i| (i, Duration::from_secs(30))),
            )
            .await
        {
            Ok((l, i)) => (Some(l), Some(i)),
            Err(_) => (None, None),
        };
        let units = if format == "json" || format == "yaml" {
            units(&ctx, state.as_ref()).await
        } else {
            Units::new()
        };
        let members = members(&ctx).await;
        let views = view(&ctx, list.as_deref(), &services, &units, &members);
        let all_up = list.is_some() && views.iter().all(|v| v.status == "up");
        let (overall, code) = match state.as_ref().map(|s| s.status) {
            Some(RunStatus::Failed) => ("failed", 3),
            Some(RunStatus::Completed) if all_up => ("healthy", 0),
            Some(RunStatus::Completed) => ("unhealthy", 1),
            _ => ("not bootstrapped", 2),
        };
        let completed_at = state.as_ref().and_then(|s| s.completed_at.clone());
        let uptime = completed_at
            .as_deref()
            .and_then(chora_api::parse_rfc3339)
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
        let system_uptime = state
            .as_ref()
            .filter(|s| s.status == RunStatus::Completed)
            .and_then(crate::ui::uptime);
        match format {
            "json" | "yaml" => {
                let doc = serde_json::json!({
                    "overall_status": overall,
                    "bootstrap_status": state.as_ref().map(|s| s.status.as_str()),
                    "current_phase": state.as_ref().map(|s| s.current_phase),
                    "last_error": state.as_ref().and_then(|s| s.last_error.clone()),
                    "bootstrap_completed_at": completed_at,
                    "uptime_seconds": system_uptime.map(|d| d.as_secs()),
                    "manifest_reachable": list.is_some(),
                    "services": views,
                });
                if format == "json" {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&doc).expect("serializes")
                    );
                } else {
                    print!(
                        "{}",
                        serde_saphyr::to_string(&doc).map_err(|e| Failure::new(
                            1,
                            "OUTPUT",
                            e.to_string()
                        ))?
                    );
                }
            }
            _ => {
                if watch && std::io::stdout().is_terminal() {
                    print!("\x1b[2J\x1b[H");
                }
                println!("Chora System Status\n{}", "━".repeat(61));
                for (phase, title) in [
                    (1, "Core Services"),
                    (2, "Infrastructure Services"),
                    (3, "Capability Services"),
                ] {
                    let rows: Vec<&ServiceView> =
                        views.iter().filter(|v| v.phase == phase).collect();
                    if rows.is_empty() {
                        continue;
                    }
                    println!("\n{title}:");
                    for v in rows {
                        let mark = if v.status == "up" { "✓" } else { "✗" };
                        let age = match v.role {
                            Some(role) => role.to_string(),
                            None => v
                                .heartbeat_age_seconds
                                .map(|a| format!("({}s ago)", a.round()))
                                .unwrap_or_default(),
                        };
                        println!(
                            "  {mark} {:<14} {:<8} {:<23} {:<10} {age}",
                            v.name,
                            v.version
                                .as_deref()
                                .map(|v| format!("v{v}"))
                                .unwrap_or_default(),
                            v.url.as_deref().unwrap_or(
                                if v.role.is_some() || members.contains_key(&v.name) {
                                    "(project network)"
                                } else {
                                    "-"
                                }
                            ),
                            v.status.to_uppercase(),
                        );
                    }
                }
                if list.is_none() {
                    println!(
                        "\n(the Manifest at {} is not reachable)",
                        ctx.manifest_url()
                    );
                }
                println!("\nOverall Status: {}", overall.to_uppercase());
                match (&state, &completed_at, uptime) {
                    (Some(_), Some(at), Some(up)) => {
                        println!("Bootstrap completed: {at} ({} ago)", human(up));
                        if let Some(u) = system_uptime {
                            println!("Uptime: {}", crate::ui::human_uptime(u));
                        }
                    }
                    (Some(s), _, _) => println!(
                        "Bootstrap {} at phase {}{}",
                        s.status.as_str(),
                        s.current_phase,
                        s.last_error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                    (None, _, _) => {
                        println!("No bootstrap has run here: start with `chora bootstrap`")
                    }
                }
            }
        }
        if !watch {
            return if code == 0 {
                Ok(())
            } else {
                Err(Failure::new(code, "STATUS", overall).quiet())
            };
        }
        match idx {
            Some(i) => index = Some(i),
            None => {
                index = None;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// `chora bootstrap config show | validate | edit | rotate-credentials | apply-credentials`.
pub async fn config(action: &str, path: Option<&Path>) -> Result<(), Failure> {
    let home = Home::from_env();
    let file = path.map(Path::to_path_buf).unwrap_or_else(|| home.config());
    match action {
        "show" => {
            match std::fs::read_to_string(&file) {
                Ok(t) => print!("{t}"),
                Err(_) => {
                    eprintln!(
                        "# {} does not exist yet; this is the built-in template `chora bootstrap` writes:",
                        file.display()
                    );
                    print!("{}", crate::template::DEV);
                }
            }
            Ok(())
        }
        "validate" => {
            let c = crate::config::Config::load(&file).map_err(crate::engine::config_failure)?;
            println!(
                "✓ {} is valid ({} services, environment {})",
                file.display(),
                c.services.len(),
                c.environment.as_str()
            );
            Ok(())
        }
        "edit" => {
            if !file.exists() {
                crate::state::write_atomic(&file, crate::template::DEV.as_bytes(), 0o644)
                    .map_err(|e| Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string()))?;
            }
            let tmp = file.with_extension("yml.edit");
            std::fs::copy(&file, &tmp)
                .map_err(|e| Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string()))?;
            let editor = std::env::var("VISUAL")
                .or_else(|_| std::env::var("EDITOR"))
                .unwrap_or_else(|_| "vi".into());
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{editor} \"$1\""))
                .arg("sh")
                .arg(&tmp)
                .status()
                .map_err(|e| Failure::new(1, "EDITOR", format!("cannot run {editor}: {e}")))?;
            if !status.success() {
                let _ = std::fs::remove_file(&tmp);
                return Err(Failure::new(
                    1,
                    "EDITOR",
                    format!("{editor} exited with {status}; nothing was changed"),
                ));
            }
            match crate::config::Config::load(&tmp) {
                Ok(_) => {
                    std::fs::rename(&tmp, &file)
                        .map_err(|e| Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string()))?;
                    println!("✓ {} saved and valid", file.display());
                    Ok(())
                }
                Err(e) => {
                    let mut f = crate::engine::config_failure(e);
                    f.message = format!(
                        "{}; {} was left unchanged, your edit is in {}",
                        f.message,
                        file.display(),
                        tmp.display()
                    );
                    Err(f)
                }
            }
        }
        "rotate-credentials" => {
            let ctx = ctx_for(path)?;
            let names: Vec<&str> = ctx.config.services.keys().map(String::as_str).collect();
            let creds = chora_api::auth::Credentials::generate(names);
            crate::state::write_atomic(&home.credentials(), creds.to_json().as_bytes(), 0o600)
                .map_err(|e| Failure::new(1, "CREDENTIALS", e.to_string()))?;
            println!(
                "✓ New credentials written to {} (mode 0600)",
                home.credentials().display()
            );
            println!(
                "  Running services still use the old ones: run `chora bootstrap config apply-credentials`"
            );
            Ok(())
        }
        "apply-credentials" => {
            let ctx = ctx_for(path)?;
            let _lock = lock(&home, "chora bootstrap config apply-credentials")?;
            let Some(state) = load_state(&home)? else {
                return Err(Failure::new(
                    2,
                    "NOT_RUNNING",
                    "no bootstrap has run here: nothing to restart",
                ));
            };
            let mut out = Reporter::new(false);
            out.line("Restarting every service with the current credentials...");
            let still = stop_all(&ctx, &state, &mut out).await;
            if !still.is_empty() {
                return Err(Failure::new(
                    1,
                    "RESTART_FAILED",
                    format!("still running: {}", still.join(", ")),
                ));
            }
            drop(_lock);
            out.line("Starting them again:");
            crate::engine::bootstrap(crate::engine::Options {
                environment: None,
                resume: true,
                skip_validation: true,
                verbose: false,
                dry_run: false,
                config: path.map(Path::to_path_buf),
                timeout: Duration::from_secs(600),
                parallel: false,
                json: false,
            })
            .await
        }
        other => Err(Failure::new(
            2,
            "USAGE",
            format!("unknown config action `{other}`"),
        )),
    }
}
