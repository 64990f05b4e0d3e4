//! Local processes. Each unit runs in a process group of its own, stdin closed,
//! stdout and stderr appended to `<logs>/<name>.log`, with exactly the spec's
//! environment added to the inherited one (minus chora's private variables).
//! With a run directory, the runtime writes `<run>/<name>.pid` (pid and start
//! time) the moment the process exists, so whoever started it finds it again
//! after a crash of its own.

use crate::proc::{ProcId, read_pidfile};
use crate::{BoxFuture, Exit, Found, Runtime, RuntimeError, Unit, UnitId, UnitSpec};
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
    /// This chora executable: what [`Runtime::chora`] runs.
    pub exe: PathBuf,
}

impl ProcessRuntime {
    /// A runtime whose units log to `logs_dir`, live as `lifetime` says and
    /// (with `run_dir`) are found again by their pid files there.
    pub fn new(logs_dir: PathBuf, run_dir: Option<PathBuf>, lifetime: Lifetime) -> Self {
        ProcessRuntime {
            logs_dir,
            run_dir,
            lifetime,
            cwd: None,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("chora")),
        }
    }

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
        Ok(Box::new(Child { child, id, pidfile }))
    }
}

impl ProcessRuntime {
    fn known(&self, name: &str, id: ProcId) -> Found {
        Found {
            name: name.to_owned(),
            unit: Box::new(Known {
                id,
                pidfile: self.pidfile(name),
            }),
            labels: Default::default(),
            env: Default::default(),
        }
    }

    /// The unit of pid file `path`, if it runs; a stale pid file is removed.
    fn by_pidfile(&self, name: &str, path: &std::path::Path) -> Option<Found> {
        match read_pidfile(path) {
            Some(id) => Some(self.known(name, id)),
            None => {
                if path.exists() {
                    let _ = std::fs::remove_file(path);
                }
                None
            }
        }
    }
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn start<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Unit>, RuntimeError>> {
        Box::pin(async move {
            spec.one_copy()?;
            self.spawn(spec)
        })
    }

    fn find<'a>(
        &'a self,
        name: &'a str,
        recorded: Option<&'a UnitId>,
    ) -> BoxFuture<'a, Result<Option<Found>, RuntimeError>> {
        Box::pin(async move {
            let Some(path) = self.pidfile(name) else {
                return Ok(None);
            };
            if let Some(f) = self.by_pidfile(name, &path) {
                return Ok(Some(f));
            }
            // The pid file was lost with the run directory, but the starter
            // still knows the process: take it back while it runs.
            match recorded {
                Some(UnitId::Process(id)) if id.alive() => {
                    if let Err(e) = id.write(&path) {
                        tracing::warn!(error = %e, path = %path.display(), "cannot write the pid file");
                    }
                    Ok(Some(self.known(name, *id)))
                }
                _ => Ok(None),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Found>, RuntimeError>> {
        Box::pin(async move {
            let Some(dir) = &self.run_dir else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = e.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".pid"))
                else {
                    continue;
                };
                if let Some(f) = self.by_pidfile(name, &path) {
                    out.push(f);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn remove_all(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move {
            let mut gone = Vec::new();
            for mut f in self.list().await? {
                f.unit.stop(Duration::from_secs(5)).await;
                gone.push(f.name);
            }
            // Whatever is left (unreadable pid files) goes too.
            if let Some(dir) = &self.run_dir {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if e.path().extension().is_some_and(|x| x == "pid") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            Ok(gone)
        })
    }

    fn logs<'a>(&'a self, name: &'a str, lines: usize) -> BoxFuture<'a, String> {
        Box::pin(async move { crate::tail(&self.log_path(name), lines) })
    }

    fn log_stream<'a>(
        &'a self,
        name: &'a str,
        tail: usize,
        follow: bool,
    ) -> crate::BoxStream<'a, Vec<u8>> {
        crate::file_stream(self.log_path(name), tail, follow)
    }

    fn log_hint(&self, name: &str) -> String {
        self.log_path(name).display().to_string()
    }

    fn advertise(&self, spec: &UnitSpec) -> Option<String> {
        spec.port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    fn bind(&self, spec: &UnitSpec) -> String {
        format!("127.0.0.1:{}", spec.port.unwrap_or(0))
    }

    fn chora(&self, args: Vec<String>) -> (Vec<String>, Option<String>) {
        let mut argv = vec![self.exe.display().to_string()];
        argv.extend(args);
        (argv, None)
    }
}

/// A process this runtime spawned (and may reap).
struct Child {
    child: tokio::process::Child,
    id: ProcId,
    pidfile: Option<PathBuf>,
}

/// Removes the pid file of a stopped process, unless it names another one by
/// now (a new start of the same name).
fn forget(pidfile: &Option<PathBuf>, id: ProcId) {
    if let Some(p) = pidfile
        && crate::proc::read_pidfile(p).is_none_or(|other| other == id)
    {
        let _ = std::fs::remove_file(p);
    }
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
            let exit = match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(s) => exit_of(s),
                Err(_) => {
                    tracing::warn!(pid = self.id.pid, "did not stop within {grace:?}; killing");
                    self.signal_group(libc::SIGKILL);
                    exit_of(self.child.wait().await)
                }
            };
            forget(&self.pidfile, self.id);
            exit
        })
    }
}

