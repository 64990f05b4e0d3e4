//! TLS for chora's HTTP clients, and the process's one rustls crypto provider.
//!
//! rustls runs on `ring` (Rust plus a C compiler, which `cc` drives; aws-lc-rs
//! would need cmake on a fresh machine). reqwest is built with
//! `rustls-no-provider`, and such a reqwest **panics when a client is built
//! before a process-wide provider is installed**, also for a plain `http://`
//! client. Every process that builds a client links this crate (the binary, each
//! test binary), so the provider is installed here before `main` runs: an ELF
//! `.init_array` entry, kept by the linker because it is `#[used]`.
//! [`install_crypto_provider`] does the same and may be called any number of
//! times (a server calls it before it builds its own rustls config).
//!
//! reqwest's default verifier also refuses to build when the machine has no CA
//! certificate at all (a `FROM scratch` image), plain `http://` clients
//! included. So every chora client is built from [`builder`] (or
//! [`client_builder`] with a CA file): the system's roots are read once per
//! process, and where there are none, only `https://` fails.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Installs ring as the process's rustls provider, unless one is installed.
///
/// rustls 0.23.48 deprecates its ring provider because ring has no
/// post-quantum key exchange (X25519MLKEM768): that needs aws-lc-rs, and
/// aws-lc-rs needs cmake to build. Handshakes use X25519 (then P-256, P-384).
#[allow(deprecated)]
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing the same provider is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[used]
#[unsafe(link_section = ".init_array")]
static INSTALL_BEFORE_MAIN: extern "C" fn() = {
    extern "C" fn install() {
        install_crypto_provider();
    }
    install
};

#[cfg(target_vendor = "apple")]
#[used]
#[unsafe(link_section = "__DATA,__mod_init_func")]
static INSTALL_BEFORE_MAIN: extern "C" fn() = {
    extern "C" fn install() {
        install_crypto_provider();
    }
    install
};

/// The certificates of a PEM file (a CA to trust, or a chain), in file order.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The builder of every chora HTTP client: rustls trusting the system's roots
/// (read once per process) and, when given, the certificates of the PEM file
/// `ca` besides them.
///
/// Unlike reqwest's own default, it builds on a machine without any CA
/// certificate (a `FROM scratch` image): plain `http://` works there, and an
/// `https://` request fails saying that there is nothing to trust.
pub fn client_builder(ca: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    let config = client_config(ca)?;
    Ok(reqwest::Client::builder().tls_backend_preconfigured(rustls::ClientConfig::clone(&config)))
}

/// [`client_builder`] without a CA file.
pub fn builder() -> reqwest::ClientBuilder {
    client_builder(None).expect("no file to read")
}

/// The rustls client config behind [`client_builder`] (also for clients that
/// are not reqwest, such as `chora probe`).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    static SYSTEM: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    match ca {
        None => Ok(SYSTEM
            .get_or_init(|| Arc::new(config_with(Vec::new()).expect("no extra roots to refuse")))
            .clone()),
        Some(ca) => config_with(read_certificates(ca)?)
            .map(Arc::new)
            .map_err(|message| TlsError::Invalid {
                path: ca.to_owned(),
                message,
            }),
    }
}

fn config_with(extra: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .expect("installed")
        .clone();
    let none_given = extra.is_empty();
    let verifier: Arc<dyn ServerCertVerifier> =
        match rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone()) {
            Ok(v) => Arc::new(v),
            // The only way it fails without extra roots: the system has none.
            Err(e) if none_given => {
                tracing::debug!(error = %e, "no CA certificates on this machine: https:// cannot be verified");
                Arc::new(NoRoots(provider.clone()))
            }
            Err(e) => return Err(e.to_string()),
        };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The verifier of a machine with nothing to trust: refuses every server
/// certificate, saying why.
#[derive(Debug)]
struct NoRoots(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "this machine has no CA certificates to verify the server with (install ca-certificates, or give a CA file)".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_is_installed_before_main_so_any_client_builds() {
        // Nothing in this test binary calls install_crypto_provider: the
        // .init_array entry did.
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        reqwest::Client::new();
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = read_certificates(&empty).unwrap_err().to_string();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = read_certificates(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
