//! The services of phase 3, which the orchestrator runs (DESIGN.md §5): the
//! bootstrap asks it, through [`chora_api::OrchestratorClient`], to deploy
//! each one, waits until the service answers its health check, and asks it
//! again to undeploy. Every call carries this run's admin and fencing tokens.

use crate::config::ServiceSpec;
use crate::ctx::Ctx;
use crate::failure::StepError;
use crate::local::Ensured;
use crate::output::indent;
use chora_api::OrchestratorError;
use chora_api::bootstrap_state::ServiceRecord;
use chora_api::orchestrator::ServiceStatus;
use std::time::Instant;

impl Ctx {
    /// The orchestrator's view of every deployed service.
    pub async fn deployed(&self) -> Result<Vec<ServiceStatus>, StepError> {
        self.orchestrator()?
            .services()
            .await
            .map_err(orchestrator_error)
    }

    /// Deploys a phase 3 service through the orchestrator and waits until it is
    /// healthy.
    pub async fn deploy(&self, name: &str) -> Result<ServiceRecord, StepError> {
        self.deploy_with(name, self.spec(name))
            .await
            .map(|(r, _)| r)
    }

    /// Deploys `name` as `spec` says; when it replaced a running deployment
    /// of another spec, also how (`start-first`, `stop-first: why`). A new
    /// version that does not become healthy is an error, and the old one
    /// runs again (the orchestrator brings it back).
    pub async fn deploy_with(
        &self,
        name: &str,
        spec: &ServiceSpec,
    ) -> Result<(ServiceRecord, Option<String>), StepError> {
        let timeout = self.health_timeout(spec);
        // A replacement waits for the new version (twice: a stand-in, then
        // the unit in its place; or once per copy in a rolling update) and
        // maybe the old one again.
        let copies = spec.replicas.unwrap_or(1).max(1);
        let orch = self
            .orchestrator()?
            .with_timeout(timeout * (3 + copies) + std::time::Duration::from_secs(90));
        let mut environment = self.env_for(name, spec);
        environment.remove("CHORA_HOME");
        // On a fleet the tasks run on the hosts: the image goes there first
        // (over SSH, where a host lacks it), as for phases 1-2.
        let image = spec.image.as_deref().map(|i| self.substitute(i));
        if let (true, Some(image)) = (self.config.inventory.is_some(), &image) {
            self.ensure_fleet_image(image).await?;
        }
        let body = chora_api::orchestrator::DeploySpec {
            name: name.to_owned(),
            version: spec.version.clone().unwrap_or_else(|| "1.0.0".into()),
            port: spec.port.expect("checked by the config"),
            command: self.argv(spec),
            image,
            environment,
            dependencies: spec.deps().map(str::to_owned).collect(),
            register: Some(spec.registers()),
            health_endpoint: spec.health_endpoint.clone(),
            volumes: spec
                .volumes
                .iter()
                .map(|v| self.substitute(&v.value))
                .collect(),
            container_port: spec.container_port,
            health_timeout: Some(timeout.as_secs().clamp(1, 3600) as u32),
            ca: self.health_ca(spec),
            replicas: spec.replicas.filter(|n| *n > 1),
        };
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
        let key = format!("bootstrap-{name}-{}", chora_api::bootstrap_state::now());
        let answer = orch.deploy(&body, &key).await.map_err(|e| match e {
            e if e.lost_lock() => StepError::lock_lost(e),
            OrchestratorError::Unreachable { reason, .. } => fail(reason),
            OrchestratorError::Status {
                code: Some(c),
                message,
                ..
            } if c == "replacement_failed" => StepError::new(message)
                .action(format!(
                    "Read its log: {}",
                    self.home.log_of(name).display()
                ))
                .action(format!(
                    "Fix services.{name} in {} and run `chora bootstrap` again",
                    self.config_path.display()
                )),
            e => fail(e.to_string()),
        })?;
        let url = spec.health_url().expect("checked by the config");
        let start = Instant::now();
        let timeout = self.health_timeout(spec);
        let waited = crate::health::wait_with(
            &url,
            || self.probe_unit(name),
            &self.config.retry,
            timeout,
            || None,
        )
        .await;
        if let Err(e) = waited {
            let last = chora_runtime::tail(&self.home.log_of(name), 5);
            let mut err = fail(format!("not healthy after {:?}: {e}", start.elapsed()));
            if !last.is_empty() {
                err = err.cause(format!("its log ends with:\n{}", indent(&last)));
            }
            return Err(err.action(format!(
                "Read its log: {}",
                self.home.log_of(name).display()
            )));
        }
        let record = ServiceRecord {
            phase: 3,
            deployed_via: Some("orchestrator".into()),
            url: spec.url(),
            started_at: chora_api::bootstrap_state::now(),
            ..Default::default()
        };
        Ok((record, answer.replaced))
    }

    /// A phase 3 service: running and healthy → left alone; otherwise deployed
    /// again.
    pub async fn ensure_deployed(&self, name: &str) -> Result<(Ensured, ServiceRecord), StepError> {
        let deployed = self.deployed().await?;
        if let Some(record) = self.deployed_healthy(name, &deployed).await {
            return Ok((Ensured::Healthy, record));
        }
        Ok((Ensured::Restarted, self.deploy(name).await?))
    }

    /// A phase 3 service's record when `deployed` (the orchestrator's
    /// list) has it running and it answers its health check now; one look,
    /// nothing started.
    pub async fn deployed_healthy(
        &self,
        name: &str,
        deployed: &[ServiceStatus],
    ) -> Option<ServiceRecord> {
        let running = deployed
            .iter()
            .any(|s| s.name == name && s.state == chora_api::orchestrator::State::Running);
        (running && self.probe_unit(name).await.is_ok()).then(|| ServiceRecord {
            phase: 3,
            deployed_via: Some("orchestrator".into()),
            url: self.spec(name).url(),
            started_at: chora_api::bootstrap_state::now(),
            ..Default::default()
        })
    }

    /// Undeploys a phase 3 service (the orchestrator stops it).
    pub async fn undeploy(&self, name: &str) -> Result<(), StepError> {
        match self.orchestrator()?.remove(name).await {
            Ok(()) => Ok(()),
            // No orchestrator, no children: they die with it.
            Err(OrchestratorError::Unreachable { refused: true, .. }) => Ok(()),
            Err(e) if e.lost_lock() => Err(StepError::lock_lost(e)),
            Err(OrchestratorError::Unreachable { reason, .. }) => Err(StepError::new(reason)),
            Err(OrchestratorError::Status { status, .. }) => Err(StepError::new(format!(
                "the orchestrator answered {}",
                reqwest::StatusCode::from_u16(status)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| status.to_string())
            ))),
            Err(e) => Err(StepError::new(e.to_string())),
        }
    }
}

/// An orchestrator error as a step's: a refused fencing token is a lost lock.
pub fn orchestrator_error(e: OrchestratorError) -> StepError {
    if e.lost_lock() {
        StepError::lock_lost(e)
    } else {
        StepError::new(e.to_string())
    }
}
