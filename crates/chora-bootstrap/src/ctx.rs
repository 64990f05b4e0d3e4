//! What every step of a run shares: where things live, the config, the
//! credentials, and how to start, find, check and stop each service.

use crate::config::{Config, RuntimeKind, ServiceSpec};
use crate::state::ServiceRecord;
use chora_api::auth::Credentials;
use chora_runtime::docker::{DockerRuntime, LABEL_REPLICA, LABEL_SERVICE};
use chora_runtime::process::{Lifetime, ProcessRuntime};
use chora_runtime::{Found, Runtime, UnitId, UnitSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything chora bootstrap keeps: `.chora/` under the working directory, or
/// `CHORA_HOME`.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn from_env() -> Home {
        let root = std::env::var_os("CHORA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".chora"));
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map(|d| d.join(&root))
                .unwrap_or(root)
        };
        Home { root }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("bootstrap-config.yml")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("bootstrap-state.json")
    }
    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("bootstrap.lock")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn pidfile(&self, name: &str) -> PathBuf {
        self.run().join(format!("{name}.pid"))
    }
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    pub fn audit(&self) -> PathBuf {
        self.logs().join("bootstrap.log")
    }
}

/// A failed step: what happened, for the error template.
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    pub causes: Vec<String>,
    pub actions: Vec<String>,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            causes: Vec::new(),
            actions: Vec::new(),
        }
    }
    pub fn cause(mut self, c: impl Into<String>) -> Self {
        self.causes.push(c.into());
        self
    }
    pub fn action(mut self, a: impl Into<String>) -> Self {
        self.actions.push(a.into());
        self
    }
}

/// How a check of an already started service went.
/// One etcd member as it reports itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EtcdMember {
    /// `/health` answered 200 (the member has a leader: the cluster has quorum).
    pub healthy: bool,
    /// Whether it is the leader; `None` when it did not say.
    pub leader: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was running and healthy: left alone.
    Healthy,
    /// It was gone or sick and was started again.
    Restarted,
}

pub struct Ctx {
    pub home: Home,
    pub config: Config,
    pub config_path: PathBuf,
    pub credentials: Option<Credentials>,
    pub http: reqwest::Client,
    pub self_exe: PathBuf,
    pub cwd: PathBuf,
    /// The fencing token of the etcd lock this run holds, sent with deploys.
    pub fencing: Option<u64>,
    /// The Docker runtime, connected the first time a container is needed.
    pub docker: tokio::sync::OnceCell<Arc<DockerRuntime>>,
    /// The image the etcd members run, once known (see [`Ctx::ensure_etcd_image`]).
    pub etcd_image: tokio::sync::OnceCell<String>,
}

pub use chora_runtime::tail;

impl Ctx {
    pub fn spec(&self, name: &str) -> &ServiceSpec {
        self.config
            .service(name)
            .expect("names come from the config")
    }

