//! The orchestrator, the gateway and the capability services as real processes:
//! deploy through the orchestrator, reach through the gateway.

use crate::{Registry, chora_bin, status_json};
use chora_api::auth::mint_admin_token;
use chora_testkit::{Server, spawn_server};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Manifest + orchestrator + gateway, auth on, fast heartbeats.
pub struct Ecosystem {
    pub manifest: Registry,
    pub orchestrator: Server,
    pub gateway: Server,
    pub admin: String,
    pub keys: Vec<(String, String)>,
    pub http: reqwest::Client,
}

impl Ecosystem {
    pub fn start() -> Ecosystem {
        let dir = chora_testkit::temp_dir();
        let (creds, keys) = chora_testkit::write_credentials(
            dir.path(),
            &[
                "orchestrator",
                "gateway",
                "analyzer",
                "executor",
                "storage",
                "monitor",
                "logger",
            ],
        );
        let creds = creds.display().to_string();
        let manifest = Registry::start_in(
            dir,
            "127.0.0.1:0",
            &[
                "--credentials",
                &creds,
                "--ttl",
                "3",
                "--heartbeat-interval",
                "0.2",
            ],
        );
        let root = manifest.dir.path();
        let murl = manifest.server.url();
        let logs = root.join("logs").display().to_string();
        let orchestrator = spawn_server(
            chora_bin(),
            root,
            &[
                "orchestrator",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--manifest-url",
                &murl,
                "--credentials",
                &creds,
                "--logs",
                &logs,
                "--stop-grace",
                "3",
            ],
            &[],
        );
        let key = |name: &str| keys.iter().find(|(k, _)| k == name).unwrap().1.clone();
        let gateway = spawn_server(
            chora_bin(),
            root,
            &[
                "gateway",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--manifest-url",
                &murl,
                "--upstream-timeout",
                "1",
            ],
            &[("CHORA_API_KEY", &key("api_key_gateway"))],
        );
        let secret = key("jwt_secret");
        Ecosystem {
            admin: mint_admin_token(&secret, "test", Duration::from_secs(600)),
            manifest,
            orchestrator,
            gateway,
            keys,
            http: reqwest::Client::new(),
        }
    }

    pub fn key(&self, service: &str) -> String {
        let k = format!("api_key_{service}");
        self.keys.iter().find(|(n, _)| *n == k).unwrap().1.clone()
    }

    pub fn spec(&self, name: &str) -> Value {
        json!({
            "name": name, "version": "1.0.0", "port": chora_testkit::free_port(),
            "environment": {
                "CHORA_API_KEY": self.key(name),
                "CHORA_DATA_DIR": self.manifest.dir.path().join("data").display().to_string(),
            },
        })
    }

