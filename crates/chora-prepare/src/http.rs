//! A small blocking HTTP/1.1 GET over `std::net` for dependency files: plain
//! `http://` only (this build has no TLS), redirects followed, chunked or sized
//! bodies, every wait bounded by the phase's deadline.

use crate::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The longest a connect or a read may wait when there is no deadline.
const IDLE: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;

/// Fetches `url` into `out`; returns the number of body bytes.
pub fn get(url: &str, out: &mut dyn Write, deadline: Option<Instant>) -> Result<u64, Error> {
    let mut current = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        match get_once(&current, out, deadline)? {
            Fetched::Body(n) => return Ok(n),
            Fetched::Redirect(location) => current = location,
        }
    }
    Err(Error::new(format!("{url}: more than {MAX_REDIRECTS} redirects")).permanent())
}

enum Fetched {
    Body(u64),
    Redirect(String),
}

struct Url {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, Error> {
    if url.starts_with("https://") {
        return Err(Error::new(format!(
            "cannot fetch {url}: https is not supported in this build"
        ))
        .action(
            "Serve the file over http:// (its SHA-256 still protects it), or copy it with `path:`",
        )
        .permanent());
    }
    let bad = || Error::new(format!("`{url}` is not an http:// URL")).permanent();
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or_default();
    let path = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(bad)?;
        let port = v6[end + 1..].strip_prefix(':');
        (v6[..end].to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => 80,
    };
    Ok(Url {
        host,
        port,
        authority: authority.to_owned(),
        path,
    })
}

fn remaining(deadline: Option<Instant>, url: &str) -> Result<Duration, Error> {
    match deadline {
        None => Ok(IDLE),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(timed_out(url))
            } else {
                Ok(left.min(IDLE))
            }
        }
    }
}

fn timed_out(url: &str) -> Error {
    Error::new(format!("fetching {url} timed out"))
}

/// A stream whose every read waits no longer than the deadline allows.
struct Bounded<'a> {
    stream: TcpStream,
    deadline: Option<Instant>,
    url: &'a str,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let wait = remaining(self.deadline, self.url)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?;
        self.stream.set_read_timeout(Some(wait))?;
        self.stream.read(buf)
    }
}

fn get_once(url: &str, out: &mut dyn Write, deadline: Option<Instant>) -> Result<Fetched, Error> {
    let u = parse_url(url)?;
    let addrs: Vec<_> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::new(format!(
                "cannot fetch {url}: cannot resolve {}: {e}",
                u.host
            ))
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining(deadline, url)?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(stream) = stream else {
        let why = last.map_or("no address".to_owned(), |e| e.to_string());
        return Err(Error::new(format!("cannot fetch {url}: {why}")));
    };
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) {
            timed_out(url)
        } else {
            Error::new(format!("cannot fetch {url}: {e}"))
        }
    };
    stream
        .set_write_timeout(Some(remaining(deadline, url)?))
        .map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: chora-prepare\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
        u.path, u.authority
    );
    (&stream).write_all(request.as_bytes()).map_err(io)?;
    let mut r = BufReader::new(Bounded {
        stream,
        deadline,
        url,
    });

    let mut status_line = String::new();
    r.read_line(&mut status_line).map_err(io)?;
    let mut parts = status_line.split_whitespace();
    let status: u16 = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse()
            .map_err(|_| Error::new(format!("{url}: not an HTTP answer")))?,
        _ => return Err(Error::new(format!("{url}: not an HTTP answer"))),
    };
    let reason = parts.collect::<Vec<_>>().join(" ");
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut location = None;
    let mut header_bytes = 0;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).map_err(io)?;
        header_bytes += n;
        if n == 0 || header_bytes > 64 * 1024 {
            return Err(Error::new(format!("{url}: bad response headers")));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| Error::new(format!("{url}: bad Content-Length")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_owned());
        }
    }
    if matches!(status, 301 | 302 | 303 | 307 | 308) {
        let loc =
            location.ok_or_else(|| Error::new(format!("{url}: redirect without a Location")))?;
        let next = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc
        } else if loc.starts_with('/') {
            format!("http://{}{loc}", u.authority)
        } else {
            return Err(Error::new(format!("{url}: unsupported redirect to `{loc}`")).permanent());
        };
        return Ok(Fetched::Redirect(next));
    }
    if !(200..300).contains(&status) {
        let e = Error::new(format!("cannot fetch {url}: HTTP {status} {reason}"));
        // A client error will not change by asking again; a server error may.
        return Err(if status < 500 { e.permanent() } else { e });
    }
    let mut copied = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut copy = |r: &mut dyn Read, limit: Option<u64>| -> Result<u64, Error> {
        let mut n_total = 0u64;
        loop {
            let want = match limit {
                Some(l) if l - n_total == 0 => break,
                Some(l) => buf.len().min((l - n_total) as usize),
                None => buf.len(),
            };
            let n = r.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                if let Some(l) = limit {
                    return Err(Error::new(format!(
                        "cannot fetch {url}: the connection closed after {n_total} of {l} bytes"
                    )));
                }
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::new(format!("cannot write the download of {url}: {e}")))?;
            n_total += n as u64;
        }
        Ok(n_total)
    };
    if chunked {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line).map_err(io)?;
            let hex = size_line.trim().split(';').next().unwrap_or_default();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| Error::new(format!("{url}: bad chunk size `{hex}`")))?;
            if size == 0 {
                break; // trailers are not needed: the connection closes
            }
            copied += copy(&mut r, Some(size))?;
            let mut crlf = String::new();
            r.read_line(&mut crlf).map_err(io)?;
        }
    } else {
        copied += copy(&mut r, length)?;
    }
    Ok(Fetched::Body(copied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = parse_url("http://example.com").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.com", 80, "/")
        );
        let u = parse_url("http://127.0.0.1:8080/a/b?c=1#frag").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/a/b?c=1"));
        let u = parse_url("http://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let e = parse_url("https://example.com/x").err().unwrap();
        assert!(e.message.contains("https is not supported in this build"));
        assert!(!e.retryable);
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://u:p@x/").is_err());
    }
}
