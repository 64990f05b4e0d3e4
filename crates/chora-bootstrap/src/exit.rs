//! The documented exit codes (DESIGN.md §3), named per command, as nextest's
//! `exit_codes.rs` does: scripts read these numbers, so code never writes one
//! bare. A `Failure` carries one of them.

/// Any command: success.
pub const SUCCESS: u8 = 0;
/// Any command: it failed (a command with no finer code of its own).
pub const FAILURE: u8 = 1;
/// Any command: an unreadable or invalid config, with the file, line and field.
pub const CONFIG: u8 = 7;
/// Any command: the command line itself is wrong (clap's usage errors too).
/// Not 2: `status` and `validate` give 2 a meaning scripts read.
pub const USAGE: u8 = 64;

/// `chora bootstrap`.
pub mod bootstrap {
    pub const PREREQUISITES: u8 = 1;
    pub const CORE: u8 = 2;
    pub const INFRASTRUCTURE: u8 = 3;
    pub const CAPABILITIES: u8 = 4;
    pub const VALIDATION: u8 = 5;
    pub const INTERRUPTED: u8 = 6;
    pub const CONFIG: u8 = super::CONFIG;
    pub const STATE_CORRUPTED: u8 = 8;

    /// The exit code of a failure in phase `n` (0-4).
    pub fn phase(n: u8) -> u8 {
        n + 1
    }
}

/// `chora bootstrap status`.
pub mod status {
    pub const HEALTHY: u8 = 0;
    pub const UNHEALTHY: u8 = 1;
    pub const NOT_BOOTSTRAPPED: u8 = 2;
    pub const FAILED: u8 = 3;
}

/// `chora bootstrap rollback` (and `reset`).
pub mod rollback {
    pub const DONE: u8 = 0;
    pub const STILL_RUNNING: u8 = 1;
    pub const INVALID_PHASE: u8 = 2;
    pub const CANCELLED: u8 = 3;
}

/// `chora bootstrap validate`.
pub mod validate {
    pub const PASSED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const NOT_RUNNING: u8 = 2;
}