    /// `${CHORA_HOME}`, `${CHORA_VERSION}`, `${ETCD_ENDPOINTS}` (the members
    /// chora runs, by name on the project network, or `etcd.endpoints`),
    /// `${ETCD_IMAGE}` and `${MANIFEST_URLS}` (every Manifest node, as a
    /// container on the project network reaches it) expanded.
    pub fn expand(&self, s: &str) -> String {
        if !s.contains("${") {
            return s.to_owned();
        }
        let members = self.config.etcd_members();
        let etcd = if members.is_empty() {
            self.config
                .etcd
                .as_ref()
                .map(|e| e.endpoints.join(","))
                .unwrap_or_default()
        } else {
            let project = self.config.project();
            members
                .iter()
                .map(|m| format!("http://{project}-{m}:2379"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let etcd_image = self.etcd_image.get().cloned().unwrap_or_else(|| {
            self.config
                .etcd
                .as_ref()
                .map(|e| e.image.clone())
                .unwrap_or_default()
        });
        s.replace("${CHORA_HOME}", &self.home.root.display().to_string())
            .replace("${ETCD_ENDPOINTS}", &etcd)
            .replace("${ETCD_IMAGE}", &etcd_image)
            .replace("${MANIFEST_URLS}", &self.manifest_url_for(true))
            .replace("${CHORA_VERSION}", env!("CARGO_PKG_VERSION"))
    }

    /// The argv of a service's command: `chora` is this binary (for a local
    /// process; in a container, the command is the image's arguments).
    pub fn argv(&self, spec: &ServiceSpec) -> Option<Vec<String>> {
        let local = spec.image.is_none();
        spec.command.as_ref().map(|c| {
            c.iter()
                .enumerate()
                .map(|(i, a)| {
                    if local && i == 0 && a == "chora" {
                        self.self_exe.display().to_string()
                    } else {
                        self.expand(a)
                    }
                })
                .collect()
        })
    }

    /// The URL of service `name` (of its first replica, if it has several).
    pub fn url_of(&self, name: &str) -> Option<String> {
        let unit = self.config.units_of(name).into_iter().next()?;
        self.config.service(&unit).and_then(ServiceSpec::url)
    }

    /// Every Manifest node's URL as this machine reaches it, comma-separated
    /// (clients fail over between them).
    pub fn manifest_url(&self) -> String {
        let urls: Vec<String> = self
            .config
            .units_of("manifest")
            .iter()
            .filter_map(|u| self.config.service(u).and_then(ServiceSpec::url))
            .collect();
        if urls.is_empty() {
            "http://127.0.0.1:8500".into()
        } else {
            urls.join(",")
        }
    }

    /// A short-lived admin JWT, when there are credentials.
    pub fn admin_token(&self) -> Option<String> {
        let secret = self.credentials.as_ref()?.jwt_secret()?;
        Some(chora_api::auth::mint_admin_token(
            secret,
            "chora-bootstrap",
            Duration::from_secs(600),
        ))
    }

    pub fn manifest(&self) -> chora_api::ManifestClient {
        let c = chora_api::ManifestClient::new([self.manifest_url()]).expect("a valid URL");
        match self.admin_token() {
            Some(t) => c.with_token(t),
            None => c,
        }
    }

    /// The environment a service starts with: its `env`, its API key, and where
    /// to find the Manifest. Secrets travel here, never in argv: an `env`
    /// value may say `${CHORA_CREDENTIALS_JSON}` (the whole credentials
    /// document, for a Manifest or orchestrator in a container).
    pub fn env_for(&self, name: &str, spec: &ServiceSpec) -> BTreeMap<String, String> {
        let creds = self
            .credentials
            .as_ref()
            .map(|c| c.to_json())
            .unwrap_or_default();
        let mut env: BTreeMap<String, String> = spec
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    self.expand(v).replace("${CHORA_CREDENTIALS_JSON}", &creds),
                )
            })
            .collect();
        if let Some(key) = self.credentials.as_ref().and_then(|c| c.api_key(name)) {
            env.insert("CHORA_API_KEY".into(), key.to_owned());
        }
        env.insert("CHORA_HOME".into(), self.home.root.display().to_string());
        env.insert("CHORA_PROJECT".into(), self.config.project().to_owned());
        let in_container = spec.runtime(self.config.default_runtime()) == RuntimeKind::Docker;
        if !in_container {
            env.entry("CHORA_DATA_DIR".into())
                .or_insert_with(|| self.home.data().display().to_string());
        }
        if spec.replica.as_ref().map_or(name, |r| r.service.as_str()) != "manifest" {
            env.entry("MANIFEST_URL".into())
                .or_insert_with(|| self.manifest_url_for(in_container));
        }
        env
    }

    /// The Manifest's URL as a service reaches it: from a container, by name on
    /// the project network when the Manifest is a container too.
    pub fn manifest_url_for(&self, in_container: bool) -> String {
        let units = self.config.units_of("manifest");
        let default = self.config.default_runtime();
        let by_name: Vec<String> = units
            .iter()
            .filter_map(|u| {
                let m = self.config.service(u)?;
                (m.runtime(default) == RuntimeKind::Docker).then(|| {
                    let port = m.container_port.or(m.port).unwrap_or(8500);
                    format!("http://{u}:{port}")
                })
            })
            .collect();
        if in_container && !by_name.is_empty() && by_name.len() == units.len() {
            by_name.join(",")
        } else {
            self.manifest_url()
        }
    }

