//! `chora bootstrap`: brings the whole ecosystem up from nothing, in phases, and
//! back down (DESIGN.md §1-4, 6, 7).
//!
//! - [`config`]: the YAML schema, checked with file, line and field.
//! - [`state`]: the state file, written atomically; [`lock`]: one run at a time.
//! - [`ctx`]: starting, finding (pid + start time), checking and stopping services.
//! - [`engine`]: phases 0-4, resume, re-checks; [`validate`]: phase 4.
//! - [`commands`]: status, rollback, reset, validate, config.
//! - [`output`]: the console layout and `--format json`; [`audit`]: the audit log.

pub mod audit;
pub mod commands;
pub mod config;
pub mod ctx;
pub mod engine;
pub mod etcdlock;
pub mod failure;
pub mod health;
pub mod lock;
pub mod output;
pub use chora_runtime::proc;
pub mod state;
pub mod template;
pub mod ui;
pub mod validate;
