//! Metrics you can see (DESIGN.md §16): the Manifest's discovery document for
//! Prometheus, read by a real Prometheus (Debian's `prometheus`, started here on
//! a free port with a temp config and data dir), and the dashboard's charts
//! drawn from that Prometheus. Where `prometheus` is not installed these tests
//! skip with a line saying so, unless `CHORA_REQUIRE_PROMETHEUS=1` (CI).

use crate::bootstrap::Site;
use crate::ui::cdp::Browser;
use crate::ui::charts::{analyzer_traffic, charts_drawn};
use crate::ui::{all_up, open_dashboard};
use crate::{Registry, chora_bin, index_of};
use chora_testkit::{Server, spawn_server, spawn_until};
use chora_testkit::{chromium_available, prometheus, prometheus_available};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A Prometheus process that discovers its targets at `sd_url` (refreshed every
/// second) and scrapes them every second; killed on drop.
pub struct Prometheus {
    pub server: Server,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(sd_url: &str) -> Prometheus {
        let dir = chora_testkit::temp_dir();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: chora\n    http_sd_configs:\n\
                 \x20     - url: \"{sd_url}\"\n        refresh_interval: 1s\n"
            ),
        )
        .unwrap();
        let port = chora_testkit::free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Its own readiness line (a log line on stderr).
        let server = spawn_until(
            std::path::Path::new(&prometheus()),
            dir.path(),
            &args,
            &[],
            "prometheus".into(),
            |line| {
                line.contains("Server is ready to receive web requests")
                    .then_some(addr)
            },
        );
        Prometheus {
            server,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url()))
            .query(query)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// The active targets of the chora job.
    pub async fn targets(&self) -> Vec<Value> {
        let d = self.api("/api/v1/targets", &[("state", "active")]).await;
        d["activeTargets"].as_array().cloned().unwrap_or_default()
    }

    /// An instant query's result vector.
    pub async fn query(&self, q: &str) -> Vec<Value> {
        let d = self.api("/api/v1/query", &[("query", q)]).await;
        d["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `check` holds of the active targets (Prometheus has no
    /// signal to wait on: its API is asked every 100 ms).
    pub async fn wait_targets(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Duration {
        let t = Instant::now();
        loop {
            let targets = self.targets().await;
            if check(&targets) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "Prometheus: {what} not seen within {within:?}; active targets: {targets:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The active target of `service`, if Prometheus has one.
fn target_of<'a>(targets: &'a [Value], service: &str) -> Option<&'a Value> {
    targets.iter().find(|t| t["labels"]["service"] == service)
}

fn scraped_up(targets: &[Value], service: &str) -> bool {
    target_of(targets, service).is_some_and(|t| t["health"] == "up")
}

#[tokio::test]
async fn prometheus_targets_lists_each_up_instance_as_a_target_group_with_blocking_reads() {
    let r = Registry::start(&["--no-auth", "--heartbeat-interval", "0.5", "--ttl", "30"]);
    let reg = |name: &str, id: &str, rest: &str, env: Option<&str>| {
        let mut metadata = json!({"tags": ["t"]});
        if let Some(e) = env {
            metadata["environment"] = e.into();
        }
        json!({"name": name, "id": id, "version": "2.0.1",
               "interfaces": {"REST": rest, "gRPC": "127.0.0.1:1"}, "metadata": metadata})
    };
    let (s, _) = r
        .post(
            "/v1/services",
            &reg("web", "web-a", "http://127.0.0.1:8081", Some("staging")),
            None,
        )
        .await;
    assert_eq!(s, 201);
    let resp = r
        .http
        .get(r.url("/v1/prometheus/targets"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let index = index_of(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!([{"targets": ["127.0.0.1:8081"],
                "labels": {"service": "web", "instance": "web-a", "version": "2.0.1",
                           "environment": "staging"}}])
    );

    // A blocking read with the current index waits (here its whole 300 ms)…
    let t = Instant::now();
    let resp = r
        .http
        .get(r.url(&format!("/v1/prometheus/targets?index={index}&wait=300ms")))
        .send()
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(index_of(&resp), index);
    // …and returns as soon as an instance is added, with the new index.
    let waiting = {
        let r2 = r.http.clone();
        let url = r.url(&format!("/v1/prometheus/targets?index={index}&wait=10s"));
        tokio::spawn(async move {
            let t = Instant::now();
            let resp = r2.get(url).send().await.unwrap();
            (
                t.elapsed(),
                index_of(&resp),
                resp.json::<Value>().await.unwrap(),
            )
        })
    };
    let (s, _) = r
        .post(
            "/v1/services",
            &reg("api", "api-b", "https://api.internal", None),
            None,
        )
        .await;
    assert_eq!(s, 201);
    let (took, new_index, body) = waiting.await.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "the blocking read took {took:?}"
    );
    assert!(new_index > index);
    assert_eq!(
        body,
        json!([
            {"targets": ["api.internal:443"],
             "labels": {"service": "api", "instance": "api-b", "version": "2.0.1",
                        "__scheme__": "https"}},
            {"targets": ["127.0.0.1:8081"],
             "labels": {"service": "web", "instance": "web-a", "version": "2.0.1",
                        "environment": "staging"}},
        ])
    );

    // An instance that reports itself unhealthy is no target.
    let (s, _) = r
        .put(
            "/v1/services/web/web-a/heartbeat",
            Some(&json!({"status": "unhealthy"})),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, body) = r.get("/v1/prometheus/targets").await;
    assert_eq!(s, 200);
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["labels"]["service"], "api");
    // Only `index` and `wait` are parameters here.
    crate::assert_error(&r.get("/v1/prometheus/targets?status=up").await, 400);
}

/// A capability service of this binary, registering itself in `manifest`.
fn capability(name: &str, manifest: &str, dir: &std::path::Path) -> Server {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    spawn_server(
        chora_bin(),
        dir,
        &[
            "capability",
            "serve",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--manifest-url",
            manifest,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
}

#[tokio::test]
async fn a_real_prometheus_scrapes_services_registered_later_and_drops_the_gone_and_the_dead() {
    let test = "prometheus::a_real_prometheus_scrapes_services_registered_later_and_drops_the_gone_and_the_dead";
    if !prometheus_available(test) {
        return;
    }
    // Heartbeats every 0.5 s: an instance is unhealthy 1 s after its last one.
    let r = Registry::start(&["--no-auth", "--heartbeat-interval", "0.5", "--ttl", "30"]);
    let prom = Prometheus::start(&r.url("/v1/prometheus/targets"));
    // Prometheus asks the registry before anything is registered: no target.
    prom.wait_targets("an empty discovery", Duration::from_secs(10), |t| {
        t.is_empty()
    })
    .await;
    assert!(prom.targets().await.is_empty());

    // Registered after Prometheus started: discovered and scraped, with the
    // registry's labels, nothing done to Prometheus.
    let mut analyzer = capability("analyzer", &r.server.url(), r.dir.path());
    let mut storage = capability("storage", &r.server.url(), r.dir.path());
    let took = prom
        .wait_targets(
            "analyzer and storage scraped",
            Duration::from_secs(15),
            |t| scraped_up(t, "analyzer") && scraped_up(t, "storage"),
        )
        .await;
    eprintln!("registered → scraped up by Prometheus in {took:?}");
    let targets = prom.targets().await;
    let a = target_of(&targets, "analyzer").unwrap();
    assert_eq!(
        a["scrapeUrl"],
        format!("http://{}/metrics", analyzer.addr),
        "{a}"
    );
    assert_eq!(a["labels"]["version"], env!("CARGO_PKG_VERSION"), "{a}");
    assert!(
        a["labels"]["instance"]
            .as_str()
            .unwrap()
            .starts_with("analyzer-"),
        "the instance label is the registry's instance id: {a}"
    );
    let up = prom.query("up{service=\"analyzer\"}").await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1");
    // The service's own families are in Prometheus, under the registry's labels
    // (its request counter counts a scrape once it is answered: the second
    // scrape shows the first).
    let t = Instant::now();
    while prom
        .query("analyzer_http_requests_total{service=\"analyzer\",endpoint=\"/metrics\"}")
        .await
        .is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no analyzer series in Prometheus"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stopped (it deregisters): gone from Prometheus' targets, its `up` stale.
    storage.terminate();
    let took = prom
        .wait_targets("storage gone", Duration::from_secs(10), |t| {
            target_of(t, "storage").is_none()
        })
        .await;
    eprintln!("deregistered → out of Prometheus' targets in {took:?}");
    // Killed (no deregistration): gone once its heartbeats stop (1 s) and
    // Prometheus next asks.
    analyzer.kill9();
    let took = prom
        .wait_targets("analyzer gone", Duration::from_secs(10), |t| {
            target_of(t, "analyzer").is_none()
        })
        .await;
    eprintln!("killed → out of Prometheus' targets in {took:?}");
    assert!(prom.targets().await.is_empty());
    let t = Instant::now();
    while !prom.query("up{service=\"analyzer\"}").await.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "up{{service=\"analyzer\"}} is still answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_dashboard_draws_its_charts_from_prometheus_when_one_is_configured() {
    let test = "prometheus::the_dashboard_draws_its_charts_from_prometheus_when_one_is_configured";
    if !prometheus_available(test) || !chromium_available(test) {
        return;
    }
    let site = Site::new();
    let prom = Prometheus::start(&format!(
        "http://127.0.0.1:{}/v1/prometheus/targets",
        site.port("manifest")
    ));
    // The orchestrator is told where Prometheus is.
    let template = site.template();
    let home_arg = "--home, \"${CHORA_HOME}\"]";
    assert_eq!(template.matches(home_arg).count(), 1, "{template}");
    site.write_config(&template.replace(
        home_arg,
        &format!(
            "--home, \"${{CHORA_HOME}}\", --prometheus-url, \"{}\"]",
            prom.url()
        ),
    ));
    site.ok(&["bootstrap", "--skip-validation"]);
    let browser = Browser::launch();
    let page = open_dashboard(&site, &browser);
    all_up(&page);
    let traffic = analyzer_traffic(&site);
    let (_, took) = page.wait_for(
        &charts_drawn("analyzer", "prometheus"),
        Duration::from_secs(40),
    );
    eprintln!(
        "the charts drew {} requests from Prometheus {took:?} after they began",
        traffic.ok()
    );
    page.wait_for(
        &charts_drawn("gateway", "prometheus"),
        Duration::from_secs(20),
    );
    drop(traffic);
    drop(prom);
}