/// A process found again by its pid file: not our child any more, so its exit
/// status is unknown; it is signalled only while its start time still matches.
struct Known {
    id: ProcId,
    pidfile: Option<PathBuf>,
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
            let exit = match self.id.stop(grace).await {
                crate::proc::Stopped::Killed => Exit::Signal(libc::SIGKILL),
                _ => Exit::Signal(libc::SIGTERM),
            };
            if !self.id.alive() {
                forget(&self.pidfile, self.id);
            }
            exit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(dir: &std::path::Path, lifetime: Lifetime) -> ProcessRuntime {
        ProcessRuntime::new(dir.join("logs"), Some(dir.join("run")), lifetime)
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
        let found = r
            .find("svc", None)
            .await
            .unwrap()
            .expect("found by its pid file");
        assert_eq!(found.unit.id(), UnitId::Process(id));
        // Its output reaches the log (the echo runs before the sleep).
        let t = std::time::Instant::now();
        while r.logs("svc", 5).await != "hello" {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no output in the log"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let exit = u.stop(Duration::from_secs(5)).await;
        assert_eq!(exit, Exit::Signal(libc::SIGTERM));
        assert!(!id.alive());
        assert!(
            r.find("svc", None).await.unwrap().is_none(),
            "a dead pid is not found"
        );
        assert!(
            !dir.path().join("run/svc.pid").exists(),
            "a stopped unit leaves no pid file"
        );
        assert_eq!(r.logs("svc", 5).await, "hello");
    }

    #[tokio::test]
    async fn a_unit_whose_pid_file_was_lost_is_found_by_its_recorded_id_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let r = rt(dir.path(), Lifetime::Detached);
        let u = r.start(&sh("lost", "exec sleep 30")).await.unwrap();
        let recorded = u.id();
        drop(u);
        std::fs::remove_file(dir.path().join("run/lost.pid")).unwrap();
        assert!(r.find("lost", None).await.unwrap().is_none());
        let found = r.find("lost", Some(&recorded)).await.unwrap().unwrap();
        assert_eq!(found.unit.id(), recorded);
        // Taken back: the pid file is there again, and `list` shows it.
        let listed = r.list().await.unwrap();
        assert_eq!(
            listed.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["lost"]
        );
        assert_eq!(r.remove_all().await.unwrap(), ["lost"]);
        let UnitId::Process(id) = recorded else {
            panic!()
        };
        assert!(!id.alive());
        assert!(r.list().await.unwrap().is_empty());
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
        let mut found = r.find("g", None).await.unwrap().unwrap().unit;
        found.stop(Duration::from_secs(5)).await;
        // The shell and its `sleep` were one group: nothing of it is left.
        tokio::time::timeout(Duration::from_secs(5), found.wait())
            .await
            .expect("wait returns once it is gone");
        assert!(!id.alive());
        let group_left = || {
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                    let f: Vec<&str> = s.rsplit(") ").next().unwrap_or("").split(' ').collect();
                    f.get(2) == Some(&id.pid.to_string().as_str()) && f[0] != "Z"
                })
            })
        };
        // The group got its signal with the leader; a loaded kernel may take
        // a moment to end the rest of it.
        let t = std::time::Instant::now();
        while group_left() {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "a process of its group outlived the stop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
