//! What every `chora … serve` shares: bind, print the readiness line, serve until
//! SIGTERM or SIGINT, map a failure to the error template.

use crate::failure::{EXIT_CONFIG, Failure, exit};
use std::future::Future;

/// Binds `listen`, prints `chora <service> listening on http://ADDR (detail)`,
/// runs `serve(listener, shutdown)` on a multi-threaded runtime.
pub fn serve<F, Fut, E>(
    service: &'static str,
    listen: &str,
    detail: &str,
    serve: F,
) -> Result<(), Failure>
where
    F: FnOnce(tokio::net::TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    serve_on(
        service,
        &[listen],
        |_| detail.to_owned(),
        |mut listeners, shutdown| serve(listeners.remove(0), shutdown),
    )
}

/// [`serve`] with several listeners (the gateway's HTTPS beside its HTTP):
/// binds each of `listen` in order, before the readiness line, which names the
/// first address and `detail(every bound address)`.
pub fn serve_on<D, F, Fut, E>(
    service: &'static str,
    listen: &[&str],
    detail: D,
    serve: F,
) -> Result<(), Failure>
where
    D: FnOnce(&[std::net::SocketAddr]) -> String,
    F: FnOnce(
        Vec<tokio::net::TcpListener>,
        std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let rt = crate::rt::runtime()?;
    rt.block_on(async move {
        let mut listeners = Vec::with_capacity(listen.len());
        let mut addrs = Vec::with_capacity(listen.len());
        for l in listen {
            let listener = tokio::net::TcpListener::bind(l)
                .await
                .map_err(|e| bind_failure(l, e))?;
            addrs.push(listener.local_addr().map_err(|e| {
                Failure::new(
                    exit::FAILURE,
                    "BIND_FAILED",
                    format!("cannot read the bound address: {e}"),
                )
            })?);
            listeners.push(listener);
        }
        chora_service::print_ready(service, addrs[0], &detail(&addrs));
        serve(listeners, Box::pin(crate::rt::shutdown_signal()))
            .await
            .map_err(|e| {
                Failure::new(
                    exit::FAILURE,
                    "SERVICE_FAILED",
                    format!("chora {service}: {e}"),
                )
            })?;
        tracing::info!("chora {service} stopped");
        Ok(())
    })
}

fn bind_failure(listen: &str, e: std::io::Error) -> Failure {
    let port = listen.rsplit(':').next().unwrap_or(listen);
    Failure::new(
        exit::FAILURE,
        "BIND_FAILED",
        format!("cannot listen on {listen}: {e}"),
    )
    .cause("another process already uses this port")
    .action(format!("See who holds it: ss -ltnp 'sport = :{port}'"))
    .action("Or pick another address with --listen 127.0.0.1:PORT")
}

/// Reads a credentials file named by a flag or `CHORA_CREDENTIALS`, else the
/// credentials document in `CHORA_CREDENTIALS_JSON` (how a container gets them:
/// secrets travel in the environment), else the home's `credentials.json`
/// (`CHORA_HOME`, default `.chora`) when it exists; `None` when there is none.
pub fn load_credentials(
    flag: Option<&std::path::Path>,
) -> Result<Option<chora_api::auth::Credentials>, Failure> {
    if flag.is_none()
        && let Ok(json) = std::env::var("CHORA_CREDENTIALS_JSON")
    {
        return chora_api::auth::Credentials::from_json(&json)
            .map(Some)
            .map_err(|e| {
                Failure::new(
                    EXIT_CONFIG,
                    "CONFIG_ERROR",
                    format!("CHORA_CREDENTIALS_JSON: {e}"),
                )
            });
    }
    let path = flag.map(|p| p.to_path_buf()).or_else(|| {
        let default = chora_bootstrap::home::Home::from_env().credentials();
        default.exists().then_some(default)
    });
    path.map(|p| {
        chora_api::auth::Credentials::load(&p).map_err(|e| {
            Failure::new(EXIT_CONFIG, "CONFIG_ERROR", e.to_string())
                .action("Check the file is JSON with a `jwt_secret` entry")
        })
    })
    .transpose()
}

/// The refusal when auth is on and no credentials were found.
pub fn no_credentials() -> Failure {
    Failure::new(
        EXIT_CONFIG,
        "CONFIG_ERROR",
        "authentication is on but no credentials file was given",
    )
    .cause("neither --credentials nor CHORA_CREDENTIALS is set, and .chora/credentials.json does not exist")
    .action("Pass the file written by `chora bootstrap`: --credentials .chora/credentials.json")
    .action("Or, for local play only, turn auth off with --no-auth")
}
