//! Local processes. Each unit runs in a process group of its own, stdin closed,
//! stdout and stderr appended to `<logs>/<name>.log`, with exactly the spec's
//! environment added to the inherited one (minus chora's private variables).
//! With a run directory, the runtime writes `<run>/<name>.pid` (pid and start
//! time) the moment the process exists, so whoever started it finds it again
//! after a crash of its own.

use crate::proc::{ProcId, read_pidfile};
use crate::{BoxFuture, Exit, Found, Runtime, RuntimeError, RuntimeKind, Unit, UnitId, UnitSpec};
use std::path::PathBuf;
use std::time::Duration;

/// How long a process lives relative to whoever started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// It gets SIGTERM when its parent dies (`PR_SET_PDEATHSIG`): the
    /// orchestrator's children never outlive a killed orchestrator.
    WithParent,
    /// Its own session: it outlives the CLI that started it and its terminal
    /// (the bootstrap's phases 1-2).
    Detached,
}

/// Variables of the starter's own environment a unit must not inherit.
const PRIVATE_ENV: &[&str] = &[
    crate::proc::TOKEN_ENV,
    "CHORA_API_KEY",
    "CHORA_CREDENTIALS",
    "CHORA_CREDENTIALS_JSON",
    "CHORA_INSTANCE_ID",
    "CHORA_ADVERTISE_URL",
];

pub struct ProcessRuntime {
    pub logs_dir: PathBuf,
    /// Where pid files go; `None`: none are written (and `find` finds nothing).
    pub run_dir: Option<PathBuf>,
    pub lifetime: Lifetime,
    /// The working directory of every unit (default: the starter's).
    pub cwd: Option<PathBuf>,
}

impl ProcessRuntime {
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs_dir.join(format!("{name}.log"))
    }

    pub fn pidfile(&self, name: &str) -> Option<PathBuf> {
        self.run_dir.as_ref().map(|d| d.join(format!("{name}.pid")))
    }

    fn spawn(&self, spec: &UnitSpec) -> Result<Box<dyn Unit>, RuntimeError> {
        let program = spec.argv.first().cloned().unwrap_or_default();
        let fail = |message: String| RuntimeError::Spawn {
            program: program.clone(),
            message,
        };
        if program.is_empty() {
            return Err(fail("no command given".into()));
        }
        std::fs::create_dir_all(&self.logs_dir).map_err(|e| fail(e.to_string()))?;
        let log_path = self.log_path(&spec.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", log_path.display())))?;
        let log2 = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&spec.argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        for k in PRIVATE_ENV {
            cmd.env_remove(k);
        }
        cmd.envs(&spec.env);
        // Written before the spawn, so a starter killed at any moment leaves a
        // way to find what it started.
        let pidfile = self.pidfile(&spec.name);
        let token = chora_api::random_hex(8);
        if let Some(p) = &pidfile {
            cmd.env(crate::proc::TOKEN_ENV, &token);
            crate::proc::write_intent(p, &token)
                .map_err(|e| fail(format!("cannot write {}: {e}", p.display())))?;
        }
        let lifetime = self.lifetime;
        // SAFETY: setsid, setpgid and prctl are async-signal-safe and touch no
        // memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                match lifetime {
                    Lifetime::Detached => {
                        libc::setsid();
                    }
                    Lifetime::WithParent => {
                        libc::setpgid(0, 0);
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if let Some(p) = &pidfile {
                let _ = std::fs::remove_file(p);
            }
            fail(e.to_string())
        })?;
        let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
        // A process that is already a zombie has no start time; it is known by
        // its pid until reaped.
        let id = ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 });
        if let Some(p) = &pidfile
            && let Err(e) = id.write_with_token(p, &token)
        {
            tracing::warn!(error = %e, path = %p.display(), "cannot write the pid file");
        }
        Ok(Box::new(Child { child, id }))
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn start<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Unit>, RuntimeError>> {
        Box::pin(async move { self.spawn(spec) })
    }

    fn find<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Found>, RuntimeError>> {
        Box::pin(async move {
            let Some(path) = self.pidfile(name) else {
                return Ok(None);
            };
            Ok(read_pidfile(&path).map(|id| Found {
                unit: Box::new(Known { id }),
                labels: Default::default(),
                env: Default::default(),
            }))
        })
    }

    fn logs<'a>(&'a self, name: &'a str, lines: usize) -> BoxFuture<'a, String> {
        Box::pin(async move { crate::tail(&self.log_path(name), lines) })
    }

    fn advertise(&self, spec: &UnitSpec) -> Option<String> {
        spec.port.map(|p| format!("http://127.0.0.1:{p}"))
    }
}

