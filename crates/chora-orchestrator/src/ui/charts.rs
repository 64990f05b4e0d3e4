//! The charts' task (DESIGN.md §16): every [`SAMPLE`] it adds a point of
//! request rate and p99 latency to each row's chart, from a Prometheus when one
//! is configured ([`super::prom`]), else from the services' own `/metrics`
//! ([`super::scrape`]), and sends a numbered `chart` update for each chart
//! whose drawing changed, through the same stream as the rows.
//!
//! Which rows there are and where their instances are comes from the feed
//! (its `targets`, recomputed with the rows). Bounded: a chart holds at most
//! the last 15 minutes; a row that goes loses its chart.

use super::feed::Feed;
use super::model::{Chart, Point};
use super::page;
use super::prom::Prometheus;
use super::rows::Target;
use super::scrape::{self, Sampler};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often a point is added (and Prometheus' step).
pub const SAMPLE: Duration = Duration::from_secs(5);
/// Scrapes of `/metrics` in flight at once.
const PARALLEL: usize = 16;

/// Where the charts' numbers come from.
pub enum Source {
    /// The orchestrator scrapes each instance's `/metrics` itself.
    Metrics(Sampler),
    Prometheus(Prometheus),
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::Metrics(_) => "metrics",
            Source::Prometheus(_) => "prometheus",
        }
    }
}

/// Starts the task; it ends when the feed is dropped.
pub fn start(feed: &Arc<Feed>, source: Source, http: reqwest::Client) {
    tokio::spawn(run(Arc::downgrade(feed), source, http));
}

async fn run(weak: std::sync::Weak<Feed>, mut source: Source, http: reqwest::Client) {
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A hash of each chart's last drawing: an update only when it changes.
    let mut drawn: HashMap<String, u64> = HashMap::new();
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(feed) = weak.upgrade() else { return };
        let targets = feed.targets.borrow().clone();
        drop(feed);
        let points = match &mut source {
            Source::Metrics(sampler) => Ok(sample(sampler, &http, &targets).await),
            Source::Prometheus(p) => p.fetch(&targets, unix_secs()).await,
        };
        let points = match points {
            Ok(p) => {
                failing = false;
                p
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "the dashboard's charts cannot reach Prometheus");
                }
                continue;
            }
        };
        let Some(feed) = weak.upgrade() else { return };
        let mut m = feed.model.lock().unwrap_or_else(|e| e.into_inner());
        m.charts.retain(|n, _| targets.contains_key(n));
        drawn.retain(|n, _| targets.contains_key(n));
        for (name, pts) in points {
            let chart = m
                .charts
                .entry(name.clone())
                .or_insert_with(|| Chart::new(source.name()));
            for p in pts {
                chart.push(p);
            }
            let html = page::charts(Some(chart));
            let h = fnv(&html);
            if drawn.insert(name.clone(), h) != Some(h) && m.rows.contains_key(&name) {
                m.send(
                    "chart",
                    serde_json::json!({ "name": name, "html": html }).to_string(),
                );
            }
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Scrapes every target's instances once and makes each row's point.
async fn sample(
    sampler: &mut Sampler,
    http: &reqwest::Client,
    targets: &BTreeMap<String, Target>,
) -> BTreeMap<String, Vec<Point>> {
    let urls: BTreeSet<&str> = targets
        .values()
        .flat_map(|t| t.urls.iter().map(String::as_str))
        .collect();
    let owned: Vec<(String, reqwest::Client)> =
        urls.iter().map(|u| (u.to_string(), http.clone())).collect();
    let now = Instant::now();
    let at_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Owned strings and a cloned client: the futures of a spawned task's
    // stream must not borrow (a higher-ranked lifetime would be asked of them).
    let scraped: Vec<(String, Option<scrape::Sample>)> = futures_util::stream::iter(owned)
        .map(|(u, http): (String, reqwest::Client)| async move {
            let s = scrape_one(&http, &u).await;
            (u, s)
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for (u, s) in scraped {
        sampler.observe(&u, now, s);
    }
    sampler.retain(&urls);
    targets
        .iter()
        .map(|(name, t)| {
            let p = sampler.point(&t.urls, now);
            let point = Point {
                at_ms,
                rate: p.map(|p| p.0),
                p99: p.and_then(|p| p.1),
            };
            (name.clone(), vec![point])
        })
        .collect()
}

async fn scrape_one(http: &reqwest::Client, base: &str) -> Option<scrape::Sample> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let r = http.get(&url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(scrape::parse(&r.text().await.ok()?))
}
