//! Credentials (`credentials.json`, DESIGN.md §4) and the bearer tokens built on them.
//!
//! Two kinds of bearer token exist. A service's API key (`api_key_<service>`) may
//! act only on instances of that service's own name; an admin token is an HS256 JWT
//! signed with the UTF-8 bytes of `jwt_secret`, with `exp` required, and may do
//! anything. Keys are compared in constant time. Nothing here ever prints a secret:
//! [`Credentials`]' `Debug` shows key names only.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// Errors reading a credentials file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {} is not valid: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The parsed `credentials.json`: `jwt_secret` plus `api_key_<service>` entries.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credentials(BTreeMap<String, String>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

const API_KEY_PREFIX: &str = "api_key_";

impl Credentials {
    /// Reads and checks a credentials file. It must hold a `jwt_secret`.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// A credentials document given as text (`CHORA_CREDENTIALS_JSON`).
    pub fn from_json(text: &str) -> Result<Self, CredentialsError> {
        Self::parse(text, Path::new("CHORA_CREDENTIALS_JSON"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, CredentialsError> {
        let invalid = |message: String| CredentialsError::Invalid {
            path: path.to_owned(),
            message,
        };
        let creds: Credentials = serde_json::from_str(text)
            .map_err(|e| invalid(format!("expected a JSON object of strings ({e})")))?;
        match creds.jwt_secret() {
            Some(s) if !s.is_empty() => Ok(creds),
            _ => Err(invalid("`jwt_secret` is missing or empty".into())),
        }
    }

    /// Fresh credentials: a 256-bit hex `jwt_secret` and a 32-byte url-safe API key
    /// for each service.
    pub fn generate<'a>(services: impl IntoIterator<Item = &'a str>) -> Self {
        let mut map = BTreeMap::new();
        map.insert("jwt_secret".to_owned(), crate::random_hex(32));
        for s in services {
            map.insert(format!("{API_KEY_PREFIX}{s}"), token_urlsafe(32));
        }
        Credentials(map)
    }

    pub fn jwt_secret(&self) -> Option<&str> {
        self.0.get("jwt_secret").map(String::as_str)
    }

    pub fn api_key(&self, service: &str) -> Option<&str> {
        self.0
            .get(&format!("{API_KEY_PREFIX}{service}"))
            .map(String::as_str)
    }

    /// `(service, key)` for every `api_key_<service>` entry.
    pub fn api_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(API_KEY_PREFIX)?, v.as_str())))
    }

    /// Adds (or replaces) the API key of one service.
    pub fn set_api_key(&mut self, service: &str, key: String) {
        self.0.insert(format!("{API_KEY_PREFIX}{service}"), key);
    }

    /// The JSON text of the file (pretty, with a trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.0).expect("a map of strings serializes");
        s.push('\n');
        s
    }
}

/// `n` random bytes, URL-safe base64 without padding (Python's `token_urlsafe`).
pub fn token_urlsafe(n: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the OS random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The claims of an admin JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminClaims {
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs an admin JWT for `subject`, valid for `ttl`.
pub fn mint_admin_token(jwt_secret: &str, subject: &str, ttl: Duration) -> String {
    let iat = unix_now();
    sign_admin_claims(
        jwt_secret,
        &AdminClaims {
            sub: subject.to_owned(),
            iat,
            exp: iat + ttl.as_secs().max(1),
        },
    )
}

/// Signs the given claims (HS256 with the UTF-8 bytes of `jwt_secret`).
pub fn sign_admin_claims(jwt_secret: &str, claims: &AdminClaims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(jwt_secret.as_bytes()),
    )
    .expect("HS256 signing with an HMAC key cannot fail")
}

/// Seconds since the Unix epoch, now.
pub fn unix_seconds() -> u64 {
    unix_now()
}

/// Who a bearer token says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A valid admin JWT: may do anything.
    Admin { subject: String },
    /// A service's API key: may act on instances of this name only.
    Service(String),
}

impl Principal {
    /// Whether this principal may write instances of service `name`.
    pub fn may_act_on(&self, name: &str) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Service(own) => own == name,
        }
    }
}