    /// The Manifest instance id of a local service: the same for every start of
    /// that service from this state directory on this host, so that a restarted
    /// process (after a crash or a reboot) takes over its old registration instead
    /// of leaving it to linger, unhealthy, until its TTL.
    pub fn instance_id(&self, name: &str) -> String {
        let host = crate::proc::hostname();
        let seed = format!("{host}\0{}\0{name}", self.home.root.display());
        // FNV-1a: stable across builds, unlike std's hasher.
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{name}-{:08x}", hash as u32)
    }

    /// Which Manifest instances are unit `name`'s: a replica's is its
    /// service's instance under the unit's instance id, any other unit's any
    /// instance of its name.
    pub fn instance_matcher(
        &self,
        name: &str,
    ) -> impl Fn(&chora_api::manifest::Instance) -> bool + use<> {
        let (service, id) = match self.config.service(name).and_then(|s| s.replica.as_ref()) {
            Some(r) => (r.service.clone(), Some(self.instance_id(name))),
            None => (name.to_owned(), None),
        };
        move |i| i.name == service && id.as_ref().is_none_or(|id| *id == i.id)
    }

    /// The runtime that runs `spec` when the bootstrap starts it.
    pub async fn runtime_for(&self, spec: &ServiceSpec) -> Result<Arc<dyn Runtime>, StepError> {
        if spec.docker_compose.is_some() {
            return Ok(Arc::new(self.compose_runtime()));
        }
        match spec.runtime(self.config.default_runtime()) {
            RuntimeKind::Process => Ok(Arc::new(self.process_runtime())),
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
                    let f = PathBuf::from(self.expand(s.value.docker_compose.as_deref()?));
                    Some((n.clone(), if f.is_absolute() { f } else { base.join(f) }))
                })
                .collect(),
        }
    }

    /// Local processes of phases 1-2: their own session, pid files in `run/`.
    pub fn process_runtime(&self) -> ProcessRuntime {
        ProcessRuntime {
            logs_dir: self.home.logs(),
            run_dir: Some(self.home.run()),
            lifetime: Lifetime::Detached,
            cwd: Some(self.cwd.clone()),
        }
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

    /// The image the etcd members chora runs use: `etcd.image` when the engine
    /// has it or can pull it, else `chora-etcd:<version>`, built once with
    /// `chora image build` from an etcd binary on this machine (`etcd.binary`,
    /// or `etcd` on the PATH). Returns the image and a sentence saying which.
    pub async fn ensure_etcd_image(&self) -> Result<(String, String), StepError> {
        let e = self.config.etcd.clone().unwrap_or_default();
        let d = self.docker_runtime().await?;
        let docker = d.docker();
        let exists = |tag: String| async move {
            chora_docker::image::image_exists(docker, &tag)
                .await
                .map_err(|e| StepError::new(e.to_string()))
        };
        let configured = e.image.clone();
        let done = |image: String, how: String| {
            let _ = self.etcd_image.set(image.clone());
            Ok((image, how))
        };
        if exists(configured.clone()).await? {
            return done(
                configured.clone(),
                format!("etcd image {configured} present"),
            );
        }
        let binary = e.binary.clone().map(PathBuf::from).or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("etcd"))
                    .find(|f| f.is_file())
            })
        });
        let version = binary.as_deref().and_then(etcd_version);
        // Built here earlier: no pull to try again.
        if let Some(v) = &version {
            let tag = format!("chora-etcd:{v}");
            if exists(tag.clone()).await? {
                return done(
                    tag.clone(),
                    format!(
                        "etcd image {tag} present (built from a local etcd; {configured} is not here)"
                    ),
                );
            }
        }
        let why = match tokio::time::timeout(
            Duration::from_secs(120),
            chora_docker::image::pull(docker, &configured),
        )
        .await
        {
            Ok(Ok(())) => {
                return done(
                    configured.clone(),
                    format!("etcd image {configured} pulled"),
                );
            }
            Ok(Err(why)) => why,
            Err(_) => "the pull took over 120 s".into(),
        };
        let (Some(bin), Some(v)) = (binary.clone(), version) else {
            return Err(StepError::new(format!(
                "the etcd image {configured} is missing and cannot be pulled, and no etcd binary was found to build one"
            ))
            .cause(format!("the pull failed: {why}"))
            .cause(match binary {
                Some(b) => format!("{} does not answer `--version` like etcd", b.display()),
                None => "no `etcd` on the PATH and no `etcd.binary` in the config".into(),
            })
            .action("Install etcd (apt-get install etcd-server) and run `chora bootstrap` again")
            .action(format!(
                "Or build the image yourself: chora image build --binary /path/to/etcd --tag {configured}"
            )));
        };
        let tag = format!("chora-etcd:{v}");
        let built = chora_docker::image::build(
            docker,
            chora_docker::image::BuildSpec {
                binary: bin.clone(),
                tag: tag.clone(),
            },
        )
        .await
        .map_err(|e| {
            StepError::new(format!(
                "cannot build the etcd image {tag} from {}: {e}",
                bin.display()
            ))
            .action(format!(
                "Try it alone: chora image build --binary {} --tag {tag}",
                bin.display()
            ))
        })?;
        done(
            tag.clone(),
            format!(
                "Built etcd image {tag} from {} ({:.1} MB, no registry; {configured} cannot be pulled: {why})",
                bin.display(),
                built.size as f64 / 1e6
            ),
        )
    }

    /// The health URL of a phase 1-2 unit as this machine reaches it: a
    /// container that publishes no port (an etcd member) at its address on the
    /// project network.
    pub async fn health_url(
        &self,
        name: &str,
        spec: &ServiceSpec,
        runtime: &dyn Runtime,
        unit_spec: &UnitSpec,
    ) -> String {
        let url = runtime.reach(
            unit_spec,
            &spec.health_url().expect("checked by the config"),
        );
        if spec.port.is_none()
            && runtime.kind() == RuntimeKind::Docker
            && let Some(addr) = runtime.address(name).await
        {
            return url.replacen(&format!("//{name}:"), &format!("//{addr}:"), 1);
        }
        url
    }

    /// Etcd member `unit` (`etcd-2`): healthy, and leader or not.
    pub async fn etcd_member(&self, unit: &str) -> EtcdMember {
        let Some(health) = self.unit_health_url(unit).await else {
            return EtcdMember::default();
        };
        let healthy = crate::health::check(&self.http, &health).await.is_ok();
        let status = health.replace("/health", "/v3/maintenance/status");
        let leader = async {
            let v: serde_json::Value = self
                .http
                .post(&status)
                .body("{}")
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let me = v["header"]["member_id"].as_str()?.to_owned();
            Some(v["leader"].as_str()? == me)
        }
        .await;
        EtcdMember { healthy, leader }
    }

    /// The health URL of unit `name` as this machine reaches it (phase 3
    /// services: as configured).
    pub async fn unit_health_url(&self, name: &str) -> Option<String> {
        let spec = self.spec(name);
        if spec.phase == 3 || spec.port.is_some() {
            return spec.health_url();
        }
        let runtime = self.runtime_for(spec).await.ok()?;
        Some(
            self.health_url(name, spec, &*runtime, &self.unit_spec(name, spec))
                .await,
        )
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
                c.get(i + 1).map(|img| self.expand(img))
            })
            .unwrap_or_else(|| tag.clone());
        self.config.services.values().any(|s| {
            let s = &s.value;
            s.image.as_deref().map(|i| self.expand(i)).as_deref() == Some(tag.as_str())
                || (builtins == tag
                    && s.phase == 3
                    && s.command.is_none()
                    && s.image.is_none()
                    && s.runtime(default) == RuntimeKind::Docker)
        })
    }

    /// What the runtime runs for a phase 1-2 service.
    pub fn unit_spec(&self, name: &str, spec: &ServiceSpec) -> UnitSpec {
        let mut env = self.env_for(name, spec);
        env.entry("CHORA_INSTANCE_ID".into())
            .or_insert_with(|| self.instance_id(name));
        let mut labels = BTreeMap::new();
        if let Some(r) = &spec.replica {
            labels.insert(LABEL_SERVICE.to_owned(), r.service.clone());
            labels.insert(LABEL_REPLICA.to_owned(), r.n.to_string());
        }
        UnitSpec {
            name: name.to_owned(),
            argv: self.argv(spec).unwrap_or_default(),
            image: spec.image.as_deref().map(|i| self.expand(i)),
            env,
            port: spec.port,
            container_port: spec.container_port,
            volumes: spec
                .volume_list()
                .into_iter()
                .map(|mut v| {
                    v.source = self.expand(&v.source);
                    v.target = self.expand(&v.target);
                    v
                })
                .collect(),
            labels,
        }
    }

    /// The unit of a phase 1-2 service started earlier, if it still runs: by its
    /// pid file (or the state's pid and start time) or its container label.
    pub async fn find_local(&self, name: &str, record: Option<&ServiceRecord>) -> Option<Found> {
        let spec = self.spec(name);
        let runtime = self.runtime_for(spec).await.ok()?;
        if let Ok(Some(f)) = runtime.find(name).await {
            return Some(f);
        }
        // A pid file lost with the run directory: the state still knows it.
        let r = record?;
        let id = chora_runtime::ProcId {
            pid: r.pid?,
            start_time: r.start_time?,
        };
        if !id.alive() {
            return None;
        }
        id.write(&self.home.pidfile(name)).ok()?;
        self.process_runtime().find(name).await.ok().flatten()
    }

    fn health_timeout(&self, spec: &ServiceSpec) -> Duration {
        Duration::from_secs_f64(spec.timeout.unwrap_or(self.config.timeouts.health_check))
    }

    fn record_of(&self, name: &str, spec: &ServiceSpec, id: &UnitId) -> ServiceRecord {
        let (pid, start_time) = match id {
            UnitId::Process(p) => (Some(p.pid), Some(p.start_time)),
            UnitId::Container(_) => (None, None),
        };
        let replica = spec.replica.as_ref();
        ServiceRecord {
            phase: spec.phase,
            pid,
            start_time,
            container: id.container().map(str::to_owned),
            deployed_via: None,
            url: spec.url(),
            service: replica.map(|r| r.service.clone()),
            instance_id: replica
                .filter(|r| !r.unregistered)
                .map(|_| self.instance_id(name)),
            health: replica
                .filter(|r| r.unregistered)
                .and_then(|_| spec.health_url()),
            started_at: crate::state::now(),
        }
    }

    /// Starts a phase 1-2 service (a process that outlives the CLI, or a
    /// container), waits until it is healthy, and returns how to find it again.
    pub async fn start_local(&self, name: &str) -> Result<ServiceRecord, StepError> {
        let spec = self.spec(name);
        if spec.image.as_deref() == Some("${ETCD_IMAGE}") {
            // Once for all members starting together (a resume skips phase 0).
            self.etcd_image
                .get_or_try_init(|| async { self.ensure_etcd_image().await.map(|(i, _)| i) })
                .await?;
        }
        let runtime = self.runtime_for(spec).await?;
        let mut unit_spec = self.unit_spec(name, spec);
        if runtime.kind() == RuntimeKind::Docker
            && let Some(url) = runtime.advertise(&unit_spec)
        {
            unit_spec.env.insert("CHORA_ADVERTISE_URL".into(), url);
        }
        let what = unit_spec
            .image
            .clone()
            .unwrap_or_else(|| unit_spec.argv.first().cloned().unwrap_or_default());
        let mut unit = runtime.start(&unit_spec).await.map_err(|e| {
            let why = match e {
                chora_runtime::RuntimeError::Spawn { message, .. } => message,
                other => other.to_string(),
            };
            let mut err = StepError::new(format!("cannot start `{name}` ({what}): {why}"));
            let field = if unit_spec.image.is_some() {
                err = err.cause("the image is missing, a port is taken, or a volume is invalid");
                "image"
            } else {
                err = err.cause("the program in `command` does not exist or is not executable");
                "command"
            };
            err.action(format!(
                "Check services.{name}.{field} in {}",
                self.config_path.display()
            ))
        })?;
        let url = self.health_url(name, spec, &*runtime, &unit_spec).await;
        let waited = tokio::select! {
            r = crate::health::wait(
                &self.http,
                &url,
                &self.config.retry,
                self.health_timeout(spec),
                || None,
            ) => r.map(|_| ()).map_err(|e| e.to_string()),
            exit = unit.wait() => Err(format!("it exited ({exit})")),
        };
        if let Err(e) = waited {
            // Never leave a half-started service behind.
            unit.stop(Duration::from_secs(2)).await;
            let _ = std::fs::remove_file(self.home.pidfile(name));
            let last = runtime.logs(name, 5).await;
            let mut err = StepError::new(format!("`{name}` did not become healthy: {e}"))
                .cause(format!("its health endpoint {url} never answered 200"));
            if let Some(p) = spec.port {
                err = err.cause(format!("port {p} is taken or the service failed to start"));
            }
            if !last.is_empty() {
                err = err.cause(format!("its log ends with:\n{}", indent(&last)));
            }
            return Err(err
                .action(format!("Read its log: {}", self.log_hint(name, spec)))
                .action(format!(
                    "Check services.{name} in {}",
                    self.config_path.display()
                ))
                .action("Fix the cause and run `chora bootstrap` again to resume"));
        }
        self.ensure_registrar(name, spec, &*runtime, &unit_spec, &unit.id())
            .await?;
        // The unit lives on after we exit: dropping it leaves it running.
        Ok(self.record_of(name, spec, &unit.id()))
    }

    /// The unit that keeps a phase 1-2 `register: chora` service registered on
    /// its behalf (the bootstrap exits; this runs beside the service).
    fn registrar_name(name: &str) -> String {
        format!("{name}.registrar")
    }

    /// Starts the registrar of `name` (unless it runs), following `unit`.
    async fn ensure_registrar(
        &self,
        name: &str,
        spec: &ServiceSpec,
        runtime: &dyn Runtime,
        unit_spec: &UnitSpec,
        unit: &UnitId,
    ) -> Result<(), StepError> {
        if spec.registers() != crate::config::Register::Chora {
            return Ok(());
        }
        let procs = self.process_runtime();
        let reg = Self::registrar_name(name);
        if let Ok(Some(_)) = procs.find(&reg).await {
            return Ok(());
        }
        let follow = match unit {
            UnitId::Process(p) => ["--pid".to_string(), format!("{}:{}", p.pid, p.start_time)],
            UnitId::Container(c) => ["--container".to_string(), c.clone()],
        };
        let mut argv = vec![
            self.self_exe.display().to_string(),
            "keep-registered".into(),
            "--name".into(),
            name.into(),
            "--id".into(),
            self.instance_id(name),
            "--version".into(),
            spec.version.clone().unwrap_or_else(|| "1.0.0".into()),
            "--rest".into(),
            runtime
                .advertise(unit_spec)
                .or_else(|| spec.url())
                .unwrap_or_default(),
            "--health".into(),
            spec.health_url().expect("checked by the config"),
            "--manifest-url".into(),
            self.manifest_url(),
        ];
        argv.extend(follow);
        let mut env = BTreeMap::new();
        if let Some(key) = self.credentials.as_ref().and_then(|c| c.api_key(name)) {
            env.insert("CHORA_API_KEY".into(), key.to_owned());
        }
        let r = UnitSpec {
            name: reg,
            argv,
            env,
            ..Default::default()
        };
        procs
            .start(&r)
            .await
            .map(drop)
            .map_err(|e| StepError::new(format!("cannot register `{name}` on its behalf: {e}")))
    }

    /// Stops the registrar of `name`, which deregisters it.
    async fn stop_registrar(&self, name: &str) {
        let procs = self.process_runtime();
        let reg = Self::registrar_name(name);
        if let Ok(Some(mut f)) = procs.find(&reg).await {
            f.unit.stop(Duration::from_secs(5)).await;
        }
        let _ = std::fs::remove_file(self.home.pidfile(&reg));
    }

    /// Where a person reads a service's log.
    pub fn log_hint(&self, name: &str, spec: &ServiceSpec) -> String {
        if spec.image.is_some() {
            format!("docker logs {}-{name}", self.config.project())
        } else {
            self.home.log_of(name).display().to_string()
        }
    }

    /// A phase 1-2 service: healthy → left alone; otherwise stopped if it
    /// lingers, and started again.
    pub async fn ensure_local(
        &self,
        name: &str,
        record: Option<&ServiceRecord>,
    ) -> Result<(Ensured, ServiceRecord), StepError> {
        let spec = self.spec(name);
        if let Some(mut found) = self.find_local(name, record).await {
            let runtime = self.runtime_for(spec).await?;
            let url = self
                .health_url(name, spec, &*runtime, &self.unit_spec(name, spec))
                .await;
            let quick = crate::config::Retry {
                required_consecutive: 1,
                ..self.config.retry.clone()
            };
            if crate::health::wait(&self.http, &url, &quick, Duration::from_secs(2), || None)
                .await
                .is_ok()
            {
                self.ensure_registrar(
                    name,
                    spec,
                    &*runtime,
                    &self.unit_spec(name, spec),
                    &found.unit.id(),
                )
                .await?;
                let fresh = self.record_of(name, spec, &found.unit.id());
                let mut r = record.cloned().unwrap_or_default();
                r.phase = spec.phase;
                r.pid = fresh.pid;
                r.start_time = fresh.start_time;
                r.container = fresh.container;
                r.url = spec.url();
                r.service = fresh.service;
                r.instance_id = fresh.instance_id;
                r.health = fresh.health;
                if r.started_at.is_empty() {
                    r.started_at = crate::state::now();
                }
                return Ok((Ensured::Healthy, r));
            }
            tracing::warn!(service = name, unit = %found.unit.id(), "running but unhealthy; restarting");
            self.stop_registrar(name).await;
            found.unit.stop(Duration::from_secs(5)).await;
        }
        Ok((Ensured::Restarted, self.start_local(name).await?))
    }

    /// Stops a phase 1-2 service (SIGTERM, then SIGKILL; a container is
    /// removed). True when nothing of it runs any more.
    pub async fn stop_local(&self, name: &str, record: Option<&ServiceRecord>) -> bool {
        self.stop_registrar(name).await;
        if let Some(mut found) = self.find_local(name, record).await {
            found.unit.stop(Duration::from_secs(5)).await;
            if self.find_local(name, record).await.is_some() {
                return false;
            }
        }
        let _ = std::fs::remove_file(self.home.pidfile(name));
        true
    }

    fn orchestrator(&self) -> Result<String, StepError> {
        self.url_of("orchestrator").ok_or_else(|| {
            StepError::new("no `orchestrator` service in the config to deploy through")
        })
    }

    /// The orchestrator's view of every deployed service.
    pub async fn deployed(&self) -> Result<Vec<chora_api::orchestrator::ServiceStatus>, StepError> {
        let url = format!("{}/v1/services", self.orchestrator()?);
        let mut req = self.http.get(&url).timeout(Duration::from_secs(30));
        if let Some(t) = self.admin_token() {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            StepError::new(format!(
                "the orchestrator at {url} did not answer: {}",
                chora_api::root_cause(&e)
            ))
        })?;
        if !resp.status().is_success() {
            return Err(StepError::new(format!(
                "the orchestrator answered {}",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|e| StepError::new(format!("the orchestrator sent an unexpected answer: {e}")))
    }

    /// Deploys a phase 3 service through the orchestrator and waits until it is
    /// healthy.
    pub async fn deploy(&self, name: &str) -> Result<ServiceRecord, StepError> {
        let spec = self.spec(name);
        let orch = self.orchestrator()?;
        let mut environment = self.env_for(name, spec);
        environment.remove("CHORA_HOME");
        let body = chora_api::orchestrator::DeploySpec {
            name: name.to_owned(),
            version: spec.version.clone().unwrap_or_else(|| "1.0.0".into()),
            port: spec.port.expect("checked by the config"),
            command: self.argv(spec),
            image: spec.image.as_deref().map(|i| self.expand(i)),
            environment,
            dependencies: spec.deps().map(str::to_owned).collect(),
            register: Some(spec.registers()),
            health_endpoint: spec.health_endpoint.clone(),
            volumes: spec.volumes.iter().map(|v| self.expand(&v.value)).collect(),
            container_port: spec.container_port,
        };
        let mut req = self
            .http
            .post(format!("{orch}/v1/deploy"))
            .timeout(Duration::from_secs(30))
            .header(
                "idempotency-key",
                format!("bootstrap-{name}-{}", crate::state::now()),
            )
            .json(&body);
        if let Some(t) = self.admin_token() {
            req = req.bearer_auth(t);
        }
        let fail = |m: String| {
            StepError::new(format!("deploying `{name}` failed: {m}"))
                .action(format!(
                    "See the orchestrator's log: {}",
                    self.home.log_of("orchestrator").display()
                ))
                .action(format!(
                    "Check services.{name} in {}",
                    self.config_path.display()
                ))
        };
        let resp = req
            .send()
            .await
            .map_err(|e| fail(chora_api::root_cause(&e)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<chora_api::ErrorBody>(&text)
                .map(|b| b.message)
                .unwrap_or(text);
            return Err(fail(format!("the orchestrator answered {status}: {msg}")));
        }
        let url = spec.health_url().expect("checked by the config");
        let start = Instant::now();
        let timeout = self.health_timeout(spec);
        let waited =
            crate::health::wait(&self.http, &url, &self.config.retry, timeout, || None).await;
        if let Err(e) = waited {
            let last = tail(&self.home.log_of(name), 5);
            let mut err = fail(format!("not healthy after {:?}: {e}", start.elapsed()));
            if !last.is_empty() {
                err = err.cause(format!("its log ends with:\n{}", indent(&last)));
            }
            return Err(err.action(format!(
                "Read its log: {}",
                self.home.log_of(name).display()
            )));
        }
        Ok(ServiceRecord {
            phase: 3,
            deployed_via: Some("orchestrator".into()),
            url: spec.url(),
            started_at: crate::state::now(),
            ..Default::default()
        })
    }

    /// A phase 3 service: running and healthy → left alone; otherwise deployed
    /// again.
    pub async fn ensure_deployed(&self, name: &str) -> Result<(Ensured, ServiceRecord), StepError> {
        let spec = self.spec(name);
        let running = self
            .deployed()
            .await?
            .into_iter()
            .any(|s| s.name == name && s.state == chora_api::orchestrator::State::Running);
        if running {
            let url = spec.health_url().expect("checked by the config");
            if crate::health::check(&self.http, &url).await.is_ok() {
                return Ok((
                    Ensured::Healthy,
                    ServiceRecord {
                        phase: 3,
                        deployed_via: Some("orchestrator".into()),
                        url: spec.url(),
                        started_at: crate::state::now(),
                        ..Default::default()
                    },
                ));
            }
        }
        Ok((Ensured::Restarted, self.deploy(name).await?))
    }

    /// Undeploys a phase 3 service (the orchestrator stops it).
    pub async fn undeploy(&self, name: &str) -> Result<(), StepError> {
        let orch = self.orchestrator()?;
        let mut req = self
            .http
            .delete(format!("{orch}/v1/services/{name}"))
            .timeout(Duration::from_secs(30));
        if let Some(t) = self.admin_token() {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(StepError::new(format!(
                "the orchestrator answered {}",
                r.status()
            ))),
            // No orchestrator, no children: they die with it.
            Err(e) if e.is_connect() => Ok(()),
            Err(e) => Err(StepError::new(chora_api::root_cause(&e))),
        }
    }
}

/// `3.4.23` from `etcd --version` ("etcd Version: 3.4.23").
pub fn etcd_version(binary: &Path) -> Option<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))?
        .trim();
    (!v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
    .then(|| v.to_owned())
}

pub fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
