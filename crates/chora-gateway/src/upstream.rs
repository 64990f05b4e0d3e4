//! Pooled HTTP/1.1 connections to upstream instances, driven inside the request's
//! own task.
//!
//! hyper's pooled client (`hyper_util::client::legacy`) runs every connection as a
//! task of its own and, for HTTP/1, spawns one more task per request that waits
//! for the connection to become idle again. Each proxied request then crosses
//! tasks, and threads, four or five times. Here a connection is a
//! [`hyper::client::conn::http1`] pair that nobody polls while it sits in the
//! pool: the request that takes it out polls it, until the response head has
//! come, and then the response body polls it, until the body has been read, and
//! puts it back. One task, no spawn per request.
//!
//! A pooled connection that the upstream closed while it was idle is noticed
//! when it is taken out (or when its request could not be sent) and the request
//! goes on a fresh connection, as hyper's pool does. One whose host is gone
//! closes no connection: a request written on it is never acknowledged, and the
//! kernel ends the connection as the request's [`Patience`] says
//! (`TCP_USER_TIMEOUT`).

use axum::body::{Body, Bytes};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpStream;

/// Reaper ticks per idle timeout.
const TICKS: u32 = 4;

/// How long a request waits for an upstream's host that says nothing: a lost
/// host drops SYNs and sends no reset, so only time tells it from a slow one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// A new connection must be made within this.
    pub connect: Duration,
    /// What was sent on a connection may stay unacknowledged this long after
    /// its first retransmission (sent about 200-400 ms after it went, when
    /// no acknowledgement came) before the kernel ends the connection
    /// (`TCP_USER_TIMEOUT`). A slow upstream is not concerned: its kernel
    /// acknowledges the request at once, whenever the answer comes.
    pub unacknowledged: Duration,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent, another instance may be
    /// tried.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection attempt timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The exchange failed after the connection was made.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// True when the request cannot have reached the upstream.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::ConnectTimeout(_))
    }

    /// True when the upstream's host did not answer at all: no connection
    /// came, or what was sent stayed unacknowledged ([`Patience`]).
    pub fn host_silent(&self) -> bool {
        match self {
            SendError::Connect(_) => false,
            SendError::ConnectTimeout(_) => true,
            SendError::Http(e) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
                while let Some(c) = cause {
                    if let Some(io) = c.downcast_ref::<std::io::Error>() {
                        return io.kind() == std::io::ErrorKind::TimedOut;
                    }
                    cause = c.source();
                }
                false
            }
        }
    }
}

/// One upstream connection: the sender and the connection state machine.
struct Conn {
    tx: http1::SendRequest<Body>,
    conn: Connection,
    /// The socket inside `conn`, and the `TCP_USER_TIMEOUT` set on it.
    fd: RawFd,
    unacknowledged: Duration,
}

impl Conn {
    /// Sets how long what is sent may stay unacknowledged, when it changed
    /// (a system call only then: a service's requests mostly want the same).
    fn expect_acks_within(&mut self, within: Duration) -> std::io::Result<()> {
        if self.unacknowledged != within {
            // SAFETY: `fd` is the socket of the stream that `conn` owns, open
            // as long as `conn` is, and `self` holds `conn`.
            let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
            socket2::SockRef::from(&fd).set_tcp_user_timeout(Some(within))?;
            self.unacknowledged = within;
        }
        Ok(())
    }
}

struct Idle {
    conn: Conn,
    /// The pool's age (in reaper ticks) when the connection was put back.
    since: u32,
}

/// The pool: idle connections per upstream `host:port`, most recently used last.
pub struct Upstreams {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    /// Reaper ticks so far; a tick is a quarter of the idle timeout. Cheaper than
    /// reading the clock on every checkout and return.
    age: AtomicU32,
    idle_timeout: Duration,
    max_idle_per_upstream: usize,
}

