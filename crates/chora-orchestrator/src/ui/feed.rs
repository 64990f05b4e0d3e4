//! The dashboard's live task: it follows the Manifest's instances (blocking
//! reads), the orchestrator's own deployments (every state change the
//! supervisor publishes) and the bootstrap's files, and keeps the model
//! (`model.rs`) current; the rows themselves are computed in `rows.rs`.
//!
//! One task owns the inputs and recomputes the rows after each of them; every
//! row that changed goes out as its own numbered update, so a service that
//! crashes and is back 0.2 s later is seen `down` before `up` again (updates are
//! never coalesced into snapshots). A page starts from a snapshot taken under the
//! same lock the updates are numbered under, so it misses none and sees none twice.

use super::bootstrap;
use super::model::{Meta, Model, Update};
use super::page;
use super::rows::{Sources, Target, joined};
use crate::http::AppState;
use chora_api::ManifestClient;
use chora_api::manifest::{Instance, ListFilter};
use chora_api::orchestrator::ServiceStatus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// How long a blocking read of the Manifest waits: also how often heartbeat
/// times are refreshed when nothing else changes.
const WATCH_WAIT: Duration = Duration::from_secs(2);
/// How often deployments that appeared or vanished, and the bootstrap's files,
/// are looked at again.
const RESYNC: Duration = Duration::from_secs(2);

/// The shared model plus the stream of its updates.
pub struct Feed {
    pub model: Mutex<Model>,
    /// Where each row's chart is drawn from, current with the rows.
    pub targets: watch::Sender<Arc<BTreeMap<String, Target>>>,
}

impl Feed {
    /// Takes a snapshot and subscribes to the updates after it, atomically.
    pub fn subscribe(&self) -> (String, u64, broadcast::Receiver<Arc<Update>>) {
        let m = self.model.lock().unwrap_or_else(|e| e.into_inner());
        (page::snapshot_event(&m), m.seq, m.subscribe())
    }
}

enum Input {
    Manifest(Result<Vec<Instance>, String>),
}

/// Starts the feed: a task following the Manifest and one joining everything.
pub fn start(app: Arc<AppState>, manifest_url: String, home: Option<PathBuf>) -> Arc<Feed> {
    let (tx, _) = broadcast::channel(4096);
    let feed = Arc::new(Feed {
        model: Mutex::new(Model::new(
            Meta {
                manifest_reachable: false,
                manifest_url: manifest_url.clone(),
                bootstrap: None,
            },
            tx,
        )),
        targets: watch::channel(Arc::default()).0,
    });
    let (in_tx, in_rx) = mpsc::channel(64);
    tokio::spawn(follow_manifest(manifest_url.clone(), in_tx));
    let sources = Sources {
        instances: Vec::new(),
        manifest_ok: false,
        deployments: BTreeMap::new(),
        bootstrap: bootstrap::Reader::new(home),
        manifest_url,
        probed: BTreeMap::new(),
    };
    tokio::spawn(join(feed.clone(), app, sources, in_rx));
    feed
}

