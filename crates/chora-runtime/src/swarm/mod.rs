//! Docker Swarm services (DESIGN.md §13): the runtime of a fleet. Every unit
//! is a service `<project>_<unit>` of the stack `<project>` on one
//! attachable overlay network `<project>` (its MTU fits inside the mesh's),
//! endpoint mode `dnsrr` (the routing mesh and VIPs need IPVS, which a host
//! may lack), reached by its name there. It carries the §9 labels on the
//! service and on its containers.
//!
//! What differs from the other runtimes, each behind the seam's methods:
//!
//! - **Swarm places, restarts and replaces.** A unit is pinned to a host
//!   (its `io.chora.host` node label), runs on every host (global), or runs
//!   `replicas` tasks spread over the hosts (one per host while there are
//!   enough), each registered under an id and address of its own (the
//!   task's slot and name, templated per task by Swarm). Restarts are
//!   Swarm's (any exit, 1 s delay); an update of a service is Swarm's rolling
//!   update: one task at a time, start-first, each new task healthy before the
//!   old one stops, rolled back by Swarm when it is not.
//! - **Health is checked where the unit runs**: its image's HEALTHCHECK runs
//!   `chora probe` on the unit's own health URL, and a task turns `running`
//!   only once that passed; [`Runtime::probe`] asks the tasks, so the caller
//!   needs no route to the overlay.
//! - **A unit is its service.** `wait` resolves when the service is gone,
//!   not when a task dies (Swarm starts another); `stop` removes it. A
//!   supervisor that goes away leaves the services running
//!   (`keeps_units`): they are the swarm's, not its children, and the next
//!   orchestrator adopts them.
//! - Only a unit placed to publish (`Placement::publish`: the gateway)
//!   publishes its `port`, in host mode, on every host it runs on;
//!   everything else answers on the overlay only.

mod door;
mod roll;
mod service;
mod spec;

pub use door::DOOR;

use crate::docker::{LABEL_HOME, LABEL_PROJECT, LABEL_SERVICE, docker_err, is_status};
use crate::{BoxFuture, BoxStream, Found, Runtime, RuntimeError, Unit, UnitId, UnitSpec};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The label Docker's own stacks put on their services and networks.
pub const LABEL_STACK: &str = "com.docker.stack.namespace";
/// The node label that names a host (`chora infra` sets it).
pub const LABEL_HOST: &str = "io.chora.host";

pub struct SwarmRuntime {
    docker: Docker,
    /// The absolute chora home: the `io.chora.home` label of everything made.
    pub home: String,
    /// The stack: service names `<project>_<unit>`, the network `<project>`.
    pub project: String,
    /// The overlay's MTU (the mesh's minus VXLAN's 50 bytes).
    pub mtu: u32,
    /// The image [`Runtime::chora`] runs.
    pub chora_image: String,
    network: Arc<tokio::sync::Mutex<bool>>,
    /// Whether this process runs on the stack's overlay (`CHORA_NETWORK`).
    in_overlay: bool,
    /// The door's pairs once opened (`door.rs`): how `reach` rewrites.
    door: Arc<std::sync::Mutex<Vec<(u16, String)>>>,
}

impl SwarmRuntime {
    /// A runtime on the Swarm whose manager `docker` is (a local socket, or
    /// one forwarded over SSH).
    pub fn new(docker: Docker, home: String, project: String, mtu: u32) -> Self {
        let in_overlay = std::env::var(crate::docker::NETWORK_ENV).is_ok_and(|n| n == project);
        SwarmRuntime {
            docker,
            home,
            project,
            mtu,
            chora_image: chora_docker::image::chora_tag(),
            network: Arc::default(),
            door: Arc::default(),
            in_overlay,
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn service_name(&self, unit: &str) -> String {
        format!("{}_{unit}", self.project)
    }

    fn labels(&self, spec: &UnitSpec) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.insert(LABEL_HOME.into(), self.home.clone());
        l.insert(LABEL_PROJECT.into(), self.project.clone());
        l.insert(LABEL_STACK.into(), self.project.clone());
        l.entry(LABEL_SERVICE.into())
            .or_insert_with(|| spec.name.clone());
        l
    }

    fn home_filter(&self) -> HashMap<String, Vec<String>> {
        [(
            "label".to_string(),
            vec![format!("{LABEL_HOME}={}", self.home)],
        )]
        .into()
    }

    /// Whether service `s` is this home's (its `io.chora.home` label).
    fn ours(&self, s: &bollard::models::Service) -> bool {
        s.spec
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(LABEL_HOME))
            == Some(&self.home)
    }

