//! A unit of the Swarm runtime: one service. Swarm restarts its tasks, so
//! the unit "exits" only when the service is gone; stopping it removes it
//! and waits until its tasks have stopped (a removed service's tasks stay
//! listed until then): a stopped unit runs nowhere, and registers nothing
//! any more.

use crate::{BoxFuture, Exit, Unit, UnitId};
use bollard::Docker;
use std::time::Duration;

pub(super) struct Service {
    docker: Docker,
    id: String,
}

impl Service {
    pub(super) fn new(docker: Docker, id: String) -> Self {
        Service { docker, id }
    }

    /// Whether a task of this service is still listed (it is until it has
    /// stopped, also after the service was removed).
    async fn tasks_left(&self) -> bool {
        match self.docker.list_tasks(None).await {
            Ok(tasks) => tasks
                .iter()
                .any(|t| t.service_id.as_deref() == Some(self.id.as_str())),
            Err(_) => false,
        }
    }

    async fn gone(&self) -> bool {
        matches!(
            self.docker.inspect_service(&self.id, None).await,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        )
    }
}

impl Unit for Service {
    fn id(&self) -> UnitId {
        UnitId::Service(self.id.clone())
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            while !self.gone().await {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Exit::Code(-1)
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let _ = self.docker.delete_service(&self.id).await;
            // Its tasks get SIGTERM and `grace` (the service's stop grace
            // period) before they are killed.
            // A task on a host that is down stays listed: the deadline.
            let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(5);
            while (!self.gone().await || self.tasks_left().await)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Exit::Signal(15)
        })
    }
}
