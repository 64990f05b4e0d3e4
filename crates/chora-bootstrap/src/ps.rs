//! `chora ps`: the units this home runs, as their runtimes and the
//! orchestrator see them now (not as the state file remembers them): name,
//! replica, runtime, where (pid, container, a fleet's service and its
//! hosts), state, uptime.

use crate::ctx::Ctx;
use crate::failure::Failure;
use crate::local::recorded_unit;
use crate::session;
use chora_api::bootstrap_state::State;
use serde::Serialize;
use std::time::SystemTime;

/// One unit as `ps` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    /// A replica's service and number (`manifest`, 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    pub phase: u8,
    /// `process`, `docker`, `compose`.
    pub runtime: String,
    /// `pid 123`, `container 0123456789ab`, or `-`.
    pub place: String,
    /// `running`, `stopped`, `restarting`, `failed`, `exited`, or `unknown`
    /// (its orchestrator did not answer).
    pub state: String,
    pub uptime_seconds: Option<u64>,
}

/// Every unit of the config, in start order.
pub async fn rows(ctx: &Ctx, state: Option<&State>) -> Vec<Row> {
    let deployed = ctx.deployed().await.ok();
    let now = SystemTime::now();
    let mut out = Vec::new();
    for name in ctx.config.start_order() {
        let spec = ctx.spec(&name);
        let replica = spec.replica.as_ref();
        let mut row = Row {
            name: name.clone(),
            service: replica.map(|r| r.service.clone()),
            replica: replica.map(|r| r.n),
            phase: spec.phase,
            runtime: String::new(),
            place: "-".into(),
            state: "stopped".into(),
            uptime_seconds: None,
        };
        let since = if spec.phase == 3 {
            let Some(list) = &deployed else {
                row.runtime = spec.runtime(ctx.config.default_runtime()).as_str().into();
                row.state = "unknown".into();
                out.push(row);
                continue;
            };
            let Some(d) = list.iter().find(|d| d.name == name) else {
                row.runtime = spec.runtime(ctx.config.default_runtime()).as_str().into();
                out.push(row);
                continue;
            };
            row.runtime = d.runtime.clone();
            row.state = d.state.as_str().into();
            row.place = match (d.pid, &d.container) {
                (Some(p), _) => format!("pid {p}"),
                (None, Some(c)) => format!("container {}", &c[..c.len().min(12)]),
                _ => "-".into(),
            };
            d.started_at.clone()
        } else {
            let record = state.and_then(|s| s.services.get(&name));
            let Ok(rt) = ctx.runtime_for(spec).await else {
                row.state = "unknown".into();
                out.push(row);
                continue;
            };
            row.runtime = rt.name().into();
            let recorded = record.and_then(recorded_unit);
            match rt.find(&name, recorded.as_ref()).await {
                Ok(Some(f)) => {
                    row.state = "running".into();
                    row.place = f.unit.id().to_string();
                    // A fleet's unit: the hosts its tasks run on.
                    let on = rt.hosts(&name).await;
                    if !on.is_empty() {
                        row.place = format!("{} on {}", row.place, on.join(","));
                    }
                    // The state file's start time is this unit's only while
                    // it names the same unit.
                    record
                        .filter(|_| recorded.as_ref() == Some(&f.unit.id()))
                        .map(|r| r.started_at.clone())
                }
                Ok(None) => None,
                Err(_) => {
                    row.state = "unknown".into();
                    None
                }
            }
        };
        row.uptime_seconds = since
            .as_deref()
            .and_then(chora_api::parse_rfc3339)
            .and_then(|t| now.duration_since(t).ok())
            .filter(|_| row.state == "running")
            .map(|d| d.as_secs());
        out.push(row);
    }
    out
}

/// `chora ps [--format table|json]`.
pub async fn ps(json: bool) -> Result<(), Failure> {
    let ctx = session::open(None)?;
    crate::session::reach(&ctx).await?;
    let state = session::load_state(&ctx.home)?;
    let rows = rows(&ctx, state.as_ref()).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialize")
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:<8} {:<20} {:<11} UPTIME",
        "NAME", "PHASE", "RUNTIME", "WHERE", "STATE"
    );
    for r in rows {
        let up = r
            .uptime_seconds
            .map(|s| chora_text::duration::uptime(std::time::Duration::from_secs(s)))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<8} {:<8} {:<20} {:<11} {up}",
            r.name, r.phase, r.runtime, r.place, r.state
        );
    }
    Ok(())
}
