//! The runtime seam: how a deployed service's process is started, watched and
//! stopped. [`ProcessRuntime`] runs local processes; a Docker runtime is the
//! second implementation.

use chora_api::orchestrator::DeploySpec;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start `{program}`: {message}")]
    Spawn { program: String, message: String },
    #[error("{0}")]
    Unsupported(String),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What the runtime says identifies a running unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitId {
    Pid(u32),
    Container(String),
}

/// One started unit (a process or a container).
pub trait Unit: Send {
    fn id(&self) -> UnitId;
    /// Resolves when the unit has exited (by itself or after `stop`).
    fn wait(&mut self) -> BoxFuture<'_, Exit>;
    /// Asks the unit to stop (SIGTERM), kills it after `grace`, and reaps it.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit>;
}

/// Starts units.
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn start(
        &self,
        spec: &DeploySpec,
        argv: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<Box<dyn Unit>, RuntimeError>;
}

/// Local processes: each in its own process group, stdout and stderr appended to
/// `<logs>/<name>.log`, environment from the spec (secrets never in argv). A
/// child gets SIGTERM if the orchestrator dies (`PR_SET_PDEATHSIG`), so no
/// orphan outlives a crashed orchestrator.
pub struct ProcessRuntime {
    pub logs_dir: PathBuf,
}

/// Variables of the orchestrator's own environment a child must not inherit.
const PRIVATE_ENV: &[&str] = &[
    "CHORA_API_KEY",
    "CHORA_CREDENTIALS",
    "CHORA_INSTANCE_ID",
    "CHORA_PID_FILE",
];

impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn start(
        &self,
        spec: &DeploySpec,
        argv: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<Box<dyn Unit>, RuntimeError> {
        let program = argv.first().cloned().unwrap_or_default();
        let fail = |message: String| RuntimeError::Spawn {
            program: program.clone(),
            message,
        };
        std::fs::create_dir_all(&self.logs_dir).map_err(|e| fail(e.to_string()))?;
        let log_path = self.logs_dir.join(format!("{}.log", spec.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(format!("cannot open {}: {e}", log_path.display())))?;
        let log2 = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        for k in PRIVATE_ENV {
            cmd.env_remove(k);
        }
        cmd.envs(env);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
        Ok(Box::new(Process { child, pid }))
    }
}

struct Process {
    child: tokio::process::Child,
    pid: u32,
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

impl Process {
    /// Signals the child's whole process group, while the child is unreaped (so its
    /// pid, and the group id, cannot have been reused).
    fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe { libc::kill(-(self.pid as i32), sig) };
    }
}

impl Unit for Process {
    fn id(&self) -> UnitId {
        UnitId::Pid(self.pid)
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
                    tracing::warn!(pid = self.pid, "did not stop within {grace:?}; killing");
                    self.signal_group(libc::SIGKILL);
                    exit_of(self.child.wait().await)
                }
            }
        })
    }
}
