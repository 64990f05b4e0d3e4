//! Dev-only helpers for chora's integration tests: start the real `chora` binary
//! in a temp dir, learn its address from its readiness line, and make sure it is
//! killed when the test ends, passes or fails. When a test fails, every process it
//! started prints its captured output.
//!
//! Invariants:
//!
//! - Every process a test starts dies with it: dropping a [`Server`] kills and
//!   reaps it, and `PR_SET_PDEATHSIG` kills it should the test process itself
//!   die. A [`Paused`] process runs again when its guard drops.
//! - Readiness is a line the process prints (the readiness line of a chora
//!   server, etcd's "serving"), never a sleep; 15 s without it fails the test
//!   with the process's output.
//! - A temp dir is removed when its guard drops.
//!
//! `needs.rs`: what a test needs beyond Rust and the one way to skip (or, in
//! CI, fail) without it. `etcd.rs`: etcd clusters. `infra_host/`: SSH test
//! hosts for `chora infra`.

mod etcd;
pub mod infra_host;
pub mod needs;

pub use etcd::{EtcdCluster, EtcdMember};
pub use needs::{
    busybox, chromium, chromium_available, compose_available, debootstrap_available,
    docker_available, etcd_available, pebble_available, prometheus, prometheus_available,
    python3_available, root_available, ssh_available,
};

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The line prefix every chora server prints on stdout once it is accepting.
pub const READY_PREFIX: &str = "listening on http://";

/// How long [`Server::signal_and_wait`] waits for the process to exit.
pub const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A `chora … serve` process started by a test.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    label: String,
    output: Arc<Mutex<String>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends `signal` and waits for the process to exit; returns its exit status.
    /// A process that has not exited [`EXIT_WAIT`] after the signal is killed and
    /// the test fails, so that a server that ignores the signal can neither hang
    /// the test nor outlive it.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        self.signal_and_wait_within(signal, EXIT_WAIT)
    }

    fn signal_and_wait_within(
        &mut self,
        signal: i32,
        within: Duration,
    ) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("process still owned");
        let pid = child.id();
        // SAFETY: kill(2) on a pid we started and have not reaped yet.
        unsafe { libc::kill(pid as i32, signal) };
        // Another thread waits for the exit without reaping (WNOWAIT), so that
        // the pid stays ours and `child` can still be killed and reaped here.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: waitid(2) with a zeroed siginfo_t that it fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            let _ = tx.send(());
        });
        if rx.recv_timeout(within).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not exit within {within:?} of signal {signal}; killed it",
                self.label
            );
        }
        child.wait().expect("wait for child")
    }

    /// SIGSTOP: the process stops while its kernel still accepts connections
    /// for it (what `docker pause` does to a container). It runs again
    /// (SIGCONT) when the guard is dropped, also when the test panics.
    pub fn pause(&self) -> Paused<'_> {
        let pid = self.pid() as i32;
        assert!(pid > 0, "{} is not running", self.label);
        // SAFETY: kill(2) on a pid we started and have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Paused { pid, _server: self }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// SIGTERM, and the exit status of the graceful shutdown.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_and_wait(libc::SIGTERM)
    }
}

/// A process stopped by [`Server::pause`]; dropping this resumes it. It
/// borrows the `Server`, so the process cannot be reaped (nor its pid reused)
/// while it is paused.
#[must_use = "the process resumes when this is dropped"]
pub struct Paused<'a> {
    pid: i32,
    _server: &'a Server,
}

impl Paused<'_> {
    /// Resumes the process now.
    pub fn resume(self) {}
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid we started and, the `Server` being
        // borrowed, have not reaped.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- output of {} ({}) -----\n{}\n----- end of {} -----",
                self.label,
                self.addr,
                self.output(),
                self.label
            );
        }
    }
}

