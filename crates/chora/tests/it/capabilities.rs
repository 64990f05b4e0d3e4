//! What each capability service does, deployed for real through the orchestrator
//! and reached through the gateway.

use crate::ecosystem::Ecosystem;
use crate::status_json;
use serde_json::{Value, json};

async fn call(
    e: &Ecosystem,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = e
        .http
        .request(method, format!("{}/api/v1{path}", e.gateway.url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    status_json(req.send().await.unwrap()).await
}

/// Deploys `names` and waits until each is routable through the gateway.
async fn deploy_all(e: &Ecosystem, names: &[&str]) {
    for n in names {
        e.deploy(&e.spec(n)).await;
    }
    for n in names {
        e.wait_up(n, None).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while call(e, reqwest::Method::GET, &format!("/{n}/health"), None)
            .await
            .0
            != 200
        {
            assert!(std::time::Instant::now() < deadline, "{n} not routable");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn storage_keeps_objects_across_a_restart() {
    let e = Ecosystem::start();
    deploy_all(&e, &["storage"]).await;
    let url = format!("{}/api/v1/storage/objects/reports/q3.txt", e.gateway.url());
    let r = e
        .http
        .put(&url)
        .header("content-type", "text/plain")
        .body("forty-two")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = e
        .http
        .put(&url)
        .header("content-type", "text/plain")
        .body("forty-three")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "replacing is 200");

    let old = e.row("storage").await["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, b) = e
        .orch(reqwest::Method::POST, "/v1/services/storage/restart", None)
        .await;
    assert_eq!(s, 200, "{b}");
    e.wait_up("storage", Some(&old)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = e.http.get(&url).send().await.unwrap();
        if r.status() == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "forty-three");

    let (s, keys) = call(&e, reqwest::Method::GET, "/storage/objects", None).await;
    assert_eq!((s, keys), (200, json!({"keys": ["reports/q3.txt"]})));
    assert_eq!(e.http.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(e.http.delete(&url).send().await.unwrap().status(), 204);
    let (s, b) = status_json(e.http.get(&url).send().await.unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn logger_appends_and_reads_since() {
    let e = Ecosystem::start();
    deploy_all(&e, &["logger"]).await;
    let (s, b) = call(
        &e,
        reqwest::Method::POST,
        "/logger/logs",
        Some(json!({"level": "info", "msg": "one"})),
    )
    .await;
    assert_eq!((s, b["first_seq"].as_u64()), (201, Some(1)));
    let (s, b) = call(
        &e,
        reqwest::Method::POST,
        "/logger/logs",
        Some(json!([{"msg": "two"}, {"msg": "three"}])),
    )
    .await;
    assert_eq!((s, b["last_seq"].as_u64()), (201, Some(3)));
    let (_, all) = call(&e, reqwest::Method::GET, "/logger/logs", None).await;
    let msgs: Vec<_> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["msg"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, ["one", "two", "three"]);
    let (_, tail) = call(&e, reqwest::Method::GET, "/logger/logs?since=2", None).await;
    assert_eq!(tail["entries"].as_array().unwrap().len(), 1);
    assert_eq!(tail["next"], 3);
    let ts = all["entries"][1]["ts"].as_str().unwrap().to_owned();
    let (_, by_time) = call(
        &e,
        reqwest::Method::GET,
        &format!("/logger/logs?since={ts}"),
        None,
    )
    .await;
    assert!(by_time["entries"].as_array().unwrap().len() >= 2);
    assert_eq!(
        call(
            &e,
            reqwest::Method::POST,
            "/logger/logs",
            Some(json!([1, 2]))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        call(
            &e,
            reqwest::Method::GET,
            "/logger/logs?since=yesterday",
            None
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn executor_runs_tasks_and_reaches_analyzer_through_the_gateway() {
    let e = Ecosystem::start();
    deploy_all(&e, &["analyzer", "executor"]).await;
    let (s, b) = call(
        &e,
        reqwest::Method::POST,
        "/executor/execute",
        Some(json!({"task": "analyze", "input": {"text": "a b a"}})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["task"], "analyze");
    assert_eq!(b["result"]["words"], 3);
    assert_eq!(
        b["result"]["top_words"][0],
        json!({"word": "a", "count": 2})
    );
    let (s, b) = call(
        &e,
        reqwest::Method::POST,
        "/executor/execute",
        Some(json!({"task": "checksum", "input": "abc"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        b["result"]["hex"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let (s, b) = call(
        &e,
        reqwest::Method::POST,
        "/executor/execute",
        Some(json!({"task": "sleep", "input": {"ms": 5}})),
    )
    .await;
    assert_eq!((s, b["result"]["slept_ms"].as_u64()), (200, Some(5)));
    let (s, b) = call(
        &e,
        reqwest::Method::POST,
        "/executor/execute",
        Some(json!({"task": "fly"})),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("unknown_task")));
    // The gateway's timeout (1 s in this ecosystem) turns a slow upstream into a 504.
    let (s, b) = call(
        &e,
        reqwest::Method::POST,
        "/executor/execute",
        Some(json!({"task": "sleep", "input": {"ms": 3000}})),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (504, Some("upstream_timeout")));
}

#[tokio::test]
async fn monitor_reports_the_health_of_every_registered_service() {
    let e = Ecosystem::start();
    deploy_all(&e, &["monitor", "analyzer"]).await;
    let (s, b) = call(&e, reqwest::Method::GET, "/monitor/status", None).await;
    assert_eq!(s, 200, "{b}");
    let names: Vec<&str> = b["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    for n in ["analyzer", "gateway", "monitor", "orchestrator"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(b["status"], "healthy", "{b}");
    assert_eq!(b["unhealthy"], 0);
}
