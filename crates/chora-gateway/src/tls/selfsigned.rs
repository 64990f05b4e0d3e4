//! `--tls-self-signed DIR`: a CA made once, and a certificate it signs for the
//! gateway's names, both kept under DIR and reused on the next start.
//!
//! DIR holds `ca.pem` (what a client trusts), `ca-key.pem`, `gateway.pem` and
//! `gateway-key.pem`; keys are 0600 and DIR is made 0700. The CA lives ten
//! years and is never replaced while its key is there, so a client that trusts
//! it once keeps trusting the gateway. The gateway's certificate (ECDSA P-256,
//! 397 days, the most a browser accepts) is issued again, by the same CA, when
//! it no longer covers every name asked for, is within 30 days of its end, or
//! was not issued by this CA.
//!
//! The CA's name is derived from its key ("chora local CA 1a2b3c4d", the key
//! identifier's first bytes), so the issuer of a new certificate is rebuilt
//! from the key alone: no certificate parsing on the signing side, and two
//! homes' CAs never share a name (a browser keys its trust by name).

use super::{Facts, TlsError, load_pair, make_private_dir, write_file};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT: &str = "gateway.pem";
const KEY: &str = "gateway-key.pem";

const DAY: Duration = Duration::from_secs(86_400);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
const CERT_LIFETIME: Duration = Duration::from_secs(397 * 86_400);
const RENEW_WITHIN: Duration = Duration::from_secs(30 * 86_400);

/// The files of a self-signed set.
#[derive(Debug, Clone)]
pub struct Made {
    /// The CA certificate a client trusts.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// What this call did: made the CA, issued the certificate, or neither.
    pub made_ca: bool,
    pub issued: bool,
}

/// Makes, or reuses, the CA and the certificate for `names` under `dir`.
pub fn ensure(dir: &Path, names: &[String]) -> Result<Made, TlsError> {
    make_private_dir(dir)?;
    // Absolute paths: the CA's is printed for people and other programs.
    let dir = &dir.canonicalize().map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let mut made_ca = false;
    let key = match std::fs::read_to_string(&ca_key) {
        Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| TlsError::Key {
            path: ca_key.clone(),
            message: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate().map_err(gen_err)?;
            write_file(&ca_key, key.serialize_pem().as_bytes(), true)?;
            made_ca = true;
            key
        }
        Err(source) => {
            return Err(TlsError::Write {
                path: ca_key,
                source,
            });
        }
    };
    let params = ca_params(&key);
    if made_ca || !ca_cert.exists() {
        // Also when the CA certificate alone was lost: the same key and name
        // make a CA that every certificate it signed still chains to.
        let cert = params.self_signed(&key).map_err(gen_err)?;
        write_file(&ca_cert, cert.pem().as_bytes(), false)?;
    }
    let ca_der = chora_api::tls::read_certificates(&ca_cert)?;
    let ca_facts = Facts::of(&ca_der[0]).map_err(|message| TlsError::Pair {
        cert: ca_cert.clone(),
        key: ca_key.clone(),
        message,
    })?;

    let (cert, cert_key) = (dir.join(CERT), dir.join(KEY));
    let names = canonical_names(names);
    let issued = !current(&cert, &cert_key, &names, &ca_facts.subject);
    if issued {
        let issuer = Issuer::new(params, key);
        let leaf_key = KeyPair::generate().map_err(gen_err)?;
        let leaf = leaf_params(&names)?
            .signed_by(&leaf_key, &issuer)
            .map_err(gen_err)?;
        write_file(&cert_key, leaf_key.serialize_pem().as_bytes(), true)?;
        write_file(&cert, leaf.pem().as_bytes(), false)?;
    }
    Ok(Made {
        ca: ca_cert,
        cert,
        key: cert_key,
        made_ca,
        issued,
    })
}

/// True when the certificate on disk loads with its key, was issued by the
/// CA named `ca_subject`, covers `names` and has more than 30 days left.
fn current(cert: &Path, key: &Path, names: &[String], ca_subject: &[u8]) -> bool {
    let Ok(pair) = load_pair(cert, key) else {
        return false;
    };
    let Ok(facts) = Facts::of(&pair.cert[0]) else {
        return false;
    };
    facts.issuer == ca_subject
        && facts.covers(names)
        && facts.not_after > SystemTime::now() + RENEW_WITHIN
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut p = CertificateParams::default();
    let id = p.key_identifier(key);
    let short: String = id.iter().take(4).map(|b| format!("{b:02x}")).collect();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, format!("chora local CA {short}"));
    p.distinguished_name.push(DnType::OrganizationName, "chora");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    p.not_before = (now - DAY).into();
    p.not_after = (now + CA_LIFETIME).into();
    p
}

fn leaf_params(names: &[String]) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::default();
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e: rcgen::Error| {
                    TlsError::Generate(format!("`{n}` is not a DNS name: {e}"))
                }),
        })
        .collect::<Result<_, _>>()?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("chora gateway", String::as_str),
    );
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + CERT_LIFETIME).into();
    Ok(p)
}

/// Names in certificate form, without repeats, in the order given.
fn canonical_names(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let n = super::x509::canonical(n.trim());
        if !n.is_empty() && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}
