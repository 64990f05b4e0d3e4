//! `chora bootstrap status`: each unit as the Manifest, the orchestrator, the
//! state file and (for etcd members) etcd itself report it; `--watch`
//! redraws on every registry change through blocking reads. Exit 0 all
//! healthy, 1 some unhealthy, 2 not bootstrapped, 3 failed.

use crate::ctx::Ctx;
use crate::exit;
use crate::failure::Failure;
use chora_api::bootstrap_state::{RunStatus, State};
use chora_api::manifest::{Instance, ListFilter, Status};
use chora_text::duration::took;
use std::io::IsTerminal;
use std::time::Duration;

/// How `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
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
    /// The hosts it runs on (a fleet's units; comma-separated).
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
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
type Members = std::collections::BTreeMap<String, crate::etcd_members::EtcdMember>;

async fn members(ctx: &Ctx) -> Members {
    let asks = ctx
        .config
        .etcd_members()
        .into_iter()
        .map(|u| async move { (u.clone(), ctx.etcd_member(&u).await) });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .collect()
}

/// Where each service runs (pid or container): phases 1-2 from the state file,
/// phase 3 from the orchestrator.
type Units = std::collections::BTreeMap<String, (Option<u32>, Option<String>)>;

/// Each unit's runtime (the one that runs it: a fleet's containers are
/// `swarm`) and the hosts it runs on, as that runtime says (none on one
/// machine).
type Placed = std::collections::BTreeMap<String, (&'static str, Option<String>)>;

async fn placed(ctx: &Ctx) -> Placed {
    use futures_util::StreamExt;
    // Every unit asked at once, a few at a time: on a fleet each answer
    // crosses SSH, and 58 units one after the other took 40 s on a loaded
    // test machine.
    futures_util::stream::iter(ctx.config.start_order().into_iter().map(|name| async move {
        let rt = ctx.runtime_for(ctx.spec(&name)).await.ok()?;
        let on = rt.hosts(&name).await;
        Some((name, (rt.name(), (!on.is_empty()).then(|| on.join(",")))))
    }))
    .buffer_unordered(8)
    .filter_map(|x| async move { x })
    .collect()
    .await
}

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
    placed: &Placed,
    members: &Members,
    ours: &crate::ctx::Ours,
) -> Vec<ServiceView> {
    let now = std::time::SystemTime::now();
    ctx.config
        .start_order()
        .into_iter()
        .filter(|n| filter.is_empty() || filter.contains(n))
        .map(|name| {
            let spec = ctx.spec(&name);
            let replica = spec.replica.as_ref();
            let mine = ctx.instance_matcher(ours, &name);
            let inst = list.and_then(|l| {
                l.iter()
                    .filter(|i| mine(i))
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
                runtime: placed.get(&name).map_or_else(
                    || spec.runtime(ctx.config.default_runtime()).as_str(),
                    |p| p.0,
                ),
                pid: units.get(&name).and_then(|u| u.0),
                container: units.get(&name).and_then(|u| u.1.clone()),
                host: placed.get(&name).and_then(|p| p.1.clone()),
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
pub async fn status(format: Format, watch: bool, services: Vec<String>) -> Result<(), Failure> {
    let ctx = crate::session::open(None)?;
    crate::session::reach(&ctx).await?;
    let client = ctx.manifest();
    let mut index: Option<u64> = None;
    loop {
        let state = crate::session::load_state(&ctx.home)?;
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
        let units = if format != Format::Table {
            units(&ctx, state.as_ref()).await
        } else {
            Units::new()
        };
        let members = members(&ctx).await;
        let placed = placed(&ctx).await;
        let ours = ctx.ours().await;
        let views = view(
            &ctx,
            list.as_deref(),
            &services,
            &units,
            &placed,
            &members,
            &ours,
        );
        let all_up = list.is_some() && views.iter().all(|v| v.status == "up");
        let (overall, code) = match state.as_ref().map(|s| s.status) {
            Some(RunStatus::Failed) => ("failed", exit::status::FAILED),
            Some(RunStatus::Completed) if all_up => ("healthy", exit::status::HEALTHY),
            Some(RunStatus::Completed) => ("unhealthy", exit::status::UNHEALTHY),
            _ => ("not bootstrapped", exit::status::NOT_BOOTSTRAPPED),
        };
        let completed_at = state.as_ref().and_then(|s| s.completed_at.clone());
        let uptime = completed_at
            .as_deref()
            .and_then(chora_api::parse_rfc3339)
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
        let system_uptime = state
            .as_ref()
            .filter(|s| s.status == RunStatus::Completed)
            .and_then(State::uptime);
        match format {
            Format::Json | Format::Yaml => {
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
                if format == Format::Json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&doc).expect("serializes")
                    );
                } else {
                    print!(
                        "{}",
                        serde_saphyr::to_string(&doc).map_err(|e| Failure::new(
                            exit::FAILURE,
                            "OUTPUT",
                            e.to_string()
                        ))?
                    );
                }
            }
            Format::Table => {
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
                        let on = v
                            .host
                            .as_deref()
                            .map(|h| format!(" on {h}"))
                            .unwrap_or_default();
                        println!(
                            "  {mark} {:<14} {:<8} {:<23} {:<10} {age}{on}",
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
                        println!("Bootstrap completed: {at} ({} ago)", took(up));
                        if let Some(u) = system_uptime {
                            println!("Uptime: {}", chora_text::duration::uptime(u));
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
            return if code == exit::status::HEALTHY {
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
