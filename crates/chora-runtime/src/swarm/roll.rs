//! A unit replaced in place by Swarm's rolling update (`Runtime::roll`):
//! the service takes the new spec and Swarm replaces its tasks one at a
//! time, start-first where the unit allows (`spec.rs`), each new task
//! healthy before the old one stops, and rolls the service back itself when
//! a new task fails once running. Done when every task that should run
//! runs the new spec and is healthy, and no task of the old spec runs. Not
//! done within the caller's time (a new task that never turns healthy keeps
//! Swarm waiting), it is rolled back here, as `docker service rollback`
//! does, and the answer is an error either way.

use super::{SwarmRuntime, running};
use crate::docker::docker_err;
use crate::{Runtime, RuntimeError, UnitSpec};
use bollard::models::{ServiceUpdateStatusStateEnum as UpdateState, TaskState};
use std::time::Duration;
use tokio::time::Instant;

/// How long a rollback may take before the answer stops waiting for it.
const ROLLBACK_WAIT: Duration = Duration::from_secs(60);

/// Whether a task may still run: not yet in a final state.
fn alive(t: &bollard::models::Task) -> bool {
    matches!(
        t.status.as_ref().and_then(|s| s.state),
        Some(
            TaskState::NEW
                | TaskState::ALLOCATED
                | TaskState::PENDING
                | TaskState::ASSIGNED
                | TaskState::ACCEPTED
                | TaskState::PREPARING
                | TaskState::READY
                | TaskState::STARTING
                | TaskState::RUNNING
        )
    )
}

impl SwarmRuntime {
    pub(super) async fn roll_to(
        &self,
        spec: &UnitSpec,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let name = self.service_name(&spec.name);
        // The new spec's tasks are told apart from the old ones' by their
        // environment (the orchestrator gives each spec its own instance id).
        let want = self
            .service_spec(spec)
            .task_template
            .and_then(|t| t.container_spec)
            .and_then(|c| c.env)
            .unwrap_or_default();
        let copies = if spec.placement.global {
            1
        } else {
            spec.placement.replicas.max(1) as usize
        };
        let started = self.update_started(&name).await?;
        self.start(spec).await?;
        let deadline = Instant::now() + timeout;
        let last = loop {
            // Swarm rolled it back itself (a new task failed once running).
            let (now, state, message) = self.update_state(&name).await?;
            if now != started
                && matches!(
                    state,
                    Some(
                        UpdateState::ROLLBACK_STARTED
                            | UpdateState::ROLLBACK_PAUSED
                            | UpdateState::ROLLBACK_COMPLETED
                    )
                )
            {
                self.rolled_back(&name).await;
                return Err(RuntimeError::Docker(format!(
                    "failed while Swarm updated it ({}); Swarm rolled `{}` back to its previous spec",
                    message.unwrap_or_default(),
                    spec.name
                )));
            }
            let tasks = self.tasks(&spec.name).await?;
            let is_new = |t: &bollard::models::Task| {
                t.spec
                    .as_ref()
                    .and_then(|s| s.container_spec.as_ref())
                    .and_then(|c| c.env.as_ref())
                    == Some(&want)
            };
            let fresh = tasks.iter().filter(|t| is_new(t) && running(t)).count();
            // An old task told to shut down runs (and is registered) until
            // it has stopped: only then is the update done.
            let old = tasks.iter().filter(|t| !is_new(t) && alive(t)).count();
            if fresh >= copies && old == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break format!(
                    "{fresh} of {copies} new task(s) running and healthy, {old} old one(s) still there"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        tracing::warn!(service = %name, "the rolling update did not finish in time; rolling back");
        self.rollback(&name).await?;
        self.rolled_back(&name).await;
        Err(RuntimeError::Docker(format!(
            "did not become healthy within {timeout:?} ({last}); `{}` was rolled back to its previous spec",
            spec.name
        )))
    }

    /// When the service's last update started (none yet: empty), so that
    /// the state of an earlier update is not taken for this one's.
    async fn update_started(&self, name: &str) -> Result<String, RuntimeError> {
        Ok(self.update_state(name).await?.0)
    }

    /// The service's update status: when it started, its state, its message.
    async fn update_state(
        &self,
        name: &str,
    ) -> Result<(String, Option<UpdateState>, Option<String>), RuntimeError> {
        let s = self
            .docker
            .inspect_service(name, None)
            .await
            .map_err(docker_err)?;
        let u = s.update_status.unwrap_or_default();
        Ok((u.started_at.unwrap_or_default(), u.state, u.message))
    }

    /// Asks Swarm to put the service's previous spec back.
    async fn rollback(&self, name: &str) -> Result<(), RuntimeError> {
        let s = self
            .docker
            .inspect_service(name, None)
            .await
            .map_err(docker_err)?;
        let version = s.version.and_then(|v| v.index).unwrap_or(0);
        self.docker
            .update_service(
                name,
                s.spec.unwrap_or_default(),
                bollard::query_parameters::UpdateServiceOptions {
                    version: version as i32,
                    rollback: Some("previous".into()),
                    ..Default::default()
                },
                None,
            )
            .await
            .map_err(docker_err)?;
        Ok(())
    }

    /// Waits (up to [`ROLLBACK_WAIT`]) until a rollback has finished.
    async fn rolled_back(&self, name: &str) {
        let deadline = Instant::now() + ROLLBACK_WAIT;
        while Instant::now() < deadline {
            match self.update_state(name).await {
                Ok((_, Some(UpdateState::ROLLBACK_COMPLETED), _)) | Err(_) => return,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}
