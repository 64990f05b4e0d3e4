//! The dashboard from the command line: `chora bootstrap ui` (a one-time login
//! URL), and the text that points at it: the "System Status" / "Next steps"
//! block a successful run ends with, and the system's uptime `status` shows.

use crate::ctx::Ctx;
use crate::failure::Failure;
use crate::state::State;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// The orchestrator's base URL, from its service in the config.
pub fn orchestrator_url(ctx: &Ctx) -> Option<String> {
    ctx.url_of("orchestrator")
}

/// `http://…/ui/login?token=…`: a fresh one-time login link, valid 5 minutes.
pub fn login_url(ctx: &Ctx) -> Result<String, Failure> {
    let base = orchestrator_url(ctx).ok_or_else(|| {
        Failure::new(
            crate::failure::EXIT_CONFIG,
            "CONFIG_ERROR",
            format!(
                "{} has no `orchestrator` service with a port: there is no dashboard to open",
                ctx.config_path.display()
            ),
        )
    })?;
    let secret = ctx
        .credentials
        .as_ref()
        .and_then(|c| c.jwt_secret())
        .ok_or_else(|| {
            Failure::new(
                2,
                "NOT_BOOTSTRAPPED",
                format!(
                    "there are no credentials in {} to sign a login link with",
                    ctx.home.credentials().display()
                ),
            )
            .action("Bring the system up first: chora bootstrap")
        })?;
    let token = chora_api::login::mint_login_token(secret, &login_subject());
    Ok(format!("{base}/ui/login?token={token}"))
}

/// Who asked for the link (for the orchestrator's log): the user name.
fn login_subject() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "chora-bootstrap-ui".into())
}

/// `chora bootstrap ui`: prints the login URL on stdout (only it), a hint on stderr.
pub async fn ui(config: Option<&std::path::Path>) -> Result<(), Failure> {
    let home = crate::ctx::Home::from_env();
    let (config, path) = crate::engine::load_config(&home, config, None, false)?;
    let ctx = crate::engine::context(home, config, path)?;
    let url = login_url(&ctx)?;
    println!("{url}");
    eprintln!(
        "Open it in a browser within 5 minutes; it works once and starts a dashboard session."
    );
    Ok(())
}

/// How long the system has been up: since the oldest service the state records
/// was started (the Manifest, normally), else since the run started.
pub fn uptime(state: &State) -> Option<Duration> {
    let oldest = state
        .services
        .values()
        .filter_map(|r| chora_api::parse_rfc3339(&r.started_at))
        .min()
        .or_else(|| chora_api::parse_rfc3339(&state.started_at))?;
    SystemTime::now().duration_since(oldest).ok()
}

/// `45s`, `12m 5s`, `2h 15m 32s`, `3d 4h 5m`.
pub fn human_uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60, s % 60);
    if days > 0 {
        format!("{days}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m {sec}s")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

/// The block a successful `chora bootstrap` ends with (the seed's "System
/// Status" and "Next steps").
pub fn closing_block(ctx: &Ctx, state: &State) -> String {
    let running = state.services_started.len();
    let healthy = state
        .services_started
        .iter()
        .filter(|n| state.services_healthy.contains(n))
        .count();
    let mut s = String::new();
    let _ = writeln!(s, "\nSystem Status:");
    let _ = writeln!(s, "  {running} services running");
    let _ = writeln!(s, "  {healthy} services healthy");
    let _ = writeln!(s, "  {} services unhealthy", running - healthy);
    let _ = writeln!(s, "\nNext steps:");
    let mut steps = vec!["View system status: chora bootstrap status".to_owned()];
    if let Some(g) = ctx.url_of("gateway") {
        steps.push(format!("Access Gateway: {g}"));
    }
    if let Some(o) = orchestrator_url(ctx) {
        steps.push(format!(
            "Access Orchestrator UI: {o}/ui (log in with: chora bootstrap ui)"
        ));
    }
    steps.push(format!(
        "View logs: tail -f {}/<service>.log",
        ctx.home.logs().display()
    ));
    for (i, step) in steps.iter().enumerate() {
        let _ = writeln!(s, "  {}. {step}", i + 1);
    }
    let _ = write!(s, "\n{}", "━".repeat(61));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_the_seed() {
        assert_eq!(human_uptime(Duration::from_secs(8132)), "2h 15m 32s");
        assert_eq!(human_uptime(Duration::from_secs(45)), "45s");
        assert_eq!(human_uptime(Duration::from_secs(725)), "12m 5s");
        assert_eq!(
            human_uptime(Duration::from_secs(3 * 86400 + 4 * 3600 + 300)),
            "3d 4h 5m"
        );
    }

    #[test]
    fn uptime_counts_from_the_oldest_service() {
        let mut s = State::fresh("dev");
        let t = SystemTime::now() - Duration::from_secs(100);
        s.started(
            "manifest",
            crate::state::ServiceRecord {
                phase: 1,
                started_at: chora_api::rfc3339(t),
                ..Default::default()
            },
        );
        let up = uptime(&s).unwrap();
        assert!(up >= Duration::from_secs(100) && up < Duration::from_secs(110));
    }
}
