//! Docker Engine access shared by every chora part.
//!
//! - [`connect`]: a client for the local engine (`DOCKER_HOST` honoured), with the
//!   API version negotiated, or a [`DockerError`] that says in words why not
//!   (daemon down, socket missing, permission denied).
//! - [`engine_version`] / [`version_at_least`]: the engine's version, for the
//!   "Docker >= 20.10" check.
//! - [`elf`]: what a binary needs to run (loader and shared libraries), read from
//!   its ELF headers; `ldd` is never run.
//! - [`image`]: `FROM scratch` images of one binary plus exactly what it needs,
//!   built through the Engine API with no registry and no Dockerfile from the user.

pub mod elf;
pub mod image;

pub use bollard::Docker;

use std::time::Duration;

/// bollard's own default: how long a call may wait for the engine's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// For calls that legitimately take long (image builds).
pub const LONG_TIMEOUT: Duration = Duration::from_secs(600);
/// How long [`connect`] waits for the engine to answer its version.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the engine could not be used. Every message names the engine's address.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker daemon is not running (cannot connect to {host}: {reason})")]
    NotRunning { host: String, reason: String },
    #[error("permission denied on the Docker socket ({host}: {reason})")]
    PermissionDenied { host: String, reason: String },
    #[error("the Docker daemon at {host} did not answer in time")]
    Timeout { host: String },
    #[error("cannot use DOCKER_HOST={host}: {reason}")]
    BadHost { host: String, reason: String },
    #[error("the Docker engine at {host} refused: {message}")]
    Api {
        host: String,
        /// The engine's HTTP status, when it answered one.
        status: Option<u16>,
        message: String,
    },
}

impl DockerError {
    /// Turns a bollard error into what a person reads: connection failures become
    /// `NotRunning` / `PermissionDenied`, answers become `Api` with the engine's
    /// own message.
    pub fn from_bollard(e: bollard::errors::Error) -> DockerError {
        Self::at(host(), e)
    }

    fn at(host: String, e: bollard::errors::Error) -> DockerError {
        use bollard::errors::Error as B;
        match e {
            B::SocketNotFoundError(path) => DockerError::NotRunning {
                host,
                reason: format!("{path} does not exist"),
            },
            B::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Api {
                host,
                status: Some(status_code),
                message,
            },
            B::RequestTimeoutError => DockerError::Timeout { host },
            B::UnsupportedURISchemeError { uri } => DockerError::BadHost {
                host: uri,
                reason: "unsupported scheme (use unix://, tcp:// or http://)".into(),
            },
            // A transparent wrapper: its source chain skips the io::Error itself.
            B::IOError { err } if err.kind() == std::io::ErrorKind::PermissionDenied => {
                DockerError::PermissionDenied {
                    host,
                    reason: err.to_string(),
                }
            }
            B::IOError { err } => DockerError::NotRunning {
                host,
                reason: err.to_string(),
            },
            other => match io_kind(&other) {
                Some((std::io::ErrorKind::PermissionDenied, reason)) => {
                    DockerError::PermissionDenied { host, reason }
                }
                Some((_, reason)) => DockerError::NotRunning { host, reason },
                None => DockerError::Api {
                    host,
                    status: None,
                    message: other.to_string(),
                },
            },
        }
    }

    /// True when the engine answered 404 (no such image, container, …).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DockerError::Api {
                status: Some(404),
                ..
            }
        )
    }
}

/// The innermost I/O error under a bollard error (a failed connect), if any.
fn io_kind(e: &bollard::errors::Error) -> Option<(std::io::ErrorKind, String)> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut found = None;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            found = Some((io.kind(), io.to_string()));
        }
        cur = err.source();
    }
    found
}

/// Where the engine is: `DOCKER_HOST`, else the local socket.
pub fn host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine ([`host`]), negotiates the API version, and returns a
/// client whose calls may wait [`DEFAULT_TIMEOUT`] for an answer. Use
/// [`with_timeout`] for longer calls.
pub async fn connect() -> Result<Docker, DockerError> {
    connect_with_timeout(DEFAULT_TIMEOUT).await
}

/// [`connect`] with another per-call timeout.
pub async fn connect_with_timeout(timeout: Duration) -> Result<Docker, DockerError> {
    connect_to(&host(), timeout).await
}

/// [`connect_with_timeout`] to an explicit address (`unix:///…`, `tcp://…`).
pub async fn connect_to(host: &str, timeout: Duration) -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_host(host)
        .map_err(|e| DockerError::at(host.to_string(), e))?
        .with_timeout(timeout);
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(DockerError::at(host.to_string(), e)),
        Err(_) => Err(DockerError::Timeout {
            host: host.to_string(),
        }),
    }
}

/// The same client (same connection pool, same negotiated version) with another
/// per-call timeout.
pub fn with_timeout(docker: &Docker, timeout: Duration) -> Docker {
    docker.clone().with_timeout(timeout)
}

/// The engine's version string, e.g. `20.10.24+dfsg1`.
pub async fn engine_version(docker: &Docker) -> Result<String, DockerError> {
    let v = docker.version().await.map_err(DockerError::from_bollard)?;
    v.version.ok_or_else(|| DockerError::Api {
        host: host(),
        status: None,
        message: "the engine did not say its version".into(),
    })
}

/// True when `version` (`20.10.24+dfsg1`, `v24.0.7`, `25.0`) is at least
/// `(major, minor)`. An unparsable version is not.
pub fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split(['.', '-', '+']);
    let mut num = || -> Option<u32> {
        let p = parts.next()?;
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (num(), num()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        (Some(a), None) => a > major || (a == major && minor == 0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("20.10.24+dfsg1", (20, 10)));
        assert!(version_at_least("v24.0.7", (20, 10)));
        assert!(version_at_least("25", (20, 10)));
        assert!(version_at_least("28.2.2", (28, 2)));
        assert!(!version_at_least("19.03.15", (20, 10)));
        assert!(!version_at_least("20.9", (20, 10)));
        assert!(!version_at_least("20", (20, 10)));
        assert!(!version_at_least("", (20, 10)));
        assert!(!version_at_least("dev", (20, 10)));
    }

    #[tokio::test]
    async fn a_missing_socket_says_the_daemon_is_not_running() {
        let e = connect_to("unix:///nonexistent/docker.sock", DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("the Docker daemon is not running (cannot connect to unix:///nonexistent/docker.sock"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_refused_port_says_the_daemon_is_not_running() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("tcp://127.0.0.1:{port}");
        let e = connect_to(&host, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(e, DockerError::NotRunning { .. }), "{e:?}");
        assert!(e.to_string().contains(&host), "{e}");
    }

    #[test]
    fn a_socket_we_may_not_open_is_permission_denied() {
        let e = DockerError::at(
            "unix:///var/run/docker.sock".into(),
            bollard::errors::Error::IOError {
                err: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
        );
        assert!(matches!(e, DockerError::PermissionDenied { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(
                "permission denied on the Docker socket (unix:///var/run/docker.sock: "
            ),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_scheme_is_a_bad_host() {
        let e = DockerError::at(
            "ftp://x".into(),
            bollard::errors::Error::UnsupportedURISchemeError {
                uri: "ftp://x".into(),
            },
        );
        assert!(
            e.to_string().starts_with("cannot use DOCKER_HOST=ftp://x"),
            "{e}"
        );
    }
}
