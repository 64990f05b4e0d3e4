//! The command line (DESIGN.md §1).

use crate::failure::{Failure, exit};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "chora",
    version,
    about = "Bring an ecosystem of services up from nothing",
    after_help = "Example:\n  chora manifest serve --no-auth\n  chora manifest list"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring the whole system up, phase by phase (and status, rollback, reset, validate, config)
    #[command(
        after_help = "Example:\n  chora bootstrap\n  chora bootstrap --dry-run\n  chora bootstrap status"
    )]
    Bootstrap(crate::bootstrap::BootstrapArgs),
    /// Prepare an application's infrastructure (directories, SQLite, configs, downloads)
    Prepare(crate::prepare::PrepareArgs),
    /// The service registry: serve it, or query a running one
    Manifest(crate::manifest::ManifestArgs),
    /// The orchestrator: deploys and supervises services
    Orchestrator(crate::services::OrchestratorArgs),
    /// The API gateway in front of every service
    Gateway(crate::services::GatewayArgs),
    /// The capability services (analyzer, executor, storage, monitor, logger)
    Capability(crate::services::CapabilityArgs),
    /// (internal) Keep a service that does not register itself registered while it runs
    #[command(hide = true)]
    KeepRegistered(crate::services::KeepRegisteredArgs),
    /// (internal) A fleet's door: relay ports of a manager's loopback to units on the overlay
    #[command(hide = true)]
    Relay(crate::relay::RelayArgs),
    /// Docker images with no registry: FROM scratch, a binary and exactly what it needs
    Image(crate::image::ImageArgs),
    /// Exit 0 when a URL answers 2xx (or a tcp:// port accepts), 1 otherwise: a health check
    Probe(crate::probe::ProbeArgs),
    /// Hosts over SSH: install Docker and join a mesh network (bootstrap, status)
    Infra(crate::infra::InfraArgs),
    /// Show a service's output (any runtime): the last lines, -f to follow
    Logs(crate::ops::LogsArgs),
    /// List the units this home runs: runtime, where, state, uptime
    Ps(crate::ops::PsArgs),
    /// Restart a service (phase 3 through the orchestrator; replicas one at a time)
    #[command(after_help = "Example:\n  chora restart analyzer\n  chora restart manifest")]
    Restart(crate::ops::ControlArgs),
    /// Stop a service until `chora start` (or the next `chora bootstrap`)
    #[command(after_help = "Example:\n  chora stop analyzer")]
    Stop(crate::ops::ControlArgs),
    /// Start a stopped service
    #[command(after_help = "Example:\n  chora start analyzer")]
    Start(crate::ops::ControlArgs),
    /// Print an admin JWT (or a service's API key) for calling the APIs by hand
    Token(crate::ops::TokenArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  chora completions bash > /etc/bash_completion.d/chora\n  chora completions zsh > \"${fpath[1]}/_chora\""
)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

/// Parses argv; on `--help` or `--version` prints and returns 0, on a usage
/// error prints it and returns [`exit::USAGE`] (not clap's 2, which `status`
/// and `validate` give a meaning of their own).
pub fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(exit::USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

impl Cli {
    /// Servers log at info; the bootstrap's own output is its progress lines, so
    /// its logs show only warnings unless `--verbose`.
    pub fn default_log_level(&self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match &self.command {
            Command::Bootstrap(b) if b.verbose() => LevelFilter::DEBUG,
            Command::Bootstrap(_) => LevelFilter::WARN,
            // Its report says everything; CHORA_LOG=info shows each step.
            Command::Prepare(_) => LevelFilter::OFF,
            // The operator's commands say what they did; logs only warn.
            Command::Logs(_)
            | Command::Ps(_)
            | Command::Restart(_)
            | Command::Stop(_)
            | Command::Start(_)
            | Command::Token(_)
            | Command::Completions(_) => LevelFilter::WARN,
            _ => LevelFilter::INFO,
        }
    }
}

/// Logs go to stderr; `CHORA_LOG` sets the level (error, warn, info, debug, trace).
pub fn init_logging(default: tracing_subscriber::filter::LevelFilter) {
    let level = std::env::var("CHORA_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(default);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && is_terminal_stderr())
        .with_target(false)
        .try_init();
}

fn is_terminal_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

pub fn dispatch(cli: Cli) -> Result<(), Failure> {
    use chora_api::orchestrator_client::Action;
    match cli.command {
        Command::Bootstrap(args) => crate::bootstrap::run(args),
        Command::Manifest(args) => crate::manifest::run(args),
        Command::Prepare(args) => crate::prepare::run(args),
        Command::Orchestrator(args) => crate::services::orchestrator(args),
        Command::Gateway(args) => crate::services::gateway(args),
        Command::Capability(args) => crate::services::capability(args),
        Command::KeepRegistered(args) => crate::services::keep_registered(args),
        Command::Relay(args) => crate::relay::run(args),
        Command::Image(args) => crate::image::run(args),
        Command::Probe(args) => crate::probe::run(args),
        Command::Infra(args) => crate::infra::run(args),
        Command::Logs(args) => crate::ops::logs(args),
        Command::Ps(args) => crate::ops::ps(args),
        Command::Restart(args) => crate::ops::control(args, Action::Restart),
        Command::Stop(args) => crate::ops::control(args, Action::Stop),
        Command::Start(args) => crate::ops::control(args, Action::Start),
        Command::Token(args) => crate::ops::token(args),
        Command::Completions(args) => {
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "chora",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}
