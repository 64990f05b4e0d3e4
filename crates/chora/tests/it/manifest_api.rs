//! Every route, status code and field of the Manifest table in DESIGN.md §5:
//! the contract suite, run unchanged on SQLite and on etcd.

use crate::{Backend, Registry, assert_error, index_of};
use serde_json::json;
use std::time::{Duration, Instant};

fn reg_body(name: &str) -> serde_json::Value {
    json!({"name": name, "version": "1.2.3", "interfaces": {"REST": "http://127.0.0.1:8800"},
           "metadata": {"description": "d", "tags": ["core"], "dependencies": ["manifest"],
                        "environment": "dev", "team": "infra"}})
}

async fn register_returns_201_then_200_for_a_known_id(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let (s, first) = r.post("/v1/services", &reg_body("analyzer"), None).await;
    assert_eq!(s, 201, "{first}");
    let id = first["id"].as_str().unwrap();
    let hex = id.strip_prefix("analyzer-").expect("id is <name>-<8 hex>");
    assert!(
        hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(first["name"], "analyzer");
    assert_eq!(first["version"], "1.2.3");
    assert_eq!(first["status"], "up");
    assert_eq!(first["heartbeat_interval"], 10);
    assert_eq!(first["heartbeat_timeout"], 30);
    assert!(first["registered_at"].as_str().unwrap().ends_with('Z'));

    let mut again = reg_body("analyzer");
    again["id"] = json!(id);
    let (s, second) = r.post("/v1/services", &again, None).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second, first, "the same id returns the same record");

    let (_, list) = r.get("/v1/services").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "no duplicate instance");

    let mut chosen = reg_body("analyzer");
    chosen["id"] = json!("analyzer-mine");
    let (s, b) = r.post("/v1/services", &chosen, None).await;
    assert_eq!((s, b["id"].as_str()), (201, Some("analyzer-mine")));
}

async fn get_by_exact_name_returns_one_object_with_instances(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let a = r.register("test-service", &[], None).await;
    let b = r.register("test-service", &[], None).await;

    let (s, e) = r.get("/v1/services/test").await;
    assert_error(&(s, e), 404);

    let (s, svc) = r.get("/v1/services/test-service").await;
    assert_eq!(s, 200);
    assert_eq!(svc["name"], "test-service");
    assert_eq!(svc["status"], "up");
    assert_eq!(svc["version"], "1.0.0");
    assert_eq!(svc["interfaces"]["REST"], "http://127.0.0.1:9");
    let ids: Vec<_> = svc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ids, want);
    let inst = &svc["instances"][0];
    for field in [
        "name",
        "id",
        "version",
        "interfaces",
        "metadata",
        "status",
        "last_heartbeat",
        "registered_at",
    ] {
        assert!(!inst[field].is_null(), "instance lacks {field}: {inst}");
    }
}

async fn heartbeat_is_204_and_404_and_reports_status(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let id = r.register("analyzer", &[], None).await;
    let path = format!("/v1/services/analyzer/{id}/heartbeat");
    assert_eq!(r.put(&path, None, None).await.0, 204);
    assert_error(
        &r.put(
            "/v1/services/analyzer/analyzer-00000000/heartbeat",
            None,
            None,
        )
        .await,
        404,
    );
    assert_error(
        &r.put("/v1/services/nobody/x-1/heartbeat", None, None).await,
        404,
    );

    assert_eq!(
        r.put(&path, Some(&json!({"status": "unhealthy"})), None)
            .await
            .0,
        204
    );
    let (_, svc) = r.get("/v1/services/analyzer").await;
    assert_eq!(svc["status"], "unhealthy");
    assert_eq!(svc["instances"][0]["status"], "unhealthy");
    assert_eq!(
        r.put(&path, Some(&json!({"status": "up"})), None).await.0,
        204
    );
    let (_, svc) = r.get("/v1/services/analyzer").await;
    assert_eq!(svc["status"], "up");

    assert_error(
        &r.put(&path, Some(&json!({"status": "sideways"})), None)
            .await,
        400,
    );
}

async fn deregister_is_204_and_idempotent(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let id = r.register("analyzer", &[], None).await;
    let path = format!("/v1/services/analyzer/{id}");
    assert_eq!(r.delete(&path, None).await.0, 204);
    assert_eq!(
        r.delete(&path, None).await.0,
        204,
        "already gone is still 204"
    );
    assert_error(&r.get("/v1/services/analyzer").await, 404);
}

