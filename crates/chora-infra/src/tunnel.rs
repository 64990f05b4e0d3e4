//! A host's Docker from here, over SSH, with nothing opened on the host but
//! SSH (DESIGN.md §13: "reaches a manager's Docker over SSH … gets every image
//! onto every host that needs it with no registry").
//!
//! - **The tunnel.** [`docker_tunnel`]`(inventory, host)` connects to the host
//!   the way every step does (the inventory's SSH settings, one openssh master
//!   connection under /tmp/chora-ssh) and has that master forward a local unix
//!   socket, `/tmp/chora-fwd.XXXXXX/s` (directory 0700, socket 0600), to the
//!   host's `/var/run/docker.sock`. Each connection to the local socket is a
//!   channel on the master, opened on the host as the SSH user, who is root or
//!   in the `docker` group once `chora infra bootstrap` has run. The returned
//!   [`DockerTunnel`] gives a bollard client on that socket (API version
//!   negotiated: `GET /version` went through before it is returned) and the
//!   socket's path, for any other client (`DOCKER_HOST=unix://…`). Dropping it
//!   closes the master, which ends the forwarding, and removes the directory.
//!   A master with no channel exits after a minute ([`crate::ssh::IDLE_EXIT`]):
//!   the tunnel holds one open (a remote `cat` on its stdin) for as long as it
//!   lives, and if chora is killed the pipe closes and the master still goes a
//!   minute later. Nothing secret is in any argv: what travels (a swarm join
//!   token in a request body, an image) travels inside the SSH channel.
//! - **Images without a registry.** [`ensure_image`]`(local, remote, image)`
//!   is `docker save` here | the tunnel | `docker load` there, streamed (no
//!   temp file, never the whole image in memory), skipped when the host
//!   already has an image with the same id (`docker save`/`load` keep the id,
//!   which is the digest of the image's config); a tag the host lacks is added
//!   to the image it has. The local engine is whatever client the caller holds
//!   (chora-docker's `connect()` honours `DOCKER_HOST`).
//!
//! ```no_run
//! # async fn f(inv: &chora_infra::Inventory, local: &bollard::Docker) -> Result<(), chora_infra::tunnel::TunnelError> {
//! let tunnel = chora_infra::tunnel::docker_tunnel(inv, "app-1").await?;
//! let loaded = chora_infra::tunnel::ensure_image(local, &tunnel, "chora:0.1.0").await?;
//! println!("{loaded:?}; DOCKER_HOST=unix://{}", tunnel.path().display());
//! # Ok(()) }
//! ```

use crate::inventory::Inventory;
use crate::ssh::{self, ConnectError, Forward, KeepAlive, Remote};
use bollard::Docker;
use futures_util::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where Docker listens on a host.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// How long a call through the tunnel may wait for its answer (bollard's
/// default is 120 s; loading an image over a slow link may take longer, which
/// [`ensure_image`] allows for itself).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a host's Docker could not be reached, or an image not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no host `{0}` in the inventory")]
    UnknownHost(String),
    #[error("{host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: ConnectError,
    },
    #[error("{host}: {message}")]
    Forward { host: String, message: String },
    #[error("{host}: Docker does not answer through the SSH tunnel: {message}")]
    Docker { host: String, message: String },
    #[error("no image `{image}` in the local Docker engine: {message}")]
    NoLocalImage { image: String, message: String },
    #[error("loading {image} onto {host} failed: {message}")]
    Load {
        host: String,
        image: String,
        message: String,
    },
}

/// A local unix socket forwarded to a host's Docker socket, and a client on
/// it. Dropped: the forwarding ends, the socket and its directory go.
pub struct DockerTunnel {
    host: String,
    docker: Docker,
    // Fields drop in order: the client, the socket's directory, the
    // keep-alive, then the master.
    forward: Forward,
    _keep_alive: KeepAlive,
    remote: Remote,
}

impl std::fmt::Debug for DockerTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerTunnel")
            .field("host", &self.host)
            .field("path", &self.forward.path())
            .finish()
    }
}

impl DockerTunnel {
    /// The host's name in the inventory.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The local socket (0600), for `DOCKER_HOST=unix://<path>`.
    pub fn path(&self) -> &Path {
        self.forward.path()
    }

    /// A client of the host's Docker (API version negotiated).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Forwards each of `ports` here to the same port on the host, all in
    /// one request, for as long as the tunnel lives.
    pub async fn forward_ports(&self, ports: &[u16]) -> Result<(), TunnelError> {
        self.remote
            .forward_ports(ports)
            .await
            .map_err(|message| TunnelError::Forward {
                host: self.host.clone(),
                message,
            })
    }
}

/// A bollard client on a forwarded socket, its API version negotiated (one
/// `GET /version`, so an answer has come through when this returns).
pub async fn client_on(socket: &Path, timeout: Duration) -> Result<Docker, String> {
    let path = socket
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", socket.display()))?;
    let docker = Docker::connect_with_unix(path, timeout.as_secs(), bollard::API_DEFAULT_VERSION)
        .map_err(|e| e.to_string())?;
    docker.negotiate_version().await.map_err(describe)
}

/// A bollard error in words: the engine's own message when it answered, else
/// what failed on the way (through SSH, most often: the SSH user may not use
/// the socket, or Docker is not running there).
pub fn describe(e: bollard::errors::Error) -> String {
    use bollard::errors::Error as B;
    match e {
        B::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} ({status_code})", message.trim()),
        B::RequestTimeoutError => "no answer in time".into(),
        other => {
            let mut text = other.to_string();
            let mut cur = std::error::Error::source(&other);
            while let Some(s) = cur {
                let t = s.to_string();
                if !text.contains(&t) {
                    text = format!("{text}: {t}");
                }
                cur = s.source();
            }
            format!(
                "{text} (the SSH channel to {DOCKER_SOCKET} closed: is Docker running there, and may the SSH user use it?)"
            )
        }
    }
}

