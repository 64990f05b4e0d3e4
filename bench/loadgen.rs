//! Fixed-rate (open-loop) HTTP/1.1 load generator for bench/gateway.sh.
//!
//! Not part of the workspace: std only, built with `rustc -O bench/loadgen.rs`.
//!
//! wrk cannot rate-limit and Debian has no wrk2, so this sends requests on a fixed
//! schedule, like wrk2: `--rate R` requests per second in total, spread over
//! `--conns C` keep-alive connections (one thread each; connection k sends its i-th
//! request at t0 + k/R + i*C/R). Latency is measured from the *intended* send time,
//! so a stall that delays later requests is counted against them (no coordinated
//! omission); the time from the actual send is reported too ("service time").
//! Requests scheduled in the first `--warmup` seconds are sent but not recorded.
//!
//!   loadgen --url http://127.0.0.1:8080/analyze --body '{"text":"x"}' \
//!           --rate 5000 --conns 32 --duration 10 [--warmup 2]
//!
//! Prints a human summary and one machine-readable line:
//!   RESULT target_rps=… rps=… requests=… p50_ms=… p90_ms=… p99_ms=… p999_ms=…
//!          max_ms=… svc_p50_ms=… svc_p99_ms=… late_ms_p99=… non2xx=… errors=…

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn prctl(option: i32, ...) -> i32;
}
const PR_SET_TIMERSLACK: i32 = 29;

struct Args {
    host: String,
    port: u16,
    path: String,
    body: String,
    rate: f64,
    conns: usize,
    duration: f64,
    warmup: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --url http://HOST:PORT/PATH --body STR --rate R --conns C --duration SECS [--warmup SECS]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut url = None;
    let mut body = String::new();
    let (mut rate, mut conns, mut duration, mut warmup) = (None, 32usize, 10.0f64, 2.0f64);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--url" => url = Some(v()),
            "--body" => body = v(),
            "--rate" => rate = Some(v().parse::<f64>().unwrap_or_else(|_| usage())),
            "--conns" => conns = v().parse().unwrap_or_else(|_| usage()),
            "--duration" => duration = v().trim_end_matches('s').parse().unwrap_or_else(|_| usage()),
            "--warmup" => warmup = v().trim_end_matches('s').parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let url = url.unwrap_or_else(|| usage());
    let rest = url.strip_prefix("http://").unwrap_or_else(|| usage());
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = hostport.rsplit_once(':').unwrap_or_else(|| usage());
    let rate = rate.unwrap_or_else(|| usage());
    if rate <= 0.0 || conns == 0 {
        usage()
    }
    Args {
        host: host.to_owned(),
        port: port.parse().unwrap_or_else(|_| usage()),
        path,
        body,
        rate,
        conns,
        duration,
        warmup,
    }
}

#[derive(Default)]
struct Stats {
    lat_us: Vec<u32>,  // from intended send time
    svc_us: Vec<u32>,  // from actual send time
    late_us: Vec<u32>, // actual send - intended send
    non2xx: u64,
    errors: u64,
    sent: u64,
}

fn connect(a: &Args) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect((a.host.as_str(), a.port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::with_capacity(16 * 1024, s))
}

