//! Acknowledged writes survive SIGKILL; the heartbeat keeper survives a registry
//! that comes back empty.

use crate::{Backend, Registry};
use chora_api::manifest::{ListFilter, Registration};
use chora_api::{Keeper, ManifestClient, keeper::Backoff};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

async fn acknowledged_writes_survive_sigkill(b: Backend) {
    let r = Registry::start_on(b, chora_testkit::temp_dir(), "127.0.0.1:0", &["--no-auth"]);
    let mut kept = BTreeSet::new();
    let mut removed = Vec::new();
    // Concurrent registrations share commits; every 201 must still be durable.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let http = r.http.clone();
        let url = r.url("/v1/services");
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"name": format!("svc-{}", i % 7), "version": "1", "interfaces": {"REST": "http://127.0.0.1:9"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
            let v: serde_json::Value = resp.json().await.unwrap();
            (v["name"].as_str().unwrap().to_owned(), v["id"].as_str().unwrap().to_owned())
        }));
    }
    for t in tasks {
        kept.insert(t.await.unwrap());
    }
    for _ in 0..10 {
        let k = kept.iter().next().unwrap().clone();
        kept.remove(&k);
        assert_eq!(
            r.delete(&format!("/v1/services/{}/{}", k.0, k.1), None)
                .await
                .0,
            204
        );
        removed.push(k);
    }

    let r = r.kill_and_restart();

    let (_, list) = r.get("/v1/services").await;
    let found: BTreeSet<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        found, kept,
        "exactly the acknowledged, not deregistered, instances"
    );
    // After a restart every known instance gets a full TTL: they are up and can
    // heartbeat.
    for (name, id) in &kept {
        assert_eq!(
            r.put(&format!("/v1/services/{name}/{id}/heartbeat"), None, None)
                .await
                .0,
            204
        );
    }
    assert!(list.as_array().unwrap().iter().all(|i| i["status"] == "up"));
}

#[tokio::test]
async fn the_keeper_reregisters_after_the_registry_restarts_empty() {
    let port = chora_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--no-auth", "--ttl", "3", "--heartbeat-interval", "0.1"];
    let mut r = Registry::start_in(chora_testkit::temp_dir(), &listen, &args);
    let client = ManifestClient::new([r.server.url()]).unwrap();
    let reg = Registration {
        name: "analyzer".into(),
        version: "1.0.0".into(),
        interfaces: [("REST".to_string(), "http://127.0.0.1:8800".to_string())].into(),
        metadata: None,
        id: None,
    };
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let keeper = Keeper::spawn(client.clone(), reg, backoff);
    tokio::time::timeout(Duration::from_secs(5), keeper.registered_more_than(0))
        .await
        .expect("registered");
    let id = keeper.instance_id().to_owned();
    assert_eq!(client.get("analyzer").await.unwrap().instances[0].id, id);

    // The registry dies and comes back on a brand-new, empty database.
    r.server.kill9();
    let r = Registry::start_in(chora_testkit::temp_dir(), &listen, &args);
    assert!(r.get("/v1/services/analyzer").await.0 == 404 || keeper.registrations() > 1);

    tokio::time::timeout(Duration::from_secs(5), keeper.registered_more_than(1))
        .await
        .expect("the keeper registered again by itself");
    let svc = client.get("analyzer").await.unwrap();
    assert_eq!(svc.instances.len(), 1);
    assert_eq!(svc.instances[0].id, id, "same instance id as before");

    // Shutdown deregisters.
    keeper.shutdown().await.unwrap();
    assert!(
        client
            .list(&ListFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_keeper_waits_for_a_registry_that_is_not_up_yet() {
    let port = chora_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let client = ManifestClient::new([url.as_str()]).unwrap();
    let reg = Registration {
        name: "early".into(),
        version: "1".into(),
        interfaces: Default::default(),
        metadata: None,
        id: Some("early-1".into()),
    };
    let keeper = Keeper::spawn(
        client.clone(),
        reg,
        Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
    );
    let err = client.list(&ListFilter::default()).await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert_eq!(keeper.registrations(), 0);
    let _r = Registry::start_in(
        chora_testkit::temp_dir(),
        &format!("127.0.0.1:{port}"),
        &["--no-auth"],
    );
    tokio::time::timeout(Duration::from_secs(5), keeper.registered_more_than(0))
        .await
        .expect("registered once up");
    assert_eq!(
        client.get("early").await.unwrap().instances[0].id,
        "early-1"
    );
}

#[tokio::test]
async fn the_client_fails_over_to_the_next_url() {
    let r = Registry::start(&["--no-auth"]);
    let dead = format!("http://127.0.0.1:{}", chora_testkit::free_port());
    let client = ManifestClient::new([dead.as_str(), r.server.url().as_str()]).unwrap();
    let reg = Registration {
        name: "fo".into(),
        version: "1".into(),
        interfaces: Default::default(),
        metadata: None,
        id: None,
    };
    let out = client.register(&reg).await.unwrap();
    assert_eq!(client.get("fo").await.unwrap().instances[0].id, out.id);
}

crate::contract!(acknowledged_writes_survive_sigkill);
