//! `chora manifest serve | list | get | query`.

use crate::failure::{Failure, exit};
use crate::serve::{load_credentials, no_credentials, serve};
use chora_api::ClientError;
use chora_api::manifest::{Instance, ListFilter, Service, Status};
use chora_registry::StorageSpec;
use chora_registry::catalog::Liveness;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ManifestArgs {
    #[command(subcommand)]
    command: ManifestCommand,
}

#[derive(Debug, Clone, Args)]
struct ClientArgs {
    /// Every Manifest node's URL, comma-separated (requests fail over between
    /// them). Default: the Manifest of the system in CHORA_HOME (its state
    /// file, else its config), else http://127.0.0.1:8500
    #[arg(long, env = "MANIFEST_URL", global = true)]
    url: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum ManifestCommand {
    /// Run the registry
    #[command(
        after_help = "Example:\n  chora manifest serve --listen 127.0.0.1:8500 \\\n      --storage sqlite:.chora/data/manifest.db --credentials .chora/credentials.json\n  chora manifest serve --no-auth --ttl 3 --heartbeat-interval 1"
    )]
    Serve(ServeArgs),
    /// List every registered instance
    #[command(after_help = "Example:\n  chora manifest list --format json")]
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one service (exact name) and its instances
    #[command(after_help = "Example:\n  chora manifest get analyzer")]
    Get {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List instances by status and/or tag
    #[command(after_help = "Example:\n  chora manifest query --status up --tag core")]
    Query {
        /// up or unhealthy
        #[arg(long)]
        status: Option<Status>,
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:8500")]
    listen: String,
    /// sqlite:PATH or etcd:URL[,URL…] (default: sqlite:$CHORA_HOME/data/manifest.db)
    #[arg(long)]
    storage: Option<StorageSpec>,
    /// Seconds without a heartbeat before an instance is removed
    #[arg(long, default_value_t = 30.0)]
    ttl: f64,
    /// Seconds between the heartbeats clients are asked to send; an instance is
    /// `unhealthy` after two missed
    #[arg(long, default_value_t = 10.0)]
    heartbeat_interval: f64,
    /// credentials.json holding jwt_secret and api_key_<service> entries
    #[arg(long, env = "CHORA_CREDENTIALS", conflicts_with = "no_auth")]
    credentials: Option<PathBuf>,
    /// Accept writes from anyone (local play only)
    #[arg(long)]
    no_auth: bool,
    /// Register the registry itself as service `manifest`
    #[arg(long)]
    register_self: bool,
}

pub fn run(args: ManifestArgs) -> Result<(), Failure> {
    match args.command {
        ManifestCommand::Serve(a) => serve_registry(a),
        ManifestCommand::List { client } => {
            let c = client_of(&client)?;
            let list = block_on(c.list(&ListFilter::default()), &client)?;
            print_instances(&list, client.format);
            Ok(())
        }
        ManifestCommand::Get { name, client } => {
            let c = client_of(&client)?;
            let svc = block_on(c.get(&name), &client)?;
            print_service(&svc, client.format);
            Ok(())
        }
        ManifestCommand::Query {
            status,
            tag,
            client,
        } => {
            let c = client_of(&client)?;
            let filter = ListFilter {
                status,
                tag,
                name: None,
            };
            let list = block_on(c.list(&filter), &client)?;
            print_instances(&list, client.format);
            Ok(())
        }
    }
}

fn serve_registry(a: ServeArgs) -> Result<(), Failure> {
    let bad_flag = |flag: &str, v: f64| {
        Failure::new(
            exit::USAGE,
            "USAGE",
            format!("--{flag} must be a positive number of seconds, not {v}"),
        )
    };
    let ttl = chora_api::duration::seconds(a.ttl)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| bad_flag("ttl", a.ttl))?;
    let heartbeat_interval = chora_api::duration::seconds(a.heartbeat_interval)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| bad_flag("heartbeat-interval", a.heartbeat_interval))?;
    if ttl < heartbeat_interval {
        return Err(Failure::new(
            exit::USAGE,
            "USAGE",
            format!(
                "--ttl ({}) must not be shorter than --heartbeat-interval ({})",
                a.ttl, a.heartbeat_interval
            ),
        ));
    }
    let credentials = if a.no_auth {
        None
    } else {
        Some(load_credentials(a.credentials.as_deref())?.ok_or_else(no_credentials)?)
    };
    let storage = a.storage.unwrap_or_else(|| {
        StorageSpec::Sqlite(
            chora_bootstrap::home::Home::from_env()
                .data()
                .join("manifest.db"),
        )
    });
    let storage_label = match &storage {
        StorageSpec::Sqlite(p) => format!("sqlite:{}", p.display()),
        StorageSpec::Etcd(urls) => format!("etcd:{}", urls.join(",")),
    };
    let detail = format!(
        "storage {storage_label}, auth {}",
        if credentials.is_some() { "on" } else { "off" }
    );
    let config = chora_registry::Config {
        storage,
        liveness: Liveness {
            heartbeat_interval,
            ttl,
        },
        credentials,
        register_self: a.register_self,
    };
    serve("manifest", &a.listen, &detail, |l, s| {
        chora_registry::run(config, l, s)
    })
}

