//! The gateway's HTTPS (DESIGN.md §15), as the config says it
//! (`services.gateway.tls`, `tls_port`, `http`, `ca`): the environment the
//! gateway reads its HTTPS flags from (`CHORA_TLS_*`, `CHORA_ACME_*`,
//! `CHORA_HTTP`), what a gateway container needs besides (the TLS directory
//! under the home, the certificate files, the HTTPS port), and how the
//! bootstrap itself reaches the gateway over HTTPS (validation), with the CA
//! to trust. A self-signed CA and ACME's cache live under `.chora/tls/`.

use crate::config::{HttpMode, ServiceSpec, Tls, TlsNamed};
use crate::ctx::Ctx;
use chora_runtime::Volume;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where HTTPS listens unless `tls_port` says.
pub const DEFAULT_TLS_PORT: u16 = 8443;

impl Ctx {
    /// The gateway's TLS directory (a self-signed CA, ACME's cache).
    pub fn tls_dir(&self) -> PathBuf {
        self.home.root.join("tls")
    }

    /// A path of the config, absolute (relative to the config's directory).
    fn config_relative(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(self.substitute(p));
        if p.is_absolute() {
            return p;
        }
        self.config_path.parent().map(|d| d.join(&p)).unwrap_or(p)
    }

    /// The HTTPS part of the gateway's environment; empty without `tls`.
    pub fn tls_env(&self, spec: &ServiceSpec, in_container: bool) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Some(tls) = &spec.tls else {
            return env;
        };
        let port = spec.tls_port.unwrap_or(DEFAULT_TLS_PORT);
        let host = if in_container { "0.0.0.0" } else { "127.0.0.1" };
        env.insert("CHORA_TLS_LISTEN".into(), format!("{host}:{port}"));
        let dir = self.tls_dir().display().to_string();
        match tls {
            Tls::Named(TlsNamed::SelfSigned) => {
                env.insert("CHORA_TLS_SELF_SIGNED".into(), dir);
            }
            Tls::Files { cert, key } => {
                env.insert(
                    "CHORA_TLS_CERT".into(),
                    self.config_relative(cert).display().to_string(),
                );
                env.insert(
                    "CHORA_TLS_KEY".into(),
                    self.config_relative(key).display().to_string(),
                );
            }
            Tls::Acme { acme } => {
                env.insert("CHORA_ACME_DIRECTORY".into(), acme.directory.clone());
                env.insert("CHORA_ACME_DOMAINS".into(), acme.domains.join(","));
                if let Some(e) = &acme.email {
                    env.insert("CHORA_ACME_EMAIL".into(), e.clone());
                }
                if let Some(ca) = &acme.ca {
                    env.insert(
                        "CHORA_ACME_CA".into(),
                        self.config_relative(ca).display().to_string(),
                    );
                }
                env.insert("CHORA_ACME_CACHE".into(), dir);
            }
        }
        let http = match spec.http.unwrap_or(HttpMode::Redirect) {
            HttpMode::Redirect => "redirect",
            HttpMode::Serve => "serve",
        };
        env.insert("CHORA_HTTP".into(), http.into());
        env
    }

    /// What a gateway container needs besides its environment: the TLS
    /// directory (read-write: the gateway makes its CA or caches there), the
    /// certificate files' directories (read-only, at the same paths), and
    /// the HTTPS port.
    pub fn tls_mounts(&self, spec: &ServiceSpec) -> (Vec<Volume>, Vec<u16>) {
        let Some(tls) = &spec.tls else {
            return (Vec::new(), Vec::new());
        };
        let bind = |p: &Path, read_only: bool| Volume {
            source: p.display().to_string(),
            target: p.display().to_string(),
            read_only,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            // Private: the gateway keeps its keys here.
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.tls_dir());
        }
        let mut v = vec![bind(&self.tls_dir(), false)];
        let mut ro = |p: &str| {
            if let Some(d) = self.config_relative(p).parent() {
                v.push(bind(d, true));
            }
        };
        match tls {
            Tls::Files { cert, key } => {
                ro(cert);
                ro(key);
            }
            Tls::Acme { acme } => {
                if let Some(ca) = &acme.ca {
                    ro(ca);
                }
            }
            Tls::Named(_) => {}
        }
        v.dedup_by(|a, b| a.source == b.source);
        (v, vec![spec.tls_port.unwrap_or(DEFAULT_TLS_PORT)])
    }

    /// The gateway's HTTPS base URL from this machine, and the CA to trust
    /// for it (the self-signed CA, the gateway's `ca:`, else the system's).
    /// `None` when the gateway serves no HTTPS.
    pub fn gateway_https(&self) -> Option<(String, Option<PathBuf>)> {
        let g = self.config.service("gateway")?;
        let tls = g.tls.as_ref()?;
        let port = g.tls_port.unwrap_or(DEFAULT_TLS_PORT);
        let ca = match (tls, &g.ca) {
            (_, Some(ca)) => Some(self.config_relative(ca)),
            (Tls::Named(TlsNamed::SelfSigned), None) => Some(self.tls_dir().join("ca.pem")),
            _ => None,
        };
        Some((format!("https://127.0.0.1:{port}"), ca))
    }

    /// The gateway's URL as the bootstrap's own checks use it: HTTPS (with
    /// its CA) when plain HTTP only redirects there, else its plain URL.
    pub fn gateway_for_checks(&self) -> Option<(String, reqwest::Client)> {
        let g = self.config.service("gateway")?;
        match (self.gateway_https(), g.http) {
            (Some((url, ca)), None | Some(HttpMode::Redirect)) => {
                let http = chora_runtime::check::client(ca.as_deref()).ok()?;
                Some((url, http))
            }
            _ => Some((g.url()?, self.http.clone())),
        }
    }

    /// The CA file a service's `https://` health endpoint is checked with
    /// (`ca:`), absolute.
    pub fn health_ca(&self, spec: &ServiceSpec) -> Option<String> {
        let ca = spec.ca.as_deref()?;
        Some(self.config_relative(ca).display().to_string())
    }
}
