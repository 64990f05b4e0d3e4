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

use std::path::{Path, PathBuf};

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
pub fn read_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::CertificateDer;
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

/// A client builder that trusts the system's roots and, when given, the
/// certificates of the PEM file `ca` besides them.
pub fn client_builder(ca: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    let builder = reqwest::Client::builder();
    let Some(ca) = ca else { return Ok(builder) };
    let certs = read_certificates(ca)?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der).map_err(|e| TlsError::Invalid {
                path: ca.to_owned(),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(builder.tls_certs_merge(certs))
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
