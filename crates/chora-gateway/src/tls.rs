//! HTTPS at the gateway (DESIGN.md §15): where its certificate comes from and
//! how it stays current.
//!
//! Three sources, one mechanism: certificate files (`--tls-cert`/`--tls-key`),
//! a self-signed pair that [`selfsigned`] makes once under a directory (then
//! served as files), or certificates from an ACME server ([`acme`]). Each ends
//! in the one [`Resolver`] that rustls asks on every handshake.
//!
//! Invariants:
//! - **One server.** A TLS connection goes through the same accept loop, the
//!   same hyper connection and the same proxy as a plain one; TLS only wraps
//!   the stream (see `serve` in lib.rs). Its handshake runs in the connection's
//!   own task, never in the accept loop, and has [`HANDSHAKE_TIMEOUT`].
//! - **A swap drops nothing.** The certificate is read once per handshake from
//!   the resolver. Replacing it (a reload, a renewal) changes what *new*
//!   handshakes get; an open connection keeps the keys it agreed on.
//! - **Files are watched by their metadata** (device, inode, size, mtime, ctime;
//!   following symlinks), every [`RELOAD_EVERY`]: a rename over the file (what
//!   certbot and most tools do), an in-place write and a symlink swap
//!   (Kubernetes secrets) all show. A pair that does not load or whose key does
//!   not match (the certificate was replaced and its key not yet) leaves the
//!   previous certificate served, and is tried again on the next change.
//! - **Private keys** are written with mode 0600 from the moment they exist
//!   (a temp file in the same directory, then a rename), in a directory made
//!   0700; no key ever reaches a log, argv or stdout.

pub mod acme;
pub mod selfsigned;
mod x509;

pub use x509::Facts;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// How often certificate files are looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] chora_api::tls::TlsError),
    #[error("cannot read the private key in {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("{cert} and {key} do not make a usable pair: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("{0}")]
    Acme(String),
}

/// Where the gateway's certificate comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A PEM certificate chain and its private key, reloaded when replaced.
    Files { cert: PathBuf, key: PathBuf },
    /// A CA made once under `dir`, and a certificate it signs for `names`.
    SelfSigned { dir: PathBuf, names: Vec<String> },
    /// Certificates from an ACME server, renewed before they expire.
    Acme(acme::Settings),
}

/// The certificate rustls hands out on each handshake.
#[derive(Debug, Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    /// Serves `key` to every handshake from now on.
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(key));
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None (an ACME certificate not there yet) fails the handshake.
        self.get()
    }
}

/// HTTPS, ready to serve: the rustls config and what keeps its certificate
/// current, started by [`Tls::keep_current`].
pub struct Tls {
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
    keeper: Keeper,
    /// The CA a client has to trust (self-signed mode).
    pub ca: Option<PathBuf>,
}

enum Keeper {
    Files {
        cert: PathBuf,
        key: PathBuf,
        seen: Stamps,
    },
    Acme(acme::Acme),
}

impl Tls {
    /// Loads (or, self-signed, makes) what can be had before serving. Files
    /// that do not make a usable pair are an error here, not at the first
    /// handshake. An ACME certificate from the cache is served at once; else
    /// the first handshakes fail until [`Tls::keep_current`] has one.
    pub fn prepare(source: Source) -> Result<Tls, TlsError> {
        chora_api::tls::install_crypto_provider();
        let resolver = Arc::new(Resolver::default());
        let (keeper, ca) = match source {
            Source::Files { cert, key } => {
                let seen = Stamps::of(&cert, &key);
                resolver.set(load_pair(&cert, &key)?);
                (Keeper::Files { cert, key, seen }, None)
            }
            Source::SelfSigned { dir, names } => {
                let made = selfsigned::ensure(&dir, &names)?;
                let seen = Stamps::of(&made.cert, &made.key);
                resolver.set(load_pair(&made.cert, &made.key)?);
                let keeper = Keeper::Files {
                    cert: made.cert,
                    key: made.key,
                    seen,
                };
                (keeper, Some(made.ca))
            }
            Source::Acme(settings) => {
                let acme = acme::Acme::new(settings, resolver.clone())?;
                (Keeper::Acme(acme), None)
            }
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Generate(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            resolver,
            config: Arc::new(config),
            keeper,
            ca,
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The http-01 challenges an ACME server will ask the plain port for.
    pub fn challenges(&self) -> Option<Arc<acme::Challenges>> {
        match &self.keeper {
            Keeper::Acme(a) => Some(a.challenges()),
            Keeper::Files { .. } => None,
        }
    }

    /// The certificate handshakes get now.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.resolver.get()
    }

    /// Keeps the certificate current until the task is aborted: watches the
    /// files, or orders and renews from the ACME server.
    pub fn keep_current(self) -> tokio::task::JoinHandle<()> {
        match self.keeper {
            Keeper::Files { cert, key, seen } => {
                tokio::spawn(watch_files(self.resolver, cert, key, seen))
            }
            Keeper::Acme(acme) => tokio::spawn(acme.run()),
        }
    }
}

/// The process's rustls provider (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    chora_api::tls::install_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .expect("installed just now")
        .clone()
}

/// A certificate chain and its key, checked to belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = chora_api::tls::read_certificates(cert)?;
    let der = read_key(key)?;
    pair(chain, der).map_err(|message| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message,
    })
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        // The error names the file's problem, never its content.
        message: e.to_string(),
    })
}

pub(crate) fn pair(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())?;
    // from_der lets "cannot tell" pass; ring's keys can always tell.
    key.keys_match().map_err(|e| e.to_string())?;
    Ok(key)
}

/// What a file looked like: enough to see a rename over it, a rewrite or a
/// symlink swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamps(Option<Stamp>, Option<Stamp>);

impl Stamps {
    fn of(cert: &Path, key: &Path) -> Stamps {
        Stamps(Stamp::of(cert), Stamp::of(key))
    }
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

async fn watch_files(resolver: Arc<Resolver>, cert: PathBuf, key: PathBuf, mut seen: Stamps) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused: Option<Stamps> = None;
    loop {
        tick.tick().await;
        let now = Stamps::of(&cert, &key);
        if now == seen || Some(now) == refused {
            continue;
        }
        match load_pair(&cert, &key) {
            Ok(k) => {
                resolver.set(k);
                seen = now;
                refused = None;
                tracing::info!(cert = %cert.display(), "certificate reloaded: new handshakes get it, open connections keep theirs");
            }
            Err(e) => {
                refused = Some(now);
                tracing::warn!(error = %e, "the certificate files changed but do not load; still serving the previous certificate");
            }
        }
    }
}

/// Makes `dir` (and its parents) with mode 0700 where it does not exist.
pub(crate) fn make_private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `path` whole or not at all: a temp file beside it (mode 0600 when
/// `private`, from its creation), fsynced, renamed over `path`.
pub(crate) fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover temp file would keep its old mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
