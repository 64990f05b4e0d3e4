//! Processes as chora knows them: found again by pid *and* start time (so a
//! reused pid is never signalled), stopped with a grace period, and whoever
//! holds a port named.

use std::path::Path;
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
        let pid = self.pid as i32;
        // A leader of its own process group (every unit chora starts is one)
        // takes its group along: a shell's children die with it.
        // SAFETY: getpgid and kill(2) on a pid verified (by start time) to be ours.
        let target = if unsafe { libc::getpgid(pid) } == pid {
            -pid
        } else {
            pid
        };
        unsafe { libc::kill(target, sig) == 0 }
    }

    /// Resolves once this process is gone (exited; a zombie counts as gone).
    pub async fn exited(&self) {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open(2) returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::c_int, 0) };
        // Opened, then checked: a descriptor taken while it is still our process
        // refers to our process, whatever reuses its pid later.
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
            if !self.alive() {
                return;
            }
            // SAFETY: `owned` is a pidfd this function owns until `afd` drops.
            let afd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    owned,
                    tokio::io::Interest::READABLE,
                )
            };
            if let Ok(afd) = afd {
                let _ = afd.readable().await;
                return;
            }
        }
        while self.alive() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

impl ProcId {
    /// Writes the pid file `path` naming this process (`pid start_time`), atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(
            path,
            format!("{} {}\n", self.pid, self.start_time).as_bytes(),
            0o644,
        )
    }
}

pub use chora_api::files::write_atomic;

/// The environment variable that marks a unit with the token of its pid file.
pub const TOKEN_ENV: &str = "CHORA_UNIT_TOKEN";

/// Writes the pid file of a unit about to be spawned: no pid yet, only the
/// token its environment will carry. A starter killed between the spawn and
/// the pid file's completion leaves this behind, and [`read_pidfile`] finds the
/// process by its token.
pub fn write_intent(path: &Path, token: &str) -> std::io::Result<()> {
    write_atomic(path, format!("- - {token}\n").as_bytes(), 0o644)
}

impl ProcId {
    /// Writes the pid file `path` naming this process, with its token.
    pub fn write_with_token(&self, path: &Path, token: &str) -> std::io::Result<()> {
        write_atomic(
            path,
            format!("{} {} {token}\n", self.pid, self.start_time).as_bytes(),
            0o644,
        )
    }
}

/// The process a pid file names, if it is still that process: by pid and start
/// time, or (when the pid was never written) by the token in its environment.
pub fn read_pidfile(path: &Path) -> Option<ProcId> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?;
    let start = it.next()?;
    if let (Ok(pid), Ok(start_time)) = (pid.parse(), start.parse()) {
        let id = ProcId { pid, start_time };
        return id.alive().then_some(id);
    }
    let token = it.next()?;
    let id = find_by_token(token)?;
    // Complete the pid file for next time.
    let _ = id.write_with_token(path, token);
    Some(id)
}

/// The live process whose environment holds `CHORA_UNIT_TOKEN=<token>`.
fn find_by_token(token: &str) -> Option<ProcId> {
    let needle = format!("{TOKEN_ENV}={token}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
            && let Some(id) = ProcId::of(pid)
        {
            // The unit itself, not a child that inherited its environment: the
            // leader of its process group.
            // SAFETY: getpgid(2) reads a property of a pid.
            if unsafe { libc::getpgid(pid as i32) } == pid as i32 {
                return Some(id);
            }
        }
    }
    None
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
