//! Phase 4 and `chora bootstrap validate` (DESIGN.md §6): service discovery,
//! gateway routing, orchestrator control, health dashboard, then the custom
//! script tests of the config.

use crate::ctx::Ctx;
use crate::exit;
use crate::failure::{Failure, StepError};
use crate::output::Reporter;
use chora_api::manifest::{ListFilter, Status};
use chora_api::orchestrator_client::Action;
use chora_text::duration::took;
use std::time::{Duration, Instant};

/// Tests to leave out (`--skip-*`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Skip {
    pub discovery: bool,
    pub routing: bool,
    pub control: bool,
}

/// One test's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    pub required: bool,
    pub duration_ms: u64,
    pub detail: String,
}

/// Phase 4's verdict: the first failed required test.
pub fn verdict(results: &[TestResult]) -> Result<(), StepError> {
    match results.iter().find(|r| !r.passed && r.required) {
        None => Ok(()),
        Some(r) => Err(StepError::new(format!(
            "validation test `{}` failed: {}",
            r.name, r.detail
        ))
        .action("Run the checks alone: chora bootstrap validate")
        .action("See each service's log under .chora/logs/")),
    }
}

/// Waits (blocking reads) until every unit in `names` has an `up` instance
/// of its own (this system's, not a record an earlier one left). On timeout,
/// returns the missing names.
pub async fn wait_registered(ctx: &Ctx, names: &[String], limit: Duration) -> Result<(), String> {
    let client = ctx.manifest();
    let mut ours = ctx.ours_for(names).await;
    let deadline = Instant::now() + limit;
    let mut index = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let block = index.map(|i| (i, left.min(Duration::from_secs(5))));
        let missing: Vec<String> = match client
            .watch(
                &ListFilter {
                    status: Some(Status::Up),
                    ..Default::default()
                },
                block,
            )
            .await
        {
            Ok((list, i)) => {
                index = Some(i);
                let missing: Vec<String> = names
                    .iter()
                    .filter(|n| !list.iter().any(ctx.instance_matcher(&ours, n)))
                    .cloned()
                    .collect();
                // A phase 3 service restarted by its orchestrator comes back
                // under a new id: ask it again while something is missing.
                if !missing.is_empty() && missing.iter().any(|n| ctx.spec(n).phase == 3) {
                    ours = ctx.ours().await;
                }
                missing
            }
            Err(e) => {
                index = None;
                if Instant::now() >= deadline {
                    return Err(format!("the Manifest is unreachable: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(missing.join(", "));
        }
    }
}

/// Waits until `name` has no `up` instance left.
async fn wait_gone(ctx: &Ctx, name: &str, limit: Duration) -> Result<(), String> {
    let client = ctx.manifest();
    let deadline = Instant::now() + limit;
    let mut index = None;
    let filter = ListFilter {
        status: Some(Status::Up),
        name: Some(name.to_owned()),
        ..Default::default()
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (list, i) = client
            .watch(
                &filter,
                index.map(|i| (i, left.min(Duration::from_secs(5)))),
            )
            .await
            .map_err(|e| e.to_string())?;
        index = Some(i);
        if list.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{name} still listed after {limit:?}"));
        }
    }
}

/// Runs the enabled tests in order, reporting each.
pub async fn run_all(ctx: &Ctx, out: &mut Reporter, skip: Skip) -> Vec<TestResult> {
    let mut results = Vec::new();
    let spec_of = |n: &str| crate::config::TestSpec {
        name: n.into(),
        enabled: true,
        timeout: 30.0,
        script: None,
        args: vec![],
        required: true,
    };
    let monitoring = ctx.prometheus().is_some();
    let mut tests: Vec<crate::config::TestSpec> = if ctx.config.validation.tests.is_empty() {
        crate::config::BUILTIN_TESTS
            .iter()
            .filter(|n| **n != PROMETHEUS_TEST)
            .map(|n| spec_of(n))
            .collect()
    } else {
        ctx.config
            .validation
            .tests
            .iter()
            .map(|t| t.value.clone())
            .collect()
    };
    // A system with its own Prometheus is checked to be scraped (DESIGN
    // §16) unless the config lists that test itself (to turn it off).
    if monitoring && !tests.iter().any(|t| t.name == PROMETHEUS_TEST) {
        tests.push(spec_of(PROMETHEUS_TEST));
    }
    for t in tests {
        if !t.enabled {
            continue;
        }
        let skipped = match t.name.as_str() {
            "service_discovery" => skip.discovery,
            "gateway_routing" => skip.routing,
            "orchestrator_control" => skip.control,
            _ => false,
        } && t.script.is_none();
        if skipped {
            continue;
        }
        let limit = Duration::from_secs_f64(t.timeout);
        let label = label_of(&t.name);
        out.begin(&label);
        let start = Instant::now();
        let r = match &t.script {
            Some(script) => run_script(ctx, script, &t.args, limit, &[])
                .await
                .map(|()| "script passed".to_string()),
            None => match tokio::time::timeout(limit, builtin(ctx, &t.name, limit)).await {
                Ok(r) => r,
                Err(_) => Err(format!("did not finish within {}", took(limit))),
            },
        };
        let took = start.elapsed();
        let (passed, detail) = match r {
            Ok(d) => {
                out.ok_with(&label, Some(took), &d);
                (true, d)
            }
            Err(e) if !t.required => {
                out.warn(&label, &format!("{e} (not required)"));
                (false, e)
            }
            Err(e) => {
                out.fail(&label, Some(took), &e);
                (false, e)
            }
        };
        results.push(TestResult {
            name: t.name.clone(),
            passed,
            required: t.required,
            duration_ms: took.as_millis() as u64,
            detail,
        });
    }
    results
}

fn label_of(name: &str) -> String {
    match name {
        "service_discovery" => "Service discovery".into(),
        "gateway_routing" => "Gateway routing".into(),
        "orchestrator_control" => "Orchestrator control".into(),
        "health_dashboard" => "Health dashboard".into(),
        PROMETHEUS_TEST => "Metrics scraped".into(),
        other => format!("Custom test {other}"),
    }
}

/// The built-in test a system with its own Prometheus adds: every service
/// scraped `up` (DESIGN.md §16).
pub const PROMETHEUS_TEST: &str = "prometheus_scraping";

async fn builtin(ctx: &Ctx, name: &str, limit: Duration) -> Result<String, String> {
    match name {
        PROMETHEUS_TEST => ctx.check_scraped(limit).await,
        "service_discovery" => {
            let names = ctx.config.registered_units();
            wait_registered(ctx, &names, limit)
                .await
                .map_err(|m| format!("not registered and up: {m}"))?;
            Ok(format!("all {} services registered and up", names.len()))
        }
        "gateway_routing" => {
            // Over HTTPS when plain HTTP only redirects there.
            let (gw, http) = ctx
                .gateway_for_checks()
                .ok_or("no `gateway` service in the config")?;
            if ctx.config.service("analyzer").is_none() {
                return Ok("skipped: no analyzer in the config".into());
            }
            let deadline = Instant::now() + limit;
            loop {
                let t = Instant::now();
                let r = http
                    .post(format!("{gw}/api/v1/analyzer/analyze"))
                    .json(&serde_json::json!({"text": "chora validation request"}))
                    .send()
                    .await;
                let latency = t.elapsed();
                let problem = match r {
                    Ok(resp) if resp.status().is_success() => {
                        match resp.json::<serde_json::Value>().await {
                            Ok(v) if v["words"] == 3 => {
                                return Ok(format!(
                                    "routed to analyzer, valid answer in {}",
                                    took(latency)
                                ));
                            }
                            Ok(v) => format!("unexpected answer {v}"),
                            Err(e) => e.to_string(),
                        }
                    }
                    Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
                    Err(e) => chora_api::root_cause(&e),
                };
                if Instant::now() >= deadline {
                    return Err(problem);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        "orchestrator_control" => {
            let Some(spec) = ctx.config.service("analyzer") else {
                return Ok("skipped: no analyzer in the config".into());
            };
            let orch = ctx.orchestrator().map_err(|e| e.message)?;
            let t = Instant::now();
            let act = |what: Action| {
                let orch = &orch;
                async move {
                    orch.act("analyzer", what).await.map(drop).map_err(|e| {
                        let e = crate::deploy::orchestrator_error(e);
                        format!("{}: {}", what.as_str(), e.message)
                    })
                }
            };
            act(Action::Stop).await?;
            wait_gone(ctx, "analyzer", limit).await?;
            let stopped = t.elapsed();
            act(Action::Start).await?;
            wait_registered(ctx, &["analyzer".to_string()], limit)
                .await
                .map_err(|m| format!("not back: {m}"))?;
            let url = spec.health_url().unwrap_or_default();
            crate::health::wait_with(
                &url,
                || ctx.probe_unit("analyzer"),
                &ctx.config.retry,
                limit,
                || None,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(format!(
                "stopped analyzer (left discovery in {}), started it, healthy again after {}",
                took(stopped),
                took(t.elapsed())
            ))
        }
        "health_dashboard" => {
            let list = ctx
                .manifest()
                .list(&ListFilter::default())
                .await
                .map_err(|e| e.to_string())?;
            let ours = ctx.ours().await;
            // This system's instances only: a record an earlier system left
            // (a crash, a kept registry volume) is not this one's health.
            let units = ctx.config.registered_units();
            let mine: Vec<&chora_api::manifest::Instance> = list
                .iter()
                .filter(|i| units.iter().any(|u| ctx.instance_matcher(&ours, u)(i)))
                .collect();
            // Each unhealthy service once, with how many of its instances are.
            let mut sick: std::collections::BTreeMap<&str, usize> = Default::default();
            for i in mine.iter().filter(|i| i.status != Status::Up) {
                *sick.entry(i.name.as_str()).or_default() += 1;
            }
            if !sick.is_empty() {
                let names: Vec<String> = sick
                    .iter()
                    .map(|(n, k)| match k {
                        1 => n.to_string(),
                        k => format!("{n} ({k} instances)"),
                    })
                    .collect();
                return Err(format!("unhealthy: {}", names.join(", ")));
            }
            // Agree with discovery: a service missing from the Manifest is not
            // healthy, whatever its own health endpoint says.
            let missing: Vec<String> = ctx
                .config
                .registered_units()
                .into_iter()
                .filter(|n| {
                    let mine = ctx.instance_matcher(&ours, n);
                    !list.iter().any(|i| i.status == Status::Up && mine(i))
                })
                .collect();
            if !missing.is_empty() {
                return Err(format!("not in the Manifest: {}", missing.join(", ")));
            }
            let mut bad = Vec::new();
            for name in ctx.config.services.keys() {
                if let Err(e) = ctx.probe_unit(name).await {
                    bad.push(format!("{name} ({e})"));
                }
            }
            if bad.is_empty() {
                Ok(format!(
                    "all {} services report healthy",
                    ctx.config.services.len()
                ))
            } else {
                Err(format!("health checks failing: {}", bad.join(", ")))
            }
        }
        other => Err(format!("unknown built-in test `{other}`")),
    }
}

/// Runs a script (a hook or a custom test) with a timeout; non-zero exit fails.
/// It gets the URLs of the system in its environment, never a secret.
pub async fn run_script(
    ctx: &Ctx,
    script: &str,
    args: &[String],
    limit: Duration,
    extra_env: &[(String, String)],
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(ctx.substitute(script));
    cmd.args(args.iter().map(|a| ctx.substitute(a)))
        .current_dir(&ctx.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("CHORA_API_KEY")
        .env("CHORA_HOME", &ctx.home.root)
        .env("MANIFEST_URL", ctx.manifest_url())
        .kill_on_drop(true);
    for (name, var) in [
        ("gateway", "GATEWAY_URL"),
        ("orchestrator", "ORCHESTRATOR_URL"),
    ] {
        if let Some(u) = ctx.url_of(name) {
            cmd.env(var, u);
        }
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => Err(format!("{script} did not finish within {}", took(limit))),
        Ok(Err(e)) => Err(format!("{script}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_owned();
            Err(format!(
                "{script} exited with {}{}",
                out.status,
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ))
        }
    }
}

/// `chora bootstrap validate`: 0 all passed, 1 a check failed, 2 not running.
pub async fn command(skip: Skip, json: bool) -> Result<(), Failure> {
    let ctx = crate::session::open(None)?;
    crate::session::reach(&ctx).await?;
    if ctx.manifest().health().await.is_err() {
        return Err(Failure::new(
            exit::validate::NOT_RUNNING,
            "NOT_RUNNING",
            format!("the Manifest at {} is not running", ctx.manifest_url()),
        )
        .action("Start the system: chora bootstrap"));
    }
    let mut out = Reporter::new(json);
    out.line("Running validation checks...\n");
    let results = run_all(&ctx, &mut out, skip).await;
    let ok = verdict(&results).is_ok();
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
            exit::validate::FAILED,
            "VALIDATION_FAILED",
            "one or more validation checks failed",
        ))
    }
}
