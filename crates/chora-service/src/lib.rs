//! The common shape of a chora HTTP service.
//!
//! Every chora server answers errors as JSON `{"error", "message"}` ([`ApiError`]),
//! reads JSON bodies with a size limit and a message that says where the mistake is
//! ([`body`]), counts requests by route template ([`HttpMetrics`]), answers unknown
//! routes and methods as JSON ([`json_fallbacks`]), and keeps itself registered in
//! the Manifest ([`register`]).

pub mod body;
pub mod error;
pub mod metrics;
pub mod register;

pub use error::ApiError;
pub use metrics::HttpMetrics;

use axum::Router;
use axum::http::StatusCode;

/// JSON answers for unknown routes (404) and wrong methods (405).
pub fn json_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
}

/// The listener every chora server accepts on: `TCP_NODELAY` on each connection.
/// Without it a response written in two pieces (headers, then a streamed body, as
/// the gateway does) waits for the client's delayed ACK: milliseconds of p99.
pub fn nodelay(listener: tokio::net::TcpListener) -> Nodelay {
    use axum::serve::ListenerExt;
    listener.tap_io(set_nodelay)
}

/// The listener [`nodelay`] returns.
pub type Nodelay = axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)>;

fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// The readiness line every `chora … serve` prints on stdout once it accepts
/// connections; tests and the bootstrap wait for it.
pub fn print_ready(service: &str, addr: std::net::SocketAddr, detail: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = if detail.is_empty() {
        writeln!(out, "chora {service} listening on http://{addr}")
    } else {
        writeln!(out, "chora {service} listening on http://{addr} ({detail})")
    };
    let _ = out.flush();
}
