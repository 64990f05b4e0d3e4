//! One-time login tokens for the dashboard (DESIGN.md §12).
//!
//! `chora bootstrap ui` mints one; the orchestrator's `/ui/login?token=…` spends
//! it. A token is an HS256 JWT with `purpose: "ui-login"`, `aud: "chora-ui"`, a
//! random `jti` and a five-minute `exp`. It is signed with a key derived from the
//! credentials' `jwt_secret`, not the secret itself, so a login token is never
//! accepted as an admin token (by the Manifest or the orchestrator's `/v1`), and
//! an admin token never opens the dashboard. That it works once is the
//! verifier's job: it remembers the `jti`s it has spent until they expire.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a login token is valid.
pub const LOGIN_TTL: Duration = Duration::from_secs(300);

const PURPOSE: &str = "ui-login";
const AUDIENCE: &str = "chora-ui";

/// The claims of a login token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginClaims {
    pub sub: String,
    pub aud: String,
    pub purpose: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

/// The HMAC key of login tokens: distinct from the admin-token key.
fn key(jwt_secret: &str) -> Vec<u8> {
    format!("{jwt_secret}\0chora-ui-login").into_bytes()
}

/// A fresh one-time login token for `subject`, valid for [`LOGIN_TTL`].
pub fn mint_login_token(jwt_secret: &str, subject: &str) -> String {
    mint_login_token_for(jwt_secret, subject, LOGIN_TTL)
}

/// A login token valid for `ttl` (tests use a short one).
pub fn mint_login_token_for(jwt_secret: &str, subject: &str, ttl: Duration) -> String {
    let iat = crate::auth::unix_seconds();
    let claims = LoginClaims {
        sub: subject.to_owned(),
        aud: AUDIENCE.to_owned(),
        purpose: PURPOSE.to_owned(),
        jti: crate::random_hex(16),
        iat,
        exp: iat + ttl.as_secs().max(1),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key(jwt_secret)),
    )
    .expect("HS256 signing with an HMAC key cannot fail")
}

/// Why a login token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("the login link has expired; run `chora bootstrap ui` for a new one")]
    Expired,
    #[error("the login link is not valid; run `chora bootstrap ui` for a new one")]
    Invalid,
}

/// Checks a login token's signature, audience, purpose and expiry (not whether
/// it was spent already). Returns its claims.
pub fn verify_login_token(jwt_secret: &str, token: &str) -> Result<LoginClaims, LoginError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "aud"]);
    v.set_audience(&[AUDIENCE]);
    v.leeway = 0;
    let data =
        jsonwebtoken::decode::<LoginClaims>(token, &DecodingKey::from_secret(&key(jwt_secret)), &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => LoginError::Expired,
                _ => LoginError::Invalid,
            })?;
    if data.claims.purpose != PURPOSE || data.claims.jti.len() < 16 {
        return Err(LoginError::Invalid);
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Credentials, Verifier, mint_admin_token};

    #[test]
    fn a_login_token_verifies_and_is_unique() {
        let a = mint_login_token("s3cret", "ops");
        let b = mint_login_token("s3cret", "ops");
        let ca = verify_login_token("s3cret", &a).unwrap();
        let cb = verify_login_token("s3cret", &b).unwrap();
        assert_ne!(ca.jti, cb.jti);
        assert_eq!(ca.exp - ca.iat, 300);
        assert_eq!(
            verify_login_token("other", &a),
            Err(LoginError::Invalid),
            "another secret"
        );
    }

    #[test]
    fn login_and_admin_tokens_do_not_stand_in_for_each_other() {
        let creds = Credentials::generate(["analyzer"]);
        let secret = creds.jwt_secret().unwrap();
        let login = mint_login_token(secret, "ops");
        assert!(Verifier::new(&creds).verify(&login).is_err());
        let admin = mint_admin_token(secret, "ops", Duration::from_secs(60));
        assert_eq!(verify_login_token(secret, &admin), Err(LoginError::Invalid));
    }

    #[test]
    fn an_expired_login_token_is_refused() {
        let claims = LoginClaims {
            sub: "ops".into(),
            aud: AUDIENCE.into(),
            purpose: PURPOSE.into(),
            jti: crate::random_hex(16),
            iat: 1,
            exp: 2,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&key("s")),
        )
        .unwrap();
        assert_eq!(verify_login_token("s", &t), Err(LoginError::Expired));
    }
}
