//! `chora orchestrator serve`, `chora gateway serve`, `chora capability serve`.

use crate::failure::{Failure, exit};
use crate::serve::{load_credentials, no_credentials, serve, serve_on};
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
    /// Every Manifest node's URL, comma-separated (requests fail over between them)
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
    /// Directory for the deployed services' <name>.log files (default: $CHORA_HOME/logs)
    #[arg(long)]
    logs: Option<PathBuf>,
    /// The chora home: its containers' io.chora.home label, and the bootstrap
    /// state the dashboard (/ui) shows (default: .chora)
    #[arg(long, env = "CHORA_HOME")]
    home: Option<PathBuf>,
    /// Container names <project>-<name>, network <project>
    #[arg(long, env = "CHORA_PROJECT", default_value = "chora")]
    project: String,
    /// The image built-in capabilities run from with --runtime docker
    #[arg(long, default_value = concat!("chora:", env!("CARGO_PKG_VERSION")))]
    chora_image: String,
    /// Failures in a row before a service is given up as failed
    #[arg(long, default_value_t = 5)]
    max_restarts: u32,
    /// Seconds between SIGTERM and SIGKILL when stopping a service
    #[arg(long, default_value_t = 5.0)]
    stop_grace: f64,
    /// A Prometheus that scrapes the services (through the Manifest's
    /// /v1/prometheus/targets): the dashboard's charts read it; without one the
    /// orchestrator samples the services' /metrics itself. A URL with a
    /// password belongs in the environment variable, not in argv
    #[arg(long, env = "CHORA_PROMETHEUS_URL", value_name = "URL")]
    prometheus_url: Option<String>,
    /// With --runtime docker: run containers as services of this engine's Docker
    /// Swarm (a fleet), on the attachable overlay <project>, made with this MTU
    /// when missing
    #[arg(long, value_name = "MTU")]
    swarm_mtu: Option<u32>,
}

pub fn orchestrator(args: OrchestratorArgs) -> Result<(), Failure> {
    let OrchestratorCommand::Serve(a) = args.command;
    let credentials = if a.no_auth {
        None
    } else {
        Some(load_credentials(a.credentials.as_deref())?.ok_or_else(no_credentials)?)
    };
    let self_exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            exit::FAILURE,
            "RUNTIME",
            format!("cannot find this executable: {e}"),
        )
    })?;
    let stop_grace = chora_api::duration::seconds(a.stop_grace).ok_or_else(|| {
        Failure::new(
            exit::USAGE,
            "USAGE",
            "--stop-grace must be a number of seconds",
        )
    })?;
    let home = match &a.home {
        Some(h) => chora_bootstrap::home::Home {
            root: std::path::absolute(h).unwrap_or_else(|_| h.clone()),
        },
        None => chora_bootstrap::home::Home::from_env(),
    };
    let config = chora_orchestrator::Config {
        manifest_url: a.manifest_url,
        credentials,
        runtime: match a.runtime {
            Runtime::Process => chora_orchestrator::RuntimeKind::Process,
            Runtime::Docker => chora_orchestrator::RuntimeKind::Docker,
        },
        logs_dir: a.logs.unwrap_or_else(|| home.logs()),
        home: home.root.display().to_string(),
        project: a.project,
        chora_image: a.chora_image,
        policy: chora_orchestrator::supervisor::RestartPolicy {
            max_restarts: a.max_restarts,
            stop_grace,
            ..Default::default()
        },
        self_exe,
        prometheus_url: a.prometheus_url.filter(|u| !u.trim().is_empty()),
        swarm_mtu: a.swarm_mtu,
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
    #[command(after_help = GATEWAY_EXAMPLES)]
    Serve(GatewayServe),
}

const GATEWAY_EXAMPLES: &str = "Examples:
  chora gateway serve --listen 127.0.0.1:8700 --manifest-url http://127.0.0.1:8500
  curl -XPOST localhost:8700/api/v1/analyzer/analyze -d '{\"text\":\"hello\"}'

HTTPS (plain HTTP then answers 308 to https, unless --http serve):
  # your own certificate, picked up again when renamed over on disk
  chora gateway serve --tls-cert /etc/chora/gw.pem --tls-key /etc/chora/gw-key.pem
  # a CA made once under .chora/tls; trust .chora/tls/ca.pem
  chora gateway serve --tls-self-signed .chora/tls --tls-name gw.internal
  curl --cacert .chora/tls/ca.pem https://localhost:8443/health
  # certificates from an ACME server (http-01: port 80 must reach --listen)
  chora gateway serve --listen 0.0.0.0:80 --tls-listen 0.0.0.0:443 \\
      --acme-directory https://acme-v02.api.letsencrypt.org/directory \\
      --acme-domain gw.example.org --acme-email ops@example.org
  # a test ACME server (Debian's pebble) whose own HTTPS has a private CA
  chora gateway serve --acme-directory https://127.0.0.1:14000/dir --acme-domain gw.test \\
      --acme-ca pebble-ca.pem --acme-cache /var/lib/chora/tls
  # keep serving plain HTTP beside HTTPS on another port
  chora gateway serve --tls-self-signed .chora/tls --tls-listen 127.0.0.1:9443 --http serve

