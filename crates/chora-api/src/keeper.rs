//! The heartbeat keeper: keeps one instance registered and alive in the background.
//!
//! It registers (retrying with exponential backoff while the registry is
//! unreachable), heartbeats every `heartbeat_interval` the registry asked for, and
//! re-registers by itself, under the same instance id, when a heartbeat answers
//! 404 (the registry restarted on an empty database, or the TTL ran out). On
//! [`Keeper::shutdown`] it deregisters the instance.

use crate::client::{ClientError, ManifestClient};
use crate::manifest::{Registration, Status};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Backoff bounds while the registry is unreachable.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// A running keeper. Dropping it stops the loop without deregistering; call
/// [`Keeper::shutdown`] to deregister.
#[derive(Debug)]
pub struct Keeper {
    name: String,
    id: String,
    client: ManifestClient,
    stop: watch::Sender<bool>,
    status: watch::Sender<Status>,
    registrations: watch::Receiver<u64>,
    task: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping `reg` registered. Without `reg.id` an id `<name>-<8 hex>` is
    /// chosen now and kept for every re-registration.
    pub fn spawn(client: ManifestClient, mut reg: Registration, backoff: Backoff) -> Keeper {
        let id = reg
            .id
            .get_or_insert_with(|| format!("{}-{}", reg.name, crate::random_hex(4)))
            .clone();
        let (stop, stop_rx) = watch::channel(false);
        let (status, status_rx) = watch::channel(Status::Up);
        let (reg_tx, registrations) = watch::channel(0u64);
        let task = tokio::spawn(run(
            client.clone(),
            reg.clone(),
            backoff,
            stop_rx,
            status_rx,
            reg_tx,
        ));
        Keeper {
            name: reg.name,
            id,
            client,
            stop,
            status,
            registrations,
            task: Some(task),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.id
    }

    /// How many times the instance has been (re-)registered so far.
    pub fn registrations(&self) -> u64 {
        *self.registrations.borrow()
    }

    /// Waits until the instance has been registered more than `n` times in all.
    pub async fn registered_more_than(&self, n: u64) {
        let mut rx = self.registrations.clone();
        let _ = rx.wait_for(|&c| c > n).await;
    }

    /// What the next heartbeats report.
    pub fn set_status(&self, status: Status) {
        self.status.send_replace(status);
    }

    /// Stops heartbeating and deregisters the instance (best effort, bounded).
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let client = self.client.clone().with_timeout(Duration::from_secs(2));
        client.deregister(&self.name, &self.id).await
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Sleeps for `d` unless `stop` turns true or the status to report changes
/// first; returns false when stopped.
async fn pause(
    stop: &mut watch::Receiver<bool>,
    status: &mut watch::Receiver<Status>,
    d: Duration,
) -> bool {
    // A new status is reported at once, not at the next interval.
    let changed = async {
        if status.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|&s| s) => true,
        _ = changed => false,
    };
    !stopped && !*stop.borrow()
}

async fn run(
    client: ManifestClient,
    reg: Registration,
    backoff: Backoff,
    mut stop: watch::Receiver<bool>,
    mut status: watch::Receiver<Status>,
    registrations: watch::Sender<u64>,
) {
    let id = reg.id.clone().expect("spawn sets the id");
    let mut delay = backoff.initial;
    let mut interval: Option<Duration> = None;
    let mut failing = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(every) = interval else {
            match client.register(&reg).await {
                Ok(r) => {
                    tracing::info!(service = %reg.name, id = %id, "registered in the Manifest");
                    interval = Some(
                        crate::duration::seconds(r.heartbeat_interval)
                            .filter(|d| !d.is_zero())
                            .unwrap_or(Duration::from_secs(10)),
                    );
                    delay = backoff.initial;
                    registrations.send_modify(|c| *c += 1);
                }
                Err(e) => {
                    tracing::warn!(service = %reg.name, error = %e, retry_in = ?delay, "registration failed");
                    if !pause(&mut stop, &mut status, delay).await {
                        return;
                    }
                    delay = (delay * 2).min(backoff.max);
                }
            }
            continue;
        };
        // After a failed heartbeat, retry after the backoff delay instead.
        let wait = if failing { delay } else { every };
        if !pause(&mut stop, &mut status, wait).await {
            return;
        }
        let reported = *status.borrow_and_update();
        match client.heartbeat(&reg.name, &id, Some(reported)).await {
            Ok(()) => {
                failing = false;
                delay = backoff.initial;
            }
            Err(e) if e.is_not_found() => {
                tracing::warn!(service = %reg.name, id = %id, "the Manifest forgot this instance; registering again");
                failing = false;
                interval = None;
            }
            Err(e) => {
                if failing {
                    delay = (delay * 2).min(backoff.max);
                }
                failing = true;
                tracing::warn!(service = %reg.name, error = %e, retry_in = ?delay, "heartbeat failed");
            }
        }
    }
}
