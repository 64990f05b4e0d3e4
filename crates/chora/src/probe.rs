//! `chora probe URL`: exit 0 when URL answers 2xx, 1 otherwise. It is the
//! HEALTHCHECK of images that have no curl, run every second, so it stays cheap:
//! no async runtime, one blocking connection, the status line and nothing more.

use crate::failure::{Failure, exit};
use clap::Args;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chora probe http://127.0.0.1:8500/health\n  \
    chora probe tcp://127.0.0.1:2379 --timeout 1\n\n\
    As a Docker health check: HEALTHCHECK CMD [\"/usr/local/bin/chora\", \"probe\", \"http://127.0.0.1:8500/health\"]"
)]
pub struct ProbeArgs {
    /// http://HOST[:PORT][/PATH] (healthy on a 2xx answer) or tcp://HOST:PORT
    /// (healthy when it accepts a connection)
    url: String,
    /// Seconds the whole probe may take
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
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
    probe(&a.url, timeout).map_err(|why| fail(&a.url, why))
}

fn fail(url: &str, why: String) -> Failure {
    Failure::new(exit::FAILURE, "PROBE_FAILED", format!("{url}: {why}"))
}

#[derive(Debug)]
enum Target<'a> {
    Http { authority: &'a str, path: &'a str },
    Tcp { authority: &'a str },
}

fn parse(url: &str) -> Result<Target<'_>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("not a URL (http://HOST:PORT/PATH or tcp://HOST:PORT)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("no host in the URL".into());
    }
    match scheme {
        "http" => Ok(Target::Http { authority, path }),
        "tcp" => Ok(Target::Tcp { authority }),
        "https" => Err("https is not supported by chora probe (use http:// or tcp://)".into()),
        other => Err(format!(
            "unsupported scheme {other}:// (use http:// or tcp://)"
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
pub fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    match parse(url)? {
        Target::Tcp { authority } => {
            connect(&addresses(authority, None)?, deadline, timeout).map(drop)
        }
        Target::Http { authority, path } => {
            let mut s = connect(&addresses(authority, Some(80))?, deadline, timeout)?;
            let io = |e: std::io::Error| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!("no answer within {}s", timeout.as_secs_f64())
                }
                _ => format!("connection failed: {e}"),
            };
            let _ = s.set_nodelay(true);
            s.set_write_timeout(Some(remaining(deadline, timeout)?))
                .map_err(io)?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: chora-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            s.write_all(request.as_bytes()).map_err(io)?;
            // Read until the status line is complete; the rest is not needed.
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 512];
            while !head.contains(&b'\n') && head.len() < 8192 {
                s.set_read_timeout(Some(remaining(deadline, timeout)?))
                    .map_err(io)?;
                let n = s.read(&mut buf).map_err(io)?;
                if n == 0 {
                    return Err("the connection closed before an answer".into());
                }
                head.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&head);
            let line = line.lines().next().unwrap_or("").trim();
            let status: u16 = line
                .strip_prefix("HTTP/")
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("answered {status} (healthy is 2xx)"))
            }
        }
    }
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
                path: "/health"
            })
        ));
        assert!(matches!(
            parse("http://localhost"),
            Ok(Target::Http {
                authority: "localhost",
                path: "/"
            })
        ));
        assert!(matches!(
            parse("tcp://[::1]:2379"),
            Ok(Target::Tcp {
                authority: "[::1]:2379"
            })
        ));
        assert!(
            parse("https://x/")
                .unwrap_err()
                .contains("https is not supported")
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