async fn list_filters_by_status_tag_and_name_sorted(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let b1 = r.register("beta", &["core"], None).await;
    let a1 = r.register("alpha", &["edge"], None).await;
    let b2 = r.register("beta", &["edge"], None).await;
    r.put(
        &format!("/v1/services/beta/{b2}/heartbeat"),
        Some(&json!({"status": "unhealthy"})),
        None,
    )
    .await;

    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, all) = r.get("/v1/services").await;
    assert_eq!(s, 200);
    let mut betas = vec![b1.clone(), b2.clone()];
    betas.sort();
    let mut want = vec![a1.clone()];
    want.extend(betas.clone());
    assert_eq!(ids(&all), want, "sorted by name then id");

    assert_eq!(ids(&r.get("/v1/services?status=up").await.1), {
        let mut v = vec![a1.clone(), b1.clone()];
        v.sort();
        v
    });
    assert_eq!(
        ids(&r.get("/v1/services?status=unhealthy").await.1),
        vec![b2.clone()]
    );
    assert_eq!(
        ids(&r.get("/v1/services?tag=core").await.1),
        vec![b1.clone()]
    );
    assert_eq!(ids(&r.get("/v1/services?name=beta").await.1), betas);
    assert_eq!(
        ids(&r.get("/v1/services?name=bet").await.1),
        Vec::<String>::new(),
        "exact name"
    );
    assert_eq!(
        ids(&r.get("/v1/services?tag=edge&status=up").await.1),
        vec![a1]
    );

    assert_error(&r.get("/v1/services?status=down").await, 400);
    assert_error(&r.get("/v1/services?colour=red").await, 400);
    assert_error(&r.get("/v1/services?name=Bad%20Name").await, 400);
    assert_error(&r.get("/v1/services?index=abc").await, 400);
}

