//! `chora token [--ttl SECS] [--service NAME]`: an admin JWT signed with this
//! home's secret (default 1 h), or NAME's own scoped API key, for calling
//! the APIs by hand. It is printed on stdout and nowhere else: no log line,
//! no state file.

use crate::exit;
use crate::failure::Failure;
use crate::home::Home;
use chora_api::auth::Credentials;
use std::time::Duration;

pub fn token(ttl: Duration, service: Option<&str>) -> Result<(), Failure> {
    let home = Home::from_env();
    let path = home.credentials();
    let creds = Credentials::load(&path).map_err(|e| {
        Failure::new(
            exit::status::NOT_BOOTSTRAPPED,
            "NO_CREDENTIALS",
            format!("cannot read {}: {e}", path.display()),
        )
        .action("Bring the system up first (it writes them): chora bootstrap")
    })?;
    let token = match service {
        Some(name) => creds.api_key(name).map(str::to_owned).ok_or_else(|| {
            Failure::new(
                exit::FAILURE,
                "NOT_FOUND",
                format!("{} holds no API key for `{name}`", path.display()),
            )
        })?,
        None => {
            let secret = creds.jwt_secret().ok_or_else(|| {
                Failure::new(
                    exit::CONFIG,
                    "CONFIG_ERROR",
                    format!("{} has no jwt_secret", path.display()),
                )
            })?;
            let who = std::env::var("USER").unwrap_or_else(|_| "operator".into());
            chora_api::auth::mint_admin_token(secret, &format!("chora-token:{who}"), ttl)
        }
    };
    println!("{token}");
    Ok(())
}
