//! `chora gateway serve`'s HTTPS flags (DESIGN.md §15), and what they make:
//! the certificate source and what plain HTTP does beside it.

use crate::failure::{EXIT_CONFIG, Failure, exit};
use chora_gateway::tls::{Source, acme};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// The default HTTPS address (DESIGN.md: `tls_port` 8443).
pub const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:8443";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HttpMode {
    /// 308 to the same path and query on https (the gateway's own /health and
    /// /metrics, and ACME challenges, are still answered)
    Redirect,
    /// Keep serving every route over plain HTTP too
    Serve,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "HTTPS (one certificate source turns it on)")]
pub struct TlsArgs {
    /// Where HTTPS listens [default: 127.0.0.1:8443]
    #[arg(long, env = "CHORA_TLS_LISTEN", value_name = "ADDR")]
    tls_listen: Option<String>,
    /// PEM certificate chain, leaf first; picked up again when the file is
    /// replaced (e.g. renamed over), without a restart
    #[arg(
        long,
        env = "CHORA_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        conflicts_with_all = ["tls_self_signed", "acme_directory"]
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key
    #[arg(
        long,
        env = "CHORA_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Make, once, a CA and a certificate for localhost, 127.0.0.1, ::1, this
    /// host's name and each --tls-name under DIR (keys 0600), reused on the
    /// next start; the readiness line names the CA to trust (DIR/ca.pem)
    #[arg(
        long,
        env = "CHORA_TLS_SELF_SIGNED",
        value_name = "DIR",
        conflicts_with = "acme_directory"
    )]
    tls_self_signed: Option<PathBuf>,
    /// Another name for the self-signed certificate (repeatable; the
    /// variable takes a comma-separated list)
    #[arg(
        long = "tls-name",
        env = "CHORA_TLS_NAMES",
        value_name = "NAME",
        value_delimiter = ',',
        requires = "tls_self_signed"
    )]
    tls_names: Vec<String>,
    /// Get certificates from this ACME directory (validated with http-01 on
    /// the plain listener, which must be reachable on port 80 of each domain),
    /// renewed at 2/3 of their lifetime
    #[arg(
        long,
        env = "CHORA_ACME_DIRECTORY",
        value_name = "URL",
        requires = "acme_domains"
    )]
    acme_directory: Option<String>,
    /// A domain of the ACME certificate (repeatable; the variable takes a
    /// comma-separated list)
    #[arg(
        long = "acme-domain",
        env = "CHORA_ACME_DOMAINS",
        value_name = "DOMAIN",
        value_delimiter = ',',
        requires = "acme_directory"
    )]
    acme_domains: Vec<String>,
    /// The ACME account's contact address
    #[arg(
        long,
        env = "CHORA_ACME_EMAIL",
        value_name = "EMAIL",
        requires = "acme_directory"
    )]
    acme_email: Option<String>,
    /// A CA file (PEM) to trust for the ACME directory's own HTTPS, besides
    /// the system's roots
    #[arg(
        long,
        env = "CHORA_ACME_CA",
        value_name = "PATH",
        requires = "acme_directory"
    )]
    acme_ca: Option<PathBuf>,
    /// Where ACME accounts and certificates are kept, so that a restart orders
    /// nothing [default: $CHORA_HOME/tls, else .chora/tls]
    #[arg(
        long,
        env = "CHORA_ACME_CACHE",
        value_name = "DIR",
        requires = "acme_directory"
    )]
    acme_cache: Option<PathBuf>,
    /// With HTTPS on, what the plain listener does
    #[arg(long, env = "CHORA_HTTP", value_enum, default_value = "redirect")]
    http: HttpMode,
}

/// HTTPS as the flags ask for it.
pub struct Https {
    pub listen: String,
    pub source: Source,
    pub plain: chora_gateway::Plain,
}

impl TlsArgs {
    /// `None` when no certificate source was given (plain HTTP only).
    pub fn https(self) -> Result<Option<Https>, Failure> {
        let source = if let (Some(cert), Some(key)) = (self.tls_cert, self.tls_key) {
            Source::Files { cert, key }
        } else if let Some(dir) = self.tls_self_signed {
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            let host = chora_runtime::proc::hostname();
            if !host.is_empty() {
                names.push(host);
            }
            if let Some(ip) = self
                .tls_listen
                .as_deref()
                .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified())
            {
                names.push(ip.to_string());
            }
            names.extend(self.tls_names);
            Source::SelfSigned { dir, names }
        } else if let Some(directory) = self.acme_directory {
            let cache = self.acme_cache.unwrap_or_else(|| {
                std::env::var_os("CHORA_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".chora"))
                    .join("tls")
            });
            Source::Acme(acme::Settings {
                directory,
                domains: self.acme_domains,
                email: self.acme_email,
                ca: self.acme_ca,
                cache,
            })
        } else {
            if let Some(l) = self.tls_listen {
                return Err(Failure::new(
                    exit::USAGE,
                    "USAGE",
                    format!("--tls-listen {l} needs a certificate source"),
                )
                .action("Give --tls-cert and --tls-key, --tls-self-signed DIR, or --acme-directory URL --acme-domain D"));
            }
            return Ok(None);
        };
        Ok(Some(Https {
            listen: self
                .tls_listen
                .unwrap_or_else(|| DEFAULT_TLS_LISTEN.to_owned()),
            source,
            plain: match self.http {
                HttpMode::Redirect => chora_gateway::Plain::Redirect,
                HttpMode::Serve => chora_gateway::Plain::Serve,
            },
        }))
    }
}

/// Loads or makes the certificate: an unusable one fails the start.
pub fn prepare(source: Source) -> Result<chora_gateway::tls::Tls, Failure> {
    chora_gateway::tls::Tls::prepare(source).map_err(|e| {
        Failure::new(EXIT_CONFIG, "TLS_CONFIG", e.to_string())
            .action("Check the certificate and key files (PEM, the key matching the certificate)")
    })
}
