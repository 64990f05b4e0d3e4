//! The client against stand-in Manifests on loopback: one that answers, and
//! ports that accept connections but never answer (a paused node).

use super::*;
use axum::Json;
use axum::extract::{Query, State};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A port whose kernel completes TCP handshakes but whose owner never
/// accepts nor answers: what a paused process or container looks like.
fn silent() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// A stand-in Manifest that records the registrations it gets and answers
/// a blocking read after its wait.
async fn answering() -> (String, Arc<Mutex<Vec<Registration>>>) {
    type Seen = Arc<Mutex<Vec<Registration>>>;
    async fn register(State(seen): State<Seen>, Json(reg): Json<Registration>) -> Json<Registered> {
        seen.lock().unwrap().push(reg.clone());
        Json(Registered {
            id: reg.id.unwrap_or_else(|| format!("{}-server01", reg.name)),
            name: reg.name,
            version: reg.version,
            status: Status::Up,
            registered_at: "2026-01-01T00:00:00Z".into(),
            heartbeat_interval: 10.0,
            heartbeat_timeout: 30.0,
        })
    }
    async fn list(Query(q): Query<HashMap<String, String>>) -> Json<Vec<Instance>> {
        if let Some(wait) = q.get("wait") {
            let ms: u64 = wait.trim_end_matches("ms").parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Json(Vec::new())
    }
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/v1/services", axum::routing::post(register).get(list))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, seen)
}

fn reg() -> Registration {
    Registration {
        name: "svc".into(),
        version: "1".into(),
        interfaces: Default::default(),
        metadata: None,
        id: None,
    }
}

#[tokio::test]
async fn a_url_that_never_answers_costs_one_short_attempt_and_the_id_is_chosen_first() {
    let (_held, mute) = silent();
    let (good, seen) = answering().await;
    let client = ManifestClient::new([mute, good])
        .unwrap()
        .with_attempt_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let out = client.register(&reg()).await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The id was chosen before the first attempt, in the Manifest's form,
    // so the retry on the second URL carried the same one.
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let id = sent[0].id.clone().expect("the client chose an id");
    assert_eq!(out.id, id);
    let hex = id.strip_prefix("svc-").unwrap();
    assert!(
        hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    // The URL that answered is tried first from now on.
    assert_eq!(client.preferred.load(Ordering::Relaxed), 1);
    client.list(&ListFilter::default()).await.unwrap();
    assert_eq!(client.preferred.load(Ordering::Relaxed), 1);
    // Two registrations without an id are two instances.
    client.register(&reg()).await.unwrap();
    let sent = seen.lock().unwrap().clone();
    assert_ne!(sent[0].id, sent[1].id);
}

#[tokio::test]
async fn with_one_url_the_manifest_picks_the_id() {
    let (good, seen) = answering().await;
    let out = ManifestClient::new([good])
        .unwrap()
        .register(&reg())
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[0].id, None);
    assert_eq!(out.id, "svc-server01");
}

#[tokio::test]
async fn a_blocking_read_keeps_its_wait() {
    let (good, _) = answering().await;
    let (_held, mute) = silent();
    let client = ManifestClient::new([good, mute])
        .unwrap()
        .with_timeout(Duration::from_secs(2))
        .with_attempt_timeout(Duration::from_millis(100));
    let t = Instant::now();
    let block = Some((7, Duration::from_millis(500)));
    client.watch(&ListFilter::default(), block).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(500));
    assert_eq!(client.preferred.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_blocking_read_parked_on_a_silent_node_moves_on_after_its_wait() {
    let (good, _) = answering().await;
    let (_held, mute) = silent();
    let client = ManifestClient::new([mute, good])
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .with_attempt_timeout(Duration::from_millis(100));
    let t = Instant::now();
    let block = Some((7, Duration::from_millis(300)));
    client.watch(&ListFilter::default(), block).await.unwrap();
    let took = t.elapsed();
    // 300 + 100 ms on the silent node, then the good one's 300 ms wait.
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(client.preferred.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn when_no_url_answers_the_request_keeps_to_its_timeout_and_says_why() {
    let (_a, a) = silent();
    let (_b, b) = silent();
    let client = ManifestClient::new([format!("{a},{b}")])
        .unwrap()
        .with_timeout(Duration::from_millis(800))
        .with_attempt_timeout(Duration::from_millis(200));
    let t = Instant::now();
    let e = client.heartbeat("svc", "svc-1", None).await.unwrap_err();
    let took = t.elapsed();
    // 200 ms on the first URL, the remaining 600 ms on the last.
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(e.is_unreachable(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("{a} did not answer within 200 ms")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{b} did not answer within")),
        "{text}"
    );
}