/// Reads one response; returns its status. Handles Content-Length and chunked.
fn read_response(r: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<u16> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
    }
    let mut sink = [0u8; 8192];
    let mut skip = |r: &mut BufReader<TcpStream>, mut n: usize| -> std::io::Result<()> {
        while n > 0 {
            let k = r.read(&mut sink[..n.min(8192)])?;
            if k == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in body"));
            }
            n -= k;
        }
        Ok(())
    };
    if chunked {
        loop {
            line.clear();
            r.read_line(line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if n == 0 {
                // trailers until the empty line
                loop {
                    line.clear();
                    r.read_line(line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            skip(r, n + 2)?;
        }
    } else if let Some(n) = len {
        skip(r, n)?;
    } else if status != 204 && status != 304 {
        return Err(std::io::Error::other("response without length"));
    }
    if close {
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "server closed"));
    }
    Ok(status)
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[i.clamp(1, v.len()) - 1] as f64 / 1000.0
}

fn main() {
    let a = Arc::new(parse_args());
    let req = Arc::new(
        format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            a.path,
            a.host,
            a.port,
            a.body.len(),
            a.body
        )
        .into_bytes(),
    );
    let interval = Duration::from_secs_f64(a.conns as f64 / a.rate);
    let t0 = Instant::now() + Duration::from_millis(200);
    let warm_end = t0 + Duration::from_secs_f64(a.warmup);
    let end = warm_end + Duration::from_secs_f64(a.duration);
    let mut handles = Vec::new();
    for k in 0..a.conns {
        let a = a.clone();
        let req = req.clone();
        handles.push(std::thread::spawn(move || {
            // default timer slack is 50 µs; make sleeps wake on time
            unsafe {
                prctl(PR_SET_TIMERSLACK, 1u64);
            }
            let mut st = Stats::default();
            let mut conn: Option<BufReader<TcpStream>> = None;
            let mut line = String::with_capacity(256);
            let mut next = t0 + Duration::from_secs_f64(k as f64 / a.rate);
            while next < end {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                let record = next >= warm_end;
                if conn.is_none() {
                    match connect(&a) {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            if record {
                                st.errors += 1;
                            }
                            next += interval;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                let sent_at = Instant::now();
                let res = c.get_mut().write_all(&req).and_then(|_| read_response(c, &mut line));
                let done = Instant::now();
                st.sent += record as u64;
                match res {
                    Ok(status) => {
                        if record {
                            if !(200..300).contains(&status) {
                                st.non2xx += 1;
                            }
                            st.lat_us.push((done - next).as_micros().min(u32::MAX as u128) as u32);
                            st.svc_us.push((done - sent_at).as_micros().min(u32::MAX as u128) as u32);
                            st.late_us.push(sent_at.saturating_duration_since(next).as_micros().min(u32::MAX as u128) as u32);
                        }
                    }
                    Err(e) => {
                        if record && e.kind() != std::io::ErrorKind::ConnectionAborted {
                            st.errors += 1;
                        }
                        conn = None;
                    }
                }
                next += interval;
            }
            st
        }));
    }
    let mut all = Stats::default();
    for h in handles {
        let st = h.join().expect("worker thread");
        all.lat_us.extend(st.lat_us);
        all.svc_us.extend(st.svc_us);
        all.late_us.extend(st.late_us);
        all.non2xx += st.non2xx;
        all.errors += st.errors;
        all.sent += st.sent;
    }
    all.lat_us.sort_unstable();
    all.svc_us.sort_unstable();
    all.late_us.sort_unstable();
    let n = all.lat_us.len();
    let rps = n as f64 / a.duration;
    let (p50, p90, p99, p999) = (
        pct(&mut all.lat_us, 50.0),
        pct(&mut all.lat_us, 90.0),
        pct(&mut all.lat_us, 99.0),
        pct(&mut all.lat_us, 99.9),
    );
    let max = all.lat_us.last().map(|&m| m as f64 / 1000.0).unwrap_or(f64::NAN);
    let (s50, s99) = (pct(&mut all.svc_us, 50.0), pct(&mut all.svc_us, 99.0));
    let late99 = pct(&mut all.late_us, 99.0);
    println!(
        "fixed rate {:.0} req/s over {} connections for {:.1}s (+{:.1}s warm-up) to {}:{}{}",
        a.rate, a.conns, a.duration, a.warmup, a.host, a.port, a.path
    );
    println!(
        "  completed {n} ({rps:.1}/s), non-2xx {}, errors {}",
        all.non2xx, all.errors
    );
    println!(
        "  latency from intended send: p50 {p50:.3} ms  p90 {p90:.3} ms  p99 {p99:.3} ms  p99.9 {p999:.3} ms  max {max:.3} ms"
    );
    println!("  service time (from actual send): p50 {s50:.3} ms  p99 {s99:.3} ms; send lateness p99 {late99:.3} ms");
    println!(
        "RESULT target_rps={:.1} rps={rps:.1} requests={n} p50_ms={p50:.3} p90_ms={p90:.3} p99_ms={p99:.3} p999_ms={p999:.3} max_ms={max:.3} svc_p50_ms={s50:.3} svc_p99_ms={s99:.3} late_ms_p99={late99:.3} non2xx={} errors={}",
        a.rate, all.non2xx, all.errors
    );
}