Each flag has an environment variable (CHORA_TLS_CERT, CHORA_TLS_KEY,
CHORA_TLS_SELF_SIGNED, CHORA_TLS_NAMES, CHORA_TLS_LISTEN, CHORA_ACME_DIRECTORY,
CHORA_ACME_DOMAINS, CHORA_ACME_EMAIL, CHORA_ACME_CA, CHORA_ACME_CACHE, CHORA_HTTP).";

#[derive(Debug, Args)]
struct GatewayServe {
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: String,
    /// Every Manifest node's URL, comma-separated (requests fail over between them)
    #[arg(long, env = "MANIFEST_URL", default_value = "http://127.0.0.1:8500")]
    manifest_url: String,
    /// Seconds an upstream may take to answer before the gateway answers 504
    #[arg(long, default_value_t = 30.0)]
    upstream_timeout: f64,
    #[command(flatten)]
    tls: crate::gateway_tls::TlsArgs,
}

pub fn gateway(args: GatewayArgs) -> Result<(), Failure> {
    let GatewayCommand::Serve(a) = args.command;
    let upstream_timeout = chora_api::duration::seconds(a.upstream_timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                "USAGE",
                "--upstream-timeout must be a positive number of seconds",
            )
        })?;
    let config = chora_gateway::Config {
        manifest_url: a.manifest_url,
        api_key: std::env::var("CHORA_API_KEY").ok(),
        upstream_timeout,
    };
    let Some(https) = a.tls.https()? else {
        return serve("gateway", &a.listen, "", |l, s| {
            chora_gateway::run(config, l, None, s)
        });
    };
    let tls = crate::gateway_tls::prepare(https.source)?;
    let ca = tls.ca.clone();
    let detail = |addrs: &[std::net::SocketAddr]| match &ca {
        Some(ca) => {
            tracing::info!(ca = %ca.display(), "clients trust the gateway's certificate through this CA");
            format!("https://{}, CA {}", addrs[1], ca.display())
        }
        None => format!("https://{}", addrs[1]),
    };
    serve_on(
        "gateway",
        &[&a.listen, &https.listen],
        detail,
        |mut l, s| {
            let secure = chora_gateway::Https {
                listener: l.pop().expect("two listeners"),
                tls,
                plain: https.plain,
            };
            chora_gateway::run(config, l.pop().expect("two listeners"), Some(secure), s)
        },
    )
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
    /// Every Manifest node's URL, comma-separated (requests fail over between them)
    #[arg(long, env = "MANIFEST_URL", default_value = "http://127.0.0.1:8500")]
    manifest_url: String,
    /// Where storage and logger keep their files (default: $CHORA_HOME/data)
    #[arg(long, env = "CHORA_DATA_DIR")]
    data_dir: Option<PathBuf>,
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
        data_dir: a
            .data_dir
            .unwrap_or_else(|| chora_bootstrap::home::Home::from_env().data()),
        version: std::env::var("CHORA_SERVICE_VERSION")
            .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned()),
    };
    serve(name, &a.listen, "", |l, s| {
        chora_capabilities::run(config, l, s)
    })
}

/// `chora keep-registered`: what the bootstrap runs beside a phase 1-2 service
/// with `register: chora`, since the bootstrap itself exits. It registers the
/// service on its behalf while its health check passes and deregisters it when
/// the service's process or container is gone (or on SIGTERM).
#[derive(Debug, Args)]
pub struct KeepRegisteredArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    id: String,
    #[arg(long, default_value = "1.0.0")]
    version: String,
    /// interfaces.REST
    #[arg(long)]
    rest: String,
    /// http(s)://… or tcp://HOST:PORT
    #[arg(long)]
    health: String,
    /// Every Manifest node's URL, comma-separated (requests fail over between them)
    #[arg(long, env = "MANIFEST_URL")]
    manifest_url: String,
    /// The unit to follow: process:PID:START_TIME or container:ID
    #[arg(long)]
    unit: String,
    /// A CA file to trust for an https:// health URL
    #[arg(long)]
    ca: Option<PathBuf>,
}

pub fn keep_registered(a: KeepRegisteredArgs) -> Result<(), Failure> {
    let usage = |m: &str| Failure::new(exit::USAGE, "USAGE", m.to_owned());
    let unit = chora_runtime::UnitId::parse_arg(&a.unit).map_err(|m| usage(&m))?;
    let http = chora_runtime::check::client(a.ca.as_deref())
        .map_err(|m| Failure::new(exit::CONFIG, "CONFIG_ERROR", m))?;
    let mut client = chora_api::ManifestClient::new([a.manifest_url.as_str()])
        .map_err(|e| usage(&e.to_string()))?
        .with_timeout(std::time::Duration::from_secs(2));
    if let Ok(key) = std::env::var("CHORA_API_KEY") {
        client = client.with_token(key);
    }
    let rt = crate::rt::runtime()?;
    rt.block_on(async move {
        let behalf = chora_runtime::behalf::OnBehalf::spawn(
            client,
            http,
            chora_runtime::behalf::Behalf {
                name: a.name.clone(),
                id: a.id,
                version: a.version,
                rest: a.rest,
                health_url: a.health,
                dependencies: Vec::new(),
                every: std::time::Duration::from_millis(500),
            },
        );
        let gone = chora_runtime::exited(&unit);
        tokio::select! {
            _ = gone => tracing::info!(service = %a.name, "gone: deregistering"),
            s = crate::rt::shutdown_signal_name() => tracing::info!(signal = s, "deregistering"),
        }
        behalf.stop().await;
        Ok(())
    })
}
