//! Certificates from an ACME server (RFC 8555: Let's Encrypt, or Debian's
//! `pebble` in tests), ordered with `instant-acme` over the workspace's reqwest.
//!
//! - Validation is http-01: the server fetches
//!   `http://DOMAIN/.well-known/acme-challenge/TOKEN` from the gateway's plain
//!   port, which answers from [`Challenges`] before anything else (also when it
//!   otherwise only redirects to https).
//! - Cached under `CACHE/<directory host>/`: the account (`account.json`, its
//!   private key inside, 0600) and the certificate (`<first domain>.pem` with
//!   `<first domain>-key.pem`, 0600). A restart serves the cached certificate
//!   and orders nothing while it covers the domains and is not due.
//! - Renewed at two thirds of its lifetime (30 days before the end of a
//!   90-day certificate). A failed order is tried again after 10 s, doubling
//!   to an hour; the old certificate is served meanwhile.
//! - `--acme-ca` is a CA file trusted for the directory itself (besides the
//!   system's roots): pebble's listener has a test certificate.

use super::{Facts, Resolver, TlsError, make_private_dir, pair, write_file};
use axum::body::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

/// The path prefix of http-01 challenges.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// When, as a fraction of its lifetime, a certificate is renewed.
const RENEW_AT: f64 = 2.0 / 3.0;

/// How long an order may wait for validation, then for its certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// What `chora gateway serve --acme-…` was given.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ACME directory URL.
    pub directory: String,
    /// The names the certificate is for (DNS names, or IP addresses where the
    /// server allows them).
    pub domains: Vec<String>,
    /// The account's contact address.
    pub email: Option<String>,
    /// A CA file to trust for the directory's own HTTPS.
    pub ca: Option<PathBuf>,
    /// Where accounts and certificates are kept.
    pub cache: PathBuf,
}

/// The key authorizations of the open http-01 challenges, by token.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl Challenges {
    /// The key authorization for `token`, when a challenge with it is open.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    fn open(&self, token: String, key_authorization: String) {
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, key_authorization);
    }

    fn close(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }
}

pub struct Acme {
    settings: Settings,
    resolver: Arc<Resolver>,
    challenges: Arc<Challenges>,
    http: reqwest::Client,
    /// `CACHE/<directory host>`.
    dir: PathBuf,
    account: Option<Account>,
    /// The certificate served now.
    current: Option<Facts>,
}