/// Why a request was not authenticated (all of these answer 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `Authorization: Bearer <token>` header")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("the admin token has expired")]
    Expired,
    #[error("the token is not a valid API key or admin token")]
    Invalid,
}

/// Checks bearer tokens against one credentials file.
pub struct Verifier {
    jwt: DecodingKey,
    validation: Validation,
    api_keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "services",
                &self.api_keys.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Verifier {
    pub fn new(creds: &Credentials) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        Verifier {
            jwt: DecodingKey::from_secret(creds.jwt_secret().unwrap_or_default().as_bytes()),
            validation,
            api_keys: creds
                .api_keys()
                .map(|(s, k)| (s.to_owned(), k.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Authenticates the value of an `Authorization` header.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        self.verify(token)
    }

    /// Authenticates a bearer token.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // Compare against every key, without stopping at a match, so that the time
        // taken does not tell which key (or how much of one) matched.
        let mut found: Option<&str> = None;
        for (service, key) in &self.api_keys {
            if bool::from(key.as_slice().ct_eq(token.as_bytes())) {
                found = Some(service);
            }
        }
        if let Some(service) = found {
            return Ok(Principal::Service(service.to_owned()));
        }
        // JWTs have two dots; anything else cannot be one.
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(AuthError::Invalid);
        }
        match jsonwebtoken::decode::<AdminClaims>(token, &self.jwt, &self.validation) {
            Ok(data) => Ok(Principal::Admin {
                subject: data.claims.sub,
            }),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(AuthError::Expired)
            }
            Err(_) => Err(AuthError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::generate(["analyzer", "storage"])
    }

    #[test]
    fn api_keys_are_scoped_to_their_service() {
        let c = creds();
        let v = Verifier::new(&c);
        let p = v.verify(c.api_key("analyzer").unwrap()).unwrap();
        assert_eq!(p, Principal::Service("analyzer".into()));
        assert!(p.may_act_on("analyzer"));
        assert!(!p.may_act_on("storage"));
        assert_eq!(v.verify("nope"), Err(AuthError::Invalid));
    }

    #[test]
    fn admin_jwts_are_checked_for_signature_and_expiry() {
        let c = creds();
        let v = Verifier::new(&c);
        let secret = c.jwt_secret().unwrap();
        let good = mint_admin_token(secret, "ops", Duration::from_secs(60));
        assert_eq!(
            v.verify_header(Some(&format!("Bearer {good}"))),
            Ok(Principal::Admin {
                subject: "ops".into()
            })
        );
        let other = mint_admin_token("another-secret", "ops", Duration::from_secs(60));
        assert_eq!(v.verify(&other), Err(AuthError::Invalid));

        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &AdminClaims {
                sub: "ops".into(),
                iat: unix_now() - 120,
                exp: unix_now() - 60,
            },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));

        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "ops".into() },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&no_exp), Err(AuthError::Invalid));
    }

    #[test]
    fn headers_must_be_bearer() {
        let v = Verifier::new(&creds());
        assert_eq!(v.verify_header(None), Err(AuthError::Missing));
        assert_eq!(
            v.verify_header(Some("Basic abc")),
            Err(AuthError::Malformed)
        );
        assert_eq!(v.verify_header(Some("Bearer ")), Err(AuthError::Malformed));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = creds();
        let shown = format!("{c:?} {:?}", Verifier::new(&c));
        assert!(!shown.contains(c.jwt_secret().unwrap()));
        assert!(!shown.contains(c.api_key("analyzer").unwrap()));
    }

    #[test]
    fn load_names_the_file_and_problem() {
        let dir = std::env::temp_dir().join(format!("chora-creds-{}", crate::random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("credentials.json");
        std::fs::write(&p, r#"{"api_key_a": "x"}"#).unwrap();
        let e = Credentials::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("credentials.json") && e.contains("jwt_secret"),
            "{e}"
        );
        std::fs::write(&p, creds().to_json()).unwrap();
        assert!(Credentials::load(&p).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
