//! Wire types and typed clients shared by every chora service.
//!
//! Services talk to each other only over HTTP, and only through this crate: the
//! request and response bodies of DESIGN.md §5 live in [`manifest`], the async
//! [`ManifestClient`] speaks them (with fail-over between several Manifest URLs),
//! and the [`Keeper`] keeps one instance registered and heartbeating in the
//! background. [`auth`] reads `credentials.json` and mints admin JWTs. The
//! orchestrator's wire types are [`orchestrator`], spoken by
//! [`OrchestratorClient`]; [`bootstrap_state`] is the one model of the
//! bootstrap's state file, which the bootstrap writes and the dashboard reads.
//! [`tls`] installs the process's rustls provider and trusts extra CAs.

pub mod auth;
pub mod bootstrap_state;
pub mod client;
pub mod duration;
pub mod files;
pub mod keeper;
pub mod login;
pub mod manifest;
pub mod orchestrator;
pub mod orchestrator_client;
pub mod tls;

pub use client::{ClientError, ManifestClient};
pub use keeper::Keeper;
pub use orchestrator_client::{OrchestratorClient, OrchestratorError};

/// The capability services built into the `chora` binary
/// (`chora capability serve --name NAME`).
pub const CAPABILITIES: [&str; 5] = ["analyzer", "executor", "storage", "monitor", "logger"];

/// The JSON error body every chora service returns with a 4xx or 5xx.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// Formats a wall-clock time as RFC 3339 UTC with millisecond precision,
/// e.g. `2026-11-23T10:00:00.123Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let ms = t.millisecond();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ms
    )
}

/// Parses an RFC 3339 time (`2026-11-23T10:00:00Z`, with or without fractions or
/// an offset).
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(Into::into)
}

/// The innermost cause of an error, which is the part a person can act on
/// ("Connection refused (os error 111)").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `n` random bytes from the OS, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_is_utc_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert!(parse_rfc3339("2023-11-14T22:13:20Z").unwrap() < t);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn random_hex_has_the_asked_length_and_varies() {
        let a = random_hex(4);
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(random_hex(16), random_hex(16));
    }
}
