//! `chora orchestrator serve`, `chora gateway serve`, `chora capability serve`.

use crate::failure::Failure;
use crate::serve::{load_credentials, no_credentials, serve};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    #[command(subcommand)]
    command: OrchestratorCommand,
}

#[derive(Debug, Subcommand)]
enum OrchestratorCommand {
    /// Run the orchestrator: deploys services and restarts them when they fail
    #[command(
        after_help = "Example:\n  chora orchestrator serve --listen 127.0.0.1:8600 \\\n      --manifest-url http://127.0.0.1:8500 --credentials .chora/credentials.json"
    )]
    Serve(OrchestratorServe),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Runtime {
    Process,
    Docker,
}

#[derive(Debug, Args)]
struct OrchestratorServe {
    #[arg(long, default_value = "127.0.0.1:8600")]
    listen: String,
    /// Manifest URL(s), comma-separated
    #[arg(long, env = "MANIFEST_URL", default_value = "http://127.0.0.1:8500")]
    manifest_url: String,
    #[arg(long, value_enum, default_value_t = Runtime::Process)]
    runtime: Runtime,
    /// credentials.json (jwt_secret signs and checks admin tokens)
    #[arg(long, env = "CHORA_CREDENTIALS", conflicts_with = "no_auth")]
    credentials: Option<PathBuf>,
    /// Accept requests without an admin token (local play only)
    #[arg(long)]
    no_auth: bool,
    /// Directory for the deployed services' <name>.log files
    #[arg(long, default_value = ".chora/logs")]
    logs: PathBuf,
    /// Failures in a row before a service is given up as failed
    #[arg(long, default_value_t = 5)]
    max_restarts: u32,
    /// Seconds between SIGTERM and SIGKILL when stopping a service
    #[arg(long, default_value_t = 5.0)]
    stop_grace: f64,
    /// The chora home whose bootstrap state the dashboard (/ui) shows
    #[arg(long, env = "CHORA_HOME")]
    home: Option<PathBuf>,
}

pub fn orchestrator(args: OrchestratorArgs) -> Result<(), Failure> {
    let OrchestratorCommand::Serve(a) = args.command;
    let credentials = if a.no_auth {
        None
    } else {
        Some(load_credentials(a.credentials.as_deref())?.ok_or_else(no_credentials)?)
    };
    let self_exe = std::env::current_exe()
        .map_err(|e| Failure::new(1, "RUNTIME", format!("cannot find this executable: {e}")))?;
    let stop_grace = chora_api::duration::seconds(a.stop_grace)
        .ok_or_else(|| Failure::new(2, "USAGE", "--stop-grace must be a number of seconds"))?;
    let config = chora_orchestrator::Config {
        manifest_url: a.manifest_url,
        credentials,
        runtime: match a.runtime {
            Runtime::Process => chora_orchestrator::RuntimeKind::Process,
            Runtime::Docker => chora_orchestrator::RuntimeKind::Docker,
        },
        logs_dir: a.logs,
        policy: chora_orchestrator::supervisor::RestartPolicy {
            max_restarts: a.max_restarts,
            stop_grace,
            ..Default::default()
        },
        self_exe,
        home: a.home,
    };
    let detail = format!("runtime {:?}", a.runtime).to_lowercase();
    serve("orchestrator", &a.listen, &detail, |l, s| {
        chora_orchestrator::run(config, l, s)
    })
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(subcommand)]
    command: GatewayCommand,
}

#[derive(Debug, Subcommand)]
enum GatewayCommand {
    /// Run the API gateway: /api/v1/{service}/… to an up instance of {service}
    #[command(
        after_help = "Example:\n  chora gateway serve --listen 127.0.0.1:8700 --manifest-url http://127.0.0.1:8500\n  curl -XPOST localhost:8700/api/v1/analyzer/analyze -d '{\"text\":\"hello\"}'"
    )]
    Serve(GatewayServe),
}

#[derive(Debug, Args)]
struct GatewayServe {
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: String,
    /// Manifest URL(s), comma-separated
    #[arg(long, env = "MANIFEST_URL", default_value = "http://127.0.0.1:8500")]
    manifest_url: String,
    /// Seconds an upstream may take to answer before the gateway answers 504
    #[arg(long, default_value_t = 30.0)]
    upstream_timeout: f64,
}

pub fn gateway(args: GatewayArgs) -> Result<(), Failure> {
    let GatewayCommand::Serve(a) = args.command;
    let upstream_timeout = chora_api::duration::seconds(a.upstream_timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Failure::new(
                2,
                "USAGE",
                "--upstream-timeout must be a positive number of seconds",
            )
        })?;
    let config = chora_gateway::Config {
        manifest_url: a.manifest_url,
        api_key: std::env::var("CHORA_API_KEY").ok(),
        upstream_timeout,
    };
    serve("gateway", &a.listen, "", |l, s| {
        chora_gateway::run(config, l, s)
    })
}

#[derive(Debug, Args)]
pub struct CapabilityArgs {
    #[command(subcommand)]
    command: CapabilityCommand,
}

#[derive(Debug, Subcommand)]
enum CapabilityCommand {
    /// Run one capability service: analyzer, executor, storage, monitor or logger
    #[command(
        after_help = "Example:\n  CHORA_API_KEY=… chora capability serve --name analyzer --listen 127.0.0.1:8800\n  curl -XPOST localhost:8800/analyze -d '{\"text\":\"to be or not to be\"}'"
    )]
    Serve(CapabilityServe),
}

#[derive(Debug, Args)]
struct CapabilityServe {
    /// analyzer, executor, storage, monitor or logger
    #[arg(long)]
    name: chora_capabilities::Capability,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Manifest URL(s), comma-separated
    #[arg(long, env = "MANIFEST_URL", default_value = "http://127.0.0.1:8500")]
    manifest_url: String,
    /// Where storage and logger keep their files
    #[arg(long, env = "CHORA_DATA_DIR", default_value = ".chora/data")]
    data_dir: PathBuf,
    /// Accepted for symmetry; a capability's key comes from CHORA_API_KEY
    #[arg(long, hide = true)]
    credentials: Option<PathBuf>,
}

pub fn capability(args: CapabilityArgs) -> Result<(), Failure> {
    let CapabilityCommand::Serve(a) = args.command;
    let name = a.name.name();
    let api_key = std::env::var("CHORA_API_KEY").ok().or_else(|| {
        load_credentials(a.credentials.as_deref())
            .ok()
            .flatten()
            .and_then(|c| c.api_key(name).map(str::to_owned))
    });
    let config = chora_capabilities::Config {
        capability: a.name,
        manifest_url: a.manifest_url,
        api_key,
        instance_id: std::env::var("CHORA_INSTANCE_ID").ok(),
        data_dir: a.data_dir,
        version: std::env::var("CHORA_SERVICE_VERSION")
            .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned()),
    };
    serve(name, &a.listen, "", |l, s| {
        chora_capabilities::run(config, l, s)
    })
}
