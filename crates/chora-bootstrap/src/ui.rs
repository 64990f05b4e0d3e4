//! The dashboard from the command line: `chora bootstrap ui` prints a
//! one-time login URL (DESIGN.md §12) signed with this home's secret.

use crate::ctx::Ctx;
use crate::exit;
use crate::failure::Failure;

/// The orchestrator's base URL, from its service in the config.
pub fn orchestrator_url(ctx: &Ctx) -> Option<String> {
    ctx.url_of("orchestrator")
}

/// `http://…/ui/login?token=…`: a fresh one-time login link, valid 5 minutes.
pub fn login_url(ctx: &Ctx) -> Result<String, Failure> {
    let base = orchestrator_url(ctx).ok_or_else(|| {
        Failure::new(
            exit::CONFIG,
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
                exit::status::NOT_BOOTSTRAPPED,
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

/// `chora bootstrap ui`: prints the login URL on stdout (only it), a hint on
/// stderr. On a fleet the URL answers through the door over SSH, so the
/// command keeps it open until `shutdown` (Ctrl-C), as `kubectl
/// port-forward` does; on one machine it returns at once.
pub async fn ui(
    config: Option<&std::path::Path>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    use std::io::Write;
    let ctx = crate::session::open(config)?;
    let way = crate::session::reach(&ctx).await?;
    let url = login_url(&ctx)?;
    println!("{url}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "Open it in a browser within 5 minutes; it works once and starts a dashboard session."
    );
    if way == crate::session::Way::Door {
        eprintln!(
            "The dashboard answers here through an SSH tunnel to the fleet that lives as long as this command: press Ctrl-C to close it."
        );
        shutdown.await;
    }
    Ok(())
}
