//! SSH to one host through the system `ssh` (the `openssh` crate: one
//! multiplexed master connection per host, every command a channel on it).
//!
//! Host keys are checked against known_hosts, strictly unless `accept_new`.
//! Connection faults (refused, timed out, reset, unreachable) are retried with
//! backoff; a host-key mismatch or an authentication failure is not: trying
//! again cannot fix either.
//!
//! A master exits by itself after [`IDLE_EXIT`] without channels (so none
//! outlives a chora that was killed). A host can sit idle longer than that
//! between rounds, while others install Docker: [`Remote::freshen`] replaces a
//! master idle for [`STALE`] before its next step, and a command that finds the
//! master gone says so ([`Remote::lost`]) so that the step can be run again on a
//! new connection.
//!
//! A master also forwards local unix sockets to sockets on the host
//! ([`Remote::forward_socket`]): that is how chora talks to a host's Docker
//! (`tunnel.rs`).

use crate::inventory::{Host, SshOptions};
use openssh::{ControlPersist, ForwardType, KnownHosts, Session, SessionBuilder, Socket, Stdio};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// A master with no channel for this long exits (ssh's `ControlPersist`).
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

/// A master idle this long is replaced before its next step rather than raced
/// against [`IDLE_EXIT`].
pub const STALE: Duration = Duration::from_secs(40);

// The margin covers starting a command on a loaded machine.
const _: () = assert!(STALE.as_secs() + 15 <= IDLE_EXIT.as_secs());

/// The start of the error of a command whose connection was lost.
pub const LOST: &str = "ssh: the connection was lost";

/// Why a host could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("host key mismatch: {0}")]
    HostKey(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("{0}")]
    Connection(String),
}

impl ConnectError {
    /// Worth another attempt.
    pub fn transient(&self) -> bool {
        matches!(self, ConnectError::Connection(_))
    }
}

/// Sorts ssh's own words into the three kinds of failure.
pub fn classify(stderr: &str) -> ConnectError {
    let text: String = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .filter(|l| !l.starts_with("@@@") && !l.starts_with("IT IS POSSIBLE"))
        .collect::<Vec<_>>()
        .join(" ");
    let short = |t: &str| t.chars().take(300).collect::<String>();
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("Host key verification failed")
        || stderr.contains("No ED25519 host key is known")
        || stderr.contains("host key for")
    {
        let what = if stderr.contains("HAS CHANGED") {
            "the host's key differs from the one in known_hosts"
        } else {
            "the host's key is not in known_hosts (set ssh.accept_new: true to learn it)"
        };
        return ConnectError::HostKey(what.into());
    }
    if stderr.contains("Permission denied (") || stderr.contains("Too many authentication failures")
    {
        return ConnectError::Auth(short(&text));
    }
    if text.is_empty() {
        return ConnectError::Connection("ssh exited without saying why".into());
    }
    ConnectError::Connection(short(&text))
}

/// The result of one remote script.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The script's last line of stdout, trimmed: where a step's script says
    /// what it found (`ok`, `changed …`, `free`).
    pub fn last_line(&self) -> String {
        self.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The last lines of stderr (else stdout), for a one-line reason.
    pub fn tail(&self) -> String {
        let src = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = src
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let start = lines.len().saturating_sub(2);
        lines[start..].join(" / ").chars().take(400).collect()
    }
}

/// A connected host: the master connection and whether commands need `sudo -n`.
pub struct Remote {
    session: Arc<Session>,
    pub host: Host,
    /// Run privileged scripts through `sudo -n` (the SSH user is not root).
    pub sudo: bool,
    opts: SshOptions,
    /// When the master last had a channel (or was made).
    idle_since: Mutex<Instant>,
    /// A command found the master gone.
    lost: AtomicBool,
}

/// Where the control sockets live: short, under /tmp (a socket path is limited to
/// 108 bytes).
fn control_dir() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from("/tmp/chora-ssh");
    let _ = std::fs::create_dir_all(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    dir
}