    pub async fn orch(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.orchestrator.url()))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(b);
        }
        status_json(req.send().await.unwrap()).await
    }

    pub async fn deploy(&self, spec: &Value) -> Value {
        let (s, body) = self
            .orch(reqwest::Method::POST, "/v1/deploy", Some(spec))
            .await;
        assert_eq!(s, 201, "{body}");
        body
    }

    /// The orchestrator's row for `name`.
    pub async fn row(&self, name: &str) -> Value {
        let (_, list) = self.orch(reqwest::Method::GET, "/v1/services", None).await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// `POST /api/v1/analyzer/analyze` through the gateway.
    pub async fn analyze(&self, text: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/analyzer/analyze", self.gateway.url()))
            .json(&json!({ "text": text }))
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    /// Waits (blocking reads on the Manifest) until `name` has an up instance
    /// other than `not_id`; returns its id.
    pub async fn wait_up(&self, name: &str, not_id: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut index = 0;
        loop {
            let (_, list, i) = self
                .manifest
                .watch(&format!("/v1/services?name={name}&status=up"), index, "2s")
                .await;
            index = i;
            if let Some(inst) = list
                .as_array()
                .unwrap()
                .iter()
                .find(|x| Some(x["id"].as_str().unwrap()) != not_id)
            {
                return inst["id"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "{name} never came up");
        }
    }

    /// Waits until the gateway routes to `name` (its table follows the Manifest
    /// asynchronously and exposes no signal of its own, so this polls).
    pub async fn wait_routable(&self, expect: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, _) = self.analyze("ping").await;
            if s == expect {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never answered {expect}, last {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn alive(pid: u64) -> bool {
    // A zombie still has /proc/<pid>; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

#[tokio::test]
async fn deploy_then_reach_through_the_gateway_and_control_it() {
    let e = Ecosystem::start();
    let spec = e.spec("analyzer");
    let answer = e.deploy(&spec).await;
    assert_eq!(answer["name"], "analyzer");
    assert_eq!(answer["status"], "running");
    assert_eq!(answer["url"], format!("http://127.0.0.1:{}", spec["port"]));
    e.wait_up("analyzer", None).await;
    e.wait_routable(200).await;

    let r = e
        .http
        .post(format!("{}/api/v1/analyzer/analyze?x=1", e.gateway.url()))
        .header("x-request-id", "req-42")
        .json(&json!({"text": "to be or not to be"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("x-request-id").unwrap(), "req-42");
    let (s, body) = status_json(r).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["words"], 6);
    assert_eq!(body["top_words"][0], json!({"word": "be", "count": 2}));

    let row = e.row("analyzer").await;
    assert_eq!(row["state"], "running");
    assert_eq!(row["restarts"], 0);
    assert_eq!(row["version"], "1.0.0");
    assert!(row["started_at"].is_string());
    let pid = row["pid"].as_u64().unwrap();
    assert!(alive(pid));
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&argv).contains(&e.key("analyzer")),
        "no secret in argv"
    );

    // stop: the process ends, the instance leaves discovery, the gateway says 503.
    let (s, b) = e
        .orch(reqwest::Method::POST, "/v1/services/analyzer/stop", None)
        .await;
    assert_eq!((s, &b["state"]), (200, &json!("stopped")), "{b}");
    assert!(!alive(pid), "the process is gone");
    assert_eq!(
        e.manifest.get("/v1/services?name=analyzer").await.1,
        json!([])
    );
    e.wait_routable(503).await;
    let (_, err) = e.analyze("x").await;
    assert_eq!(err["error"], "no_instance");

    // start and restart bring it back.
    let (s, b) = e
        .orch(reqwest::Method::POST, "/v1/services/analyzer/start", None)
        .await;
    assert_eq!((s, &b["state"]), (200, &json!("running")));
    let id1 = e.wait_up("analyzer", None).await;
    let (s, b) = e
        .orch(reqwest::Method::POST, "/v1/services/analyzer/restart", None)
        .await;
    assert_eq!((s, &b["state"]), (200, &json!("running")));
    e.wait_up("analyzer", Some(&id1)).await;
    e.wait_routable(200).await;
    assert_ne!(e.row("analyzer").await["pid"].as_u64().unwrap(), pid);

    // The service's own log file holds its output.
    let log = std::fs::read_to_string(e.manifest.dir.path().join("logs/analyzer.log")).unwrap();
    assert!(log.contains("listening on http://127.0.0.1"), "{log}");

    // delete: stopped and forgotten.
    let (s, _) = e
        .orch(reqwest::Method::DELETE, "/v1/services/analyzer", None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(e.row("analyzer").await, Value::Null);
    let (s, _) = e
        .orch(reqwest::Method::POST, "/v1/services/analyzer/start", None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_killed_child_leaves_discovery_at_once_and_comes_back() {
    let e = Ecosystem::start();
    e.deploy(&e.spec("analyzer")).await;
    let id = e.wait_up("analyzer", None).await;
    e.wait_routable(200).await;
    let pid = e.row("analyzer").await["pid"].as_u64().unwrap();

    let index = crate::index_of(
        &e.http
            .get(e.manifest.url("/v1/services?name=analyzer"))
            .send()
            .await
            .unwrap(),
    );
    let t = Instant::now();
    // SAFETY: signalling a pid the orchestrator started and still supervises.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // Follow the Manifest until the killed instance is gone.
    let mut idx = index;
    loop {
        let (_, list, i) = e
            .manifest
            .watch("/v1/services?name=analyzer", idx, "2s")
            .await;
        idx = i;
        if !list
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str())
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "still registered");
    }
    let gone_after = t.elapsed();
    assert!(
        gone_after < Duration::from_secs(1),
        "left discovery after {gone_after:?}"
    );

    let new_id = e.wait_up("analyzer", Some(&id)).await;
    assert_ne!(new_id, id);
    e.wait_routable(200).await;
    let row = e.row("analyzer").await;
    assert_eq!(row["restarts"], 1, "{row}");
    assert_eq!(row["state"], "running");
    assert_ne!(row["pid"].as_u64().unwrap(), pid);
    assert!(
        row["last_exit"].as_str().unwrap().contains("signal 9"),
        "{row}"
    );
    let (s, body) = e.analyze("back again").await;
    assert_eq!((s, body["words"].as_u64()), (200, Some(2)));
}

#[tokio::test]
async fn a_retried_deploy_with_the_same_idempotency_key_starts_nothing_new() {
    let e = Ecosystem::start();
    let spec = e.spec("analyzer");
    let send = |key: &'static str, spec: Value| {
        let req = e
            .http
            .post(format!("{}/v1/deploy", e.orchestrator.url()))
            .bearer_auth(&e.admin)
            .header("idempotency-key", key)
            .json(&spec);
        async move { status_json(req.send().await.unwrap()).await }
    };
    let first = send("deploy-1", spec.clone()).await;
    assert_eq!(first.0, 201);
    let pid = e.row("analyzer").await["pid"].as_u64().unwrap();
    let again = send("deploy-1", spec.clone()).await;
    assert_eq!(again, first, "the first answer again");
    let row = e.row("analyzer").await;
    assert_eq!(
        (row["pid"].as_u64(), row["restarts"].as_u64()),
        (Some(pid), Some(0)),
        "nothing new started"
    );
    let (_, list) = e.orch(reqwest::Method::GET, "/v1/services", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let mut other = spec.clone();
    other["version"] = json!("2.0.0");
    assert_eq!(
        send("deploy-1", other.clone()).await.0,
        422,
        "a reused key with another body"
    );

    // Another spec under a new key replaces the running one.
    assert_eq!(send("deploy-2", other).await.0, 201);
    let row = e.row("analyzer").await;
    assert_eq!(row["version"], "2.0.0");
    assert_ne!(row["pid"].as_u64(), Some(pid));
    assert!(!alive(pid), "the old process was stopped");
}

#[tokio::test]
async fn deploys_with_a_stale_fencing_token_are_refused() {
    let e = Ecosystem::start();
    let send = |token: &'static str| {
        let req = e
            .http
            .post(format!("{}/v1/deploy", e.orchestrator.url()))
            .bearer_auth(&e.admin)
            .header("x-chora-fencing-token", token)
            .json(&e.spec("analyzer"));
        async move { status_json(req.send().await.unwrap()).await }
    };
    assert_eq!(send("5").await.0, 201);
    let (s, b) = send("3").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("stale_fencing_token")),
        "{b}"
    );
    assert_eq!(send("7").await.0, 201, "a newer holder may deploy");
}

#[tokio::test]
async fn every_action_with_a_stale_fencing_token_is_refused_and_raises_the_bar_for_all() {
    let e = Ecosystem::start();
    let base = e.orchestrator.url();
    let deploy = e
        .http
        .post(format!("{base}/v1/deploy"))
        .bearer_auth(&e.admin)
        .header("x-chora-fencing-token", "5")
        .json(&e.spec("analyzer"));
    assert_eq!(status_json(deploy.send().await.unwrap()).await.0, 201);
    // A stop carrying a newer token raises the bar for every action.
    let act = |method: reqwest::Method, path: &str, token: &'static str| {
        let req = e
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&e.admin)
            .header("x-chora-fencing-token", token);
        async move { status_json(req.send().await.unwrap()).await }
    };
    assert_eq!(
        act(reqwest::Method::POST, "/v1/services/analyzer/stop", "7")
            .await
            .0,
        200
    );
    for (method, path) in [
        (reqwest::Method::POST, "/v1/services/analyzer/start"),
        (reqwest::Method::POST, "/v1/services/analyzer/restart"),
        (reqwest::Method::POST, "/v1/services/analyzer/stop"),
        (reqwest::Method::DELETE, "/v1/services/analyzer"),
    ] {
        let (s, b) = act(method, path, "6").await;
        assert_eq!(
            (s, b["error"].as_str()),
            (409, Some("stale_fencing_token")),
            "{path}: {b}"
        );
    }
    assert_eq!(
        e.row("analyzer").await["state"],
        "stopped",
        "a refused start acted"
    );
    // The newest holder, and an operator's request without a token, may act.
    assert_eq!(
        act(reqwest::Method::POST, "/v1/services/analyzer/start", "7")
            .await
            .0,
        200
    );
    let (s, _) = status_json(
        e.http
            .post(format!("{base}/v1/services/analyzer/restart"))
            .bearer_auth(&e.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn the_orchestrator_refuses_requests_without_an_admin_token() {
    let e = Ecosystem::start();
    let url = format!("{}/v1/deploy", e.orchestrator.url());
    let spec = e.spec("analyzer");
    let (s, b) = status_json(e.http.post(&url).json(&spec).send().await.unwrap()).await;
    assert_eq!(s, 401, "{b}");
    assert!(b["error"].is_string());
    let (s, _) = status_json(
        e.http
            .post(&url)
            .bearer_auth(e.key("analyzer"))
            .json(&spec)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 403, "a service key is not an admin token");
    let forged = mint_admin_token("not-the-secret", "x", Duration::from_secs(60));
    let (s, _) = status_json(
        e.http
            .post(&url)
            .bearer_auth(forged)
            .json(&spec)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = status_json(
        e.http
            .get(format!("{}/v1/services", e.orchestrator.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    let (_, list) = e.orch(reqwest::Method::GET, "/v1/services", None).await;
    assert_eq!(list, json!([]), "nothing was deployed");
    // Bad specs are 400s.
    let (s, _) = e
        .orch(
            reqwest::Method::POST,
            "/v1/deploy",
            Some(&json!({"name": "Bad", "version": "1", "port": 1})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, b) = e
        .orch(
            reqwest::Method::POST,
            "/v1/deploy",
            Some(&json!({"name": "custom", "version": "1", "port": 9})),
        )
        .await;
    assert_eq!(s, 400, "no command for a non-capability: {b}");
    let (s, b) = e
        .orch(reqwest::Method::POST, "/v1/deploy", Some(&json!({"name": "custom", "version": "1", "port": 9, "command": ["/nonexistent/program"]})))
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("spawn_failed")), "{b}");
}

#[tokio::test]
async fn the_gateway_answers_404_for_unknown_services_and_keeps_routing_while_the_registry_is_down()
{
    let mut e = Ecosystem::start();
    e.deploy(&e.spec("analyzer")).await;
    e.wait_up("analyzer", None).await;
    e.wait_routable(200).await;
    let r = e
        .http
        .get(format!("{}/api/v1/nothing-here/x", e.gateway.url()))
        .send()
        .await
        .unwrap();
    let (s, b) = status_json(r).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));

    e.manifest.server.kill9();
    // Once the gateway knows the registry is gone, it routes from its last table.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = status_json(
            e.http
                .get(format!("{}/health", e.gateway.url()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if h["registry"]
            .as_str()
            .is_some_and(|r| r.starts_with("unreachable"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never noticed: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        let (s, body) = e.analyze(&format!("still here {i}")).await;
        assert_eq!(s, 200, "request {i} during the outage: {body}");
    }
    let (_, h) = status_json(
        e.http
            .get(format!("{}/health", e.gateway.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(h["status"], "healthy");
}

#[tokio::test]
async fn stopping_the_orchestrator_stops_its_children_first() {
    let mut e = Ecosystem::start();
    e.deploy(&e.spec("analyzer")).await;
    e.deploy(&e.spec("logger")).await;
    let pids = [
        e.row("analyzer").await["pid"].as_u64().unwrap(),
        e.row("logger").await["pid"].as_u64().unwrap(),
    ];
    e.wait_up("logger", None).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = e.orchestrator.terminate();
        (s, e)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{:?}", status.0);
    for pid in pids {
        assert!(!alive(pid), "child {pid} outlived the orchestrator");
    }
}
