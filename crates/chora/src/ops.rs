//! The operator's day two (DESIGN.md §1, §14): `chora logs`, `ps`,
//! `restart`, `stop`, `start`, `token` (`completions` is the clap tree's own,
//! in cli.rs). Flags here, behaviour
//! in chora-bootstrap; every one reads the system of `CHORA_HOME`.

use crate::failure::{Failure, exit};
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  chora logs analyzer --tail 20\n  chora logs manifest -f")]
pub struct LogsArgs {
    /// A service or unit (a replicated service shows each of its units)
    name: String,
    /// Keep following what it writes (Ctrl-C ends)
    #[arg(short, long)]
    follow: bool,
    /// How many of its last lines to show first
    #[arg(long, default_value_t = 100)]
    tail: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TableOrJson {
    Table,
    Json,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  chora ps\n  chora ps --format json")]
pub struct PsArgs {
    #[arg(long, value_enum, default_value_t = TableOrJson::Table)]
    format: TableOrJson,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// A service or unit (a replicated service: each unit in turn)
    name: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  curl -H \"Authorization: Bearer $(chora token)\" localhost:8600/v1/services\n  chora token --service analyzer"
)]
pub struct TokenArgs {
    /// Seconds the admin token is valid
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Print this service's own API key instead (it may only register,
    /// heartbeat and deregister instances of its name)
    #[arg(long)]
    service: Option<String>,
}

pub fn logs(a: LogsArgs) -> Result<(), Failure> {
    let rt = crate::rt::runtime()?;
    rt.block_on(async {
        tokio::select! {
            r = chora_bootstrap::logs::logs(&a.name, a.follow, a.tail) => r,
            _ = crate::rt::shutdown_signal() => Ok(()),
        }
    })
}

pub fn ps(a: PsArgs) -> Result<(), Failure> {
    let rt = crate::rt::runtime()?;
    rt.block_on(chora_bootstrap::ps::ps(a.format == TableOrJson::Json))
}

pub fn control(
    a: ControlArgs,
    action: chora_api::orchestrator_client::Action,
) -> Result<(), Failure> {
    let rt = crate::rt::runtime()?;
    rt.block_on(chora_bootstrap::control::control(&a.name, action))
}

pub fn token(a: TokenArgs) -> Result<(), Failure> {
    if a.ttl == 0 {
        return Err(Failure::new(
            exit::USAGE,
            "USAGE",
            "--ttl must be at least 1 second",
        ));
    }
    chora_bootstrap::token::token(std::time::Duration::from_secs(a.ttl), a.service.as_deref())
}
