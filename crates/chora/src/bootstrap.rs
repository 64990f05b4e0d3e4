//! `chora bootstrap` and its subcommands: flags here, behaviour in
//! `chora-bootstrap`.

use crate::failure::{Failure, exit};
use chora_bootstrap::config::Environment;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BootstrapArgs {
    #[command(subcommand)]
    command: Option<BootstrapCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Env {
    Dev,
    Staging,
    Prod,
}

impl From<Env> for Environment {
    fn from(e: Env) -> Environment {
        match e {
            Env::Dev => Environment::Dev,
            Env::Staging => Environment::Staging,
            Env::Prod => Environment::Prod,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RunFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Target environment (picks the built-in template when the config is missing)
    #[arg(long, value_enum)]
    environment: Option<Env>,
    /// Resume from the last checkpoint (the default)
    #[arg(long, overrides_with = "no_resume")]
    resume: bool,
    /// Start over: stop what an earlier run started and begin at phase 0
    #[arg(long)]
    no_resume: bool,
    /// Skip phase 4 (not recommended)
    #[arg(long)]
    skip_validation: bool,
    /// More log output on stderr
    #[arg(long)]
    verbose: bool,
    /// Print the plan (phases, services, order, commands without secrets) and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Config file (default .chora/bootstrap-config.yml)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run on these hosts (chora infra's inventory) as a Docker Swarm fleet; recorded in the config
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// Seconds the whole run may take
    #[arg(long, default_value_t = 1800.0)]
    timeout: f64,
    /// Start each wave of independent services at once (always on a fleet)
    #[arg(long)]
    parallel: bool,
    #[arg(long, value_enum, default_value_t = RunFormat::Text)]
    format: RunFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TableOrJson {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum BootstrapCommand {
    /// Show the system's status (exit 0 healthy, 1 unhealthy, 2 not bootstrapped, 3 failed)
    #[command(
        after_help = "Example:\n  chora bootstrap status --format json\n  chora bootstrap status --watch --services manifest,gateway"
    )]
    Status {
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
        /// Redraw on every change (blocking reads on the Manifest)
        #[arg(long)]
        watch: bool,
        /// Only these services (comma-separated)
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
    },
    /// Undo phases: stop what later phases started
    #[command(after_help = "Example:\n  chora bootstrap rollback --to-phase 1 --force")]
    Rollback {
        /// Phase to return to (default: one back)
        #[arg(long)]
        to_phase: Option<u8>,
        /// Do not ask for confirmation
        #[arg(long)]
        force: bool,
        /// Keep the Manifest's data even when rolling back phase 1
        #[arg(long)]
        keep_data: bool,
    },
    /// Stop everything and delete state, logs and (unless kept) credentials; data is kept
    #[command(after_help = "Example:\n  chora bootstrap reset --force --keep-credentials")]
    Reset {
        #[arg(long)]
        force: bool,
        #[arg(long)]
        keep_credentials: bool,
    },
    /// Run the validation checks of phase 4 against the running system
    #[command(after_help = "Example:\n  chora bootstrap validate --skip-control --format json")]
    Validate {
        #[arg(long)]
        skip_discovery: bool,
        #[arg(long)]
        skip_routing: bool,
        #[arg(long)]
        skip_control: bool,
        #[arg(long, value_enum, default_value_t = TableOrJson::Table)]
        format: TableOrJson,
    },
    /// Print a one-time login URL for the dashboard (valid 5 minutes, works once)
    #[command(after_help = "Example:\n  chora bootstrap ui\n  xdg-open \"$(chora bootstrap ui)\"")]
    Ui,
    /// Show, edit, validate the config; rotate and apply credentials
    #[command(
        after_help = "Example:\n  chora bootstrap config validate --config ./bootstrap-config.yml\n  chora bootstrap config rotate-credentials && chora bootstrap config apply-credentials"
    )]
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Write a fresh config from the built-in template of an environment (the
    /// old one is kept as .bak; refused while the system runs)
    #[command(after_help = "Example:\n  chora bootstrap config init --environment staging --force")]
    Init {
        #[arg(long, value_enum)]
        environment: Env,
        /// Replace an existing config
        #[arg(long)]
        force: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the config (or the template that would be written)
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Edit it in $EDITOR; it is saved only if valid
    Edit {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check it: file, line and field of every mistake (exit 7)
    Validate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write new credentials (0600); running services keep the old ones until applied
    RotateCredentials,
    /// Restart every service so that it uses the current credentials
    ApplyCredentials,
}

impl BootstrapArgs {
    pub fn verbose(&self) -> bool {
        self.command.is_none() && self.run.verbose
    }
}

pub fn run(args: BootstrapArgs) -> Result<(), Failure> {
    let rt = crate::rt::runtime()?;
    use chora_bootstrap::{config_cmd, status, teardown, validate};
    match args.command {
        None => rt.block_on(run_bootstrap(args.run)),
        Some(BootstrapCommand::Status {
            format,
            watch,
            services,
        }) => {
            let f = match format {
                StatusFormat::Table => status::Format::Table,
                StatusFormat::Json => status::Format::Json,
                StatusFormat::Yaml => status::Format::Yaml,
            };
            rt.block_on(async {
                tokio::select! {
                    r = status::status(f, watch, services) => r,
                    _ = crate::rt::shutdown_signal() => Ok(()),
                }
            })
        }
        Some(BootstrapCommand::Rollback {
            to_phase,
            force,
            keep_data,
        }) => rt.block_on(teardown::rollback(to_phase, force, keep_data)),
        Some(BootstrapCommand::Reset {
            force,
            keep_credentials,
        }) => rt.block_on(teardown::reset(force, keep_credentials)),
        Some(BootstrapCommand::Validate {
            skip_discovery,
            skip_routing,
            skip_control,
            format,
        }) => {
            let skip = validate::Skip {
                discovery: skip_discovery,
                routing: skip_routing,
                control: skip_control,
            };
            rt.block_on(validate::command(skip, format == TableOrJson::Json))
        }
        Some(BootstrapCommand::Ui) => {
            rt.block_on(chora_bootstrap::ui::ui(None, crate::rt::shutdown_signal()))
        }
        Some(BootstrapCommand::Config { action }) => {
            use config_cmd::Action;
            let (what, path) = match action {
                ConfigAction::Init {
                    environment,
                    force,
                    config,
                } => (
                    Action::Init {
                        environment: environment.into(),
                        force,
                    },
                    config,
                ),
                ConfigAction::Show { config } => (Action::Show, config),
                ConfigAction::Edit { config } => (Action::Edit, config),
                ConfigAction::Validate { config } => (Action::Validate, config),
                ConfigAction::RotateCredentials => (Action::RotateCredentials, None),
                ConfigAction::ApplyCredentials => (Action::ApplyCredentials, None),
            };
            rt.block_on(config_cmd::config(what, path.as_deref()))
        }
    }
}

async fn run_bootstrap(a: RunArgs) -> Result<(), Failure> {
    let timeout = chora_api::duration::seconds(a.timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                "USAGE",
                "--timeout must be a positive number of seconds",
            )
        })?;
    let opts = chora_bootstrap::bootstrap_cmd::Options {
        environment: a.environment.map(Environment::from),
        resume: !a.no_resume,
        skip_validation: a.skip_validation,
        dry_run: a.dry_run,
        config: a.config,
        inventory: a.inventory.map(|p| std::path::absolute(&p).unwrap_or(p)),
        timeout: timeout + Duration::from_millis(0),
        parallel: a.parallel,
        json: a.format == RunFormat::Json,
    };
    tokio::select! {
        r = chora_bootstrap::bootstrap_cmd::bootstrap(opts) => r,
        sig = crate::rt::shutdown_signal_name() => Err(interrupted(sig)),
    }
}

/// Ctrl-C or SIGTERM: the run future is dropped (its lock with it); what it
/// saved last stands, marked interrupted, and the next run resumes from there.
fn interrupted(signal: &str) -> Failure {
    use chora_api::bootstrap_state::{RunStatus, State};
    let home = chora_bootstrap::home::Home::from_env();
    if let Ok(Some(mut s)) = State::load(&home.state())
        && s.status == RunStatus::InProgress
    {
        s.status = RunStatus::Failed;
        s.last_error = Some(format!("interrupted by {signal}"));
        let _ = s.save(&home.state());
    }
    Failure::new(
        exit::bootstrap::INTERRUPTED,
        "USER_INTERRUPTED",
        format!("interrupted by {signal}; the state is saved"),
    )
    .action("Resume with: chora bootstrap")
}
