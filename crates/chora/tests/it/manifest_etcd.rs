//! The Manifest on etcd: stateless nodes, and what happens when etcd members,
//! Manifest nodes or the whole cluster go away.

use crate::{Backend, Registry, index_of};
use chora_api::ManifestClient;
use chora_api::manifest::{ListFilter, Registration, STALE_HEADER};
use std::collections::BTreeSet;
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
    let Some(b) = Backend::etcd(
        "manifest_etcd::register_on_one_node_discover_watch_and_heartbeat_on_another",
    ) else {
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
    // A deregistration on C reaches A through A's watch: a blocking read on A
    // wakes with the instance gone.
    let (_, mut idx) = on_a.watch(&ListFilter::default(), None).await.unwrap();
    on_c.deregister("svc", &out.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (list, next) = on_a
            .watch(&ListFilter::default(), Some((idx, Duration::from_secs(5))))
            .await
            .unwrap();
        if list.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "node A still lists {list:?}");
        idx = next;
    }
    assert!(on_a.get("svc").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn a_three_member_cluster_survives_member_loss_node_loss_and_a_full_outage() {
    if !chora_testkit::etcd_available(
        "manifest_etcd::a_three_member_cluster_survives_member_loss_node_loss_and_a_full_outage",
    ) {
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

    // Until then the node's reads are current: no staleness header.
    let http = reqwest::Client::new();
    let read = |path: &str| http.get(format!("{}{path}", c.server.url())).send();
    let stale = |r: &reqwest::Response| {
        r.headers()
            .get(STALE_HEADER)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(stale(&read("/v1/services").await.unwrap()), None);

    // The whole cluster stops: health says 503 and writes fail fast with JSON.
    for m in 1..3 {
        cluster.lock().unwrap().members[m].kill();
    }
    let t = Instant::now();
    let h = read("/v1/health").await.unwrap();
    assert_eq!(h.status(), 503);
    let t = t.elapsed();
    let t_write = Instant::now();
    let w = http
        .post(format!("{}/v1/services", c.server.url()))
        .json(&serde_json::json!({"name": "x", "version": "1", "interfaces": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(w.status(), 503);
    let body: serde_json::Value = w.json().await.unwrap();
    let t_write = t_write.elapsed();
    assert_eq!(body["error"], "storage_unavailable", "{body}");
    let message = body["message"].as_str().unwrap();
    let endpoints = cluster.lock().unwrap().urls().join(",");
    assert!(
        message.contains(&format!("etcd at {endpoints} unreachable: ")),
        "{message}"
    );
    // A deregistration is answered 503 too, as fast (DESIGN §15: every write
    // within 1 s; nothing took either, so neither happened).
    let t_delete = Instant::now();
    let d = http
        .delete(format!("{}/v1/services/svc/svc-0", c.server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 503);
    let t_delete = t_delete.elapsed();
    println!(
        "during the outage: health answered 503 in {t:?}, a registration in {t_write:?}, a deregistration in {t_delete:?}"
    );
    assert!(t_write < Duration::from_secs(1), "{t_write:?}");
    assert!(t_delete < Duration::from_secs(1), "{t_delete:?}");
    // Reads still answer from the last known catalog, and say since when and why
    // it may be out of date (once the node has seen its watch break).
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = read("/v1/services").await.unwrap();
        if stale(&list).is_some() {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "no {STALE_HEADER} during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list.status(), 200);
    let why = stale(&list).unwrap();
    println!("{STALE_HEADER}: {why}");
    assert!(why.starts_with("since 20"), "{why}");
    assert!(
        why.contains(&format!("etcd at {endpoints} unreachable")),
        "{why}"
    );
    let index = index_of(&list);
    let listed: Vec<chora_api::manifest::Instance> = list.json().await.unwrap();
    let ids: BTreeSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert!(acked.iter().all(|a| ids.contains(a.as_str())), "{ids:?}");
    // The same outage (since the same time), whatever the latest reason.
    let since = |h: Option<String>| h.and_then(|h| h.split(": ").next().map(str::to_owned));
    let one = read("/v1/services/svc").await.unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(since(stale(&one)), since(Some(why.clone())));
    let blocking = read(&format!("/v1/services?index={index}&wait=200ms"))
        .await
        .unwrap();
    assert_eq!(blocking.status(), 200);
    assert_eq!(since(stale(&blocking)), since(Some(why.clone())));

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
    // A write etcd confirmed is answered even before this node's watch is
    // back; once the watch has caught up, reads are current again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let one = read("/v1/services/svc").await.unwrap();
        let all = read("/v1/services").await.unwrap();
        if stale(&one).is_none() && stale(&all).is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still stale 5 s after recovery: {:?}",
            stale(&all)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The registration refused during the outage did not happen later.
    assert!(single.get("x").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn a_paused_node_costs_a_client_that_knows_every_node_one_short_attempt() {
    if !chora_testkit::etcd_available(
        "manifest_etcd::a_paused_node_costs_a_client_that_knows_every_node_one_short_attempt",
    ) {
        return;
    }
    let b = Backend::on(chora_testkit::EtcdCluster::start(3));
    let args = ["--no-auth", "--ttl", "30", "--heartbeat-interval", "5"];
    let a = Registry::start_on(b.clone(), chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    let c = Registry::start_on(b, chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    // The default per-attempt timeout; the paused node comes first.
    let client = ManifestClient::new([a.server.url(), c.server.url()]).unwrap();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let no_id = Registration {
        id: None,
        ..reg("svc", "")
    };

    // Registrations without an id go on while node A is paused (SIGSTOP: its
    // kernel still accepts connections, nothing answers).
    let mut paused = None;
    let mut longest = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    let mut last_ok = Instant::now();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        if paused.is_none() && start.elapsed() > Duration::from_secs(1) {
            paused = Some(a.server.pause());
        }
        let t = Instant::now();
        let out = client.register(&no_id).await;
        slowest = slowest.max(t.elapsed());
        let out = out.expect("every registration is acknowledged");
        assert!(acked.insert(out.id), "an id came back twice");
        longest = longest.max(last_ok.elapsed());
        last_ok = Instant::now();
    }
    println!(
        "{} registrations; longest gap between acknowledgements while a node was paused: {longest:?} (slowest call {slowest:?})",
        acked.len()
    );
    assert!(longest < Duration::from_secs(2), "gap {longest:?}");

    // Node A runs again. Whatever it had queued while paused (the request the
    // client gave up on) carried an id the client chose, acknowledged by C
    // since: it can add no instance.
    paused.expect("paused during the loop").resume();
    let on_a = ManifestClient::new([a.server.url()]).unwrap();
    on_a.health().await.expect("node A answers again");
    let on_c = ManifestClient::new([c.server.url()]).unwrap();
    let svc = ListFilter {
        name: Some("svc".into()),
        ..Default::default()
    };
    let (_, index) = on_c.watch(&svc, None).await.unwrap();
    // Any change A makes now wakes this read (or it returns after 2 s).
    let (listed, _) = on_c
        .watch(&svc, Some((index, Duration::from_secs(2))))
        .await
        .unwrap();
    let on_c: BTreeSet<String> = listed.into_iter().map(|i| i.id).collect();
    assert_eq!(on_c, acked, "registrations on node C");
    // Node A's watch catches up with what C wrote meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed: BTreeSet<String> = on_a
            .list(&svc)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        if listed == acked {
            break;
        }
        assert!(
            Instant::now() < deadline && listed.is_subset(&acked),
            "node A after it resumed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts every member again on its data directory.
fn restart_all(cluster: &mut chora_testkit::EtcdCluster) {
    for m in cluster.members.iter_mut() {
        m.kill();
    }
    cluster.start_all(false);
}

/// A node paused for longer than the TTL (its own registration expired in
/// etcd meanwhile) registers itself again once it runs, as a Keeper would.
#[tokio::test]
async fn a_node_whose_own_registration_expired_registers_itself_again() {
    if !chora_testkit::etcd_available(
        "manifest_etcd::a_node_whose_own_registration_expired_registers_itself_again",
    ) {
        return;
    }
    let b = Backend::on(chora_testkit::EtcdCluster::start(1));
    let args = [
        "--no-auth",
        "--ttl",
        "1",
        "--heartbeat-interval",
        "0.5",
        "--register-self",
    ];
    let paused = Registry::start_on(b.clone(), chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    let other = Registry::start_on(b, chora_testkit::temp_dir(), "127.0.0.1:0", &args);
    let client = ManifestClient::new([other.server.url()]).unwrap();
    let own = |list: &[chora_api::manifest::Instance]| {
        list.iter()
            .filter(|i| i.name == "manifest" && i.interfaces["REST"] == paused.server.url())
            .count()
    };
    let (list, _) = crate::anyprogram::until_up(&client, "manifest", |l| own(l) == 1).await;
    assert_eq!(own(&list), 1);
    {
        let _stopped = paused.server.pause();
        // Gone from the other node's view: its lease ran out in etcd.
        let deadline = Instant::now() + Duration::from_secs(10);
        while own(&client.list(&ListFilter::default()).await.unwrap()) > 0 {
            assert!(Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, took) = crate::anyprogram::until_up(&client, "manifest", |l| own(l) == 1).await;
    println!("registered itself again {took:?} after it ran again");
}

/// On etcd a heartbeat is a lease renewal, not a write; the node that took it
/// still shows when it came (status's "(Ns ago)" column).
#[tokio::test]
async fn the_node_that_takes_a_heartbeat_shows_when_it_came() {
    if !chora_testkit::etcd_available(
        "manifest_etcd::the_node_that_takes_a_heartbeat_shows_when_it_came",
    ) {
        return;
    }
    let b = Backend::on(chora_testkit::EtcdCluster::start(1));
    let node = Registry::start_on(b, chora_testkit::temp_dir(), "127.0.0.1:0", &["--no-auth"]);
    let client = ManifestClient::new([node.server.url()]).unwrap();
    client.register(&reg("beat", "beat-1")).await.unwrap();
    let first = client.get("beat").await.unwrap().instances[0].clone();
    // Timestamps have millisecond resolution: let one pass.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..3 {
        client.heartbeat("beat", "beat-1", None).await.unwrap();
    }
    let after = client.get("beat").await.unwrap().instances[0].clone();
    assert_eq!(after.registered_at, first.registered_at);
    assert!(
        after.last_heartbeat > first.last_heartbeat,
        "{} then {}",
        first.last_heartbeat,
        after.last_heartbeat
    );
}
