//! The services of phases 1-2, which the bootstrap starts itself through the
//! runtime seam and which outlive it: start one and wait until it is healthy,
//! find it again (its runtime's bookkeeping, else the state file's record),
//! check it, restart it when it is gone or sick, stop it. A start that does
//! not become healthy leaves nothing behind.

use crate::config::ServiceSpec;
use crate::ctx::Ctx;
use crate::failure::StepError;
use crate::output::indent;
use chora_api::bootstrap_state::ServiceRecord;
use chora_runtime::docker::{LABEL_REPLICA, LABEL_SERVICE};
use chora_runtime::{Found, ProcId, Runtime, UnitId, UnitSpec};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was running and healthy: left alone.
    Healthy,
    /// It was gone or sick and was started again.
    Restarted,
}

/// How the state file recorded a unit: its pid and start time, or its
/// container.
pub fn recorded_unit(r: &ServiceRecord) -> Option<UnitId> {
    match (r.pid, r.start_time, &r.container, &r.swarm_service) {
        (Some(pid), Some(start_time), _, _) => Some(UnitId::Process(ProcId { pid, start_time })),
        (_, _, Some(c), _) => Some(UnitId::Container(c.clone())),
        (_, _, _, Some(s)) => Some(UnitId::Service(s.clone())),
        _ => None,
    }
}

impl Ctx {
    /// The health URL of a phase 1-2 unit as this machine reaches it: a
    /// container that publishes no port (an etcd member) at its address on the
    /// project network.
    pub async fn health_url(
        &self,
        spec: &ServiceSpec,
        runtime: &dyn Runtime,
        unit_spec: &UnitSpec,
    ) -> String {
        runtime
            .reach(
                unit_spec,
                &spec.health_url().expect("checked by the config"),
            )
            .await
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
            self.health_url(spec, &*runtime, &self.unit_spec(name, spec))
                .await,
        )
    }

    /// One health check of unit `name` (any phase), as its runtime checks
    /// it: an HTTP or TCP check from here, or (a Swarm unit) its tasks.
    pub async fn probe_unit(&self, name: &str) -> Result<(), String> {
        let spec = self.spec(name);
        let runtime = self.runtime_for(spec).await.map_err(|e| e.message)?;
        let unit_spec = self.unit_spec(name, spec);
        let url = spec.health_url().unwrap_or_default();
        runtime.probe(&unit_spec, &url).await
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
        let mut unit = UnitSpec {
            name: name.to_owned(),
            argv: self.argv(spec).unwrap_or_default(),
            image: spec.image.as_deref().map(|i| self.substitute(i)),
            env,
            port: spec.port,
            container_port: spec.container_port,
            volumes: spec
                .volume_list()
                .into_iter()
                .map(|mut v| {
                    v.source = self.substitute(&v.source);
                    v.target = self.substitute(&v.target);
                    v
                })
                .collect(),
            labels,
            ..Default::default()
        };
        // The gateway's HTTPS: its TLS files and port.
        let (mounts, ports) = self.tls_mounts(spec);
        unit.volumes.extend(mounts);
        unit.more_ports = ports;
        unit.ca = self.health_ca(spec);
        if self.config.inventory.is_some() {
            self.for_fleet(name, spec, &mut unit);
        }
        unit
    }

    /// The unit of a phase 1-2 service started earlier, if it still runs: by its
    /// pid file (or the state's pid and start time) or its container label.
    pub async fn find_local(&self, name: &str, record: Option<&ServiceRecord>) -> Option<Found> {
        let runtime = self.runtime_for(self.spec(name)).await.ok()?;
        let recorded = record.and_then(recorded_unit);
        runtime.find(name, recorded.as_ref()).await.ok().flatten()
    }

    fn record_of(&self, name: &str, spec: &ServiceSpec, id: &UnitId) -> ServiceRecord {
        let (pid, start_time) = match id {
            UnitId::Process(p) => (Some(p.pid), Some(p.start_time)),
            _ => (None, None),
        };
        let replica = spec.replica.as_ref();
        ServiceRecord {
            phase: spec.phase,
            pid,
            start_time,
            container: id.container().map(str::to_owned),
            swarm_service: match id {
                UnitId::Service(s) => Some(s.clone()),
                _ => None,
            },
            deployed_via: None,
            url: spec.url(),
            service: replica.map(|r| r.service.clone()),
            instance_id: replica
                .filter(|r| !r.unregistered)
                .map(|_| self.instance_id(name)),
            health: replica
                .filter(|r| r.unregistered)
                .and_then(|_| spec.health_url()),
            started_at: chora_api::bootstrap_state::now(),
        }
    }

    /// Starts a phase 1-2 service (a process that outlives the CLI, or a
    /// container), waits until it is healthy, and returns how to find it again.
    pub async fn start_local(&self, name: &str) -> Result<ServiceRecord, StepError> {
        self.start_with(name, self.spec(name)).await
    }

    /// [`Ctx::start_local`] with `spec` rather than the config's (the old
    /// spec, when a change is rolled back).
    pub async fn start_with(
        &self,
        name: &str,
        spec: &ServiceSpec,
    ) -> Result<ServiceRecord, StepError> {
        if spec.image.as_deref() == Some("${ETCD_IMAGE}") {
            // Once for all members starting together (a resume skips phase 0).
            self.etcd_image
                .get_or_try_init(|| async { self.ensure_etcd_image().await.map(|(i, _)| i) })
                .await?;
        }
        if spec.image.as_deref() == Some("${PROMETHEUS_IMAGE}") {
            self.prometheus_image
                .get_or_try_init(|| async { self.ensure_prometheus_image().await.map(|(i, _)| i) })
                .await?;
        }
        if name == crate::config::PROMETHEUS && self.prometheus().is_some() {
            self.write_prometheus_config()?;
        }
        let runtime = self.runtime_for(spec).await?;
        let mut unit_spec = self.unit_spec(name, spec);
        if let (true, Some(image)) = (self.config.inventory.is_some(), &unit_spec.image) {
            self.ensure_fleet_image(image).await?;
        }
        if let Some(url) = runtime.advertise(&unit_spec) {
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
        let url = self.health_url(spec, &*runtime, &unit_spec).await;
        let waited = tokio::select! {
            r = crate::health::wait_with(
                &url,
                || runtime.probe(&unit_spec, &url),
                &self.config.retry,
                self.health_timeout(spec),
                || None,
            ) => r.map(|_| ()).map_err(|e| e.to_string()),
            exit = unit.wait() => Err(format!("it exited ({exit})")),
        };
        if let Err(e) = waited {
            // Never leave a half-started service behind.
            unit.stop(Duration::from_secs(2)).await;
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
                .action(format!("Read its log: {}", runtime.log_hint(name)))
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
            let unit_spec = self.unit_spec(name, spec);
            let url = self.health_url(spec, &*runtime, &unit_spec).await;
            let quick = crate::config::Retry {
                required_consecutive: 1,
                ..self.config.retry.clone()
            };
            let probe = || runtime.probe(&unit_spec, &url);
            if crate::health::wait_with(&url, probe, &quick, Duration::from_secs(2), || None)
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
                    r.started_at = chora_api::bootstrap_state::now();
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
        true
    }
}
