//! The Manifest: chora's service registry.
//!
//! [`run`] serves the HTTP API of DESIGN.md §5 on a listener the caller bound, until
//! `shutdown` resolves. Reads come from the in-memory [`catalog::Catalog`]; writes
//! go through a [`store::Store`] backend that makes them durable first.

pub mod catalog;
pub mod etcd;
pub mod http;
pub mod prometheus;
pub mod sqlite;
pub mod store;

use catalog::Liveness;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where instances are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSpec {
    Sqlite(PathBuf),
    Etcd(Vec<String>),
}

impl std::str::FromStr for StorageSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("`sqlite:` needs a path, e.g. sqlite:.chora/data/manifest.db".into());
            }
            Ok(StorageSpec::Sqlite(PathBuf::from(path)))
        } else if let Some(urls) = s.strip_prefix("etcd:") {
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if urls.is_empty() {
                return Err(
                    "`etcd:` needs at least one URL, e.g. etcd:http://127.0.0.1:2379".into(),
                );
            }
            Ok(StorageSpec::Etcd(urls))
        } else {
            Err(format!(
                "`{s}` is not a storage (expected sqlite:PATH or etcd:URL[,URL…])"
            ))
        }
    }
}

/// Everything `chora manifest serve` needs besides its listener.
#[derive(Debug)]
pub struct Config {
    pub storage: StorageSpec,
    pub liveness: Liveness,
    /// `None` is `--no-auth`.
    pub credentials: Option<chora_api::auth::Credentials>,
    /// Register the registry itself as service `manifest` (and keep it alive).
    pub register_self: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Open(#[from] sqlite::OpenError),
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdOpenError),
    #[error("invalid liveness settings: {0}")]
    Liveness(String),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How often the sweeper looks for overdue instances: a quarter of the heartbeat
/// interval, between 10 ms and 1 s.
pub(crate) fn sweep_tick(l: &Liveness) -> Duration {
    (l.heartbeat_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Registers the registry as service `manifest`, durably, and heartbeats it
/// from inside. Its id is `CHORA_INSTANCE_ID` when its starter gave one (each
/// node of a cluster its own), else derived from its address; either way a
/// restart replaces its own record. Its REST interface is
/// `CHORA_ADVERTISE_URL` when given (a container, by name on the project
/// network), as for every other chora service.
async fn register_self(
    store: &Arc<dyn store::Store>,
    addr: std::net::SocketAddr,
) -> Result<(String, tokio::task::JoinHandle<()>), ServeError> {
    let addr = chora_service::register::reachable(addr);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let id = env("CHORA_INSTANCE_ID")
        .filter(|i| chora_api::manifest::is_valid_id(i))
        .unwrap_or_else(|| format!("manifest-{:08x}", u32::from(addr.port())));
    let url = env("CHORA_ADVERTISE_URL").unwrap_or_else(|| format!("http://{addr}"));
    let reg = chora_api::manifest::Registration {
        name: "manifest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        interfaces: [("REST".to_string(), url)].into(),
        metadata: Some(chora_api::manifest::Metadata {
            description: Some("The Manifest: chora's service registry".into()),
            tags: vec!["core".into()],
            ..Default::default()
        }),
        id: Some(id.clone()),
    };
    let record = catalog::Record::new(reg.clone(), id.clone(), std::time::SystemTime::now());
    store
        .register(record)
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
    let weak = Arc::downgrade(store);
    let every = store.catalog().liveness().heartbeat_interval;
    let id2 = id.clone();
    let beat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { return };
            // Expired meanwhile (this node was paused, or cut off from its
            // storage, for longer than the TTL): register again, as a Keeper
            // does for every other service.
            if let Err(store::StoreError::NotFound { .. }) =
                s.heartbeat("manifest", &id2, None).await
            {
                let record =
                    catalog::Record::new(reg.clone(), id2.clone(), std::time::SystemTime::now());
                if s.register(record).await.is_ok() {
                    tracing::info!(id = %id2, "the Manifest's own registration had expired; registered again");
                }
            }
        }
    });
    Ok((id, beat))
}

/// Serves the registry on `listener` until `shutdown` resolves, then answers the
/// requests in flight (blocking reads return at once), finishes queued writes and
/// returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let l = config.liveness;
    if l.heartbeat_interval.is_zero() || l.ttl.is_zero() {
        return Err(ServeError::Liveness(
            "the TTL and the heartbeat interval must be positive".into(),
        ));
    }
    if l.ttl < l.heartbeat_interval {
        return Err(ServeError::Liveness(format!(
            "the TTL ({:?}) is shorter than the heartbeat interval ({:?})",
            l.ttl, l.heartbeat_interval
        )));
    }
    // SQLite expires instances itself (the sweeper); etcd does it with leases.
    let (store, sweeper, sqlite): (Arc<dyn store::Store>, _, _) = match &config.storage {
        StorageSpec::Sqlite(path) => {
            let s = sqlite::SqliteStore::open(path, l)?;
            let sweeper = s.spawn_sweeper(sweep_tick(&l));
            (s.clone(), Some(sweeper), Some(s))
        }
        StorageSpec::Etcd(urls) => (etcd::EtcdStore::open(urls, l).await?, None, None),
    };
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let state = Arc::new(http::AppState {
        store: store.clone(),
        auth: match &config.credentials {
            Some(c) => http::Auth::Enabled(Box::new(chora_api::auth::Verifier::new(c))),
            None => http::Auth::Disabled,
        },
        metrics: http::RegistryMetrics::new(),
        closing,
    });
    let app = http::router(state);
    let me = if config.register_self {
        Some(register_self(&store, listener.local_addr()?).await?)
    } else {
        None
    };
    let served = axum::serve(chora_service::nodelay(listener), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing_tx.send_replace(true);
        })
        .await;
    if let Some(sw) = sweeper {
        sw.abort();
        let _ = sw.await;
    }
    if let Some((id, beat)) = me {
        beat.abort();
        let _ = store.deregister("manifest", &id).await;
    }
    if let Some(s) = sqlite {
        s.close();
    }
    served.map_err(ServeError::Io)
}
