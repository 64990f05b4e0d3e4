//! `chora bootstrap`: brings the whole ecosystem up from nothing, in phases, and
//! back down (DESIGN.md §1-4, 6, 7, 14).
//!
//! - Opening: [`home`] (where everything lives), [`config`] (the YAML, checked
//!   with file, line and field), [`session`] (config, state, context, lock),
//!   [`ctx`] (what every step shares), [`lock`] and [`etcdlock`] (one run at a
//!   time). The state file's model is `chora_api::bootstrap_state`.
//! - Running: [`bootstrap_cmd`] (the whole command: locks, resume, start
//!   over, apply changes), [`run`] (the phase machine), [`phase0`], [`plan`]
//!   (`--dry-run`), [`applied`] and [`apply`] (what changed, and changing
//!   it), [`local`] and [`registrar`] (phases 1-2 through the
//!   runtime seam), [`deploy`] (phase 3 through the orchestrator),
//!   [`runtimes`], [`fleet`] (a config with `inventory:`: the swarm over
//!   SSH, images on every host, placement), [`substitute`], [`etcd_members`], [`images`],
//!   [`monitoring`] (the Prometheus chora runs), [`edge`] (the gateway's
//!   HTTPS), [`health`], [`validate`]
//!   (phase 4 and `chora bootstrap validate`).
//! - Commands on a system: [`status`], [`teardown`] (rollback, reset),
//!   [`stop`], [`config_cmd`], [`ui`]; the operator's day two: [`logs`],
//!   [`ps`], [`control`] (restart, stop, start), [`token`], all naming units
//!   through [`units`].
//! - Saying it: [`output`] (console text and `--format json`), [`audit`],
//!   [`failure`] and [`exit`] (the documented exit codes).

pub mod applied;
pub mod apply;
pub mod audit;
pub mod bootstrap_cmd;
pub mod config;
pub mod config_cmd;
pub mod control;
pub mod ctx;
pub mod deploy;
pub mod edge;
pub mod etcd_members;
pub mod etcdlock;
pub mod exit;
pub mod failure;
pub mod fleet;
pub mod health;
pub mod home;
pub mod images;
pub mod local;
pub mod lock;
pub mod logs;
pub mod monitoring;
pub mod output;
pub mod phase0;
pub mod plan;
pub mod ps;
pub mod registrar;
pub mod run;
pub mod runtimes;
pub mod session;
pub mod stale;
pub mod status;
pub mod stop;
pub mod substitute;
pub mod teardown;
pub mod template;
pub mod token;
pub mod ui;
pub mod units;
pub mod validate;

pub use chora_runtime::proc;
