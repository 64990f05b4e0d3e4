//! Each row's charts of request rate and p99 latency (DESIGN.md §16), drawing
//! real traffic sent through the gateway, in headless Chromium.
//! `CHORA_UPDATE_SCREENSHOT=1` writes the screenshots in `docs/` (after two
//! minutes of varied traffic, so that the charts have a shape).

use super::cdp::{Browser, Page};
use super::{all_up, open_dashboard};
use crate::bootstrap::{SERVICES, Site};
use chora_testkit::chromium_available;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Requests through the gateway from a thread of its own, one after another
/// with `pause(seconds since the start)` between them, until dropped.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub(crate) fn start(
        method: &'static str,
        url: String,
        body: &'static str,
        pause: fn(f64) -> Duration,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c = reqwest::Client::new();
                let t0 = Instant::now();
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                while !s.load(Ordering::Relaxed) {
                    let r = c
                        .request(method.clone(), &url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(pause(t0.elapsed().as_secs_f64())).await;
                }
            });
        });
        Traffic {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    /// Requests answered with a 2xx so far.
    pub(crate) fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `POST /api/v1/analyzer/analyze` through the site's gateway, about 40 a second.
pub(crate) fn analyzer_traffic(site: &Site) -> Traffic {
    Traffic::start(
        "POST",
        format!(
            "http://127.0.0.1:{}/api/v1/analyzer/analyze",
            site.port("gateway")
        ),
        r#"{"text": "the quick brown fox jumps over the lazy dog"}"#,
        |_| Duration::from_millis(25),
    )
}

/// The JavaScript for `service`'s chart of `kind` (`rate` or `p99`).
pub(crate) fn chart(service: &str, kind: &str) -> String {
    format!("document.querySelector('tr[data-service=\"{service}\"] svg[data-chart=\"{kind}\"]')")
}

/// JavaScript: true when `service`'s charts come from `source` and both draw a
/// value above zero: a highest value, a newest value, and a line that rises
/// off the baseline.
pub(crate) fn charts_drawn(service: &str, source: &str) -> String {
    let (rate, p99) = (chart(service, "rate"), chart(service, "p99"));
    format!(
        "(() => {{ const r = {rate}, q = {p99}; if (!r || !q) return false; \
           if (r.closest('.charts').dataset.source !== '{source}') return false; \
           const rises = (svg) => {{ const h = Number(svg.getAttribute('height')); \
             const ys = [...svg.querySelector('path.line').getAttribute('d') \
               .matchAll(/L[0-9.]+,([0-9.]+)/g)].map(m => Number(m[1])); \
             return ys.some(y => y < h - 2); }}; \
           return [r, q].every(svg => Number(svg.dataset.max) > 0 && \
             Number(svg.dataset.last) > 0 && rises(svg)); }})()"
    )
}

#[test]
fn each_row_charts_request_rate_and_p99_live_from_real_traffic_through_the_gateway() {
    let test =
        "ui::each_row_charts_request_rate_and_p99_live_from_real_traffic_through_the_gateway";
    if !chromium_available(test) {
        return;
    }
    let site = Site::new();
    // No validation: nothing but this test sends the analyzer a request.
    site.ok(&["bootstrap", "--skip-validation"]);
    let browser = Browser::launch();
    let page = open_dashboard(&site, &browser);
    all_up(&page);
    let loads = page.eval("performance.getEntriesByType('navigation').length");
    // Every row has both charts, sampled from the services' /metrics.
    let names = serde_json::to_string(&SERVICES).unwrap();
    page.wait_for(
        &format!(
            "{names}.every(n => {{ const c = document.querySelector(`tr[data-service=\"${{n}}\"] .charts`); \
               return c && c.dataset.source === 'metrics' && \
                 c.querySelector('svg[data-chart=\"rate\"]') && c.querySelector('svg[data-chart=\"p99\"]'); }})"
        ),
        Duration::from_secs(20),
    );
    // Before any traffic: a measured zero (the observers' /metrics and /health
    // requests are not traffic), no latency.
    let rate = chart("analyzer", "rate");
    page.wait_for(
        &format!("{rate}.dataset.last === '0'"),
        Duration::from_secs(20),
    );
    assert_eq!(page.eval(&format!("{rate}.dataset.max")), "0");
    assert_eq!(
        page.eval(&format!("{}.dataset.last", chart("analyzer", "p99"))),
        ""
    );

    let traffic = analyzer_traffic(&site);
    let (_, took) = page.wait_for(
        &charts_drawn("analyzer", "metrics"),
        Duration::from_secs(30),
    );
    assert!(traffic.ok() > 0);
    // The gateway carried it: its row draws it too.
    page.wait_for(&charts_drawn("gateway", "metrics"), Duration::from_secs(15));
    eprintln!(
        "the charts drew {} requests {took:?} after they began: rate {}/s, p99 {} s",
        traffic.ok(),
        page.eval(&format!("{rate}.dataset.last")),
        page.eval(&format!("{}.dataset.last", chart("analyzer", "p99"))),
    );
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation').length"),
        loads,
        "the page was reloaded"
    );
    // All of it on the page's one event stream: rows and charts changing every
    // few seconds never open another (the browser allows six connections).
    assert_eq!(page.eval("window.choraDashboard.snapshots"), 1);
    drop(traffic);
    screenshots(&site, &page);
}

