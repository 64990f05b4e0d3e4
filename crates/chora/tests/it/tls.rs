//! HTTPS at the gateway with the real parts: the real `chora gateway serve`, a
//! real rustls client (reqwest) trusting a CA, real upstreams registered in a
//! real Manifest, and Debian's `pebble` as the ACME server.

use crate::gateway::upstream;
use crate::{Registry, chora_bin};
use chora_testkit::{Server, free_port, spawn_server, start_process};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A Manifest without auth, and a gateway with HTTPS following it.
struct Site {
    manifest: Registry,
    gateway: Server,
    /// The HTTPS address from the readiness line.
    https: SocketAddr,
}

impl Site {
    /// `chora gateway serve --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 tls…`
    fn start(tls: &[&str]) -> Site {
        let manifest = Registry::start(&["--no-auth", "--ttl", "60", "--heartbeat-interval", "20"]);
        let gateway = start_gateway(&manifest, &["--tls-listen", "127.0.0.1:0"], tls, &[]);
        let https = https_addr(&gateway);
        Site {
            manifest,
            gateway,
            https,
        }
    }

    async fn register(&self, name: &str, rest_url: &str) {
        let (s, b) = self
            .manifest
            .post(
                "/v1/services",
                &json!({"name": name, "version": "1", "interfaces": {"REST": rest_url}}),
                None,
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.https)
    }
}

fn start_gateway(
    manifest: &Registry,
    listen: &[&str],
    tls: &[&str],
    envs: &[(&str, &str)],
) -> Server {
    let murl = manifest.server.url();
    let mut args = vec![
        "gateway",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--manifest-url",
        &murl,
    ];
    args.extend_from_slice(listen);
    args.extend_from_slice(tls);
    spawn_server(chora_bin(), manifest.dir.path(), &args, envs)
}

/// The environment of a machine without CA certificates (a `FROM scratch`
/// image): rustls-native-certs reads only these, and finds nothing.
const NO_ROOTS: [(&str, &str); 2] = [
    ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
    ("SSL_CERT_DIR", "/nonexistent"),
];

