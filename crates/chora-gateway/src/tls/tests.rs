use super::*;
use std::os::unix::fs::PermissionsExt;

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn self_signed_makes_a_ca_once_and_reissues_only_for_new_names() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let first = selfsigned::ensure(&tls, &names(&["localhost", "127.0.0.1", "::1"])).unwrap();
    assert!(first.made_ca && first.issued);
    assert_eq!(mode(&tls), 0o700);
    assert_eq!(mode(&tls.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&first.key), 0o600);
    let ca = std::fs::read(&first.ca).unwrap();
    let cert = std::fs::read(&first.cert).unwrap();

    // The same names again: nothing new.
    let again = selfsigned::ensure(&tls, &names(&["LOCALHOST", "127.0.0.1"])).unwrap();
    assert!(!again.made_ca && !again.issued);
    assert_eq!(std::fs::read(&again.cert).unwrap(), cert);

    // A new name: a new certificate from the same CA.
    let more = selfsigned::ensure(&tls, &names(&["localhost", "gw.example"])).unwrap();
    assert!(!more.made_ca && more.issued);
    assert_eq!(std::fs::read(&more.ca).unwrap(), ca);
    let pair = load_pair(&more.cert, &more.key).unwrap();
    let facts = Facts::of(&pair.cert[0]).unwrap();
    assert!(facts.covers(&names(&["localhost", "gw.example"])));
    let ca_facts = Facts::of(&chora_api::tls::read_certificates(&more.ca).unwrap()[0]).unwrap();
    assert_eq!(facts.issuer, ca_facts.subject);
    let life = facts.not_after.duration_since(facts.not_before).unwrap();
    assert!(life <= Duration::from_secs(398 * 86_400), "{life:?}");

    // The CA certificate alone lost: made again from its key, same name.
    std::fs::remove_file(&more.ca).unwrap();
    let remade = selfsigned::ensure(&tls, &names(&["localhost", "gw.example"])).unwrap();
    assert!(!remade.made_ca && !remade.issued);
    let remade_facts =
        Facts::of(&chora_api::tls::read_certificates(&remade.ca).unwrap()[0]).unwrap();
    assert_eq!(remade_facts.subject, ca_facts.subject);
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_with_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let a = selfsigned::ensure(&dir.path().join("a"), &names(&["localhost"])).unwrap();
    let b = selfsigned::ensure(&dir.path().join("b"), &names(&["localhost"])).unwrap();
    let e = load_pair(&a.cert, &b.key).unwrap_err().to_string();
    assert!(
        e.contains("a/gateway.pem") && e.contains("b/gateway-key.pem"),
        "{e}"
    );
    let e = load_pair(&a.cert, &a.cert).unwrap_err().to_string();
    assert!(e.contains("private key"), "{e}");
}

#[tokio::test]
async fn replaced_files_are_served_to_new_handshakes_and_a_bad_pair_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let a = selfsigned::ensure(&dir.path().join("a"), &names(&["localhost"])).unwrap();
    let b = selfsigned::ensure(&dir.path().join("b"), &names(&["localhost"])).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&a.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    let tls = Tls::prepare(Source::Files {
        cert: cert.clone(),
        key: key.clone(),
    })
    .unwrap();
    let resolver = tls.resolver.clone();
    let served = || resolver.get().unwrap().cert[0].clone();
    let a_der = chora_api::tls::read_certificates(&a.cert).unwrap()[0].clone();
    let b_der = chora_api::tls::read_certificates(&b.cert).unwrap()[0].clone();
    assert_eq!(served(), a_der);
    let task = tls.keep_current();

    let wait_for = |want: rustls::pki_types::CertificateDer<'static>| {
        let served = &served;
        async move {
            let deadline = tokio::time::Instant::now() + RELOAD_EVERY * 10;
            while served() != want {
                assert!(tokio::time::Instant::now() < deadline, "never reloaded");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The certificate renamed over first, its key later: the half-swapped
    // pair is refused and `a` stays served until the key follows.
    let tmp = dir.path().join("new.pem");
    std::fs::copy(&b.cert, &tmp).unwrap();
    std::fs::rename(&tmp, &cert).unwrap();
    tokio::time::sleep(RELOAD_EVERY * 2).await;
    assert_eq!(served(), a_der);
    std::fs::copy(&b.key, &tmp).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    wait_for(b_der).await;
    task.abort();
}

#[test]
fn facts_tell_the_renewal_moment() {
    let dir = tempfile::tempdir().unwrap();
    let made = selfsigned::ensure(dir.path(), &names(&["localhost"])).unwrap();
    let der = chora_api::tls::read_certificates(&made.cert).unwrap();
    let f = Facts::of(&der[0]).unwrap();
    let at = f.renew_at(2.0 / 3.0);
    let life = f.not_after.duration_since(f.not_before).unwrap();
    let into = at.duration_since(f.not_before).unwrap();
    assert!((into.as_secs_f64() / life.as_secs_f64() - 2.0 / 3.0).abs() < 1e-6);
}