    /// The stack's overlay network, made (attachable, this home's labels,
    /// the mesh's MTU) when missing.
    pub async fn ensure_network(&self) -> Result<(), RuntimeError> {
        let mut made = self.network.lock().await;
        if *made {
            return Ok(());
        }
        match self.docker.inspect_network(&self.project, None).await {
            Ok(n) => {
                let ours = n.labels.as_ref().and_then(|l| l.get(LABEL_HOME)) == Some(&self.home);
                if !ours {
                    return Err(RuntimeError::Docker(format!(
                        "a network named `{}` exists and does not belong to this chora home ({})",
                        self.project, self.home
                    )));
                }
                *made = true;
                return Ok(());
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(docker_err(e)),
        }
        let req = bollard::models::NetworkCreateRequest {
            name: self.project.clone(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            options: Some(
                [(
                    "com.docker.network.driver.mtu".to_string(),
                    self.mtu.to_string(),
                )]
                .into(),
            ),
            labels: Some(
                [
                    (LABEL_HOME.to_string(), self.home.clone()),
                    (LABEL_PROJECT.to_string(), self.project.clone()),
                    (LABEL_STACK.to_string(), self.project.clone()),
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
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(docker_err(e)),
        }
    }

    /// This home's services, by unit name.
    async fn services(&self) -> Result<Vec<bollard::models::Service>, RuntimeError> {
        self.docker
            .list_services(Some(bollard::query_parameters::ListServicesOptions {
                filters: Some(self.home_filter()),
                status: None,
            }))
            .await
            .map_err(docker_err)
    }

    fn found(&self, s: bollard::models::Service) -> Option<Found> {
        let id = s.id?;
        let spec = s.spec?;
        let name = spec
            .name?
            .strip_prefix(&format!("{}_", self.project))?
            .to_owned();
        let labels: BTreeMap<String, String> =
            spec.labels.unwrap_or_default().into_iter().collect();
        let env = spec
            .task_template
            .and_then(|t| t.container_spec)
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), spec::unit_env(&name, k, v)))
            })
            .collect();
        Some(Found {
            name,
            unit: Box::new(service::Service::new(self.docker.clone(), id)),
            labels,
            env,
        })
    }

    /// The tasks of unit `name`'s service.
    async fn tasks(&self, name: &str) -> Result<Vec<bollard::models::Task>, RuntimeError> {
        self.docker
            .list_tasks(Some(bollard::query_parameters::ListTasksOptions {
                filters: Some([("service".to_string(), vec![self.service_name(name)])].into()),
            }))
            .await
            .map_err(docker_err)
    }

    /// Where each running task of unit `name` runs: the hosts' names (their
    /// `io.chora.host` label, else the node's hostname).
    pub async fn hosts_of(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let nodes = self
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .map_err(docker_err)?;
        let host_of = |id: &str| {
            nodes.iter().find(|n| n.id.as_deref() == Some(id)).map(|n| {
                let spec_label = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(LABEL_HOST).cloned());
                spec_label.unwrap_or_else(|| {
                    n.description
                        .as_ref()
                        .and_then(|d| d.hostname.clone())
                        .unwrap_or_else(|| id.to_owned())
                })
            })
        };
        let mut hosts: Vec<String> = self
            .tasks(name)
            .await?
            .into_iter()
            .filter(running)
            .filter_map(|t| t.node_id.as_deref().and_then(host_of))
            .collect();
        hosts.sort();
        Ok(hosts)
    }
}

