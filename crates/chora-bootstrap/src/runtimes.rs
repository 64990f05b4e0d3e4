//! Which runtime runs a service the bootstrap starts: its config's choice
//! (`command`, `image`, `docker_compose`, `runtime:`) picks one of the seam's
//! implementations, made for this home. Choosing is the only place the
//! bootstrap names a kind of runtime; everything after goes through
//! [`chora_runtime::Runtime`].

use crate::config::{RuntimeKind, ServiceSpec};
use crate::ctx::Ctx;
use crate::failure::StepError;
use chora_runtime::Runtime;
use chora_runtime::docker::DockerRuntime;
use chora_runtime::process::{Lifetime, ProcessRuntime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Ctx {
    /// The runtime that runs `spec` when the bootstrap starts it.
    pub async fn runtime_for(&self, spec: &ServiceSpec) -> Result<Arc<dyn Runtime>, StepError> {
        if spec.docker_compose.is_some() {
            return Ok(Arc::new(self.compose_runtime()));
        }
        match spec.runtime(self.config.default_runtime()) {
            RuntimeKind::Process => Ok(Arc::new(self.process_runtime())),
            // A fleet's containers are its swarm's services (DESIGN.md §13).
            RuntimeKind::Docker if self.config.inventory.is_some() => {
                Ok(self.fleet().await?.swarm.clone())
            }
            RuntimeKind::Docker => Ok(self.docker_runtime().await?),
        }
    }

    /// `docker_compose:` services: their files (relative to the config's
    /// directory), run as the project.
    pub fn compose_runtime(&self) -> chora_runtime::compose::ComposeRuntime {
        let base = self
            .config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        chora_runtime::compose::ComposeRuntime {
            project: self.config.project().to_owned(),
            files: self
                .config
                .services
                .iter()
                .filter_map(|(n, s)| {
                    let f = PathBuf::from(self.substitute(s.value.docker_compose.as_deref()?));
                    Some((n.clone(), if f.is_absolute() { f } else { base.join(f) }))
                })
                .collect(),
        }
    }

    /// Local processes of phases 1-2: their own session, pid files in `run/`.
    pub fn process_runtime(&self) -> ProcessRuntime {
        let mut p = ProcessRuntime::new(
            self.home.logs(),
            Some(self.home.run_dir()),
            Lifetime::Detached,
        );
        p.cwd = Some(self.cwd.clone());
        p.exe = self.self_exe.clone();
        p
    }

    /// The Docker runtime of this home and project (connected once).
    pub async fn docker_runtime(&self) -> Result<Arc<DockerRuntime>, StepError> {
        self.docker
            .get_or_try_init(|| async {
                let docker = chora_runtime::docker::connect().await.map_err(|e| {
                    StepError::new(e.to_string())
                        .cause("this config runs services in containers (`image:`, or the staging and prod templates)")
                        .action("Start Docker (systemctl start docker) and run `chora bootstrap` again")
                })?;
                let mut d = DockerRuntime::new(
                    docker,
                    self.home.root.display().to_string(),
                    self.config.project().to_owned(),
                    self.home.logs(),
                );
                // Services are reached by name on the project network when the
                // gateway, which routes to them, is a container too.
                d.advertise_by_name = self.config.service("gateway").is_some_and(|g| {
                    g.runtime(self.config.default_runtime()) == RuntimeKind::Docker
                });
                Ok(Arc::new(d))
            })
            .await
            .cloned()
    }

    /// True when a service runs the image of this chora (`chora:<version>`),
    /// named or as a built-in capability in a container.
    pub fn needs_chora_image(&self) -> bool {
        let tag = chora_docker::image::chora_tag();
        let default = self.config.default_runtime();
        // Built-in capabilities in containers run the image the orchestrator's
        // `--chora-image` names (default: this chora's).
        let builtins = self
            .config
            .service("orchestrator")
            .and_then(|o| o.command.as_ref())
            .and_then(|c| {
                let i = c.iter().position(|a| a == "--chora-image")?;
                c.get(i + 1).map(|img| self.substitute(img))
            })
            .unwrap_or_else(|| tag.clone());
        self.config.services.values().any(|s| {
            let s = &s.value;
            s.image.as_deref().map(|i| self.substitute(i)).as_deref() == Some(tag.as_str())
                || (builtins == tag
                    && s.phase == 3
                    && s.command.is_none()
                    && s.image.is_none()
                    && s.runtime(default) == RuntimeKind::Docker)
        })
    }

    /// Every runtime this config uses (processes always): what reset asks to
    /// remove everything of this home.
    pub async fn all_runtimes(&self) -> Vec<Arc<dyn Runtime>> {
        let mut all: Vec<Arc<dyn Runtime>> = vec![Arc::new(self.process_runtime())];
        if self.config.needs_docker() && self.config.inventory.is_some() {
            match self.fleet().await {
                Ok(f) => all.push(f.swarm.clone()),
                Err(e) => tracing::warn!(error = %e.message, "the fleet's swarm is not reachable"),
            }
        } else if self.config.needs_docker() {
            match self.docker_runtime().await {
                Ok(d) => all.push(d),
                Err(e) => tracing::warn!(error = %e.message, "Docker is not reachable"),
            }
        }
        if self
            .config
            .services
            .values()
            .any(|s| s.value.docker_compose.is_some())
        {
            all.push(Arc::new(self.compose_runtime()));
        }
        all
    }
}