impl Acme {
    /// Checks the settings and serves the cached certificate, if one is usable.
    pub fn new(settings: Settings, resolver: Arc<Resolver>) -> Result<Acme, TlsError> {
        if settings.domains.is_empty() {
            return Err(TlsError::Acme("ACME needs at least one domain".into()));
        }
        let host = settings
            .directory
            .parse::<axum::http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("https" | "http")))
            .and_then(|u| u.authority().map(|a| a.as_str().replace(':', "_")))
            .ok_or_else(|| {
                TlsError::Acme(format!(
                    "`{}` is not an ACME directory URL (https://…/directory)",
                    settings.directory
                ))
            })?;
        let dir = settings.cache.join(host);
        make_private_dir(&dir)?;
        let http = chora_api::tls::client_builder(settings.ca.as_deref())?
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| TlsError::Acme(format!("cannot build the ACME client: {e}")))?;
        let mut acme = Acme {
            settings,
            resolver,
            challenges: Arc::default(),
            http,
            dir,
            account: None,
            current: None,
        };
        acme.load_cached();
        Ok(acme)
    }

    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    fn cert_path(&self) -> (PathBuf, PathBuf) {
        let first = super::x509::canonical(&self.settings.domains[0]).replace(':', "_");
        (
            self.dir.join(format!("{first}.pem")),
            self.dir.join(format!("{first}-key.pem")),
        )
    }

    fn load_cached(&mut self) {
        let (cert, key) = self.cert_path();
        if !cert.exists() {
            return;
        }
        let loaded = super::load_pair(&cert, &key).and_then(|k| {
            let facts = Facts::of(&k.cert[0]).map_err(TlsError::Acme)?;
            Ok((k, facts))
        });
        match loaded {
            Ok((k, facts))
                if facts.covers(&self.settings.domains) && facts.not_after > SystemTime::now() =>
            {
                tracing::info!(
                    cert = %cert.display(),
                    valid_until = %chora_api::rfc3339(facts.not_after),
                    "serving the cached ACME certificate"
                );
                self.resolver.set(k);
                self.current = Some(facts);
            }
            Ok(_) => {
                tracing::info!(cert = %cert.display(), "the cached ACME certificate is expired or for other domains: ordering a new one")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the cached ACME certificate does not load: ordering a new one")
            }
        }
    }

    /// Orders a certificate when there is none, and renews it when due, for
    /// ever.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            if let Some(due) = self.current.as_ref().map(|f| f.renew_at(RENEW_AT)) {
                wait_until(due).await;
            }
            match self.order().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let retry = Duration::from_secs(10)
                        .saturating_mul(1 << failures.min(9))
                        .min(Duration::from_secs(3600));
                    tracing::warn!(
                        directory = %self.settings.directory,
                        error = %e,
                        retry_in = ?retry,
                        "could not get a certificate from the ACME server"
                    );
                    // Forget the account: a directory that was reset (a new
                    // pebble) no longer knows it.
                    self.account = None;
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    async fn order(&mut self) -> Result<(), String> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| match d.parse() {
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::Dns(d.clone()),
            })
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut tokens = Vec::new();
        let opened = self.open_challenges(&mut order, &mut tokens).await;
        let finished = match opened {
            Ok(()) => self.finish(&mut order).await,
            Err(e) => Err(e),
        };
        for t in &tokens {
            self.challenges.close(t);
        }
        let (chain, key) = finished?;

        let certs = {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the certificate chain is not PEM: {e}"))?
        };
        let facts = Facts::of(certs.first().ok_or("the ACME server sent no certificate")?)?;
        let der = {
            use rustls::pki_types::PrivateKeyDer;
            use rustls::pki_types::pem::PemObject;
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?
        };
        let certified = pair(certs, der)?;
        let (cert_path, key_path) = self.cert_path();
        write_file(&key_path, key.as_bytes(), true).map_err(|e| e.to_string())?;
        write_file(&cert_path, chain.as_bytes(), false).map_err(|e| e.to_string())?;
        self.resolver.set(certified);
        tracing::info!(
            domains = %self.settings.domains.join(","),
            valid_until = %chora_api::rfc3339(facts.not_after),
            renew_at = %chora_api::rfc3339(facts.renew_at(RENEW_AT)),
            "got a certificate from the ACME server"
        );
        self.current = Some(facts);
        Ok(())
    }

    /// Opens an http-01 challenge for each pending authorization.
    async fn open_challenges(
        &self,
        order: &mut instant_acme::Order,
        tokens: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("the authorization for {name} is {other:?}")),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| format!("the ACME server offers no http-01 challenge for {name}"))?;
            let answer = challenge.key_authorization().as_str().to_owned();
            self.challenges.open(challenge.token.clone(), answer);
            tokens.push(challenge.token.clone());
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
        Ok(())
    }

    /// Waits for validation, sends a new key's CSR, waits for the certificate.
    /// Returns the PEM chain and the PEM key.
    async fn finish(&self, order: &mut instant_acme::Order) -> Result<(String, String), String> {
        let patience = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&patience)
            .await
            .map_err(|e| format!("validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "the order is {status:?}: {}",
                why_invalid(order).await
            ));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(self.settings.domains.clone())
            .map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&patience)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok((chain, key.serialize_pem()))
    }

    async fn account(&mut self) -> Result<Account, String> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let path = self.dir.join("account.json");
        let builder = Account::builder_with_http(Box::new(Http(self.http.clone())));
        let account = match std::fs::read(&path) {
            Ok(json) => {
                let creds: AccountCredentials = serde_json::from_slice(&json)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                builder
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("account: {e}"))?
            }
            Err(_) => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("new account at {}: {e}", self.settings.directory))?;
                let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
                write_file(&path, &json, true).map_err(|e| e.to_string())?;
                tracing::info!(account = %account.id(), "registered an ACME account");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }
}

/// What the server said about the failed challenges of an invalid order.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut why = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        for c in &authz.challenges {
            if let Some(e) = &c.error {
                why.push(format!("{}: {e}", authz.identifier()));
            }
        }
    }
    if why.is_empty() {
        "no reason given".into()
    } else {
        why.join("; ")
    }
}

/// Sleeps until the wall clock reaches `at`, looking at the clock again at
/// least every hour (a machine that slept does not delay a renewal by the
/// time it slept).
async fn wait_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(3600))).await;
    }
}

/// instant-acme's HTTP over the workspace's reqwest (rustls, the system's roots
/// plus `--acme-ca`).
struct Http(reqwest::Client);

impl instant_acme::HttpClient for Http {
    fn request(
        &self,
        req: axum::http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        use http_body_util::BodyExt;
        let http = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let resp = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(axum::http::Response::from(resp)))
        })
    }
}
