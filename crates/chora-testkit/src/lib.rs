//! Dev-only helpers for chora's integration tests: start the real `chora` binary
//! in a temp dir, learn its address from its readiness line, and make sure it is
//! killed when the test ends, passes or fails. When a test fails, every process it
//! started prints its captured output.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The line prefix every chora server prints on stdout once it is accepting.
pub const READY_PREFIX: &str = "listening on http://";

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
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("process still owned");
        // SAFETY: kill(2) on a pid we started and have not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("wait for child")
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
    let mut child = cmd.spawn().expect("spawn chora");
    let output = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    pump(child.stdout.take().unwrap(), output.clone(), Some(tx));
    pump(child.stderr.take().unwrap(), output.clone(), None);
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.split(READY_PREFIX).nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    break addr.parse().expect("readiness line carries an address");
                }
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "{label} did not become ready ({status:?}); output:\n{}",
                    output.lock().unwrap()
                );
            }
        }
    };
    Server {
        child: Some(child),
        addr,
        label,
        output,
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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
