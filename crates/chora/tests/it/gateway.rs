//! The gateway's proxying against upstreams this test serves itself (real
//! sockets), registered in a real Manifest: what reaches the upstream, what
//! comes back, upstream connections reused, dead and hung instances skipped.
//! Each test starts its own Manifest and gateway (a `chora` process each) on
//! ports of their own; the route table follows the Manifest with no signal, so
//! a test waits for a route to answer before relying on it.

use crate::{Registry, chora_bin, status_json};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::serve::ListenerExt;
use chora_testkit::{Server, spawn_server};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// An upstream on 127.0.0.1: `/big?n=N` answers N bytes; anything else answers
/// JSON describing the request it got (method, path, query, headers, and the
/// length and byte sum of its body). Counts the connections it accepted.
pub(crate) struct Upstream {
    pub(crate) url: String,
    pub(crate) accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn upstream() -> Upstream {
    async fn describe(req: Request) -> axum::response::Response {
        let (parts, body) = req.into_parts();
        if parts.uri.path() == "/big" {
            let n: usize = parts.uri.query().unwrap()[2..].parse().unwrap();
            let bytes: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
            return axum::response::Response::new(Body::from(bytes));
        }
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let headers: serde_json::Map<String, Value> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
            .collect();
        axum::Json(json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body_len": body.len(),
            "body_sum": body.iter().map(|&b| b as u64).sum::<u64>(),
        }))
        .into_response()
    }
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let listener = listener.tap_io(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    let app = axum::Router::new().fallback(describe);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Upstream {
        url,
        accepted,
        task,
    }
}

/// A Manifest without auth and a gateway following it.
struct Site {
    manifest: Registry,
    gateway: Server,
    http: reqwest::Client,
}

impl Site {
    fn start() -> Site {
        Site::start_with(&[])
    }

    /// With more `chora gateway serve` flags.
    fn start_with(flags: &[&str]) -> Site {
        let manifest = Registry::start(&["--no-auth", "--ttl", "60", "--heartbeat-interval", "20"]);
        let murl = manifest.server.url();
        let gateway = spawn_server(
            chora_bin(),
            manifest.dir.path(),
            &[
                &[
                    "gateway",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--manifest-url",
                    &murl,
                ],
                flags,
            ]
            .concat(),
            &[],
        );
        Site {
            manifest,
            gateway,
            http: reqwest::Client::new(),
        }
    }

    async fn register(&self, name: &str, rest_url: &str) {
        let (s, b) = self
            .manifest
            .post(
                "/v1/services",
                &json!({"name": name, "version": "1", "interfaces": {"REST": rest_url}}),
                None,
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.gateway.url())
    }