fn running(t: &bollard::models::Task) -> bool {
    t.status.as_ref().and_then(|s| s.state) == Some(bollard::models::TaskState::RUNNING)
        && t.desired_state == Some(bollard::models::TaskState::RUNNING)
}

impl Runtime for SwarmRuntime {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn start<'a>(
        &'a self,
        spec: &'a UnitSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Unit>, RuntimeError>> {
        Box::pin(async move {
            self.ensure_network().await?;
            let mut want = self.service_spec(spec);
            // By id where the manager has the image (the bootstrap put it on
            // every host, with the same id): a task's image given by id is
            // never pulled, so no host asks a registry first (~5 s each
            // here, where none answers), nor when Swarm moves the task.
            if let Some(tag) = &spec.image
                && let Ok(image) = self.docker.inspect_image(tag).await
                && let Some(id) = image.id
                && let Some(c) = want
                    .task_template
                    .as_mut()
                    .and_then(|t| t.container_spec.as_mut())
            {
                c.image = Some(id);
            }
            let name = self.service_name(&spec.name);
            // A service of that name is replaced by Swarm's rolling update
            // when it is this home's; anyone else's is an error.
            let id = match self.docker.inspect_service(&name, None).await {
                Ok(s) => {
                    if !self.ours(&s) {
                        return Err(RuntimeError::Docker(format!(
                            "a service named `{name}` exists and does not belong to this chora home ({})",
                            self.home
                        )));
                    }
                    let version = s.version.and_then(|v| v.index).unwrap_or(0);
                    self.docker
                        .update_service(
                            &name,
                            want,
                            bollard::query_parameters::UpdateServiceOptions {
                                version: version as i32,
                                ..Default::default()
                            },
                            None,
                        )
                        .await
                        .map_err(docker_err)?;
                    s.id.unwrap_or(name.clone())
                }
                Err(e) if is_status(&e, 404) => self
                    .docker
                    .create_service(want, None)
                    .await
                    .map_err(docker_err)?
                    .id
                    .unwrap_or(name.clone()),
                Err(e) => return Err(docker_err(e)),
            };
            Ok(Box::new(service::Service::new(self.docker.clone(), id)) as Box<dyn Unit>)
        })
    }

    fn find<'a>(
        &'a self,
        name: &'a str,
        _recorded: Option<&'a UnitId>,
    ) -> BoxFuture<'a, Result<Option<Found>, RuntimeError>> {
        Box::pin(async move {
            match self
                .docker
                .inspect_service(&self.service_name(name), None)
                .await
            {
                Ok(s) => Ok(self.ours(&s).then(|| self.found(s)).flatten()),
                Err(e) if is_status(&e, 404) => Ok(None),
                Err(e) => Err(docker_err(e)),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Found>, RuntimeError>> {
        Box::pin(async move {
            let mut out: Vec<Found> = self
                .services()
                .await?
                .into_iter()
                .filter_map(|s| self.found(s))
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn keeps_units(&self) -> bool {
        true
    }

    fn remove_all(&self) -> BoxFuture<'_, Result<Vec<String>, RuntimeError>> {
        Box::pin(async move {
            let mut gone = Vec::new();
            // The door holds the overlay too.
            self.close_door().await?;
            for s in self.services().await? {
                let (Some(id), Some(name)) = (s.id, s.spec.and_then(|s| s.name)) else {
                    continue;
                };
                match self.docker.delete_service(&id).await {
                    Ok(()) => gone.push(name),
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(docker_err(e)),
                }
            }
            let nets = self
                .docker
                .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                    filters: Some(self.home_filter()),
                }))
                .await
                .map_err(docker_err)?;
            for n in nets {
                let (Some(name), Some(id)) = (n.name, n.id) else {
                    continue;
                };
                // The tasks' endpoints leave the network a moment after
                // their service (each task has its stop grace period, on
                // every host): retry while it is still in use, up to 30 s.
                let mut tries = 0;
                loop {
                    match self.docker.remove_network(&id).await {
                        Ok(()) => {
                            gone.push(format!("network {name}"));
                            break;
                        }
                        Err(e) if is_status(&e, 404) => break,
                        Err(e) if tries < 300 => {
                            tries += 1;
                            tracing::debug!(error = %e, "network still in use");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(docker_err(e)),
                    }
                }
            }
            Ok(gone)
        })
    }

    fn hosts<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move { self.hosts_of(name).await.unwrap_or_default() })
    }

    fn logs<'a>(&'a self, name: &'a str, lines: usize) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let chunks: Vec<Vec<u8>> = self.log_stream(name, lines, false).collect().await;
            String::from_utf8_lossy(&chunks.concat())
                .trim_end()
                .to_owned()
        })
    }

    fn log_stream<'a>(
        &'a self,
        name: &'a str,
        tail: usize,
        follow: bool,
    ) -> BoxStream<'a, Vec<u8>> {
        self.docker
            .service_logs(
                &self.service_name(name),
                Some(bollard::query_parameters::LogsOptions {
                    stdout: true,
                    stderr: true,
                    follow,
                    tail: tail.to_string(),
                    ..Default::default()
                }),
            )
            .take_while(|c| std::future::ready(c.is_ok()))
            .filter_map(|c| std::future::ready(c.ok().map(|c| c.into_bytes().to_vec())))
            .boxed()
    }

    fn log_hint(&self, name: &str) -> String {
        format!(
            "chora logs {name} (docker service logs {} on a manager)",
            self.service_name(name)
        )
    }

    fn advertise(&self, spec: &UnitSpec) -> Option<String> {
        spec.inner_port()
            .map(|p| format!("http://{}:{p}", spec.name))
    }

    fn roll<'a>(
        &'a self,
        spec: &'a UnitSpec,
        timeout: std::time::Duration,
    ) -> Option<BoxFuture<'a, Result<(), RuntimeError>>> {
        Some(Box::pin(self.roll_to(spec, timeout)))
    }

    fn instance_ids(&self, spec: &UnitSpec, id: &str) -> Vec<String> {
        match spec.placement.replicas {
            n if n > 1 && !spec.placement.global => spec::slot_ids(id, n),
            _ => vec![id.to_owned()],
        }
    }

    fn reach<'a>(&'a self, spec: &'a UnitSpec, url: &'a str) -> BoxFuture<'a, String> {
        Box::pin(async move {
            let through = self.through_door(url);
            match spec.port.zip(spec.inner_port()) {
                // Inside the overlay (an orchestrator in the stack): by name.
                Some((p, inner)) if through == url && self.in_overlay => {
                    url.replace(&format!("127.0.0.1:{p}"), &format!("{}:{inner}", spec.name))
                }
                _ => through,
            }
        })
    }

    fn bind(&self, spec: &UnitSpec) -> String {
        format!("0.0.0.0:{}", spec.inner_port().unwrap_or(0))
    }

    fn chora(&self, args: Vec<String>) -> (Vec<String>, Option<String>) {
        (args, Some(self.chora_image.clone()))
    }

    fn probe<'a>(&'a self, spec: &'a UnitSpec, _url: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let tasks = self.tasks(&spec.name).await.map_err(|e| e.to_string())?;
            let up = tasks.iter().filter(|t| running(t)).count();
            let want = if spec.placement.global {
                1
            } else {
                spec.placement.replicas.max(1) as usize
            };
            if up >= want {
                return Ok(());
            }
            let why = tasks
                .iter()
                .filter(|t| t.desired_state == Some(bollard::models::TaskState::RUNNING))
                .filter_map(|t| t.status.as_ref())
                .map(|s| {
                    let state = s.state.map(|s| s.to_string()).unwrap_or_default();
                    match s.err.as_deref().or(s.message.as_deref()) {
                        Some(m) => format!("{state}: {m}"),
                        None => state,
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            Err(format!(
                "{up} of {want} task(s) running and healthy ({why})"
            ))
        })
    }
}
