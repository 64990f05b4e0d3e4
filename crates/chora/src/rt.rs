//! What every command's entry shares and nothing else: its async runtime
//! and the signals that end it. A leaf: it imports no other module of the
//! binary, so commands and the clap tree never import each other in a circle.

use crate::failure::{Failure, exit};

/// A multi-threaded runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                exit::FAILURE,
                "RUNTIME",
                format!("cannot start the async runtime: {e}"),
            )
        })
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    shutdown_signal_name().await;
}

/// Resolves with the signal's name when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal_name() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
