//! One health check, as every starter of a service runs it: `http(s)://…` must
//! answer 2xx, `tcp://HOST:PORT` must accept a connection. An `https://` endpoint
//! must also present a certificate that the client trusts: one from the system's
//! roots, or from the CA file the service's config names (`ca:`), which
//! [`client`] adds to them.

use std::path::Path;
use std::time::Duration;

/// How long a `tcp://` check may take to connect.
const TCP_TIMEOUT: Duration = Duration::from_secs(2);

/// True when `url` is a health endpoint chora can check.
pub fn is_checkable(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://") || tcp_addr(url).is_some()
}

fn tcp_addr(url: &str) -> Option<&str> {
    url.strip_prefix("tcp://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| {
            a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        })
}

/// The client health checks go through: short timeouts, the system's roots, and
/// the certificates of `ca` (a PEM file) besides them. Build one per CA and keep
/// it: building loads the system's roots.
pub fn client(ca: Option<&Path>) -> Result<reqwest::Client, String> {
    chora_api::tls::client_builder(ca)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| {
            format!(
                "cannot build the health-check client: {}",
                chora_api::root_cause(&e)
            )
        })
}

/// One check: `Ok` on a 2xx answer (or an accepted connection), else why not.
pub async fn check(http: &reqwest::Client, url: &str) -> Result<(), String> {
    if let Some(addr) = tcp_addr(url) {
        return match tokio::time::timeout(TCP_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {TCP_TIMEOUT:?}")),
        };
    }
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(chora_api::root_cause(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_checks_connect_and_http_checks_want_2xx() {
        let http = client(None).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(is_checkable(&format!("tcp://{addr}")));
        assert!(!is_checkable("tcp://nohost"));
        assert!(!is_checkable("ftp://x:1"));
        check(&http, &format!("tcp://{addr}")).await.unwrap();
        drop(l);
        assert!(check(&http, &format!("tcp://{addr}")).await.is_err());
        assert!(
            check(&http, &format!("http://{addr}/health"))
                .await
                .is_err()
        );
    }

    /// A CA and a certificate it signs for `localhost` and 127.0.0.1; returns
    /// the CA's PEM and the server's rustls config.
    fn test_pki() -> (String, std::sync::Arc<rustls::ServerConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], der)
            .unwrap();
        (ca_cert.pem(), std::sync::Arc::new(config))
    }

    /// An HTTPS server on loopback answering every request with 200.
    async fn serve_https(config: std::sync::Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_checks_trust_the_system_roots_and_the_given_ca_file() {
        let (ca_pem, config) = test_pki();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let addr = serve_https(config).await;
        let port = addr.port();

        let with_ca = client(Some(&ca)).unwrap();
        check(&with_ca, &format!("https://127.0.0.1:{port}/health"))
            .await
            .unwrap();
        check(&with_ca, &format!("https://localhost:{port}/health"))
            .await
            .unwrap();

        // Without the CA the certificate is nobody's: refused, and the reason says so.
        let without = client(None).unwrap();
        let e = check(&without, &format!("https://127.0.0.1:{port}/health"))
            .await
            .unwrap_err();
        assert!(
            e.contains("UnknownIssuer") || e.contains("certificate"),
            "{e}"
        );

        let e = client(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