async fn health_and_metrics_on_both_paths(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    r.register("analyzer", &[], None).await;
    for path in ["/v1/health", "/health"] {
        let (s, h) = r.get(path).await;
        assert_eq!(s, 200);
        assert_eq!(h["status"], "healthy");
        assert_eq!(h["services_registered"], 1);
        assert_eq!(h["storage"], b.kind());
        assert!(h["version"].is_string());
    }
    r.get("/v1/services/nope").await;
    for path in ["/v1/metrics", "/metrics"] {
        let resp = r.http.get(r.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.contains(r#"manifest_http_requests_total{endpoint="/v1/services",method="POST",status="201"} 1"#), "{text}");
        assert!(text.contains(r#"manifest_http_requests_total{endpoint="/v1/services/{name}",method="GET",status="404"} 1"#), "{text}");
        assert!(
            text.contains("# TYPE manifest_http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"manifest_services_registered{status="up"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"manifest_services_registered{status="unhealthy"} 0"#),
            "{text}"
        );
    }
}

async fn every_get_carries_the_index_and_blocking_reads_wake_on_change(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let resp = r.http.get(r.url("/v1/services")).send().await.unwrap();
    let idx = index_of(&resp);
    let resp = r.http.get(r.url("/v1/services/none")).send().await.unwrap();
    assert_eq!(index_of(&resp), idx, "404s carry the index too");

    // A blocking read with nothing changing returns after `wait`, same index.
    let t = Instant::now();
    let (s, _, same) = r.watch("/v1/services", idx, "300ms").await;
    assert_eq!(s, 200);
    assert_eq!(same, idx);
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "returned after {:?}",
        t.elapsed()
    );

    // A registration wakes it long before its wait runs out.
    let watcher = {
        let r2 = reqwest::Client::new();
        let url = r.url(&format!("/v1/services?index={idx}&wait=30s"));
        tokio::spawn(async move {
            let t = Instant::now();
            let resp = r2.get(url).send().await.unwrap();
            let i = index_of(&resp);
            (
                t.elapsed(),
                i,
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    // Wait for the watcher's request to be parked on the server: the metrics count
    // requests only when they finish, so poll the watcher task instead of sleeping.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !watcher.is_finished(),
        "the blocking read returned before any change"
    );
    r.register("analyzer", &[], None).await;
    let (took, new_idx, body) = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the blocking read woke")
        .unwrap();
    assert!(
        took >= Duration::from_millis(100),
        "it waited for the change: {took:?}"
    );
    assert!(new_idx > idx);
    assert_eq!(body[0]["name"], "analyzer");

    // Blocking reads of one service work the same way.
    let (s, _, i2) = r.watch("/v1/services/analyzer", new_idx, "50ms").await;
    assert_eq!((s, i2), (200, new_idx));
    assert_error(&r.get("/v1/services/analyzer?tag=x").await, 400);
}

async fn instances_turn_unhealthy_then_expire_after_the_ttl(b: Backend) {
    // Fractions of a second work on SQLite; etcd leases have whole seconds, so
    // the suite uses values valid on both.
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth", "--ttl", "3", "--heartbeat-interval", "1"],
    );
    let t0 = Instant::now();
    let (s, body) = r.post("/v1/services", &reg_body("analyzer"), None).await;
    assert_eq!(s, 201);
    assert_eq!(body["heartbeat_interval"], 1);
    assert_eq!(body["heartbeat_timeout"], 3);

    // Follow the changes with blocking reads: up → unhealthy → gone.
    let (_, svc) = r.get("/v1/services/analyzer").await;
    assert_eq!(svc["status"], "up");
    let mut idx = index_of(&r.http.get(r.url("/v1/services")).send().await.unwrap());
    let mut seen_unhealthy = None;
    loop {
        let (_, list, i) = r.watch("/v1/services", idx, "5s").await;
        idx = i;
        match list.as_array().unwrap().first() {
            Some(inst) if inst["status"] == "unhealthy" && seen_unhealthy.is_none() => {
                seen_unhealthy = Some(t0.elapsed())
            }
            Some(_) => {}
            None => break,
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never expired");
    }
    let unhealthy_at = seen_unhealthy.expect("went through unhealthy");
    let gone_at = t0.elapsed();
    assert!(
        unhealthy_at >= Duration::from_millis(400),
        "unhealthy too early: {unhealthy_at:?}"
    );
    assert!(
        gone_at >= Duration::from_millis(800),
        "removed too early: {gone_at:?}"
    );
    assert_error(&r.get("/v1/services/analyzer").await, 404);
    let id = body["id"].as_str().unwrap();
    assert_error(
        &r.put(&format!("/v1/services/analyzer/{id}/heartbeat"), None, None)
            .await,
        404,
    );
}

async fn heartbeats_keep_an_instance_up_past_the_ttl(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth", "--ttl", "3", "--heartbeat-interval", "1"],
    );
    let id = r.register("analyzer", &[], None).await;
    let path = format!("/v1/services/analyzer/{id}/heartbeat");
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(4500) {
        assert_eq!(r.put(&path, None, None).await.0, 204);
        tokio::time::sleep(Duration::from_millis(500)).await; // the client's heartbeat period
    }
    let (_, svc) = r.get("/v1/services/analyzer").await;
    assert_eq!(svc["status"], "up");
}

async fn bad_input_gets_a_json_4xx_and_stores_nothing(b: Backend) {
    let r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let raw = |body: &'static str| {
        let req = r
            .http
            .post(r.url("/v1/services"))
            .header("content-type", "application/json")
            .body(body);
        async move { crate::status_json(req.send().await.unwrap()).await }
    };
    assert_error(&raw("{not json").await, 400);
    assert_error(&raw("").await, 400);
    assert_error(&raw("[]").await, 400);
    assert_error(
        &raw(r#"{"name":"a","version":1,"interfaces":{}}"#).await,
        400,
    );
    assert_error(
        &raw(r#"{"name":"a","version":"1","interfaces":{"REST":5}}"#).await,
        400,
    );
    assert_error(&raw(r#"{"name":"a","version":"1"}"#).await, 400);
    assert_error(
        &raw(r#"{"name":"a","version":"1","interfaces":{},"surprise":true}"#).await,
        400,
    );
    assert_error(
        &raw(r#"{"name":"a","version":"","interfaces":{}}"#).await,
        400,
    );
    assert_error(
        &raw(r#"{"name":"a","version":"1","interfaces":{},"id":"bad id"}"#).await,
        400,
    );
    for bad in ["Analyzer", "-a", "a b", "a/b", &"a".repeat(64)] {
        let got = r
            .post(
                "/v1/services",
                &json!({"name": bad, "version": "1", "interfaces": {}}),
                None,
            )
            .await;
        assert_error(&got, 400);
        assert_eq!(got.1["error"], "invalid_name", "{bad}");
    }
    let msg = raw(r#"{"name":"a","version":1,"interfaces":{}}"#).await.1["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("line 1 column"),
        "the message says where: {msg}"
    );

    let huge = json!({"name": "a", "version": "1", "interfaces": {}, "metadata": {"description": "x".repeat(70_000)}});
    let got = r.post("/v1/services", &huge, None).await;
    assert_error(&got, 413);

    assert_error(&r.get("/v1/nope").await, 404);
    let resp = r.http.patch(r.url("/v1/services")).send().await.unwrap();
    assert_error(&crate::status_json(resp).await, 405);
    assert_error(&r.get("/v1/services/UPPER").await, 400);

    let (_, list) = r.get("/v1/services").await;
    assert_eq!(list, json!([]), "nothing half-stored");
    let (_, h) = r.get("/v1/health").await;
    assert_eq!(h["status"], "healthy", "the server survived");
}

async fn sigterm_shuts_down_gracefully_and_releases_blocking_reads(b: Backend) {
    let mut r = Registry::start_on(
        b.clone(),
        chora_testkit::temp_dir(),
        "127.0.0.1:0",
        &["--no-auth"],
    );
    let resp = r.http.get(r.url("/v1/services")).send().await.unwrap();
    let idx = index_of(&resp);
    let url = r.url(&format!("/v1/services?index={idx}&wait=60s"));
    let watcher = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!watcher.is_finished());
    let t = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let s = r.server.terminate();
        (s, r)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    let answered = tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .expect("watcher released")
        .unwrap();
    assert_eq!(answered.ok(), Some(200));
}

crate::contract!(
    register_returns_201_then_200_for_a_known_id,
    get_by_exact_name_returns_one_object_with_instances,
    heartbeat_is_204_and_404_and_reports_status,
    deregister_is_204_and_idempotent,
    list_filters_by_status_tag_and_name_sorted,
    health_and_metrics_on_both_paths,
    every_get_carries_the_index_and_blocking_reads_wake_on_change,
    instances_turn_unhealthy_then_expire_after_the_ttl,
    heartbeats_keep_an_instance_up_past_the_ttl,
    bad_input_gets_a_json_4xx_and_stores_nothing,
    sigterm_shuts_down_gracefully_and_releases_blocking_reads,
);
