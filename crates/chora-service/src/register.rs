//! Keeping a service registered in the Manifest.

use chora_api::keeper::Backoff;
use chora_api::manifest::{Metadata, Registration};
use chora_api::{ClientError, Keeper, ManifestClient};
use std::net::SocketAddr;

/// What a service says about itself when it registers.
#[derive(Debug, Clone)]
pub struct SelfRegistration {
    /// One or more Manifest URLs (comma-separated also accepted).
    pub manifest_url: String,
    /// The service's own API key (`CHORA_API_KEY`), or an admin token.
    pub token: Option<String>,
    pub name: String,
    pub version: String,
    /// Where it listens; its REST interface is `http://<addr>`.
    pub addr: SocketAddr,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub dependencies: Vec<String>,
    /// A fixed instance id (`CHORA_INSTANCE_ID`, set by the orchestrator so it
    /// can deregister a child it saw die); otherwise `<name>-<8 hex>`.
    pub instance_id: Option<String>,
}

/// The address others use to reach `addr`: an unspecified IP becomes loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a
}

/// Starts a [`Keeper`] for `s`. Call `shutdown()` on it to deregister. Its REST
/// interface is `CHORA_ADVERTISE_URL` when the runtime that started it says how
/// others reach it (a container on the project network), else its address.
pub fn keep_registered(s: SelfRegistration) -> Result<Keeper, ClientError> {
    let mut client = ManifestClient::new([s.manifest_url.as_str()])?;
    if let Some(t) = s.token {
        client = client.with_token(t);
    }
    let reg = Registration {
        name: s.name,
        version: s.version,
        interfaces: [(
            "REST".to_string(),
            std::env::var("CHORA_ADVERTISE_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| format!("http://{}", reachable(s.addr))),
        )]
        .into(),
        metadata: Some(Metadata {
            description: s.description,
            dependencies: s.dependencies,
            tags: s.tags,
            environment: None,
            custom: Default::default(),
        }),
        id: s.instance_id,
    };
    Ok(Keeper::spawn(client, reg, Backoff::default()))
}

/// How long a service that left discovery keeps serving before it closes its
/// listener: consumers that follow the Manifest (the gateway's blocking
/// reads) stop sending it requests within milliseconds; this covers them.
pub const DRAIN: std::time::Duration = std::time::Duration::from_millis(300);

/// The shutdown of a service that registered itself: once `shutdown`
/// resolves it leaves discovery first (deregisters), waits [`DRAIN`], and
/// only then resolves, so that the server stops accepting after its
/// consumers have stopped sending (a rolling replacement drops nothing).
pub async fn leave_then_stop(shutdown: impl std::future::Future<Output = ()>, keeper: Keeper) {
    shutdown.await;
    if let Err(e) = keeper.shutdown().await {
        tracing::warn!(error = %e, "could not deregister from the Manifest");
    }
    tokio::time::sleep(DRAIN).await;
}
