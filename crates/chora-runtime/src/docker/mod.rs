//! Docker containers through the Engine API (bollard; the API version is
//! negotiated, engine 20.10 or newer). Every container carries the labels
//! `io.chora.home`, `io.chora.project` and `io.chora.service`, is named
//! `<project>-<name>`, joins the user-defined bridge network `<project>` with
//! the alias `<name>`, and publishes its port on 127.0.0.1 only. Named volumes
//! are `<project>-<volume>`. Secrets travel in the environment only. A unit that
//! exits is removed once its exit is known, so one service has at most one
//! container.

mod container;
mod create;

use crate::{BoxFuture, Found, Runtime, RuntimeError, Unit, UnitId, UnitSpec};
use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, LogsOptions, WaitContainerOptions,
};
use container::{Container, remove};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const LABEL_HOME: &str = "io.chora.home";
pub const LABEL_PROJECT: &str = "io.chora.project";
pub const LABEL_SERVICE: &str = "io.chora.service";
pub const LABEL_REPLICA: &str = "io.chora.replica";
/// Set in every container: the project network it is on.
pub const NETWORK_ENV: &str = "CHORA_NETWORK";

pub struct DockerRuntime {
    docker: Docker,
    /// The absolute chora home: the `io.chora.home` label of everything made.
    pub home: String,
    pub project: String,
    pub logs_dir: PathBuf,
    /// Copy each started container's output into `<logs>/<name>.log` for as
    /// long as this process lives (the orchestrator does; a CLI does not).
    pub follow_logs: bool,
    /// Whether this process itself runs in a container on the project network
    /// (then it reaches services by name, not by their published port).
    pub in_container: bool,
    /// Whether services are advertised (`interfaces.REST`) by name on the
    /// project network, for consumers that are containers too (default: when
    /// this process is one), rather than by their published port.
    pub advertise_by_name: bool,
    /// The image [`Runtime::chora`] runs (default: this chora's,
    /// `chora:<version>`).
    pub chora_image: String,
    /// Held while the project network is looked up and made: the engine
    /// does not refuse a second network of the same name, so concurrent
    /// starts must not both make one.
    network: Arc<tokio::sync::Mutex<bool>>,
}

/// A Docker error as a person reads it (every engine-backed runtime's).
pub(crate) fn docker_err(e: bollard::errors::Error) -> RuntimeError {
    use bollard::errors::Error as E;
    RuntimeError::Docker(match e {
        E::DockerResponseServerError { message, .. } => message,
        E::HyperResponseError { .. } | E::IOError { .. } => {
            format!("the Docker daemon is not reachable: {e}")
        }
        other => other.to_string(),
    })
}

/// Whether the engine answered `e` with HTTP status `code`.
pub(crate) fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Connects to the local engine (honouring `DOCKER_HOST`) and negotiates the
/// API version.
pub async fn connect() -> Result<Docker, RuntimeError> {
    chora_docker::connect()
        .await
        .map_err(|e| RuntimeError::Docker(e.to_string()))
}

/// Resolves once container `id` is not running (or cannot be asked any more).
pub async fn exited(id: &str) {
    let Ok(docker) = connect().await else { return };
    let docker = docker.with_timeout(Duration::from_secs(365 * 86400));
    let _ = docker
        .wait_container(
            id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        )
        .next()
        .await;
}

impl DockerRuntime {
    pub fn new(docker: Docker, home: String, project: String, logs_dir: PathBuf) -> Self {
        // Containers this runtime starts are told their network; a process
        // that is one of them reaches its siblings by name.
        let in_container = std::env::var(NETWORK_ENV).is_ok_and(|n| n == project);
        DockerRuntime {
            docker,
            home,
            project,
            logs_dir,
            follow_logs: false,
            in_container,
            advertise_by_name: in_container,
            chora_image: chora_docker::image::chora_tag(),
            network: Arc::default(),
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn container_name(&self, name: &str) -> String {
        format!("{}-{name}", self.project)
    }

    fn home_filter(&self, unit: Option<&str>) -> HashMap<String, Vec<String>> {
        let labels = vec![format!("{LABEL_HOME}={}", self.home)];
        let mut f: HashMap<String, Vec<String>> = [("label".to_string(), labels)].into();
        if let Some(u) = unit {
            // The unit's container by its exact name (`<project>-<unit>`): a
            // replica's service label is its service's, not the unit's.
            f.insert(
                "name".into(),
                vec![format!("^/{}$", regex_quote(&self.container_name(u)))],
            );
        }
        f
    }

    fn labels(&self, spec: &UnitSpec) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.insert(LABEL_HOME.into(), self.home.clone());
        l.insert(LABEL_PROJECT.into(), self.project.clone());
        l.entry(LABEL_SERVICE.into())
            .or_insert_with(|| spec.name.clone());
        l
    }

    /// The project network, made (labelled with this home) when missing.
    pub async fn ensure_network(&self) -> Result<(), RuntimeError> {
        let mut made = self.network.lock().await;
        if *made {
            return Ok(());
        }
        match self.docker.inspect_network(&self.project, None).await {
            Ok(_) => {
                *made = true;
                return Ok(());
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(docker_err(e)),
        }
        let req = NetworkCreateRequest {
            name: self.project.clone(),
            driver: Some("bridge".into()),
            labels: Some(
                [
                    (LABEL_HOME.to_string(), self.home.clone()),
                    (LABEL_PROJECT.to_string(), self.project.clone()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => {
                *made = true;
                Ok(())
            }
            // Made by another process meanwhile.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(docker_err(e)),
        }
    }

    /// Every container of this home, running or not.
    async fn containers(&self) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.home_filter(None)),
                ..Default::default()
            }))
            .await
            .map_err(docker_err)
    }

