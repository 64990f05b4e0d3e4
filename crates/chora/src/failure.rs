//! The one place where errors become what a person reads and the exit code: the
//! `Failure` of `chora-bootstrap`, shared by every command.

pub use chora_bootstrap::exit;
pub use chora_bootstrap::failure::{EXIT_CONFIG, Failure};
