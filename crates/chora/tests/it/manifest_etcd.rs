//! The Manifest on etcd: stateless nodes, and what happens when etcd members,
//! Manifest nodes or the whole cluster go away.

use crate::{Backend, Registry};
use chora_api::ManifestClient;
use chora_api::manifest::{ListFilter, Registration};
use std::time::{Duration, Instant};

fn reg(name: &str, id: &str) -> Registration {
    Registration {
        name: name.into(),
        version: "1".into(),
        interfaces: [("REST".to_string(), "http://127.0.0.1:9".to_string())].into(),
        metadata: None,
        id: Some(id.into()),
    }
}

#[tokio::test]
async fn register_on_one_node_discover_watch_and_heartbeat_on_another() {
    let Some(b) = Backend::etcd("register_on_one_node") else {
        return;
    };
    let args = ["--no-auth", "--ttl", "3", "--heartbeat-interval", "1"];
    let a = Registry::start_on(b.clone(), chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    let c = Registry::start_on(b, chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    let on_a = ManifestClient::new([a.server.url()]).unwrap();
    let on_c = ManifestClient::new([c.server.url()]).unwrap();
    // A blocking read on node C wakes for a registration made on node A.
    let (_, idx) = on_c.watch(&ListFilter::default(), None).await.unwrap();
    let watcher = tokio::spawn(async move {
        on_c.watch(&ListFilter::default(), Some((idx, Duration::from_secs(10))))
            .await
    });
    let out = on_a.register(&reg("svc", "svc-1")).await.unwrap();
    let (list, idx2) = watcher.await.unwrap().unwrap();
    assert!(idx2 > idx);
    assert_eq!(
        list.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["svc-1"]
    );
    // The index is etcd's revision: the same on both nodes.
    let on_c = ManifestClient::new([c.server.url()]).unwrap();
    assert_eq!(
        on_a.watch(&ListFilter::default(), None).await.unwrap().1,
        on_c.watch(&ListFilter::default(), None).await.unwrap().1
    );
    // Heartbeats on C keep it alive past the TTL.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        on_c.heartbeat("svc", &out.id, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await; // the heartbeat period
    }
    assert_eq!(
        on_a.get("svc").await.unwrap().status,
        chora_api::manifest::Status::Up
    );
    on_c.deregister("svc", &out.id).await.unwrap();
    assert!(
        on_a.get("svc").await.unwrap_err().is_not_found()
            || on_a.list(&ListFilter::default()).await.unwrap().is_empty()
    );
}

#[tokio::test]
async fn a_three_member_cluster_survives_member_loss_node_loss_and_a_full_outage() {
    if !chora_testkit::etcd_available("a_three_member_cluster") {
        return;
    }
    let b = Backend::on(chora_testkit::EtcdCluster::start(3));
    let Backend::Etcd { cluster, .. } = b.clone() else {
        unreachable!()
    };
    let args = ["--no-auth", "--ttl", "30", "--heartbeat-interval", "5"];
    let mut a = Registry::start_on(b.clone(), chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    let c = Registry::start_on(b, chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    let client = ManifestClient::new([a.server.url(), c.server.url()])
        .unwrap()
        .with_timeout(Duration::from_secs(3));
    let mut acked: Vec<String> = Vec::new();

    // Registrations and heartbeats go on while one etcd member dies.
    let mut longest = Duration::ZERO;
    let mut last_ok = Instant::now();
    let start = Instant::now();
    let mut i = 0;
    let mut killed = false;
    while start.elapsed() < Duration::from_secs(4) {
        if !killed && start.elapsed() > Duration::from_secs(1) {
            // Safe: the cluster is behind an Arc only to share its URLs.
            cluster.lock().unwrap().members[0].kill();
            killed = true;
        }
        let id = format!("svc-{i}");
        i += 1;
        let ok = client.register(&reg("svc", &id)).await.is_ok()
            && client.heartbeat("svc", &id, None).await.is_ok();
        if ok {
            acked.push(id);
            longest = longest.max(last_ok.elapsed());
            last_ok = Instant::now();
        }
    }
    println!("longest gap between acknowledged writes while an etcd member died: {longest:?}");
    assert!(longest < Duration::from_secs(5), "gap {longest:?}");

    // A Manifest node dies: the client that knows both carries on.
    a.server.kill9();
    client
        .register(&reg("svc", "after-node-loss"))
        .await
        .expect("fails over to the other node");
    acked.push("after-node-loss".into());

    // The whole cluster stops: health says 503 and writes fail fast with JSON.
    for m in 1..3 {
        cluster.lock().unwrap().members[m].kill();
    }
    let http = reqwest::Client::new();
    let t = Instant::now();
    let h = http
        .get(format!("{}/v1/health", c.server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 503);
    let t = t.elapsed();
    let w = http
        .post(format!("{}/v1/services", c.server.url()))
        .json(&serde_json::json!({"name": "x", "version": "1", "interfaces": {}}))
        .send()
        .await
        .unwrap();
    assert!(w.status().is_server_error(), "{}", w.status());
    let body: serde_json::Value = w.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    println!("health answered 503 in {t:?} during the outage");
    // Reads still answer from the last known catalog.
    let list = http
        .get(format!("{}/v1/services", c.server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);

    // The cluster comes back: the node recovers by itself, nothing acknowledged lost.
    restart_all(&mut cluster.lock().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let single = ManifestClient::new([c.server.url()]).unwrap();
    loop {
        if let Ok(h) = single.health().await
            && h.status == "healthy"
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<String> = single
            .list(&ListFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|a| !ids.contains(a)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lost acknowledged registrations: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    single
        .register(&reg("svc", "after-recovery"))
        .await
        .expect("writes work again");
}

/// Starts every member again on its data directory.
fn restart_all(cluster: &mut chora_testkit::EtcdCluster) {
    for m in cluster.members.iter_mut() {
        m.kill();
    }
    cluster.start_all(false);
}
