//! `chora probe URL`: exit 0 when URL answers 2xx, 1 otherwise. It is the
//! HEALTHCHECK of images that have no curl, run every second, so it stays cheap:
//! no async runtime, one blocking connection, the status line and nothing more.
//! `https://` goes through rustls on that same blocking connection, trusting the
//! system's roots and `--ca`.

use crate::failure::{Failure, exit};
use clap::Args;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chora probe http://127.0.0.1:8500/health\n  \
    chora probe tcp://127.0.0.1:2379 --timeout 1\n  \
    chora probe https://localhost:8443/health --ca .chora/tls/ca.pem\n\n\
    As a Docker health check: HEALTHCHECK CMD [\"/usr/local/bin/chora\", \"probe\", \"http://127.0.0.1:8500/health\"]"
)]
pub struct ProbeArgs {
    /// http(s)://HOST[:PORT][/PATH] (healthy on a 2xx answer) or tcp://HOST:PORT
    /// (healthy when it accepts a connection)
    url: String,
    /// Seconds the whole probe may take
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
    /// A CA file (PEM) to trust for https:// besides the system's roots
    #[arg(long, env = "CHORA_PROBE_CA", value_name = "PATH")]
    ca: Option<PathBuf>,
}

pub fn run(a: ProbeArgs) -> Result<(), Failure> {
    let timeout = chora_api::duration::seconds(a.timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            fail(
                &a.url,
                format!(
                    "--timeout {} is not a positive number of seconds",
                    a.timeout
                ),
            )
        })?;
    probe(&a.url, timeout, a.ca.as_deref()).map_err(|why| fail(&a.url, why))
}

fn fail(url: &str, why: String) -> Failure {
    Failure::new(exit::FAILURE, "PROBE_FAILED", format!("{url}: {why}"))
}

#[derive(Debug)]
enum Target<'a> {
    Http {
        authority: &'a str,
        path: &'a str,
        tls: bool,
    },
    Tcp {
        authority: &'a str,
    },
}

fn parse(url: &str) -> Result<Target<'_>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("not a URL (http(s)://HOST:PORT/PATH or tcp://HOST:PORT)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("no host in the URL".into());
    }
    match scheme {
        "http" | "https" => Ok(Target::Http {
            authority,
            path,
            tls: scheme == "https",
        }),
        "tcp" => Ok(Target::Tcp { authority }),
        other => Err(format!(
            "unsupported scheme {other}:// (use http://, https:// or tcp://)"
        )),
    }
}

/// `host:port` (default port 80 for http) resolved to addresses.
fn addresses(authority: &str, default_port: Option<u16>) -> Result<Vec<SocketAddr>, String> {
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let target = match (has_port, default_port) {
        (true, _) => authority.to_string(),
        (false, Some(p)) => format!("{authority}:{p}"),
        (false, None) => return Err("tcp:// needs a port (tcp://HOST:PORT)".into()),
    };
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{target} resolves to no address"));
    }
    Ok(addrs)
}

fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("no answer within {}s", timeout.as_secs_f64()))
}

fn connect(
    addrs: &[SocketAddr],
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let mut last = String::new();
    for addr in addrs {
        match TcpStream::connect_timeout(addr, remaining(deadline, timeout)?) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = format!("no answer within {}s", timeout.as_secs_f64());
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Probes `url` once; `Err` says why it is not healthy.
pub fn probe(url: &str, timeout: Duration, ca: Option<&Path>) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    match parse(url)? {
        Target::Tcp { authority } => {
            connect(&addresses(authority, None)?, deadline, timeout).map(drop)
        }
        Target::Http {
            authority,
            path,
            tls,
        } => {
            // Read the CA before connecting: a bad file is the answer, not a timeout.
            let config = tls.then(|| tls_config(ca)).transpose()?;
            let port = if tls { 443 } else { 80 };
            let s = connect(&addresses(authority, Some(port))?, deadline, timeout)?;
            let _ = s.set_nodelay(true);
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: chora-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            let status = match config {
                None => exchange(
                    s.try_clone().map_err(|e| e.to_string())?,
                    &s,
                    &request,
                    deadline,
                    timeout,
                )?,
                Some(config) => {
                    let name = server_name(authority)?;
                    let conn = rustls::ClientConnection::new(config, name)
                        .map_err(|e| format!("TLS: {e}"))?;
                    let socket = s.try_clone().map_err(|e| e.to_string())?;
                    exchange(
                        rustls::StreamOwned::new(conn, s),
                        &socket,
                        &request,
                        deadline,
                        timeout,
                    )?
                }
            };
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("answered {status} (healthy is 2xx)"))
            }
        }
    }
}

/// Sends `request` on `stream` (whose socket is `socket`, for the timeouts) and
/// reads the status code of the answer.
fn exchange(
    mut stream: impl Read + Write,
    socket: &TcpStream,
    request: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<u16, String> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {}s", timeout.as_secs_f64())
        }
        _ => format!("connection failed: {e}"),
    };
    socket
        .set_write_timeout(Some(remaining(deadline, timeout)?))
        .map_err(io)?;
    socket
        .set_read_timeout(Some(remaining(deadline, timeout)?))
        .map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    stream.flush().map_err(io)?;
    // Read until the status line is complete; the rest is not needed.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 8192 {
        socket
            .set_read_timeout(Some(remaining(deadline, timeout)?))
            .map_err(io)?;
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Err("the connection closed before an answer".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim();
    line.strip_prefix("HTTP/")
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

/// The system's roots, and those of `ca`.
fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    chora_api::tls::client_config(ca).map_err(|e| e.to_string())
}

/// The name the certificate must be for: the URL's host without its port.
fn server_name(authority: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` cannot be checked against a certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_or_refused_with_a_reason() {
        assert!(matches!(
            parse("http://127.0.0.1:8500/health"),
            Ok(Target::Http {
                authority: "127.0.0.1:8500",
                path: "/health",
                tls: false
            })
        ));
        assert!(matches!(
            parse("http://localhost"),
            Ok(Target::Http {
                authority: "localhost",
                path: "/",
                tls: false
            })
        ));
        assert!(matches!(
            parse("https://localhost:8443/health"),
            Ok(Target::Http {
                authority: "localhost:8443",
                path: "/health",
                tls: true
            })
        ));
        assert!(matches!(
            parse("tcp://[::1]:2379"),
            Ok(Target::Tcp {
                authority: "[::1]:2379"
            })
        ));
        assert!(
            parse("ftp://x/")
                .unwrap_err()
                .contains("unsupported scheme")
        );
        assert_eq!(
            server_name("[::1]:8443").unwrap(),
            rustls::pki_types::ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("gw.example").unwrap(),
            rustls::pki_types::ServerName::try_from("gw.example").unwrap()
        );
        assert!(parse("127.0.0.1:80").unwrap_err().contains("not a URL"));
        assert!(parse("http:///x").unwrap_err().contains("no host"));
        assert!(
            addresses("127.0.0.1", None)
                .unwrap_err()
                .contains("needs a port")
        );
        assert_eq!(
            addresses("[::1]", Some(80)).unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert_eq!(
            addresses("[::1]:81", Some(80)).unwrap(),
            vec!["[::1]:81".parse().unwrap()]
        );
    }
}