impl Upstreams {
    pub fn new(idle_timeout: Duration) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            idle: Mutex::default(),
            age: AtomicU32::new(0),
            idle_timeout,
            max_idle_per_upstream: 128,
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` (`host:port`),
    /// on a pooled connection or on a new one, as patient with a silent host
    /// as `patience` says.
    /// The response body keeps the connection and puts it back into the pool once
    /// it has been read to the end.
    pub async fn send(
        self: &Arc<Self>,
        authority: &str,
        mut req: axum::http::Request<Body>,
        patience: Patience,
    ) -> Result<axum::http::Response<Body>, SendError> {
        loop {
            let (mut c, reused) = match self.checkout(authority) {
                Some(c) => (c, true),
                // Boxed: the connect future is large and this is the rare path;
                // the common one should not carry its size.
                None => (Box::pin(connect(authority, patience.connect)).await?, false),
            };
            c.expect_acks_within(patience.unacknowledged)
                .map_err(SendError::Connect)?;
            let Conn {
                mut tx,
                conn,
                fd,
                unacknowledged,
            } = c;
            let mut conn = Some(conn);
            if !tx.is_ready() {
                match drive(&mut conn, poll_fn(|cx| tx.poll_ready(cx))).await {
                    Ok(()) => {}
                    Err(_) if reused => continue, // closed while it was idle
                    Err(e) => return Err(e.into()),
                }
            }
            match drive(&mut conn, tx.try_send_request(req)).await {
                Ok(resp) => {
                    let home = (Arc::downgrade(self), authority.to_owned());
                    return Ok(resp.map(|body| {
                        Body::new(PooledBody {
                            body,
                            done: false,
                            conn: conn.map(|conn| Conn {
                                tx,
                                conn,
                                fd,
                                unacknowledged,
                            }),
                            home,
                        })
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection was closed under us. A reused one
                    // may have been closed by the upstream while idle.
                    Some(r) if reused => req = r,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn checkout(&self, authority: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(authority)?;
        // Expired ones go with the reaper's next pass; one that the upstream
        // closed is noticed in `send`.
        while let Some(i) = list.pop() {
            if !i.conn.tx.is_closed() {
                return Some(i.conn);
            }
        }
        None
    }

    /// Puts a connection whose last response was read to the end back. It is
    /// polled once first, so that it finishes that exchange (or notices that the
    /// upstream closed it) without a task waiting for it.
    fn put(&self, authority: &str, mut c: Conn) {
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut *c.conn).poll(&mut cx).is_ready() || c.tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Idle {
            conn: c,
            since: self.age.load(Ordering::Relaxed),
        };
        match idle.get_mut(authority) {
            Some(list) if list.len() < self.max_idle_per_upstream => list.push(entry),
            Some(_) => {}
            None => {
                idle.insert(authority.to_owned(), vec![entry]);
            }
        }
    }

    /// Closes connections idle for about the idle timeout (between 3/4 of it
    /// and all of it), and those of upstreams that went away, until the pool is
    /// dropped.
    pub async fn reap(pool: Weak<Upstreams>) {
        let every = match pool.upgrade() {
            Some(p) => p.idle_timeout / TICKS,
            None => return,
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            let now = pool.age.fetch_add(1, Ordering::Relaxed) + 1;
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|_, list| {
                list.retain(|i| now - i.since < TICKS && !i.conn.tx.is_closed());
                !list.is_empty()
            });
        }
    }

    /// Idle connections held for `authority` (for tests).
    pub fn idle_count(&self, authority: &str) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get(authority).map_or(0, Vec::len)
    }
}

async fn connect(authority: &str, within: Duration) -> Result<Conn, SendError> {
    let tcp = tokio::time::timeout(within, TcpStream::connect(authority))
        .await
        .map_err(|_| SendError::ConnectTimeout(within))?
        .map_err(SendError::Connect)?;
    tcp.set_nodelay(true).map_err(SendError::Connect)?;
    let fd = tcp.as_raw_fd();
    let (tx, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    Ok(Conn {
        tx,
        conn: Box::new(conn),
        fd,
        // The system's default (none), until a request says.
        unacknowledged: Duration::ZERO,
    })
}

/// Boxed once per connection: it is large (its buffers and parser state), and it
/// moves in and out of the pool and into a response body on every request.
type Connection = Box<http1::Connection<TokioIo<TcpStream>, Body>>;

/// Polls `conn` while waiting for `f`: the connection does its reading and
/// writing in this task. A connection that ends is dropped at once, which
/// answers whatever it still holds (a request it did not send comes back in the
/// error), so `f` always ends too.
async fn drive<F: Future>(conn: &mut Option<Connection>, f: F) -> F::Output {
    let mut f = pin!(f);
    poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        match conn.as_mut() {
            Some(c) => {
                if Pin::new(&mut **c).poll(cx).is_ready() {
                    *conn = None;
                }
                // The connection may have answered `f` just now.
                f.as_mut().poll(cx)
            }
            None => Poll::Pending,
        }
    })
    .await
}

/// A response body that drives its connection and, once read to the end, puts
/// the connection back into the pool.
struct PooledBody {
    body: Incoming,
    /// The body has returned its last frame (a chunked body does not say so in
    /// `is_end_stream`).
    done: bool,
    /// None once the connection has ended.
    conn: Option<Conn>,
    home: (Weak<Upstreams>, String),
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
                this.done = frame.is_none();
                return Poll::Ready(frame);
            }
            let Some(c) = this.conn.as_mut() else {
                return Poll::Pending;
            };
            match Pin::new(&mut *c.conn).poll(cx) {
                // The connection read what it could; the body may have data now.
                Poll::Pending => {
                    let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
                    this.done = frame.is_none();
                    return Poll::Ready(frame);
                }
                // The connection ended: the body gets its end or its error.
                Poll::Ready(_) => this.conn = None,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Only a connection whose response was read to the end can be reused;
        // any other is closed by dropping it.
        if self.is_end_stream()
            && let Some(c) = self.conn.take()
            && let Some(pool) = self.home.0.upgrade()
        {
            pool.put(&self.home.1, c);
        }
    }
}

#[cfg(test)]
mod tests;
