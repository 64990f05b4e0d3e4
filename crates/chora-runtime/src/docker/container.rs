//! One container as a [`Unit`]: waited for until it is not running, stopped
//! with a grace period, and removed once its exit is known.

use super::{docker_err, is_status};
use crate::{BoxFuture, Exit, RuntimeError, Unit, UnitId};
use bollard::Docker;
use bollard::query_parameters::{
    RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use std::time::Duration;

/// Stops (at once) and removes a container; gone already is fine.
pub(super) async fn remove(docker: &Docker, id: &str) -> Result<(), RuntimeError> {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: false,
                link: false,
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(docker_err(e)),
    }
}

/// One container, known by id.
pub(super) struct Container {
    pub(super) docker: Docker,
    pub(super) id: String,
}

impl Container {
    /// Waits until the container is not running; its exit code.
    async fn exit_code(&self) -> Exit {
        let mut s = self.docker.wait_container(
            &self.id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        match s.next().await {
            Some(Ok(r)) => Exit::Code(r.status_code as i32),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                Exit::Code(code as i32)
            }
            // Gone already (removed by someone else) or the engine went away.
            _ => Exit::Code(-1),
        }
    }
}

impl Unit for Container {
    fn id(&self) -> UnitId {
        UnitId::Container(self.id.clone())
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let exit = self.exit_code().await;
            // The exit is news at once (the starter deregisters on it); the
            // removal takes its time in the background.
            let docker = self.docker.clone();
            let id = self.id.clone();
            tokio::spawn(async move {
                let _ = remove(&docker, &id).await;
            });
            exit
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            let _ = self
                .docker
                .stop_container(
                    &self.id,
                    Some(StopContainerOptions {
                        t: Some(grace.as_secs().max(1) as i32),
                        signal: None,
                    }),
                )
                .await;
            let exit = self.exit_code().await;
            let _ = remove(&self.docker, &self.id).await;
            exit
        })
    }
}