    /// Removes every container and network labelled with this home (volumes
    /// are kept). Returns the names removed.
    async fn remove_everything(&self) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        for c in self.containers().await? {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_else(|| id.clone());
            remove(&self.docker, &id).await?;
            removed.push(name.trim_start_matches('/').to_owned());
        }
        let nets = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(self.home_filter(None)),
            }))
            .await
            .map_err(docker_err)?;
        for n in nets {
            let (Some(name), Some(id)) = (n.name, n.id) else {
                continue;
            };
            match self.docker.remove_network(&id).await {
                Ok(()) => removed.push(format!("network {name}")),
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(docker_err(e)),
            }
        }
        Ok(removed)
    }

    fn follow(&self, id: &str, name: &str) {
        let docker = self.docker.clone();
        let id = id.to_owned();
        let path = self.logs_dir.join(format!("{name}.log"));
        tokio::spawn(async move {
            use std::io::Write;
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(&path));
            // Small appends to a local file: not worth a blocking-pool hop each.
            let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            else {
                return;
            };
            let mut logs = docker.logs(
                &id,
                Some(LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            while let Some(Ok(chunk)) = logs.next().await {
                if file.write_all(&chunk.into_bytes()).is_err() {
                    return;
                }
            }
        });
    }

    /// Volume `<project>-<volume>`.
    pub fn volume_name(&self, volume: &str) -> String {
        format!("{}-{volume}", self.project)
    }

    /// The home a volume is labelled with (`None`: no such volume, or made
    /// by hand without chora's labels).
    pub(crate) async fn volume_owner(&self, name: &str) -> Option<String> {
        self.docker
            .inspect_volume(name)
            .await
            .ok()?
            .labels
            .get(LABEL_HOME)
            .cloned()
    }

    /// The environment a container was started with.
    async fn env_of(&self, id: &str) -> Result<BTreeMap<String, String>, RuntimeError> {
        Ok(self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(docker_err)?
            .config
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect())
    }

    /// Where this machine reaches container `name` on the project network.
    async fn address(&self, name: &str) -> Option<String> {
        if self.in_container {
            return Some(name.to_owned());
        }
        let c = self
            .docker
            .inspect_container(&self.container_name(name), None)
            .await
            .ok()?;
        c.network_settings?
            .networks?
            .get(&self.project)?
            .ip_address
            .clone()
            .filter(|ip| !ip.is_empty())
    }

    fn unit(&self, id: String) -> Box<dyn Unit> {
        Box::new(Container {
            docker: self.docker.clone(),
            id,
        })
    }
}

impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn start<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Unit>, RuntimeError>> {
        Box::pin(async move {
            spec.one_copy()?;
            let id = self.create(spec).await?;
            if self.follow_logs {
                self.follow(&id, &spec.name);
            }
            Ok(self.unit(id))
        })
    }

    fn find<'a>(
        &'a self,
        name: &'a str,
        _recorded: Option<&'a UnitId>,
    ) -> BoxFuture<'a, Result<Option<Found>, RuntimeError>> {
        Box::pin(async move {
            let mut all = self
                .docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(self.home_filter(Some(name))),
                    ..Default::default()
                }))
                .await
                .map_err(docker_err)?;
            // Newest first; keep one running container, remove the rest.
            all.sort_by_key(|c| std::cmp::Reverse(c.created.unwrap_or(0)));
            let mut found = None;
            for c in all {
                let Some(id) = c.id else { continue };
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                if running && found.is_none() {
                    let labels: BTreeMap<String, String> =
                        c.labels.unwrap_or_default().into_iter().collect();
                    let env = self.env_of(&id).await?;
                    if self.follow_logs {
                        self.follow(&id, name);
                    }
                    found = Some(Found {
                        name: name.to_owned(),
                        unit: self.unit(id),
                        labels,
                        env,
                    });
                } else {
                    tracing::info!(service = name, container = %id, running, "removing a stale container");
                    remove(&self.docker, &id).await?;
                }
            }
            Ok(found)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Found>, RuntimeError>> {
        Box::pin(async move {
            let prefix = format!("/{}-", self.project);
            let mut out = Vec::new();
            for c in self.containers().await? {
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                let name = c
                    .names
                    .iter()
                    .flatten()
                    .find_map(|n| n.strip_prefix(&prefix))
                    .map(str::to_owned);
                let (Some(id), Some(name), true) = (c.id, name, running) else {
                    continue;
                };
                let env = self.env_of(&id).await?;
                out.push(Found {
                    name,
                    unit: self.unit(id),
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                    env,
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn remove_all(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(self.remove_everything())
    }

    fn logs<'a>(&'a self, name: &'a str, lines: usize) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut s = self.docker.logs(
                &self.container_name(name),
                Some(LogsOptions {
                    stdout: true,
                    stderr: true,
                    tail: lines.to_string(),
                    ..Default::default()
                }),
            );
            while let Some(Ok(chunk)) = s.next().await {
                out.extend_from_slice(&chunk.into_bytes());
            }
            if out.is_empty() {
                return crate::tail(&self.logs_dir.join(format!("{name}.log")), lines);
            }
            String::from_utf8_lossy(&out).trim_end().to_owned()
        })
    }

    fn conflicts<'a>(&'a self, spec: &'a UnitSpec) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let cname = self.container_name(&spec.name);
            if let Ok(c) = self.docker.inspect_container(&cname, None).await {
                let home = c
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(LABEL_HOME).cloned());
                if let Some(other) = home.filter(|h| *h != self.home) {
                    out.push(format!(
                        "the container `{cname}` belongs to the chora home {other}"
                    ));
                }
            }
            for v in spec.volumes.iter().filter(|v| !v.is_bind()) {
                let vname = self.volume_name(&v.source);
                if let Some(other) = self.volume_owner(&vname).await.filter(|h| *h != self.home) {
                    out.push(format!(
                        "the volume `{vname}` belongs to the chora home {other}"
                    ));
                }
            }
            out
        })
    }

    fn log_stream<'a>(
        &'a self,
        name: &'a str,
        tail: usize,
        follow: bool,
    ) -> crate::BoxStream<'a, Vec<u8>> {
        let logs = self.docker.logs(
            &self.container_name(name),
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                follow,
                tail: tail.to_string(),
                ..Default::default()
            }),
        );
        // No such container (it is gone): what the orchestrator copied of it.
        let file = self.logs_dir.join(format!("{name}.log"));
        futures_util::stream::once(async move {
            let mut logs = logs.peekable();
            match std::pin::Pin::new(&mut logs).peek().await {
                Some(Err(_)) => crate::file_stream(file, tail, follow),
                _ => logs
                    .take_while(|c| std::future::ready(c.is_ok()))
                    .filter_map(|c| std::future::ready(c.ok().map(|c| c.into_bytes().to_vec())))
                    .boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    fn log_hint(&self, name: &str) -> String {
        format!("docker logs {}", self.container_name(name))
    }

    fn advertise(&self, spec: &UnitSpec) -> Option<String> {
        if self.advertise_by_name {
            spec.inner_port()
                .map(|p| format!("http://{}:{p}", spec.name))
        } else {
            spec.port.map(|p| format!("http://127.0.0.1:{p}"))
        }
    }

    fn reach<'a>(&'a self, spec: &'a UnitSpec, url: &'a str) -> BoxFuture<'a, String> {
        Box::pin(async move {
            match (self.in_container, spec.port, spec.inner_port()) {
                // Published: from inside the project network, by name.
                (true, Some(p), Some(inner)) => url
                    .replace(&format!("127.0.0.1:{p}"), &format!("{}:{inner}", spec.name))
                    .replace(&format!("localhost:{p}"), &format!("{}:{inner}", spec.name)),
                // Not published (an etcd member): at its address on the
                // project network.
                (_, None, _) => match self.address(&spec.name).await {
                    Some(addr) => {
                        url.replacen(&format!("//{}:", spec.name), &format!("//{addr}:"), 1)
                    }
                    None => url.to_owned(),
                },
                _ => url.to_owned(),
            }
        })
    }

    fn bind(&self, spec: &UnitSpec) -> String {
        format!("0.0.0.0:{}", spec.inner_port().unwrap_or(0))
    }

    fn chora(&self, args: Vec<String>) -> (Vec<String>, Option<String>) {
        (args, Some(self.chora_image.clone()))
    }
}

/// `s` with the characters a Go regular expression treats specially escaped.
fn regex_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
