//! `docker_compose: FILE` services (DESIGN.md §9): `docker-compose -p <project>
//! -f FILE up -d` (compose v2's `docker compose` where v1 is missing). The unit
//! is the file's first container, found by compose's own listing; stopping it
//! is `down` (volumes kept).

use crate::{BoxFuture, Exit, Found, Runtime, RuntimeError, Unit, UnitId, UnitSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub struct ComposeRuntime {
    pub project: String,
    /// Each compose service's file, by service name.
    pub files: BTreeMap<String, PathBuf>,
}

/// `docker-compose`, else `docker compose`.
fn program() -> Vec<String> {
    let v1 = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("docker-compose").is_file()))
        .unwrap_or(false);
    if v1 {
        vec!["docker-compose".into()]
    } else {
        vec!["docker".into(), "compose".into()]
    }
}

impl ComposeRuntime {
    fn file(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        self.files.get(name).cloned().ok_or_else(|| {
            RuntimeError::Unsupported(format!("`{name}` has no `docker_compose` file"))
        })
    }

    /// Compose (`prog`) on one project file, run from the file's folder (its
    /// relative paths mean what they mean to `docker-compose up` there).
    fn command(&self, prog: &[String], file: &std::path::Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&prog[0]);
        cmd.args(&prog[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(file)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs compose on `name`'s file; its stdout, or why it failed.
    async fn compose(
        &self,
        name: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
    ) -> Result<String, RuntimeError> {
        let file = self.file(name)?;
        let prog = program();
        let mut cmd = self.command(&prog, &file);
        cmd.args(args).envs(env);
        let out = cmd.output().await.map_err(|e| RuntimeError::Spawn {
            program: prog.join(" "),
            message: e.to_string(),
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = err.lines().rev().take(3).collect();
            Err(RuntimeError::Docker(format!(
                "{} {} failed: {}",
                prog.join(" "),
                args.join(" "),
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )))
        }
    }

    /// The running containers of `name`'s file.
    async fn running(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let ids = self.compose(name, &["ps", "-q"], &BTreeMap::new()).await?;
        let docker = crate::docker::connect().await?;
        let mut running = Vec::new();
        for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Ok(c) = docker.inspect_container(id, None).await
                && c.state.and_then(|s| s.running) == Some(true)
            {
                running.push(id.to_owned());
            }
        }
        Ok(running)
    }

    fn unit(&self, name: &str, id: String) -> Result<Box<dyn Unit>, RuntimeError> {
        Ok(Box::new(ComposeUnit {
            runtime: ComposeRuntime {
                project: self.project.clone(),
                files: [(name.to_owned(), self.file(name)?)].into(),
            },
            name: name.to_owned(),
            id,
        }))
    }
}

impl Runtime for ComposeRuntime {
    fn name(&self) -> &'static str {
        "compose"
    }

    fn start<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Unit>, RuntimeError>> {
        Box::pin(async move {
            spec.one_copy()?;
            self.compose(&spec.name, &["up", "-d"], &spec.env).await?;
            let id = self
                .running(&spec.name)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    RuntimeError::Docker(format!(
                        "`{}`: compose started no container that stayed up",
                        spec.name
                    ))
                })?;
            self.unit(&spec.name, id)
        })
    }

    fn find<'a>(
        &'a self,
        name: &'a str,
        _recorded: Option<&'a UnitId>,
    ) -> BoxFuture<'a, Result<Option<Found>, RuntimeError>> {
        Box::pin(async move {
            Ok(match self.running(name).await?.into_iter().next() {
                Some(id) => Some(Found {
                    name: name.to_owned(),
                    unit: self.unit(name, id)?,
                    labels: Default::default(),
                    env: Default::default(),
                }),
                None => None,
            })
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Found>, RuntimeError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for name in self.files.keys() {
                if let Some(f) = self.find(name, None).await? {
                    out.push(f);
                }
            }
            Ok(out)
        })
    }

    /// Compose units carry compose's labels, not chora's: the starter stops
    /// each by name (`down`), and nothing else of them is left.
    fn remove_all(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn logs<'a>(&'a self, name: &'a str, lines: usize) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let n = lines.to_string();
            self.compose(
                name,
                &["logs", "--no-color", "--tail", &n],
                &BTreeMap::new(),
            )
            .await
            .unwrap_or_else(|e| e.to_string())
            .trim_end()
            .to_owned()
        })
    }

    fn log_stream<'a>(
        &'a self,
        name: &'a str,
        tail: usize,
        follow: bool,
    ) -> crate::BoxStream<'a, Vec<u8>> {
        use futures_util::StreamExt;
        let Ok(file) = self.file(name) else {
            return futures_util::stream::empty().boxed();
        };
        let mut cmd = self.command(&program(), &file);
        cmd.args(["logs", "--no-color", "--tail", &tail.to_string()])
            .args(follow.then_some("--follow"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let Ok(mut child) = cmd.spawn() else {
            return futures_util::stream::empty().boxed();
        };
        let Some(out) = child.stdout.take() else {
            return futures_util::stream::empty().boxed();
        };
        futures_util::stream::unfold((child, out), |(child, mut out)| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 8192];
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((buf, (child, out)))
                }
            }
        })
        .boxed()
    }

    fn log_hint(&self, name: &str) -> String {
        match self.files.get(name) {
            Some(f) => format!(
                "{} -p {} -f {} logs",
                program().join(" "),
                self.project,
                f.display()
            ),
            None => format!("{} -p {} logs", program().join(" "), self.project),
        }
    }

    fn advertise(&self, spec: &UnitSpec) -> Option<String> {
        spec.port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The compose file says where its services listen; chora only publishes.
    fn bind(&self, spec: &UnitSpec) -> String {
        format!("0.0.0.0:{}", spec.inner_port().unwrap_or(0))
    }

    /// A compose file runs what it names; chora's own arguments pass through.
    fn chora(&self, args: Vec<String>) -> (Vec<String>, Option<String>) {
        (args, None)
    }
}

/// A compose file's services, known by their first running container.
struct ComposeUnit {
    runtime: ComposeRuntime,
    name: String,
    id: String,
}

impl Unit for ComposeUnit {
    fn id(&self) -> UnitId {
        UnitId::Container(self.id.clone())
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            crate::docker::exited(&self.id).await;
            Exit::Code(-1)
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let t = grace.as_secs().max(1).to_string();
            if let Err(e) = self
                .runtime
                .compose(&self.name, &["down", "-t", &t], &BTreeMap::new())
                .await
            {
                tracing::warn!(service = %self.name, error = %e, "compose down failed");
            }
            Exit::Signal(15)
        })
    }
}