async fn connect_once(host: &Host, opts: &SshOptions) -> Result<Session, ConnectError> {
    let mut b = SessionBuilder::default();
    b.user(host.user.clone())
        .port(host.port)
        .connect_timeout(opts.connect_timeout)
        .server_alive_interval(opts.keepalive)
        .control_directory(control_dir())
        // Closed explicitly at the end of a run; if chora is killed first, the
        // master goes away by itself after a minute without channels.
        .control_persist(ControlPersist::IdleFor(
            std::num::NonZeroUsize::new(IDLE_EXIT.as_secs() as usize).expect("non-zero"),
        ))
        .known_hosts_check(if opts.accept_new {
            KnownHosts::Add
        } else {
            KnownHosts::Strict
        });
    if let Some(k) = &opts.identity_file {
        b.keyfile(k);
    }
    if let Some(k) = &opts.known_hosts {
        b.user_known_hosts_file(k);
    }
    match b.connect(&host.address).await {
        Ok(s) => Ok(s),
        Err(openssh::Error::Connect(e)) => Err(classify(&e.to_string())),
        Err(e) => Err(ConnectError::Connection(format!(
            "{e}: {}",
            source_text(&e)
        ))),
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

/// Connects, retrying connection faults with backoff (0.5 s, 1 s, 2 s, …).
pub async fn connect(host: &Host, opts: &SshOptions) -> Result<Remote, ConnectError> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match connect_once(host, opts).await {
            Ok(session) => {
                return Ok(Remote {
                    session: Arc::new(session),
                    host: host.clone(),
                    sudo: host.user != "root",
                    opts: opts.clone(),
                    idle_since: Mutex::new(Instant::now()),
                    lost: AtomicBool::new(false),
                });
            }
            Err(e) if e.transient() && attempt < opts.attempts => {
                tracing::debug!(host = %host.name, attempt, error = %e, "ssh: retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
            Err(ConnectError::Connection(m)) if attempt > 1 => {
                return Err(ConnectError::Connection(format!(
                    "{m} (after {attempt} attempts)"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Remote {
    /// Runs `script` with `sh` on the host as the SSH user; the script travels on
    /// stdin (never in argv), `input` follows it as a here-document if given.
    pub async fn run_as_user(&self, script: &str) -> Result<Output, String> {
        self.exec(false, script).await
    }

    /// Runs `script` as root (through `sudo -n` when the SSH user is not root).
    pub async fn run(&self, script: &str) -> Result<Output, String> {
        self.exec(self.sudo, script).await
    }

    async fn exec(&self, sudo: bool, script: &str) -> Result<Output, String> {
        let r = self.exec_once(sudo, script).await;
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        r
    }

    async fn exec_once(&self, sudo: bool, script: &str) -> Result<Output, String> {
        let mut cmd = if sudo {
            let mut c = self.session.command("sudo");
            c.args(["-n", "sh", "-s"]);
            c
        } else {
            let mut c = self.session.command("sh");
            c.arg("-s");
            c
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn().await {
            Ok(c) => c,
            Err(openssh::Error::RemoteProcessTerminated | openssh::Error::Disconnected) => {
                return Err(self.why_255().await);
            }
            Err(e) => return Err(format!("ssh: {e}")),
        };
        if let Some(mut stdin) = child.stdin().take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| format!("ssh: writing the script: {e}"))?;
            let _ = stdin.shutdown().await;
            drop(stdin);
        }
        match child.wait_with_output().await {
            Ok(o) => Ok(Output {
                code: o.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            }),
            Err(openssh::Error::RemoteProcessTerminated | openssh::Error::Disconnected) => {
                Err(self.why_255().await)
            }
            Err(e) => Err(format!("ssh: {e}")),
        }
    }

    /// ssh exits 255 both when the connection fails and when the remote command
    /// exits 255 or is killed by a signal: the master, still up or not, tells
    /// which. A lost connection is remembered ([`Remote::lost`]).
    async fn why_255(&self) -> String {
        match self.session.check().await {
            Ok(()) => {
                "the remote command exited 255 or was killed by a signal (the SSH connection is up)"
                    .into()
            }
            Err(e) => {
                self.lost.store(true, Ordering::SeqCst);
                let why = source_text(&e);
                if why.trim().is_empty() {
                    format!("{LOST} ({e})")
                } else {
                    format!("{LOST} ({e}: {})", why.trim())
                }
            }
        }
    }

    /// Some command found the connection lost since this master was made.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Replaces the master with a new connection (the old one is closed).
    pub async fn reconnect(&mut self) -> Result<(), ConnectError> {
        let fresh = connect(&self.host, &self.opts).await?;
        let old = std::mem::replace(self, fresh);
        old.close().await;
        Ok(())
    }

    /// Makes sure the master will still be there for the next step: one idle
    /// for [`STALE`] (it exits at [`IDLE_EXIT`]) or found lost is replaced.
    pub async fn freshen(&mut self) -> Result<(), ConnectError> {
        let idle = self
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if idle >= STALE || self.lost() {
            tracing::debug!(host = %self.host.name, idle_s = idle.as_secs(), "ssh: new master connection");
            self.reconnect().await?;
        }
        Ok(())
    }

    pub async fn close(self) {
        if let Ok(session) = Arc::try_unwrap(self.session) {
            let _ = session.close().await;
        }
        // Else a keep-alive still holds it: its drop closes the master.
    }

    /// Forwards a new local unix socket to the unix socket `remote` on the
    /// host, through this master: a connection to [`Forward::path`] is a
    /// channel on it, opened on the host as the SSH user. The socket is made by
    /// ssh in a fresh 0700 directory under /tmp (short: a socket path is
    /// limited to 108 bytes) and is 0600 (ssh's `StreamLocalBindMask`, set
    /// again here); the directory goes when the [`Forward`] drops, the
    /// forwarding itself with the master or [`Forward::close`].
    pub async fn forward_socket(&self, remote: &str) -> Result<Forward, String> {
        let dir = tempfile::Builder::new()
            .prefix("chora-fwd.")
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot make a directory for the socket under /tmp: {e}"))?;
        let path = dir.path().join("s");
        self.session
            .request_port_forward(
                ForwardType::Local,
                Socket::UnixSocket {
                    path: path.as_path().into(),
                },
                Socket::UnixSocket {
                    path: Path::new(remote).into(),
                },
            )
            .await
            .map_err(|e| {
                let why = source_text(&e);
                format!("ssh: cannot forward a socket to {remote}: {e} {why}")
                    .trim()
                    .to_owned()
            })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("the forwarded socket {}: {e}", path.display()))?;
        }
        Ok(Forward {
            path,
            remote: remote.to_owned(),
            _dir: dir,
        })
    }

    /// Forwards each of `ports` on 127.0.0.1 here to the same port on the
    /// host's 127.0.0.1, through this master, until it exits (a loopback
    /// port of the host used from here, nothing opened on the host's
    /// addresses); all in one request to the master: one `ssh` process
    /// for them all (a fleet's door has one port per unit; one process
    /// each took ~150 ms apiece on a busy machine, 9 s for 59).
    pub async fn forward_ports(&self, ports: &[u16]) -> Result<(), String> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.stdin(std::process::Stdio::null())
            .arg("-S")
            .arg(self.session.control_socket())
            .args(["-o", "BatchMode=yes", "-fNT"]);
        for p in ports {
            cmd.arg("-L").arg(format!("127.0.0.1:{p}:127.0.0.1:{p}"));
        }
        // As the master is named by `-S`, ssh ignores the host.
        let out = cmd
            .arg("none")
            .output()
            .await
            .map_err(|e| format!("ssh: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        Err(format!(
            "ssh: cannot forward 127.0.0.1 ports {} to the host's: {}",
            list.join(", "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    /// Keeps this master from exiting while idle ([`IDLE_EXIT`]) for as long
    /// as the returned guard lives: a remote `cat` reading its stdin, a
    /// channel. When chora dies the pipe closes, `cat` ends and the master
    /// exits a minute later, as it does for a run.
    pub async fn keep_alive(&self) -> Result<KeepAlive, String> {
        let mut cmd = openssh::Session::to_command(self.session.clone(), "cat");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .await
            .map_err(|e| format!("ssh: cannot keep the connection open: {e}"))?;
        let stdin = child.stdin().take();
        Ok(KeepAlive {
            _stdin: stdin,
            _child: child,
        })
    }
}

/// A local unix socket forwarded to a socket on the host
/// ([`Remote::forward_socket`]); its directory is removed on drop.
#[derive(Debug)]
pub struct Forward {
    path: PathBuf,
    remote: String,
    _dir: tempfile::TempDir,
}

impl Forward {
    /// The local socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops forwarding on `remote`'s master (which otherwise keeps listening
    /// on the removed path until it exits) and removes the socket.
    pub async fn close(self, remote: &Remote) {
        let _ = remote
            .session
            .close_port_forward(
                ForwardType::Local,
                Socket::UnixSocket {
                    path: self.path.as_path().into(),
                },
                Socket::UnixSocket {
                    path: Path::new(&self.remote).into(),
                },
            )
            .await;
    }
}

/// Holds a master open ([`Remote::keep_alive`]).
pub struct KeepAlive {
    _stdin: Option<openssh::ChildStdin>,
    _child: openssh::Child<Arc<Session>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ssh_errors() {
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@@@@@\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\nHost key verification failed.";
        assert!(matches!(classify(changed), ConnectError::HostKey(_)));
        assert!(!classify(changed).transient());
        let auth = "root@10.0.0.1: Permission denied (publickey,password).";
        assert!(matches!(classify(auth), ConnectError::Auth(_)));
        let refused = "ssh: connect to host 10.0.0.1 port 22: Connection refused";
        let e = classify(refused);
        assert!(e.transient());
        assert!(e.to_string().contains("Connection refused"));
    }
}
