//! What the gateway needs to know about a certificate it holds: when it is
//! valid, which names it covers, who issued it. Read with `x509-cert`.

use std::net::IpAddr;
use std::time::SystemTime;
use x509_cert::der::{Decode, Encode};

/// The facts of one certificate.
#[derive(Debug, Clone)]
pub struct Facts {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names (lower case) and IP addresses (as text) of its subjectAltName.
    pub names: Vec<String>,
    /// The DER of its issuer's and its subject's name.
    pub issuer: Vec<u8>,
    pub subject: Vec<u8>,
}

impl Facts {
    pub fn of(der: &[u8]) -> Result<Facts, String> {
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::ext::pkix::name::GeneralName;
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
        let tbs = &cert.tbs_certificate;
        let mut names = Vec::new();
        if let Some((_, san)) = tbs.get::<SubjectAltName>().map_err(|e| e.to_string())? {
            for name in san.0 {
                match name {
                    GeneralName::DnsName(d) => names.push(d.as_str().to_ascii_lowercase()),
                    GeneralName::IpAddress(ip) => {
                        let b = ip.as_bytes();
                        let ip = match b.len() {
                            4 => IpAddr::from(<[u8; 4]>::try_from(b).expect("4 bytes")),
                            16 => IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes")),
                            _ => continue,
                        };
                        names.push(ip.to_string());
                    }
                    _ => {}
                }
            }
        }
        Ok(Facts {
            not_before: tbs.validity.not_before.to_system_time(),
            not_after: tbs.validity.not_after.to_system_time(),
            names,
            issuer: tbs.issuer.to_der().map_err(|e| e.to_string())?,
            subject: tbs.subject.to_der().map_err(|e| e.to_string())?,
        })
    }

    /// True when every one of `names` is among the certificate's (exactly: no
    /// wildcard matching, chora asks for the names it serves).
    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| {
            let n = canonical(n);
            self.names.contains(&n)
        })
    }

    /// The moment from which it should be replaced: `fraction` of its
    /// lifetime after it became valid.
    pub fn renew_at(&self, fraction: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life.mul_f64(fraction)
    }
}

/// A name as certificates hold it: DNS names in lower case, IP addresses in
/// their canonical text.
pub fn canonical(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}