/// `(https://ADDR` from the gateway's readiness line.
fn https_addr(gateway: &Server) -> SocketAddr {
    let out = gateway.output();
    let line = out
        .lines()
        .find(|l| l.contains("listening on http://"))
        .expect("a readiness line");
    line.split("(https://")
        .nth(1)
        .and_then(|r| r.split([',', ')']).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no https address in {line:?}"))
}

/// Waits until the process has printed `needle` (a log line is the only signal
/// a reload or an ACME order gives).
async fn wait_output(server: &Server, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !server.output().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `req()` until the gateway routes it: its route table follows the
/// Manifest asynchronously, with no signal of its own. Returns the first
/// answer that is not 404 (not known yet) or 503 (no instance up yet).
async fn until_routed<F, Fut>(mut req: F) -> reqwest::Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = req().await.unwrap();
        if !matches!(r.status().as_u16(), 404 | 503) {
            return r;
        }
        assert!(Instant::now() < deadline, "never routed: {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reqwest client that trusts the CAs in `pems` (besides the system's) and
/// reports the certificate each response came with.
fn client(pems: &[&Path]) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder().tls_info(true);
    for p in pems {
        let pem = std::fs::read(p).unwrap();
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    b
}

/// The DER of the certificate the server presented for `resp`'s connection.
fn served_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("tls_info on")
        .to_vec()
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(pem_file).unwrap();
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// A test CA and a certificate it signs for `names`, written under `dir` as
/// `ca.pem`, `cert.pem`, `key.pem`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("test CA {}", dir.display()));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let p = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&p.ca, ca_cert.pem()).unwrap();
    std::fs::write(&p.cert, cert.pem()).unwrap();
    std::fs::write(&p.key, key.serialize_pem()).unwrap();
    p
}

/// Copies `from` to a temp file beside `to`, then renames it over `to`: what
/// certificate tools do.
fn rename_over(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_rustls_client_reaches_a_service_through_the_self_signed_gateway() {
    let up = upstream().await;
    let dir = chora_testkit::temp_dir();
    let tls_dir = dir.path().join("tls");
    let site = Site::start(&[
        "--tls-self-signed",
        tls_dir.to_str().unwrap(),
        "--tls-name",
        "gw.internal",
    ]);
    site.register("echo", &up.url).await;

    // The readiness line names the CA, made once with its key 0600.
    let ca = tls_dir.canonicalize().unwrap().join("ca.pem");
    assert!(
        site.gateway
            .output()
            .contains(&format!("CA {})", ca.display())),
        "{}",
        site.gateway.output()
    );
    assert_eq!(mode(&tls_dir), 0o700);
    assert_eq!(mode(&tls_dir.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&tls_dir.join("gateway-key.pem")), 0o600);

    let http = client(&[&ca])
        .resolve("gw.internal", site.https)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body: Value = loop {
        let r = http
            .post(site.url("/api/v1/echo/deep/path?a=1"))
            .body("hello")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break r.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "never routed: {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["path"], "/deep/path");
    assert_eq!(body["query"], "a=1");
    assert_eq!(body["body_len"], 5);
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    // Every name it was made for: localhost, the IPs, --tls-name.
    let port = site.https.port();
    for url in [
        format!("https://localhost:{port}/health"),
        format!("https://gw.internal:{port}/health"),
    ] {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
    }
    // A client that does not trust the CA is refused.
    let stranger = reqwest::Client::new();
    let e = stranger.get(site.url("/health")).send().await.unwrap_err();
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
    // `chora probe` with --ca, and without.
    let probe = |ca: Option<&Path>, envs: &[(&str, &str)]| {
        let url = format!("https://localhost:{port}/health");
        let mut args = vec!["probe", url.as_str()];
        if let Some(ca) = ca {
            args.extend(["--ca", ca.to_str().unwrap()]);
        }
        crate::run_chora(dir.path(), &args, envs)
    };
    assert_eq!(probe(Some(&ca), &[]).0, 0);
    let (code, _, err) = probe(None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Where the machine has no CA certificates, --ca still works, and without
    // it the answer says what is missing.
    assert_eq!(probe(Some(&ca), &NO_ROOTS).0, 0);
    let (code, _, err) = probe(None, &NO_ROOTS);
    assert_eq!(code, 1);
    assert!(err.contains("no CA certificates"), "{err}");

    // A second start reuses the CA and the certificate; on a machine without
    // CA certificates it still starts, registers and proxies.
    let ca_before = std::fs::read(&ca).unwrap();
    let cert_before = std::fs::read(tls_dir.join("gateway.pem")).unwrap();
    let again = start_gateway(
        &site.manifest,
        &["--tls-listen", "127.0.0.1:0"],
        &[
            "--tls-self-signed",
            tls_dir.to_str().unwrap(),
            "--tls-name",
            "gw.internal",
        ],
        &NO_ROOTS,
    );
    let url = format!("https://{}/api/v1/echo/again", https_addr(&again));
    let r = until_routed(|| http.get(&url).send()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before);
    assert_eq!(
        std::fs::read(tls_dir.join("gateway.pem")).unwrap(),
        cert_before
    );
    for s in [&site.gateway, &again] {
        assert!(!s.output().contains("PRIVATE KEY"), "a key reached the log");
    }
}

#[tokio::test]
async fn a_certificate_renamed_over_reaches_new_handshakes_while_an_open_connection_keeps_going() {
    let up = upstream().await;
    let dir = chora_testkit::temp_dir();
    let one = pki(&dir.path().join("one"), &["127.0.0.1", "localhost"]);
    let two = pki(&dir.path().join("two"), &["127.0.0.1", "localhost"]);
    let (cert, key) = (dir.path().join("gw.pem"), dir.path().join("gw-key.pem"));
    std::fs::copy(&one.cert, &cert).unwrap();
    std::fs::copy(&one.key, &key).unwrap();
    let site = Site::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    site.register("echo", &up.url).await;

    // One pooled keep-alive connection, made while `one` is served.
    let kept = client(&[&one.ca, &two.ca])
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = kept.get(site.url("/api/v1/echo/x")).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(served_cert(&r), der_of(&one.cert));
            r.bytes().await.unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "never routed: {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = up.accepted.load(std::sync::atomic::Ordering::SeqCst);

    // The key first, then the certificate, each renamed over its file.
    rename_over(&two.key, &key);
    rename_over(&two.cert, &cert);
    wait_output(
        &site.gateway,
        "certificate reloaded",
        Duration::from_secs(10),
    )
    .await;

    // The open connection goes on with the certificate it agreed on...
    for _ in 0..3 {
        let r = kept.get(site.url("/api/v1/echo/y")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            served_cert(&r),
            der_of(&one.cert),
            "a new connection was made"
        );
        r.bytes().await.unwrap();
    }
    // ...and a new connection gets the new one, from the new CA alone.
    let fresh = client(&[&two.ca]).build().unwrap();
    let r = fresh.get(site.url("/api/v1/echo/z")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_cert(&r), der_of(&two.cert));
    // The gateway's upstream connection was reused throughout.
    assert_eq!(
        up.accepted.load(std::sync::atomic::Ordering::SeqCst),
        accepted
    );

    // A key that does not match is refused; the good pair stays served.
    rename_over(&one.key, &key);
    wait_output(&site.gateway, "do not load", Duration::from_secs(10)).await;
    let r = client(&[&two.ca])
        .build()
        .unwrap()
        .get(site.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_cert(&r), der_of(&two.cert));
    assert!(!site.gateway.output().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn plain_http_redirects_to_https_with_path_and_query_unless_told_to_serve() {
    let up = upstream().await;
    let dir = chora_testkit::temp_dir();
    let tls_dir = dir.path().join("tls");
    let site = Site::start(&["--tls-self-signed", tls_dir.to_str().unwrap()]);
    site.register("echo", &up.url).await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let plain = site.gateway.url();

    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let r = no_follow
            .request(method.clone(), format!("{plain}/api/v1/echo/a/b?x=1&y=%20"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 308, "{method}");
        assert_eq!(
            r.headers()["location"],
            format!(
                "https://127.0.0.1:{}/api/v1/echo/a/b?x=1&y=%20",
                site.https.port()
            )
            .as_str()
        );
    }
    // The Host a client used is kept.
    let r = no_follow
        .get(format!("{plain}/anything"))
        .header("host", "gw.example:8700")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["location"],
        format!("https://gw.example:{}/anything", site.https.port()).as_str()
    );
    // The gateway's own health and metrics stay on plain HTTP.
    for path in ["/health", "/metrics"] {
        let r = no_follow
            .get(format!("{plain}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // A client that follows the redirect and trusts the CA gets the answer.
    let ca = tls_dir.join("ca.pem");
    let follows = client(&[&ca]).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = follows
            .post(format!("{plain}/api/v1/echo/p"))
            .body("kept")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["headers"]["x-forwarded-proto"], "https");
            assert_eq!(v["body_len"], 4, "308 keeps the method and the body");
            break;
        }
        assert!(Instant::now() < deadline, "never routed: {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // --http serve: plain HTTP proxies too, and says so upstream.
    let both = start_gateway(
        &site.manifest,
        &["--tls-listen", "127.0.0.1:0"],
        &[
            "--tls-self-signed",
            tls_dir.to_str().unwrap(),
            "--http",
            "serve",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = no_follow
            .get(format!("{}/api/v1/echo/q", both.url()))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["headers"]["x-forwarded-proto"], "http");
            break;
        }
        assert_ne!(r.status(), 308);
        assert!(Instant::now() < deadline, "never routed: {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = follows
        .get(format!("https://{}/api/v1/echo/q", https_addr(&both)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The address after `marker` in a line, up to the next space or `/`.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    let rest = rest.trim_start_matches("https://");
    rest.split(['/', ' ']).next()?.parse().ok()
}

#[tokio::test]
async fn pebble_issues_a_certificate_that_the_gateway_serves_caches_and_renews() {
    if !chora_testkit::pebble_available(
        "tls::pebble_issues_a_certificate_that_the_gateway_serves_caches_and_renews",
    ) {
        return;
    }
    let manifest = Registry::start(&["--no-auth"]);
    let dir = chora_testkit::temp_dir();
    // Pebble's own HTTPS listener needs a certificate: one from a test CA,
    // which the gateway is told to trust with --acme-ca.
    let listener_pki = pki(&dir.path().join("pebble-pki"), &["127.0.0.1", "localhost"]);

    // DNS for pebble's validation: every name is 127.0.0.1 (no AAAA, the
    // gateway listens on IPv4 loopback).
    let dns = free_port();
    let challtestsrv = start_process(
        Path::new("pebble-challtestsrv"),
        dir.path(),
        &[
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ],
        &[],
        "pebble-challtestsrv".into(),
    )
    .wait(|l| addr_after(l, "Starting management server on "));

    // http-01 goes to the gateway's plain port; certificates live 15 s, so
    // that the renewal at 2/3 of that shows within the test.
    let plain = free_port();
    let config = json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{}", free_port()),
        "managementListenAddress": format!("127.0.0.1:{}", free_port()),
        "certificate": listener_pki.cert,
        "privateKey": listener_pki.key,
        "httpPort": plain,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": 15,
    }});
    let config_file = dir.path().join("pebble.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let pebble = start_process(
        Path::new("pebble"),
        dir.path(),
        &[
            "-config",
            config_file.to_str().unwrap(),
            "-dnsserver",
            &format!("127.0.0.1:{dns}"),
        ],
        // No random sleeps before validating; nonces always good. Validation
        // itself is real (PEBBLE_VA_ALWAYS_VALID is not set).
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
        "pebble".into(),
    )
    .wait(|l| addr_after(l, "ACME directory available at: "));
    let directory = format!("https://{}/dir", pebble.addr);
    let management = config["pebble"]["managementListenAddress"]
        .as_str()
        .unwrap();

    let cache = dir.path().join("tls");
    let acme_args = [
        "--acme-directory",
        &directory,
        "--acme-domain",
        "gw.chora.test",
        "--acme-email",
        "ops@chora.test",
        "--acme-ca",
        listener_pki.ca.to_str().unwrap(),
        "--acme-cache",
        cache.to_str().unwrap(),
    ];
    let listen = [
        "--listen",
        &format!("127.0.0.1:{plain}"),
        "--tls-listen",
        "127.0.0.1:0",
    ];
    let start = |m: &Registry| {
        let murl = m.server.url();
        let mut args = vec!["gateway", "serve", "--manifest-url", &murl];
        args.extend_from_slice(&listen);
        args.extend_from_slice(&acme_args);
        spawn_server(chora_bin(), m.dir.path(), &args, &[])
    };
    let mut gateway = start(&manifest);
    wait_output(
        &gateway,
        "got a certificate from the ACME server",
        Duration::from_secs(60),
    )
    .await;

    // Pebble's root (made afresh at each start) is what a client trusts.
    let root = dir.path().join("pebble-root.pem");
    let pem = client(&[&listener_pki.ca])
        .build()
        .unwrap()
        .get(format!("https://{management}/roots/0"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(&root, pem).unwrap();
    let https = https_addr(&gateway);
    let http = client(&[&root])
        .resolve("gw.chora.test", https)
        .build()
        .unwrap();
    let url = format!("https://gw.chora.test:{}/health", https.port());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = served_cert(&r);

    // Cached: a restart serves it at once and orders nothing.
    let account = cache.join(format!("{}", pebble.addr).replace(':', "_"));
    assert_eq!(mode(&account.join("account.json")), 0o600);
    assert_eq!(mode(&account.join("gw.chora.test-key.pem")), 0o600);
    gateway.terminate();
    let gateway = start(&manifest);
    let https = https_addr(&gateway);
    let http = client(&[&root])
        .resolve("gw.chora.test", https)
        .build()
        .unwrap();
    let url = format!("https://gw.chora.test:{}/health", https.port());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_cert(&r), first);
    assert!(
        gateway
            .output()
            .contains("serving the cached ACME certificate")
    );
    assert!(!gateway.output().contains("got a certificate"));

    // Renewed at 2/3 of its 15 s: a new connection gets a new certificate.
    wait_output(
        &gateway,
        "got a certificate from the ACME server",
        Duration::from_secs(30),
    )
    .await;
    let fresh = client(&[&root])
        .resolve("gw.chora.test", https)
        .build()
        .unwrap();
    let r = fresh.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(served_cert(&r), first);
    assert!(!gateway.output().contains("PRIVATE KEY"));
    drop((pebble, challtestsrv));
}

#[test]
fn gateway_help_shows_an_example_of_every_https_flag_and_refuses_half_a_source() {
    let dir = chora_testkit::temp_dir();
    let (code, out, _) = crate::run_chora(dir.path(), &["gateway", "serve", "--help"], &[]);
    assert_eq!(code, 0);
    let examples = out.split("Examples:").nth(1).expect("an Examples section");
    for flag in [
        "--tls-cert",
        "--tls-key",
        "--tls-self-signed",
        "--tls-name",
        "--tls-listen",
        "--acme-directory",
        "--acme-domain",
        "--acme-email",
        "--acme-ca",
        "--acme-cache",
        "--http serve",
    ] {
        assert!(examples.contains(flag), "no example of {flag}:\n{out}");
    }

    let gateway = |args: &[&str]| {
        let mut all = vec!["gateway", "serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        crate::run_chora(dir.path(), &all, &[])
    };
    let (code, _, err) = gateway(&["--tls-listen", "127.0.0.1:0"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("needs a certificate source"), "{err}");
    let (code, _, err) = gateway(&["--tls-cert", "x.pem"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--tls-key"), "{err}");
    // A certificate that is not there fails the start, before the readiness line.
    let (code, out, err) = gateway(&["--tls-cert", "x.pem", "--tls-key", "k.pem"]);
    assert_eq!(code, 7, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("[TLS_CONFIG]") && err.contains("x.pem"),
        "{err}"
    );
}

/// `services.gateway.tls: self-signed` in a bootstrapped system: the gateway
/// serves HTTPS on `tls_port` with the CA chora made (0600 keys in a 0700
/// directory under the home), plain HTTP redirects there, validation goes
/// over HTTPS, and the closing block names the CA to trust. Its health
/// endpoint is `https://` too, checked with `ca:`.
#[tokio::test]
async fn a_bootstrapped_gateway_with_tls_self_signed_serves_https_and_validation_uses_it() {
    let site = tokio::task::spawn_blocking(crate::bootstrap::Site::new)
        .await
        .unwrap();
    let tls_port = free_port();
    let gw = site.port("gateway");
    let config = site.template().replace(
        &format!("    health_endpoint: http://127.0.0.1:{gw}/health\n    timeout: 30\n    dependencies: [manifest]"),
        &format!("    health_endpoint: https://127.0.0.1:{tls_port}/health\n    ca: \"${{CHORA_HOME}}/tls/ca.pem\"\n    timeout: 30\n    tls: self-signed\n    tls_port: {tls_port}\n    dependencies: [manifest]"),
    );
    assert_ne!(config, site.template());
    site.write_config(&config);
    let home = site.home();
    let out = site.command(&["bootstrap"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = home.join("tls/ca.pem");
    assert!(
        stdout.contains(&format!(
            "Access Gateway: https://127.0.0.1:{tls_port} (trust its CA: {})",
            ca.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("Gateway routing"), "{stdout}");
    assert_eq!(mode(&home.join("tls")), 0o700);
    assert_eq!(mode(&home.join("tls/ca-key.pem")), 0o600);
    let https = client(&[&ca]).build().unwrap();
    let r = https
        .post(format!(
            "https://127.0.0.1:{tls_port}/api/v1/analyzer/analyze"
        ))
        .json(&json!({"text": "over tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .post(format!("http://127.0.0.1:{gw}/api/v1/analyzer/analyze"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://127.0.0.1:{tls_port}/api/v1/analyzer/analyze").as_str()
    );
    drop(site);
}
