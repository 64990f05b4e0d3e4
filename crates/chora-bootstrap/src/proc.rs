//! Local processes: starting services that outlive the CLI, finding them again
//! by pid *and* start time (so a reused pid is never signalled), stopping them,
//! and naming whoever holds a port.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A process as chora identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    /// Clock ticks after boot at which it started (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// The start time of a live (not zombie) process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl ProcId {
    pub fn of(pid: u32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Still the very process we started.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    fn signal(&self, sig: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: kill(2) on a pid verified (by start time) to be ours.
        unsafe { libc::kill(self.pid as i32, sig) == 0 }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns once it is gone.
    pub async fn stop(&self, grace: Duration) -> Stopped {
        if !self.signal(libc::SIGTERM) {
            return Stopped::WasNotRunning;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return Stopped::Terminated;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.signal(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.alive() {
            Stopped::StillRunning
        } else {
            Stopped::Killed
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    WasNotRunning,
    Terminated,
    Killed,
    StillRunning,
}

/// Writes this process's pid file (`pid start_time`), atomically.
pub fn write_pidfile(path: &Path) -> std::io::Result<()> {
    let me = ProcId::of(std::process::id())
        .ok_or_else(|| std::io::Error::other("cannot read /proc/self/stat"))?;
    crate::state::write_atomic(
        path,
        format!("{} {}\n", me.pid, me.start_time).as_bytes(),
        0o644,
    )
}

/// The process a pid file names, if it is still that process.
pub fn read_pidfile(path: &Path) -> Option<ProcId> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let id = ProcId {
        pid: it.next()?.parse().ok()?,
        start_time: it.next()?.parse().ok()?,
    };
    id.alive().then_some(id)
}

/// Starts `argv` in its own session (it outlives the CLI and its terminal), with
/// stdin closed, stdout and stderr appended to `log`, and exactly `env` added to
/// the inherited environment.
pub fn spawn_detached(
    argv: &[String],
    env: &BTreeMap<String, String>,
    log: &Path,
    cwd: &Path,
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_remove("CHORA_API_KEY")
        .envs(env);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
}

/// Who listens on TCP `port`: `(pid, command name)`, as far as /proc tells.
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (p == port && cols.get(3) == Some(&"0A")).then(|| cols.get(9).map(|s| s.to_string()))?
        })
    })?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let name = cmdline
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .take(4)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                return Some((pid, name));
            }
        }
    }
    None
}

/// True when `port` can be bound on loopback now.
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// This machine's host name, as the kernel has it ("" if unreadable).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_itself_and_the_holder_of_a_port() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.alive());
        let fake = ProcId {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!fake.alive(), "another start time is another process");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(!port_free(port));
        let (pid, _) = port_holder(port).expect("the holder is found");
        assert_eq!(pid, std::process::id());
    }
}
