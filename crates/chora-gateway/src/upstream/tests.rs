//! The pool against real upstream servers on 127.0.0.1: connections reused,
//! replaced when the upstream closed them, closed when a body is left unread,
//! bodies streamed both ways.

use super::*;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PATIENCE: Patience = Patience {
    connect: Duration::from_secs(2),
    unacknowledged: Duration::from_secs(2),
};

/// An upstream served by hyper: `/echo` sends the request body back, `/big?n=N`
/// answers N bytes, chunked, and anything else answers `ok`. Counts the
/// connections it accepted.
struct Upstream {
    authority: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let resp = match req.uri().path() {
                        "/echo" => axum::http::Response::new(Body::new(req.into_body())),
                        "/big" => {
                            let n: usize = req.uri().query().unwrap()[2..].parse().unwrap();
                            axum::http::Response::new(Body::new(Pieces { sent: 0, total: n }))
                        }
                        _ => axum::http::Response::new(Body::from("ok")),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Upstream {
        authority,
        accepted,
        task,
    }
}

/// A body of `total` bytes in 64 KiB frames, without a length (so chunked);
/// frame `i` is all `i % 251`.
struct Pieces {
    sent: usize,
    total: usize,
}

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent == self.total {
            return Poll::Ready(None);
        }
        let len = 65536.min(self.total - self.sent);
        let byte = (self.sent / 65536 % 251) as u8;
        self.sent += len;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![byte; len])))))
    }
}

fn get(authority: &str, path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", authority)
        .body(Body::empty())
        .unwrap()
}

async fn text(resp: axum::http::Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn pool() -> Arc<Upstreams> {
    Upstreams::new(Duration::from_secs(60))
}

#[tokio::test]
async fn requests_one_after_another_share_one_connection() {
    let up = upstream().await;
    let pool = pool();
    for _ in 0..20 {
        let resp = pool
            .send(&up.authority, get(&up.authority, "/"), PATIENCE)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(text(resp).await, "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(&up.authority), 1);
}

#[tokio::test]
async fn a_response_left_unread_closes_its_connection() {
    let up = upstream().await;
    let pool = pool();
    let resp = pool
        .send(
            &up.authority,
            get(&up.authority, "/big?n=4000000"),
            PATIENCE,
        )
        .await
        .unwrap();
    drop(resp);
    assert_eq!(pool.idle_count(&up.authority), 0);
    let resp = pool
        .send(&up.authority, get(&up.authority, "/"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(text(resp).await, "ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bodies_larger_than_any_buffer_stream_both_ways() {
    let up = upstream().await;
    let pool = pool();
    // 6 MiB up and back, as a stream of 64 KiB pieces.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/echo")
        .header("host", &up.authority)
        .body(Body::new(Pieces {
            sent: 0,
            total: 96 * 65536,
        }))
        .unwrap();
    let resp = pool.send(&up.authority, req, PATIENCE).await.unwrap();
    let back = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(back.len(), 96 * 65536);
    assert!(
        back.chunks(65536)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8))
    );

    // A chunked answer of 5,000,001 bytes, read to the end: the connection
    // goes back to the pool.
    let resp = pool
        .send(
            &up.authority,
            get(&up.authority, "/big?n=5000001"),
            PATIENCE,
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 5_000_001);
    assert_eq!(body[65536 * 3], 3);
    assert_eq!(pool.idle_count(&up.authority), 1);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    // One request per connection; the server closes it when told to, after the
    // pool took it back, without having said so in the response (as an
    // upstream's idle timeout does).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let (close_tx, mut close_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let server = tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            close_rx.recv().await.unwrap();
            drop(tcp);
            closed_tx.send(()).unwrap();
        }
    });
    let pool = pool();
    for i in 0..3 {
        let resp = pool.send(&authority, get(&authority, "/"), PATIENCE).await;
        let resp = resp.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(text(resp).await, "ok");
        assert_eq!(pool.idle_count(&authority), 1, "request {i}");
        close_tx.send(()).unwrap();
        closed.recv().await.unwrap();
    }
    server.abort();
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = pool()
        .send(&authority, get(&authority, "/"), PATIENCE)
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

/// The `TCP_USER_TIMEOUT` the kernel has for the one idle connection to
/// `authority`.
fn user_timeout_of_idle(pool: &Upstreams, authority: &str) -> Option<Duration> {
    let idle = pool.idle.lock().unwrap();
    let c = &idle[authority][0].conn;
    // SAFETY: the connection, and so its socket, is held by the pool's lock.
    let fd = unsafe { BorrowedFd::borrow_raw(c.fd) };
    socket2::SockRef::from(&fd).tcp_user_timeout().unwrap()
}

#[tokio::test]
async fn a_kept_connection_waits_for_acknowledgements_as_each_request_says() {
    let up = upstream().await;
    let pool = pool();
    let hedged = Patience {
        connect: Duration::from_millis(500),
        unacknowledged: Duration::from_millis(300),
    };
    for (patience, expect) in [
        (hedged, 300),
        (PATIENCE, 2000),
        (PATIENCE, 2000),
        (hedged, 300),
    ] {
        let resp = pool
            .send(&up.authority, get(&up.authority, "/"), patience)
            .await
            .unwrap();
        assert_eq!(text(resp).await, "ok");
        assert_eq!(
            user_timeout_of_idle(&pool, &up.authority),
            Some(Duration::from_millis(expect))
        );
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "one connection");
}