/// Blocking reads of the whole list, forever; an error is reported once per
/// outage and retried every half second.
async fn follow_manifest(url: String, tx: mpsc::Sender<Input>) {
    let Ok(client) = ManifestClient::new([url.as_str()]) else {
        return;
    };
    let client = client.with_timeout(Duration::from_secs(2));
    let mut index: Option<u64> = None;
    loop {
        match client
            .watch(&ListFilter::default(), index.map(|i| (i, WATCH_WAIT)))
            .await
        {
            Ok((list, i)) => {
                index = Some(i);
                if tx.send(Input::Manifest(Ok(list))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let was_up = index.take().is_some();
                if was_up && tx.send(Input::Manifest(Err(e.to_string()))).await.is_err() {
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn join(
    feed: Arc<Feed>,
    app: Arc<AppState>,
    mut src: Sources,
    mut inputs: mpsc::Receiver<Input>,
) {
    let mut events = app.ctx().events.subscribe();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            i = inputs.recv() => match i {
                Some(Input::Manifest(Ok(list))) => {
                    src.instances = list;
                    src.manifest_ok = true;
                }
                Some(Input::Manifest(Err(e))) => {
                    tracing::debug!(error = %e, "the dashboard lost the Manifest");
                    src.manifest_ok = false;
                }
                None => return,
            },
            e = events.recv() => match e {
                Ok(s) => {
                    src.deployments.insert(s.name.clone(), s);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => resync(&app, &mut src, true).await,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => resync(&app, &mut src, false).await,
        }
        apply(&feed, &src);
    }
}

/// Deployments that appeared or vanished (all of them after a lag), and the
/// bootstrap's files when they changed.
async fn resync(app: &AppState, src: &mut Sources, all: bool) {
    let now: BTreeMap<String, ServiceStatus> = app
        .deployments()
        .lock()
        .await
        .iter()
        .map(|(n, d)| (n.clone(), d.snapshot()))
        .collect();
    src.deployments.retain(|n, _| now.contains_key(n));
    for (n, s) in now {
        if all || !src.deployments.contains_key(&n) {
            src.deployments.insert(n, s);
        }
    }
    src.bootstrap.refresh();
    let probes: Vec<(String, String)> = src
        .bootstrap
        .services()
        .iter()
        .filter_map(|(n, r)| Some((n.clone(), r.health.clone()?)))
        .collect();
    let http = &app.ctx().http;
    let checks = probes.iter().map(|(n, url)| async move {
        let ok = tokio::time::timeout(
            Duration::from_secs(1),
            chora_runtime::check::check(http, url),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        (n.clone(), ok)
    });
    src.probed = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .collect();
}

/// Recomputes the rows and sends an update for each one that changed.
fn apply(feed: &Feed, src: &Sources) {
    let joined = joined(src);
    let rows = joined.rows;
    feed.targets.send_if_modified(|t| {
        let changed = **t != joined.targets;
        if changed {
            *t = Arc::new(joined.targets);
        }
        changed
    });
    let meta = Meta {
        manifest_reachable: src.manifest_ok,
        manifest_url: src.manifest_url.clone(),
        bootstrap: src.bootstrap.view(),
    };
    let mut m = feed.model.lock().unwrap_or_else(|e| e.into_inner());
    let gone: Vec<String> = m
        .rows
        .keys()
        .filter(|n| !rows.contains_key(*n))
        .cloned()
        .collect();
    for n in gone {
        m.rows.remove(&n);
        m.charts.remove(&n);
        m.send("remove", serde_json::json!({ "name": n }).to_string());
    }
    for (n, r) in rows {
        if m.rows.get(&n) != Some(&r) {
            let html = page::row(&r, m.charts.get(&n), None);
            let data = serde_json::json!({ "row": r, "html": html }).to_string();
            m.rows.insert(n, r);
            m.send("row", data);
        }
    }
    if m.meta != meta {
        let data = page::meta_json(&meta).to_string();
        m.meta = meta;
        m.send("meta", data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::rows::fixtures::{deployment, instance};
    use chora_api::manifest::Status;
    use chora_api::orchestrator::State as RunState;

    #[test]
    fn every_changed_row_is_its_own_numbered_update() {
        let (tx, _) = broadcast::channel(16);
        let feed = Feed {
            model: Mutex::new(Model::new(
                Meta {
                    manifest_reachable: true,
                    manifest_url: String::new(),
                    bootstrap: None,
                },
                tx,
            )),
            targets: watch::channel(Arc::default()).0,
        };
        let mut src = Sources {
            instances: vec![instance("storage", "storage-1", Status::Up)],
            manifest_ok: true,
            deployments: BTreeMap::new(),
            bootstrap: bootstrap::Reader::new(None),
            manifest_url: String::new(),
            probed: BTreeMap::new(),
        };
        let (_, seq0, mut rx) = feed.subscribe();
        apply(&feed, &src);
        // Down, then up again: two updates, neither folded into the other.
        src.deployments.insert(
            "storage".into(),
            deployment("storage", RunState::Restarting, "storage-1"),
        );
        apply(&feed, &src);
        src.deployments.insert(
            "storage".into(),
            deployment("storage", RunState::Running, "storage-1"),
        );
        apply(&feed, &src);
        apply(&feed, &src); // nothing changed: nothing sent
        let mut got = Vec::new();
        while let Ok(u) = rx.try_recv() {
            assert!(u.seq > seq0);
            got.push(u.sse.clone());
        }
        let statuses: Vec<bool> = got
            .iter()
            .filter(|s| s.starts_with("event: row"))
            .map(|s| s.contains("\"status\":\"up\""))
            .collect();
        assert_eq!(statuses, [true, false, true], "{got:#?}");
    }
}
