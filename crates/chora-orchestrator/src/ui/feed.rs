//! The dashboard's live model: one row per service, joined from the Manifest's
//! instances (followed with blocking reads), the orchestrator's own deployments
//! (every state change the supervisor publishes) and the bootstrap's state file.
//!
//! One task owns the inputs and recomputes the rows after each of them; every
//! row that changed goes out as its own numbered update, so a service that
//! crashes and is back 0.2 s later is seen `down` before `up` again (updates are
//! never coalesced into snapshots). A page starts from a snapshot taken under the
//! same lock the updates are numbered under, so it misses none and sees none twice.

use super::bootstrap::{self, BootstrapView};
use crate::http::AppState;
use chora_api::ManifestClient;
use chora_api::manifest::{Instance, ListFilter, Status};
use chora_api::orchestrator::{ServiceStatus, State as RunState};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How long a blocking read of the Manifest waits: also how often heartbeat
/// times are refreshed when nothing else changes.
const WATCH_WAIT: Duration = Duration::from_secs(2);
/// How often deployments that appeared or vanished, and the bootstrap's files,
/// are looked at again.
const RESYNC: Duration = Duration::from_secs(2);

/// One service as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    /// `up`, `unhealthy` or `down`.
    pub status: &'static str,
    pub version: Option<String>,
    pub url: Option<String>,
    pub last_heartbeat: Option<String>,
    /// `process`, `container`, or `-` when neither chora nor its orchestrator started it.
    pub runtime: String,
    pub pid: Option<u32>,
    pub container: Option<String>,
    pub restarts: Option<u32>,
    pub started_at: Option<String>,
    /// The deployment's state when the orchestrator runs it (it has buttons then).
    pub state: Option<&'static str>,
    pub phase: Option<u8>,
    pub instances: usize,
}

/// What the page shows beside the rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    pub manifest_reachable: bool,
    pub manifest_url: String,
    pub bootstrap: Option<BootstrapView>,
}

/// One numbered update, its SSE text rendered once for every page.
#[derive(Debug)]
pub struct Update {
    pub seq: u64,
    pub sse: String,
}

/// The current rows and the number of the last update.
pub struct Model {
    pub seq: u64,
    pub rows: BTreeMap<String, Row>,
    pub meta: Meta,
    tx: broadcast::Sender<Arc<Update>>,
}

impl Model {
    /// The rows in the order the page lists them: by bootstrap phase, then name.
    pub fn ordered(&self) -> Vec<&Row> {
        let mut v: Vec<&Row> = self.rows.values().collect();
        v.sort_by(|a, b| (a.phase.unwrap_or(9), &a.name).cmp(&(b.phase.unwrap_or(9), &b.name)));
        v
    }

    /// The `snapshot` event: everything, with the number of the last update.
    pub fn snapshot_sse(&self) -> String {
        let rows = self.ordered();
        let html: String = rows.iter().map(|r| super::page::row(r, None)).collect();
        let doc = serde_json::json!({
            "seq": self.seq,
            "now": chora_api::rfc3339(std::time::SystemTime::now()),
            "rows": rows,
            "html": html,
            "meta": meta_json(&self.meta),
        });
        sse("snapshot", self.seq, &doc.to_string())
    }

    fn send(&mut self, event: &str, data: String) {
        self.seq += 1;
        let _ = self.tx.send(Arc::new(Update {
            seq: self.seq,
            sse: sse(event, self.seq, &data),
        }));
    }
}

/// The `meta` event's data: the model's meta and the bootstrap panel's HTML.
fn meta_json(m: &Meta) -> serde_json::Value {
    serde_json::json!({ "meta": m, "html": super::page::bootstrap(m.bootstrap.as_ref()) })
}

/// One server-sent event (`data` must be one line, as JSON text is).
pub fn sse(event: &str, id: u64, data: &str) -> String {
    format!("event: {event}\nid: {id}\ndata: {data}\n\n")
}

/// The shared model plus the stream of its updates.
pub struct Feed {
    pub model: Mutex<Model>,
}

impl Feed {
    /// Takes a snapshot and subscribes to the updates after it, atomically.
    pub fn subscribe(&self) -> (String, u64, broadcast::Receiver<Arc<Update>>) {
        let m = self.model.lock().unwrap_or_else(|e| e.into_inner());
        (m.snapshot_sse(), m.seq, m.tx.subscribe())
    }
}

enum Input {
    Manifest(Result<Vec<Instance>, String>),
}

/// Everything the feed task reads.
struct Sources {
    instances: Vec<Instance>,
    manifest_ok: bool,
    deployments: BTreeMap<String, ServiceStatus>,
    bootstrap: bootstrap::Reader,
    manifest_url: String,
    /// Units that are not in the Manifest (etcd members): did their health
    /// check pass at the last look (every resync).
    probed: BTreeMap<String, bool>,
}

