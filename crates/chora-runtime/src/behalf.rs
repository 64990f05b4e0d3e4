//! Registration on behalf (DESIGN.md §9): a service that does not know chora is
//! registered by whoever started it. The instance is registered once its health
//! check first passes, heartbeats while it keeps passing, is reported
//! `unhealthy` (at once, not at the next interval) while it fails, and is
//! deregistered when the starter stops watching (the unit stopped or died).

use chora_api::manifest::{Metadata, Registration, Status};
use chora_api::{Keeper, ManifestClient};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What to register and how to check it.
#[derive(Debug, Clone)]
pub struct Behalf {
    pub name: String,
    pub id: String,
    pub version: String,
    /// `interfaces.REST`: how other services reach it.
    pub rest: String,
    pub health_url: String,
    pub dependencies: Vec<String>,
    /// Time between health checks.
    pub every: Duration,
}

/// A running registration on behalf; [`OnBehalf::stop`] deregisters it.
pub struct OnBehalf {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Option<Keeper>>>,
    registered: watch::Receiver<bool>,
}

impl OnBehalf {
    /// Starts checking `b.health_url` and keeping `b` registered through `client`.
    pub fn spawn(client: ManifestClient, http: reqwest::Client, b: Behalf) -> OnBehalf {
        let (stop, stop_rx) = watch::channel(false);
        let (reg_tx, registered) = watch::channel(false);
        let task = tokio::spawn(run(client, http, b, stop_rx, reg_tx));
        OnBehalf {
            stop,
            task: Some(task),
            registered,
        }
    }

    /// Resolves once the first health check passed and the instance is registered.
    pub async fn registered(&self) {
        let mut rx = self.registered.clone();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Stops checking and deregisters the instance (bounded).
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Ok(Some(keeper)) = task.await
            && let Err(e) = keeper.shutdown().await
        {
            tracing::warn!(error = %e, "could not deregister");
        }
    }
}

impl Drop for OnBehalf {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    client: ManifestClient,
    http: reqwest::Client,
    b: Behalf,
    mut stop: watch::Receiver<bool>,
    registered: watch::Sender<bool>,
) -> Option<Keeper> {
    let mut keeper: Option<Keeper> = None;
    let mut healthy: Option<bool> = None;
    loop {
        if *stop.borrow() {
            return keeper;
        }
        let ok = crate::check::check(&http, &b.health_url).await;
        match (&keeper, &ok) {
            (None, Ok(())) => {
                let reg = Registration {
                    name: b.name.clone(),
                    version: b.version.clone(),
                    interfaces: [("REST".to_string(), b.rest.clone())].into(),
                    metadata: Some(Metadata {
                        description: Some("registered on its behalf by chora".into()),
                        dependencies: b.dependencies.clone(),
                        tags: vec!["registered-by-chora".into()],
                        environment: None,
                        custom: Default::default(),
                    }),
                    id: Some(b.id.clone()),
                };
                let k = Keeper::spawn(client.clone(), reg, Default::default());
                tokio::select! {
                    _ = k.registered_more_than(0) => {}
                    _ = stop.wait_for(|s| *s) => return Some(k),
                }
                tracing::info!(service = %b.name, instance = %b.id, "registered on its behalf");
                registered.send_replace(true);
                keeper = Some(k);
                healthy = Some(true);
            }
            (Some(k), r) if healthy != Some(r.is_ok()) => {
                healthy = Some(r.is_ok());
                match r {
                    Ok(()) => k.set_status(Status::Up),
                    Err(e) => {
                        tracing::warn!(service = %b.name, error = %e, "health check failing: reporting it unhealthy");
                        k.set_status(Status::Unhealthy);
                    }
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(b.every) => {}
            _ = stop.wait_for(|s| *s) => return keeper,
        }
    }
}
