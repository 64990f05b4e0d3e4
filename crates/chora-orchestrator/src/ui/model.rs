//! The dashboard's model: what the page shows (one [`Row`] per service, its
//! [`Chart`] of request rate and p99 latency, the [`Meta`] beside them, the
//! bootstrap's [`BootstrapView`]) and the numbered [`Update`]s that carry its
//! changes to open pages. Plain data: the feed (`feed.rs`, `rows.rs`,
//! `bootstrap.rs`, `charts.rs`) fills it, the renderer (`page.rs`) draws it;
//! this file uses neither.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

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

/// One phase of the bootstrap panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseView {
    pub phase: u8,
    pub name: &'static str,
    /// `completed`, `failed`, `in_progress` or `pending`.
    pub status: &'static str,
    pub duration_ms: Option<u64>,
}

/// The bootstrap panel: the state file's run and the audit log's durations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootstrapView {
    pub status: String,
    pub environment: String,
    pub current_phase: u8,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub last_error: Option<String>,
    pub phases: Vec<PhaseView>,
}

/// How far back a chart reaches.
pub const CHART_SPAN: Duration = Duration::from_secs(15 * 60);

/// A service's request rate and p99 latency over the last [`CHART_SPAN`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    /// `prometheus` or `metrics` (the orchestrator's own sampling of `/metrics`).
    pub source: &'static str,
    /// Oldest first, none older than [`CHART_SPAN`] before the newest.
    pub points: VecDeque<Point>,
}

/// One moment of a [`Chart`]; `None` where nothing was known (the service did
/// not answer, or served no request for a latency to be measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix time, milliseconds.
    pub at_ms: u64,
    /// Requests per second.
    pub rate: Option<f64>,
    /// Seconds.
    pub p99: Option<f64>,
}

impl Chart {
    pub fn new(source: &'static str) -> Chart {
        Chart {
            source,
            points: VecDeque::new(),
        }
    }

    /// Adds a point (after the newest; an older one is ignored) and forgets
    /// what is now older than the span.
    pub fn push(&mut self, p: Point) {
        if self.points.back().is_some_and(|b| b.at_ms >= p.at_ms) {
            return;
        }
        self.points.push_back(p);
        let horizon = p.at_ms.saturating_sub(CHART_SPAN.as_millis() as u64);
        while self.points.front().is_some_and(|f| f.at_ms < horizon) {
            self.points.pop_front();
        }
    }
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
    /// By row name; a row without one has no chart yet.
    pub charts: BTreeMap<String, Chart>,
    pub meta: Meta,
    tx: broadcast::Sender<Arc<Update>>,
}

impl Model {
    /// An empty model whose updates go to `tx`'s subscribers.
    pub fn new(meta: Meta, tx: broadcast::Sender<Arc<Update>>) -> Model {
        Model {
            seq: 0,
            rows: BTreeMap::new(),
            charts: BTreeMap::new(),
            meta,
            tx,
        }
    }

    /// The rows in the order the page lists them: by bootstrap phase, then name.
    pub fn ordered(&self) -> Vec<&Row> {
        let mut v: Vec<&Row> = self.rows.values().collect();
        v.sort_by(|a, b| (a.phase.unwrap_or(9), &a.name).cmp(&(b.phase.unwrap_or(9), &b.name)));
        v
    }

    /// The updates after the last one sent so far.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Update>> {
        self.tx.subscribe()
    }

    /// Numbers and sends one event to every open page.
    pub fn send(&mut self, event: &str, data: String) {
        self.seq += 1;
        let _ = self.tx.send(Arc::new(Update {
            seq: self.seq,
            sse: sse(event, self.seq, &data),
        }));
    }
}

/// One server-sent event (`data` must be one line, as JSON text is).
pub fn sse(event: &str, id: u64, data: &str) -> String {
    format!("event: {event}\nid: {id}\ndata: {data}\n\n")
}