/// `CHORA_UPDATE_SCREENSHOT=1`: the page in light and dark, in `docs/`.
fn screenshots(site: &Site, page: &Page) {
    if std::env::var("CHORA_UPDATE_SCREENSHOT").as_deref() != Ok("1") {
        return;
    }
    // Two minutes of traffic that rises and falls, to several services.
    let gw = format!("http://127.0.0.1:{}/api/v1", site.port("gateway"));
    /// The pause after a request: `fast` at the crest of a wave of `period` s.
    fn wave(t: f64, period: f64, fast: f64) -> Duration {
        let busy = 0.5 + 0.5 * (t * std::f64::consts::TAU / period).sin();
        Duration::from_secs_f64(fast / (0.1 + busy))
    }
    let _traffic = [
        Traffic::start(
            "POST",
            format!("{gw}/analyzer/analyze"),
            r#"{"text": "to be or not to be"}"#,
            |t| wave(t, 70.0, 0.02),
        ),
        Traffic::start(
            "PUT",
            format!("{gw}/storage/objects/screenshot"),
            r#"{"hello": "world"}"#,
            |t| wave(t, 45.0, 0.06),
        ),
        Traffic::start(
            "POST",
            format!("{gw}/logger/logs"),
            r#"{"level": "info", "message": "hello"}"#,
            |t| wave(t, 100.0, 0.04),
        ),
        Traffic::start(
            "POST",
            format!("{gw}/executor/execute"),
            r#"{"task": "checksum", "input": "abc"}"#,
            |t| wave(t, 60.0, 0.1),
        ),
        Traffic::start("GET", format!("{gw}/monitor/status"), "", |t| {
            wave(t, 90.0, 0.5)
        }),
    ];
    std::thread::sleep(Duration::from_secs(120));
    page.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": 1360, "height": 860, "deviceScaleFactor": 1, "mobile": false }),
    );
    page.eval("document.querySelector('a[data-logs=\"storage\"]').click(); true");
    // Its last lines (after the traffic, its readiness line may be further back).
    page.wait_for(
        "document.getElementById('log-name').textContent === 'storage' && \
         document.getElementById('log').textContent.length > 40",
        Duration::from_secs(5),
    );
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    std::fs::create_dir_all(&docs).unwrap();
    for (scheme, file) in [("light", "dashboard.png"), ("dark", "dashboard-dark.png")] {
        page.color_scheme(scheme);
        // Two frames for the new colours to be painted.
        page.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))");
        std::fs::write(docs.join(file), page.screenshot()).unwrap();
    }
    page.color_scheme("light");
}
