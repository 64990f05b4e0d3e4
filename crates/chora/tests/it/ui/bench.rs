//! The dashboard's weight and speed (`bench/ui.sh` runs this, ignored by default):
//! bytes a first visit transfers, time to first render and to a live table, and
//! the updates per second the page applies while 50 services change status.

use super::cdp::Browser;
use super::{http, login_url, session_cookie};
use crate::bootstrap::Site;
use chora_testkit::chromium_available;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FLIPPERS: usize = 50;

fn env_secs(name: &str, default: f64) -> Duration {
    Duration::from_secs_f64(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[test]
#[ignore = "a benchmark: bench/ui.sh runs it"]
fn bench_the_dashboard() {
    if !chromium_available("ui::bench::bench_the_dashboard") {
        return;
    }
    let site = Site::new();
    site.ok(&["bootstrap", "--skip-validation"]);
    let browser = Browser::launch();

    // First visits: a cold one, then warm ones (CSS and JS cached).
    let mut rows = Vec::new();
    for visit in 0..5 {
        let page = browser.page();
        page.call("Page.bringToFront", json!({}));
        page.navigate(&login_url(&site));
        page.wait_for(
            "window.choraDashboard && window.choraDashboard.liveAt",
            Duration::from_secs(10),
        );
        // Paint timing may be recorded a little after the table went live.
        let t = Instant::now();
        while page
            .eval("performance.getEntriesByName('first-contentful-paint').length")
            .as_u64()
            == Some(0)
            && t.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let v = page.eval(
            "(() => { const n = performance.getEntriesByType('navigation')[0]; \
               const res = performance.getEntriesByType('resource') \
                 .filter(r => !r.name.includes('/ui/events')); \
               const fcp = performance.getEntriesByName('first-contentful-paint')[0]; \
               return { doc: n.transferSize, doc_body: n.encodedBodySize, \
                 res: res.reduce((a, r) => a + r.transferSize, 0), \
                 res_body: res.reduce((a, r) => a + r.encodedBodySize, 0), \
                 fcp: fcp ? fcp.startTime : null, dcl: n.domContentLoadedEventEnd, \
                 live: window.choraDashboard.liveAt }; })()",
        );
        println!("BENCH visit {visit}: {v}");
        rows.push(v);
    }
    let cold = &rows[0];
    let warm = |k: &str| {
        let mut xs: Vec<f64> = rows[1..].iter().filter_map(|r| r[k].as_f64()).collect();
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        xs[xs.len() / 2]
    };
    println!(
        "BENCH first visit: {} bytes transferred (page {} + assets {}; bodies {} + {})",
        cold["doc"].as_f64().unwrap() + cold["res"].as_f64().unwrap(),
        cold["doc"],
        cold["res"],
        cold["doc_body"],
        cold["res_body"]
    );
    println!(
        "BENCH first visit: first contentful paint {:.0} ms, DOMContentLoaded {:.0} ms, live table {:.0} ms (from the login click, redirect included)",
        cold["fcp"].as_f64().unwrap_or(f64::NAN),
        cold["dcl"].as_f64().unwrap(),
        cold["live"].as_f64().unwrap()
    );
    println!(
        "BENCH warm visits (median of 4): {} bytes, first contentful paint {:.0} ms, live table {:.0} ms",
        warm("doc") + warm("res"),
        warm("fcp"),
        warm("live")
    );

    // The event stream's first message (the snapshot) for the 8 services.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{}", site.port("orchestrator"));
    let snapshot_bytes = rt.block_on(async {
        let c = http();
        let r = c.get(login_url(&site)).send().await.unwrap();
        let cookie = session_cookie(&r);
        let mut r = c
            .get(format!("{base}/ui/events"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        r.chunk().await.unwrap().unwrap().len()
    });
    println!("BENCH snapshot event with 8 services: {snapshot_bytes} bytes");

    // 50 more services, each flipping up <-> unhealthy, paced then flat out.
    let page = browser.page();
    page.call("Page.bringToFront", json!({}));
    page.navigate(&login_url(&site));
    page.wait_for(
        "window.choraDashboard && window.choraDashboard.liveAt",
        Duration::from_secs(10),
    );
    let manifest = format!("http://127.0.0.1:{}", site.port("manifest"));
    let token = {
        let creds =
            chora_api::auth::Credentials::load(&site.home().join("credentials.json")).unwrap();
        chora_api::auth::mint_admin_token(
            creds.jwt_secret().unwrap(),
            "bench",
            Duration::from_secs(600),
        )
    };
    let ids: Vec<(String, String)> = rt.block_on(async {
        let c = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..FLIPPERS {
            let name = format!("bench-{i:02}");
            let r: Value = c
                .post(format!("{manifest}/v1/services"))
                .bearer_auth(&token)
                .json(&json!({"name": name, "version": "1.0.0",
                    "interfaces": {"REST": format!("http://127.0.0.1:{}", 20000 + i)}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.push((name, r["id"].as_str().unwrap().to_owned()));
        }
        ids
    });
    page.wait_for(
        "document.querySelectorAll('#services tbody tr').length === 58",
        Duration::from_secs(10),
    );
    let window = env_secs("WINDOW", 5.0);
    for (label, per_service_hz) in [("10 changes/s per service", 10.0), ("flat out", 0.0)] {
        let before = page.eval("window.choraDashboard.events").as_f64().unwrap();
        let m0 = page.metrics();
        let sent = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        rt.block_on(flip_all(
            &manifest,
            &token,
            &ids,
            per_service_hz,
            window,
            &sent,
        ));
        let took = t.elapsed().as_secs_f64();
        // Until every row shows its last status (up).
        let (_, settle) = page.wait_for(
            "[...document.querySelectorAll('#services tbody tr')].filter(r => r.dataset.service.startsWith('bench-')).every(r => r.dataset.status === 'up')",
            Duration::from_secs(30),
        );
        let after = page.eval("window.choraDashboard.events").as_f64().unwrap();
        let m1 = page.metrics();
        let busy = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
        let sent = sent.load(Ordering::Relaxed) as f64;
        println!(
            "BENCH 50 services, {label}: {:.0} status changes/s sent to the Manifest, {:.0} row updates/s applied by the page, \
             page main thread busy {:.0} % (script {:.0} %), all rows right {:.0} ms after the last change",
            sent / took,
            (after - before) / (took + settle.as_secs_f64()),
            100.0 * busy("TaskDuration") / (took + settle.as_secs_f64()),
            100.0 * busy("ScriptDuration") / (took + settle.as_secs_f64()),
            settle.as_secs_f64() * 1000.0
        );
    }
}

/// Every service heartbeats `unhealthy` / `up` by turns for `window`
/// (`hz` changes per second each; 0: as fast as the Manifest answers), ending up.
async fn flip_all(
    manifest: &str,
    token: &str,
    ids: &[(String, String)],
    hz: f64,
    window: Duration,
    sent: &Arc<AtomicU64>,
) {
    let c = reqwest::Client::new();
    let end = Instant::now() + window;
    let tasks: Vec<_> = ids
        .iter()
        .map(|(name, id)| {
            let (c, sent) = (c.clone(), sent.clone());
            let url = format!("{manifest}/v1/services/{name}/{id}/heartbeat");
            let token = token.to_owned();
            tokio::spawn(async move {
                let mut up = false;
                let mut next = Instant::now();
                while Instant::now() < end || !up {
                    up = !up;
                    let status = if up { "up" } else { "unhealthy" };
                    let r = c
                        .put(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "status": status }))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if hz > 0.0 {
                        next += Duration::from_secs_f64(1.0 / hz);
                        tokio::time::sleep_until(next.into()).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