/// Starts `bin args…` in `dir` and waits (up to 15 s) for its readiness line.
/// The child dies with the test thread (PR_SET_PDEATHSIG) should the test process
/// itself be killed.
pub fn spawn_server(bin: &Path, dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
    let label = format!(
        "chora {}",
        args.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
    );
    spawn_until(bin, dir, args, envs, label, |line| {
        let rest = line.split(READY_PREFIX).nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Starts a process and waits until `ready` finds its address in a line of its
/// output (stdout or stderr).
pub fn spawn_until(
    bin: &Path,
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    label: String,
    ready: impl Fn(&str) -> Option<SocketAddr>,
) -> Server {
    start_process(bin, dir, args, envs, label).wait(ready)
}

/// A started process whose readiness is not yet known. Start it on the thread
/// that owns it (`PR_SET_PDEATHSIG` ties the child to that thread); waiting may
/// happen anywhere.
pub struct Starting {
    child: Child,
    label: String,
    output: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

pub fn start_process(
    bin: &Path,
    dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    label: String,
) -> Starting {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("MANIFEST_URL")
        .env_remove("CHORA_CREDENTIALS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let output = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::channel();
    pump(
        child.stdout.take().unwrap(),
        output.clone(),
        Some(tx.clone()),
    );
    pump(child.stderr.take().unwrap(), output.clone(), Some(tx));
    Starting {
        child,
        label,
        output,
        lines,
    }
}

impl Starting {
    /// Waits (up to 15 s) until `ready` finds the address in a line of output.
    pub fn wait(mut self, ready: impl Fn(&str) -> Option<SocketAddr>) -> Server {
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = ready(&line) {
                        break addr;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    std::thread::sleep(Duration::from_millis(50));
                    panic!(
                        "{} did not become ready ({status:?}); output:\n{}",
                        self.label,
                        self.output.lock().unwrap()
                    );
                }
            }
        };
        Server {
            child: Some(self.child),
            addr,
            label: self.label,
            output: self.output,
        }
    }
}

fn pump(
    stream: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            {
                let mut out = output.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
}

/// A port that was free a moment ago (for restarting a server on the same address).
///
/// Ports come from below the kernel's ephemeral range (32768-60999 by
/// default), in turn from a process-wide counter: a port the kernel hands out
/// for `bind(0)` or an outgoing connection (Docker's published ports, the
/// orchestrator's stand-ins, every client socket) is never one a test wrote
/// into a config minutes before, and no two tests of one run get the same
/// one. A port something already listens on is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each test binary starts somewhere else in the span.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let free = |ip: &str| std::net::TcpListener::bind((ip, port)).is_ok();
        if free("127.0.0.1") && free("0.0.0.0") {
            return port;
        }
    }
}

/// `n` distinct ports of [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// A fresh temp dir, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("chora-test-")
        .tempdir()
        .unwrap()
}

/// Writes a credentials file (mode 0600) with a JWT secret and API keys for
/// `services`; returns its path and the parsed map.
pub fn write_credentials(dir: &Path, services: &[&str]) -> (PathBuf, Vec<(String, String)>) {
    use std::os::unix::fs::PermissionsExt;
    let mut pairs = vec![("jwt_secret".to_string(), format!("{:064x}", rand_u128()))];
    for s in services {
        pairs.push((
            format!("api_key_{s}"),
            format!("key-{s}-{:032x}", rand_u128()),
        ));
    }
    let body = pairs
        .iter()
        .map(|(k, v)| format!("  \"{k}\": \"{v}\""))
        .collect::<Vec<_>>()
        .join(",\n");
    let path = dir.join("credentials.json");
    std::fs::write(&path, format!("{{\n{body}\n}}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, pairs)
}

fn rand_u128() -> u128 {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap();
    u128::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that ignores SIGTERM (an ignored signal stays ignored across
    /// exec) and prints a readiness line.
    fn stubborn() -> Server {
        let dir = std::env::temp_dir();
        spawn_until(
            Path::new("/bin/sh"),
            &dir,
            &[
                "-c",
                "trap '' TERM; echo 'listening on http://127.0.0.1:9'; exec sleep 600",
            ],
            &[],
            "stubborn".into(),
            |line| line.split(READY_PREFIX).nth(1)?.parse().ok(),
        )
    }

    #[test]
    fn a_process_that_ignores_the_signal_is_killed_and_the_wait_fails() {
        let mut s = stubborn();
        let pid = s.pid();
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.signal_and_wait_within(libc::SIGTERM, Duration::from_millis(300))
        }));
        let msg = *waited
            .expect_err("the wait should fail")
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("did not exit within 300ms"), "{msg}");
        // Killed and reaped: the pid is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_process_that_exits_on_the_signal_gives_its_status() {
        let mut s = stubborn();
        let status = s.signal_and_wait(libc::SIGKILL);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