/// A process this runtime spawned (and may reap).
struct Child {
    child: tokio::process::Child,
    id: ProcId,
}

fn exit_of(s: std::io::Result<std::process::ExitStatus>) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match s {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Code(-1),
        },
        Err(_) => Exit::Code(-1),
    }
}

impl Child {
    /// Signals the child's whole process group while the child is unreaped (so
    /// its pid, and the group id, cannot have been reused).
    fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe { libc::kill(-(self.id.pid as i32), sig) };
    }
}

impl Unit for Child {
    fn id(&self) -> UnitId {
        UnitId::Process(self.id)
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move { exit_of(self.child.wait().await) })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            if let Ok(Some(s)) = self.child.try_wait() {
                return exit_of(Ok(s));
            }
            self.signal_group(libc::SIGTERM);
            match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(s) => exit_of(s),
                Err(_) => {
                    tracing::warn!(pid = self.id.pid, "did not stop within {grace:?}; killing");
                    self.signal_group(libc::SIGKILL);
                    exit_of(self.child.wait().await)
                }
            }
        })
    }
}

/// A process found again by its pid file: not our child any more, so its exit
/// status is unknown; it is signalled only while its start time still matches.
struct Known {
    id: ProcId,
}

impl Unit for Known {
    fn id(&self) -> UnitId {
        UnitId::Process(self.id)
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            self.id.exited().await;
            Exit::Code(-1)
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            match self.id.stop(grace).await {
                crate::proc::Stopped::Killed => Exit::Signal(libc::SIGKILL),
                _ => Exit::Signal(libc::SIGTERM),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(dir: &std::path::Path, lifetime: Lifetime) -> ProcessRuntime {
        ProcessRuntime {
            logs_dir: dir.join("logs"),
            run_dir: Some(dir.join("run")),
            lifetime,
            cwd: None,
        }
    }

    fn sh(name: &str, script: &str) -> UnitSpec {
        UnitSpec {
            name: name.into(),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: [("GREETING".to_string(), "hello".to_string())].into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn starts_logs_finds_again_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let r = rt(dir.path(), Lifetime::Detached);
        let mut u = r
            .start(&sh("svc", "echo $GREETING; exec sleep 30"))
            .await
            .unwrap();
        let UnitId::Process(id) = u.id() else {
            panic!()
        };
        // The pid file names it at once; `find` gets the same process back.
        let found = r.find("svc").await.unwrap().expect("found by its pid file");
        assert_eq!(found.unit.id(), UnitId::Process(id));
        let exit = u.stop(Duration::from_secs(5)).await;
        assert_eq!(exit, Exit::Signal(libc::SIGTERM));
        assert!(!id.alive());
        assert!(
            r.find("svc").await.unwrap().is_none(),
            "a dead pid is not found"
        );
        assert_eq!(r.logs("svc", 5).await, "hello");
    }

    #[tokio::test]
    async fn a_found_process_is_waited_for_and_stopped_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let r = rt(dir.path(), Lifetime::Detached);
        let u = r.start(&sh("g", "sleep 30 & wait")).await.unwrap();
        let UnitId::Process(id) = u.id() else {
            panic!()
        };
        drop(u); // as a CLI that exits leaves it running
        let mut found = r.find("g").await.unwrap().unwrap().unit;
        found.stop(Duration::from_secs(5)).await;
        // The shell and its `sleep` were one group: nothing of it is left.
        tokio::time::timeout(Duration::from_secs(5), found.wait())
            .await
            .expect("wait returns once it is gone");
        assert!(!id.alive());
        let group_left = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                let f: Vec<&str> = s.rsplit(") ").next().unwrap_or("").split(' ').collect();
                f.get(2) == Some(&id.pid.to_string().as_str()) && f[0] != "Z"
            })
        });
        assert!(!group_left, "a process of its group outlived the stop");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = rt(dir.path(), Lifetime::WithParent);
        let spec = UnitSpec {
            name: "x".into(),
            argv: vec!["/nonexistent/program".into()],
            ..Default::default()
        };
        let e = r.start(&spec).await.err().expect("refused");
        assert!(e.to_string().contains("/nonexistent/program"), "{e}");
    }
}