    /// Waits until `GET path` through the gateway answers `expect` (the route
    /// table follows the Manifest asynchronously and has no signal of its own).
    async fn wait_for(&self, path: &str, expect: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.http.get(self.url(path)).send().await.unwrap().status();
            if s.as_u16() == expect {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: never {expect}, last {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn the_gateway_forwards_the_request_and_its_headers_and_streams_bodies() {
    let up = upstream().await;
    let site = Site::start();
    site.register("echo", &up.url).await;
    site.wait_for("/echo/ready", 200).await;

    // Method, path, query and the client's own headers go through; the
    // gateway adds X-Forwarded-For, X-Forwarded-Proto and X-Request-Id and sends
    // the id back.
    let r = site
        .http
        .put(site.url("/echo/some/deep/path?a=1&b=two"))
        .header("x-custom", "kept")
        .body("hello")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (s, got) = status_json(r).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["method"], "PUT");
    assert_eq!(got["path"], "/some/deep/path");
    assert_eq!(got["query"], "a=1&b=two");
    assert_eq!(got["body_len"], 5);
    let h = &got["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"], id.as_str());
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(h["host"], up.url.trim_start_matches("http://"));

    // A client's X-Forwarded-For is extended; its X-Request-Id is kept.
    let r = site
        .http
        .get(site.url("/echo/x"))
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-request-id", "req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-7");
    let (_, got) = status_json(r).await;
    assert_eq!(got["headers"]["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(got["headers"]["x-request-id"], "req-7");

    // 3 MB up (over the size kept for a retry, so streamed) and 5 MB back.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|&b| b as u64).sum();
    let (s, got) = status_json(
        site.http
            .post(site.url("/echo/upload"))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(
        (got["body_len"].as_u64(), got["body_sum"].as_u64()),
        (Some(3_000_000), Some(sum))
    );
    let big: Bytes = site
        .http
        .get(site.url("/echo/big?n=5000000"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(big.len(), 5_000_000);
    assert!(big.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));

    // All of that, one request at a time, went over one upstream connection
    // (the route-table wait above may have opened it).
    for i in 0..20 {
        let r = site
            .http
            .get(site.url(&format!("/echo/n{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "upstream connections were not reused"
    );
}

#[tokio::test]
async fn a_dead_instance_answers_502_and_a_live_one_takes_over_its_requests() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let site = Site::start();
    site.register("flaky", &dead).await;
    site.wait_for("/flaky/x", 502).await;
    let (s, b) = status_json(site.http.get(site.url("/flaky/x")).send().await.unwrap()).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("upstream_failed")),
        "{b}"
    );

    // With a live instance beside the dead one, every request is answered: a
    // refused connection is retried on the other instance.
    let up = upstream().await;
    site.register("flaky", &up.url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Both instances are in the table once the live one has been reached.
        let r = site.http.get(site.url("/flaky/x")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live instance never got a request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..10 {
        let r = site
            .http
            .post(site.url("/flaky/x"))
            .body(format!("try {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
}

#[tokio::test]
async fn a_hung_instance_costs_one_timeout_then_is_skipped() {
    // Accepts connections and holds them, never answering: a paused host.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let holder = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hung.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        })
    };
    let up = upstream().await;
    let marker = upstream().await;
    let site = Site::start_with(&["--upstream-timeout", "1"]);
    site.register("svc", &hung_url).await;
    site.register("svc", &up.url).await;
    // Registered last: once it routes, the table has both instances of `svc`,
    // and no request has gone to either yet.
    site.register("marker", &marker.url).await;
    site.wait_for("/marker/x", 200).await;

    let mut failed = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let r = site.http.get(site.url("/svc/x")).send().await.unwrap();
        let (s, took) = (r.status().as_u16(), t.elapsed());
        r.bytes().await.unwrap();
        if s == 200 {
            assert!(
                took < Duration::from_millis(500),
                "request {i} was answered after {took:?}"
            );
        } else {
            assert_eq!(s, 504, "request {i}");
            failed.push(i);
        }
    }
    // The first request to land on the hung instance waits the timeout; it is
    // then skipped, and every later request goes to the live one.
    assert!(failed.len() <= 1, "requests {failed:?} failed");
    // Evenly loaded at first, the two share requests round-robin: the hung one
    // got one (else it was not in the table, and this test proved nothing).
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the hung instance got no request"
    );
    holder.abort();
}

/// Sends 10 GETs of `path` through the gateway, one after another, from a
/// client that waits `wait`; each must answer 200. Returns those that took
/// `slow` or longer (their index, how long).
async fn gets_that_waited(
    site: &Site,
    path: &str,
    wait: Duration,
    slow: Duration,
) -> Vec<(usize, Duration)> {
    let http = reqwest::Client::builder().timeout(wait).build().unwrap();
    let mut waited = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let r = http.get(site.url(path)).send().await;
        let took = t.elapsed();
        let s = r.map(|r| r.status().as_u16());
        assert!(matches!(s, Ok(200)), "request {i}: {s:?} after {took:?}");
        if took >= slow {
            waited.push((i, took));
        }
    }
    waited
}

#[tokio::test]
async fn an_instance_whose_host_drops_connections_costs_half_a_second_not_an_error() {
    // A listener that never accepts, its queue (of one) full: the kernel
    // drops further SYNs, as a lost host's network does.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent = socket.listen(0).unwrap();
    let addr = silent.local_addr().unwrap();
    let _queued = std::net::TcpStream::connect(addr).unwrap();
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr)
        )
        .await
        .is_err(),
        "a connection to the full listener was made: this test proves nothing here"
    );
    let up = upstream().await;
    let marker = upstream().await;
    let site = Site::start();
    site.register("svc", &format!("http://{addr}")).await;
    site.register("svc", &up.url).await;
    // Registered last: once it routes, the table has both instances of `svc`.
    site.register("marker", &marker.url).await;
    site.wait_for("/marker/x", 200).await;

    // A client that waits a second: longer than the gateway takes to give up
    // on the silent instance and go to the live one, shorter than a SYN's
    // retransmission.
    let slow = gets_that_waited(
        &site,
        "/svc/x",
        Duration::from_secs(1),
        Duration::from_millis(450),
    )
    .await;
    // Requests share the two round-robin at first: one met the silent
    // instance (it waited for it, then went to the live one), which was
    // then skipped.
    assert_eq!(slow.len(), 1, "requests {slow:?} waited");
    drop(silent);
}

/// A container upstream on a network of its own, and its image; all removed
/// when dropped, pass or fail.
struct LostHost {
    name: String,
}

impl LostHost {
    fn image(&self) -> String {
        format!("{}:upstream", self.name)
    }
}

impl Drop for LostHost {
    fn drop(&mut self) {
        let docker = chora_testkit::infra_host::docker_try;
        docker(&["rm", "-f", &self.name]);
        docker(&["network", "rm", &self.name]);
        docker(&["rmi", "-f", &self.image()]);
    }
}

#[tokio::test]
async fn an_instance_whose_host_is_lost_under_a_kept_connection_costs_under_a_second_not_an_error()
{
    const TEST: &str = "gateway::an_instance_whose_host_is_lost_under_a_kept_connection_costs_under_a_second_not_an_error";
    if !chora_testkit::docker_available(TEST) {
        return;
    }
    let docker = chora_testkit::infra_host::docker;
    // A Manifest in a container (chora's own image: a server that keeps
    // connections alive) stands for an instance on another host.
    let lost = LostHost {
        name: format!("chora-t{}-lost", chora_api::random_hex(4)),
    };
    let build = std::process::Command::new(chora_bin())
        .args(["image", "build", "--tag", &lost.image()])
        .output()
        .unwrap();
    assert!(build.status.success(), "{build:?}");
    docker(&["network", "create", &lost.name]);
    docker(&[
        "run",
        "-d",
        "--name",
        &lost.name,
        "--network",
        &lost.name,
        &lost.image(),
        "manifest",
        "serve",
        "--listen",
        "0.0.0.0:8080",
        "--storage",
        "sqlite:/tmp/m.db",
        "--no-auth",
    ]);
    let ip = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &lost.name,
    ]);
    let far = format!("http://{ip}:8080");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{far}/health")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the container's Manifest never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = upstream().await;
    let marker = upstream().await;
    let site = Site::start();
    site.register("svc", &far).await;
    site.register("svc", &up.url).await;
    site.register("marker", &marker.url).await;
    site.wait_for("/marker/x", 200).await;
    // Both instances answered: each has a connection kept in the pool.
    let mut from_container = 0;
    for _ in 0..4 {
        let r = site.http.get(site.url("/svc/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if r.text().await.unwrap().contains("services_registered") {
            from_container += 1;
        }
    }
    assert_eq!(from_container, 2, "the two instances take turns");

    // The container's network goes: its host sends nothing back, not even a
    // reset, as a host that lost power.
    docker(&["network", "disconnect", "--force", &lost.name, &lost.name]);
    let slow = gets_that_waited(
        &site,
        "/svc/health",
        Duration::from_secs(2),
        Duration::from_millis(600),
    )
    .await;
    // The request that went out on the kept connection waited until the
    // kernel gave up on it (about 0.7 s unacknowledged), then went to the
    // live instance; the silent one was skipped after that.
    assert_eq!(slow.len(), 1, "requests {slow:?} waited");
    assert!(slow[0].1 < Duration::from_secs(1), "{slow:?}");
}

#[tokio::test]
async fn a_get_whose_connection_drops_goes_to_another_instance_and_a_post_does_not() {
    // Reads each request, then closes the connection without an answer: an
    // instance that stops with a request in flight.
    let dropper = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dropper_url = format!("http://{}", dropper.local_addr().unwrap());
    let dropped = Arc::new(AtomicUsize::new(0));
    let closer = {
        let dropped = dropped.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut s, _)) = dropper.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                dropped.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        })
    };
    let up = upstream().await;
    let marker = upstream().await;
    let site = Site::start();
    site.register("svc", &dropper_url).await;
    site.register("svc", &up.url).await;
    site.register("marker", &marker.url).await;
    site.wait_for("/marker/x", 200).await;

    // Every GET is answered, by the live instance.
    for i in 0..10 {
        let r = site.http.get(site.url("/svc/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
    }
    assert!(
        dropped.load(Ordering::SeqCst) >= 1,
        "no GET reached the dropper"
    );
    // A POST that reached an instance may have done its work there: never
    // sent again, it answers 502.
    let before = dropped.load(Ordering::SeqCst);
    let mut codes = Vec::new();
    for _ in 0..10 {
        let r = site
            .http
            .post(site.url("/svc/x"))
            .body("work")
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    let reached = dropped.load(Ordering::SeqCst) - before;
    assert!(reached >= 1, "no POST reached the dropper: {codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == 502).count(),
        reached,
        "{codes:?}"
    );
    closer.abort();
}

#[tokio::test]
async fn sigterm_refuses_new_connections_and_lets_a_request_in_flight_finish() {
    // An upstream that holds `/hold` until the test releases it.
    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let app = {
        let (arrived, release) = (arrived.clone(), release.clone());
        axum::Router::new()
            .route(
                "/hold",
                axum::routing::get(move || async move {
                    arrived.notify_one();
                    release.notified().await;
                    "released"
                }),
            )
            .fallback(|| async { "ok" })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_url = format!("http://{}", listener.local_addr().unwrap());
    let up = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let site = Site::start();
    site.register("slow", &up_url).await;
    site.wait_for("/slow/ping", 200).await;
    let held = tokio::spawn(site.http.get(site.url("/slow/hold")).send());
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the request reached the upstream");

    let Site {
        manifest: _manifest,
        mut gateway,
        http: _,
    } = site;
    let addr = gateway.addr;
    let stopped = tokio::task::spawn_blocking(move || {
        let status = gateway.terminate();
        (status, gateway)
    });
    // The listener closes at once...
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the gateway still accepts connections 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the request in flight is still being served, and gets its answer.
    assert!(
        !stopped.is_finished(),
        "the gateway exited with a request in flight"
    );
    release.notify_one();
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held request was answered")
        .unwrap()
        .expect("the held request got a response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "released");
    let (status, gateway) = tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the gateway exited once the request was done")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        gateway.output()
    );
    up.abort();
}