impl ClientArgs {
    /// The URLs asked for, else the home's system's, else the default port.
    fn url(&self) -> String {
        self.url.clone().unwrap_or_else(|| {
            chora_bootstrap::session::system_manifest_url(&chora_bootstrap::home::Home::from_env())
                .unwrap_or_else(|| "http://127.0.0.1:8500".into())
        })
    }
}

fn client_of(a: &ClientArgs) -> Result<chora_api::ManifestClient, Failure> {
    chora_api::ManifestClient::new([a.url().as_str()]).map_err(|e| {
        Failure::new(exit::USAGE, "USAGE", e.to_string())
            .action("Pass --url http://HOST:PORT or set MANIFEST_URL")
    })
}

fn block_on<T>(
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
    a: &ClientArgs,
) -> Result<T, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILURE, "RUNTIME", e.to_string()))?;
    rt.block_on(fut).map_err(|e| client_failure(e, a))
}

fn client_failure(e: ClientError, a: &ClientArgs) -> Failure {
    match e {
        ClientError::Unreachable { .. } => Failure::new(exit::FAILURE, "MANIFEST_UNREACHABLE", e.to_string())
            .cause("the Manifest is not running")
            .cause("--url or MANIFEST_URL points to the wrong address")
            .action("Start everything with `chora bootstrap`, or the registry alone with `chora manifest serve`")
            .action(format!("Check the address: curl {}/v1/health", a.url().split(',').next().unwrap_or(""))),
        ClientError::NotFound { message } => Failure::new(exit::FAILURE, "NOT_FOUND", message)
            .action("List what is registered: chora manifest list"),
        other => Failure::new(exit::FAILURE, "MANIFEST_ERROR", other.to_string()),
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("wire types serialize")
    );
}

fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t
}

fn print_instances(list: &[Instance], format: Format) {
    if format == Format::Json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No instances registered.");
        return;
    }
    let mut t = table();
    t.set_header([
        "NAME",
        "ID",
        "VERSION",
        "STATUS",
        "ADDRESS",
        "LAST HEARTBEAT",
    ]);
    for i in list {
        t.add_row([
            i.name.as_str(),
            i.id.as_str(),
            i.version.as_str(),
            i.status.as_str(),
            i.rest_url().unwrap_or("-"),
            i.last_heartbeat.as_str(),
        ]);
    }
    println!("{t}");
}

fn print_service(s: &Service, format: Format) {
    if format == Format::Json {
        return print_json(s);
    }
    println!("{} {} ({})", s.name, s.version, s.status);
    if let Some(d) = &s.metadata.description {
        println!("  {d}");
    }
    if !s.metadata.tags.is_empty() {
        println!("  tags: {}", s.metadata.tags.join(", "));
    }
    if !s.metadata.dependencies.is_empty() {
        println!("  depends on: {}", s.metadata.dependencies.join(", "));
    }
    println!();
    print_instances(&s.instances, format);
}
