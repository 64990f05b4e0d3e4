//! `chora relay PORT=HOST:PORT …` (internal): the door of a fleet (DESIGN.md
//! §13). It runs as a container on a manager, attached to the stack's
//! overlay, with each `PORT` published on that manager's 127.0.0.1 only;
//! the operator's chora forwards the same ports over SSH. So the config's
//! `http://127.0.0.1:<port>` URLs (a Manifest node, the orchestrator) mean
//! the same from the operator's machine as on one machine, and nothing
//! answers on a host's address but the gateway. Plain TCP, byte for byte:
//! blocking reads, streams and TLS pass through unchanged.

use crate::failure::{Failure, exit};
use clap::Args;

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// PORT=HOST:PORT: accept on 0.0.0.0:PORT and connect each connection to HOST:PORT
    #[arg(required = true, value_name = "PORT=HOST:PORT")]
    pairs: Vec<String>,
}

/// `8500=manifest-1:8500` → (8500, "manifest-1:8500").
fn parse(pair: &str) -> Result<(u16, String), String> {
    let (port, to) = pair
        .split_once('=')
        .ok_or_else(|| format!("`{pair}` is not PORT=HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{pair}`: `{port}` is not a port"))?;
    match to.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok((port, to.to_owned())),
        _ => Err(format!("`{pair}`: `{to}` is not HOST:PORT")),
    }
}

/// How long a connection the door accepted waits for its unit to take it.
const CONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to `to`, resolving its name afresh each try (a task that moved to
/// another host has another address). A unit's name joins the overlay's DNS
/// only once its task is healthy, and a moment after Swarm says so: a caller
/// told "healthy" that connects at once must not find the door shut, so
/// refusals and unknown names are tried again for [`CONNECT_FOR`].
async fn connect(to: &str) -> std::io::Result<tokio::net::TcpStream> {
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        match tokio::net::TcpStream::connect(to).await {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() + delay > CONNECT_FOR => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_millis(500));
            }
        }
    }
}

pub fn run(a: RelayArgs) -> Result<(), Failure> {
    let pairs = a
        .pairs
        .iter()
        .map(|p| parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| Failure::new(exit::USAGE, "USAGE", m))?;
    let rt = crate::rt::runtime()?;
    rt.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (port, to) in pairs {
            let l = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .map_err(|e| Failure::new(exit::FAILURE, "BIND", format!("0.0.0.0:{port}: {e}")))?;
            println!("chora relay listening on 0.0.0.0:{port} → {to}");
            tasks.spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = l.accept().await else {
                        continue;
                    };
                    let to = to.clone();
                    tokio::spawn(async move {
                        match connect(&to).await {
                            Ok(mut out) => {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                            Err(e) => tracing::debug!(%to, error = %e, "relay: cannot connect"),
                        }
                    });
                }
            });
        }
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = crate::rt::shutdown_signal() => {}
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn pairs_name_a_port_and_where_it_goes() {
        assert_eq!(
            parse("8500=manifest-1:8500"),
            Ok((8500, "manifest-1:8500".into()))
        );
        for bad in ["8500", "x=a:1", "8500=a", "8500=:1", "8500=a:b"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