/// Forwards a local socket to `host`'s Docker over SSH (see the module head).
pub async fn docker_tunnel(inv: &Inventory, host: &str) -> Result<DockerTunnel, TunnelError> {
    let h = inv
        .hosts
        .iter()
        .find(|h| h.name == host)
        .ok_or_else(|| TunnelError::UnknownHost(host.to_owned()))?;
    let remote = ssh::connect(h, &inv.ssh)
        .await
        .map_err(|source| TunnelError::Connect {
            host: host.to_owned(),
            source,
        })?;
    let forward_err = |message| TunnelError::Forward {
        host: host.to_owned(),
        message,
    };
    let keep_alive = remote.keep_alive().await.map_err(forward_err)?;
    let forward = remote
        .forward_socket(DOCKER_SOCKET)
        .await
        .map_err(forward_err)?;
    let docker = client_on(forward.path(), CALL_TIMEOUT)
        .await
        .map_err(|message| TunnelError::Docker {
            host: host.to_owned(),
            message,
        })?;
    Ok(DockerTunnel {
        host: host.to_owned(),
        docker,
        forward,
        _keep_alive: keep_alive,
        remote,
    })
}

/// What [`ensure_image`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLoad {
    /// The host had an image with this id already (`tagged`: the name was
    /// added to it).
    Present { id: String, tagged: bool },
    /// Sent: this many bytes of `docker save`'s archive.
    Loaded {
        id: String,
        bytes: u64,
        took: Duration,
    },
}

/// `repo:tag` of a name that has one (`chora:0.1`, `reg:5000/a/b:1`); `None`
/// for an id or a digest.
fn repo_tag(name: &str) -> Option<(String, String)> {
    if name.starts_with("sha256:") || name.contains('@') {
        return None;
    }
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => Some((
            name[..slash + i].to_owned(),
            name[slash + i + 1..].to_owned(),
        )),
        None => Some((name.to_owned(), "latest".to_owned())),
    }
}

/// Puts `image` (a name or id in the `local` engine) onto the host behind
/// `tunnel` unless it has the same image id already (see the module head).
pub async fn ensure_image(
    local: &Docker,
    tunnel: &DockerTunnel,
    image: &str,
) -> Result<ImageLoad, TunnelError> {
    let (host, remote) = (tunnel.host().to_owned(), tunnel.docker());
    let load_err = |message: String| TunnelError::Load {
        host: host.clone(),
        image: image.to_owned(),
        message,
    };
    let here = local
        .inspect_image(image)
        .await
        .map_err(|e| TunnelError::NoLocalImage {
            image: image.to_owned(),
            message: describe(e),
        })?;
    let id = here.id.unwrap_or_default();
    let by_id = id
        .trim_start_matches("sha256:")
        .starts_with(image.trim_start_matches("sha256:"));
    let tag = repo_tag(image).filter(|_| !by_id);
    match remote.inspect_image(&id).await {
        Ok(there) if there.id.as_deref() == Some(id.as_str()) => {
            let has_tag = tag.as_ref().is_none_or(|(r, t)| {
                there
                    .repo_tags
                    .unwrap_or_default()
                    .contains(&format!("{r}:{t}"))
            });
            if !has_tag && let Some((repo, t)) = &tag {
                let opts = bollard::query_parameters::TagImageOptions {
                    repo: Some(repo.clone()),
                    tag: Some(t.clone()),
                };
                remote
                    .tag_image(&id, Some(opts))
                    .await
                    .map_err(|e| load_err(format!("tagging: {}", describe(e))))?;
            }
            return Ok(ImageLoad::Present {
                id,
                tagged: !has_tag,
            });
        }
        Ok(_) => {}
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(load_err(describe(e))),
    }
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    // By id when the name is an id: `docker save <id>` has no tag to keep.
    let save = local.export_image(image).map(move |chunk| {
        if let Ok(b) = &chunk {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    let mut answers = remote.import_image_stream(
        bollard::query_parameters::ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        save,
        None,
    );
    while let Some(a) = answers.next().await {
        a.map_err(|e| load_err(describe(e)))?;
    }
    match remote.inspect_image(&id).await {
        Ok(there) if there.id.as_deref() == Some(id.as_str()) => Ok(ImageLoad::Loaded {
            id,
            bytes: sent.load(Ordering::Relaxed),
            took: started.elapsed(),
        }),
        Ok(there) => Err(load_err(format!(
            "the host has {} after loading, not {id}",
            there.id.unwrap_or_default()
        ))),
        Err(e) => Err(load_err(format!(
            "not there after loading: {}",
            describe(e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_repo_and_tag() {
        let rt = |s: &str| repo_tag(s);
        assert_eq!(rt("chora:0.1.0"), Some(("chora".into(), "0.1.0".into())));
        assert_eq!(rt("busybox"), Some(("busybox".into(), "latest".into())));
        assert_eq!(
            rt("reg.local:5000/a/b:1"),
            Some(("reg.local:5000/a/b".into(), "1".into()))
        );
        assert_eq!(
            rt("reg.local:5000/a/b"),
            Some(("reg.local:5000/a/b".into(), "latest".into()))
        );
        assert_eq!(rt("sha256:abc"), None);
        assert_eq!(rt("a@sha256:abc"), None);
    }
}