/// Starts the feed: a task following the Manifest and one joining everything.
pub fn start(app: Arc<AppState>, manifest_url: String, home: Option<PathBuf>) -> Arc<Feed> {
    let (tx, _) = broadcast::channel(4096);
    let feed = Arc::new(Feed {
        model: Mutex::new(Model {
            seq: 0,
            rows: BTreeMap::new(),
            meta: Meta {
                manifest_reachable: false,
                manifest_url: manifest_url.clone(),
                bootstrap: None,
            },
            tx,
        }),
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
    let rows = compute(src);
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
        m.send("remove", serde_json::json!({ "name": n }).to_string());
    }
    for (n, r) in rows {
        if m.rows.get(&n) != Some(&r) {
            let data =
                serde_json::json!({ "row": r, "html": super::page::row(&r, None) }).to_string();
            m.rows.insert(n, r);
            m.send("row", data);
        }
    }
    if m.meta != meta {
        let data = meta_json(&meta).to_string();
        m.meta = meta;
        m.send("meta", data);
    }
}

fn best(instances: &[&Instance]) -> Option<&'static str> {
    if instances.is_empty() {
        None
    } else if instances.iter().any(|i| i.status == Status::Up) {
        Some("up")
    } else {
        Some("unhealthy")
    }
}

/// The join: every name the Manifest, the deployments or the bootstrap knows.
fn compute(src: &Sources) -> BTreeMap<String, Row> {
    let mut by_name: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for i in &src.instances {
        by_name.entry(&i.name).or_default().push(i);
    }
    let records = src.bootstrap.services();
    // A replicated service shows as its units (`manifest-1` …), not once more
    // under its own name.
    let replicated: std::collections::BTreeSet<&str> = records
        .values()
        .filter_map(|r| r.service.as_deref())
        .collect();
    let mut names: Vec<&str> = by_name
        .keys()
        .copied()
        .filter(|n| !replicated.contains(n))
        .collect();
    names.extend(src.deployments.keys().map(String::as_str));
    names.extend(records.keys().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let dep = src.deployments.get(name);
            let rec = records.get(name);
            // A replica's instance: its service's, under its own id.
            let of_replica: Vec<&Instance>;
            let insts =
                match rec.and_then(|r| Some((r.service.as_deref()?, r.instance_id.as_deref()?))) {
                    Some((service, id)) => {
                        of_replica = by_name
                            .get(service)
                            .map(|v| v.iter().copied().filter(|i| i.id == id).collect())
                            .unwrap_or_default();
                        of_replica.as_slice()
                    }
                    None => by_name.get(name).map(Vec::as_slice).unwrap_or(&[]),
                };
            // A deployment's own instance is the one it registers now.
            let current: Vec<&Instance> = match dep.and_then(|d| d.instance_id.as_deref()) {
                Some(id) => insts.iter().copied().filter(|i| i.id == id).collect(),
                None => insts.to_vec(),
            };
            let status = match dep {
                Some(d) if d.state != RunState::Running => "down",
                Some(_) => best(&current).unwrap_or("down"),
                // Not in the Manifest: its own health check says.
                None if rec.is_some_and(|r| r.health.is_some()) => {
                    if src.probed.get(name).copied().unwrap_or(false) {
                        "up"
                    } else {
                        "down"
                    }
                }
                // What the Manifest said of itself holds only while it answers.
                None if (name == "manifest"
                    || rec.and_then(|r| r.service.as_deref()) == Some("manifest"))
                    && !src.manifest_ok =>
                {
                    "down"
                }
                None => best(insts).unwrap_or("down"),
            };
            let shown = current
                .iter()
                .chain(insts.iter())
                .max_by_key(|i| (i.status == Status::Up, i.last_heartbeat.clone()))
                .copied();
            let row = Row {
                name: name.to_owned(),
                status,
                version: shown
                    .map(|i| i.version.clone())
                    .or_else(|| dep.map(|d| d.version.clone())),
                url: shown
                    .and_then(|i| i.rest_url().map(str::to_owned))
                    .or_else(|| dep.map(|d| d.url.clone()))
                    .or_else(|| rec.and_then(|r| r.url.clone())),
                last_heartbeat: shown.map(|i| i.last_heartbeat.clone()),
                runtime: match (dep, rec) {
                    (Some(d), _) if !d.runtime.is_empty() => d.runtime.clone(),
                    (Some(d), _) if d.container.is_some() => "docker".into(),
                    (None, Some(r)) if r.container.is_some() => "docker".into(),
                    (Some(_), _) | (None, Some(_)) => "process".into(),
                    (None, None) => "-".into(),
                },
                pid: match dep {
                    Some(d) => d.pid,
                    None => rec.and_then(|r| r.pid),
                },
                container: match dep {
                    Some(d) => d.container.clone(),
                    None => rec.and_then(|r| r.container.clone()),
                },
                restarts: dep.map(|d| d.restarts),
                started_at: match dep {
                    Some(d) if d.state == RunState::Running => d.started_at.clone(),
                    Some(_) => None,
                    None => rec.and_then(|r| r.started_at.clone()),
                },
                state: dep.map(|d| d.state.as_str()),
                phase: rec.map(|r| r.phase),
                instances: insts.len(),
            };
            (name.to_owned(), row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, id: &str, status: Status) -> Instance {
        serde_json::from_value(serde_json::json!({
            "name": name, "id": id, "version": "1.0.0",
            "interfaces": {"REST": "http://127.0.0.1:1"}, "metadata": {},
            "status": status, "last_heartbeat": "2026-01-01T00:00:00Z",
            "registered_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    fn deployment(name: &str, state: RunState, id: &str) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            version: "1.0.0".into(),
            state,
            pid: Some(7),
            container: None,
            runtime: "process".into(),
            restarts: 1,
            url: "http://127.0.0.1:1".into(),
            started_at: None,
            instance_id: Some(id.into()),
            last_exit: None,
        }
    }

    #[test]
    fn replicas_show_as_their_units_and_etcd_members_by_their_health() {
        let dir = std::env::temp_dir().join(format!("chora-feed-{}", chora_api::random_hex(4)));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(
            dir.join("bootstrap-state.json"),
            r#"{"status":"completed","environment":"prod","current_phase":4,
                "completed_phases":[0,1,2,3,4],
                "services":{
                  "etcd-1":{"phase":1,"container":"e1","service":"etcd","health":"http://etcd-1:2379/health","started_at":"t"},
                  "etcd-2":{"phase":1,"container":"e2","service":"etcd","health":"http://etcd-2:2379/health","started_at":"t"},
                  "manifest-1":{"phase":1,"container":"m1","service":"manifest","instance_id":"manifest-1-aaaa","url":"http://127.0.0.1:8500","started_at":"t"},
                  "manifest-2":{"phase":1,"container":"m2","service":"manifest","instance_id":"manifest-2-bbbb","url":"http://127.0.0.1:8501","started_at":"t"}}}"#,
        )
        .unwrap();
        let mut reader = bootstrap::Reader::new(Some(dir.clone()));
        reader.refresh();
        let src = Sources {
            instances: vec![instance("manifest", "manifest-1-aaaa", Status::Up)],
            manifest_ok: true,
            deployments: BTreeMap::new(),
            bootstrap: reader,
            manifest_url: "http://127.0.0.1:8500".into(),
            probed: [("etcd-1".to_string(), true), ("etcd-2".to_string(), false)].into(),
        };
        let rows = compute(&src);
        let names: Vec<&str> = rows.keys().map(String::as_str).collect();
        assert_eq!(names, ["etcd-1", "etcd-2", "manifest-1", "manifest-2"]);
        assert_eq!(rows["manifest-1"].status, "up");
        assert_eq!(rows["manifest-1"].instances, 1);
        // Its instance is not in the Manifest: down, whatever the others say.
        assert_eq!(rows["manifest-2"].status, "down");
        assert_eq!(rows["etcd-1"].status, "up");
        assert_eq!(rows["etcd-2"].status, "down");
        assert_eq!(rows["etcd-1"].runtime, "docker");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_row_is_up_only_while_its_current_instance_is() {
        let mut src = Sources {
            instances: vec![
                instance("manifest", "manifest-1", Status::Up),
                instance("analyzer", "analyzer-old", Status::Up),
                instance("storage", "storage-1", Status::Up),
                instance("gateway", "gateway-1", Status::Unhealthy),
            ],
            manifest_ok: true,
            deployments: BTreeMap::new(),
            bootstrap: bootstrap::Reader::new(None),
            manifest_url: "http://127.0.0.1:1".into(),
            probed: BTreeMap::new(),
        };
        // Restarted: its new instance has not registered yet, the old one lingers.
        src.deployments.insert(
            "analyzer".into(),
            deployment("analyzer", RunState::Running, "analyzer-new"),
        );
        src.deployments.insert(
            "storage".into(),
            deployment("storage", RunState::Restarting, "storage-1"),
        );
        src.deployments.insert(
            "logger".into(),
            deployment("logger", RunState::Stopped, "logger-1"),
        );
        let rows = compute(&src);
        let status = |n: &str| rows[n].status;
        assert_eq!(status("manifest"), "up");
        assert_eq!(status("analyzer"), "down");
        assert_eq!(status("storage"), "down", "restarting is down");
        assert_eq!(status("logger"), "down");
        assert_eq!(status("gateway"), "unhealthy");
        assert_eq!(rows["storage"].state, Some("restarting"));
        assert_eq!(rows["storage"].runtime, "process");
        assert_eq!(rows["gateway"].runtime, "-");
        src.instances
            .push(instance("analyzer", "analyzer-new", Status::Up));
        src.manifest_ok = false;
        let rows = compute(&src);
        assert_eq!(rows["analyzer"].status, "up");
        assert_eq!(
            rows["manifest"].status, "down",
            "the Manifest does not answer"
        );
    }

    #[test]
    fn every_changed_row_is_its_own_numbered_update() {
        let (tx, _) = broadcast::channel(16);
        let feed = Feed {
            model: Mutex::new(Model {
                seq: 0,
                rows: BTreeMap::new(),
                meta: Meta {
                    manifest_reachable: true,
                    manifest_url: String::new(),
                    bootstrap: None,
                },
                tx,
            }),
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
