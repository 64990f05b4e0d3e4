//! Any program is a service (DESIGN.md §9): a program that knows nothing of
//! chora, deployed by the bootstrap through the orchestrator, is registered on
//! its behalf, routed through the gateway, leaves discovery when it dies and
//! comes back when it is restarted.

use crate::bootstrap::Site;
use chora_api::manifest::{ListFilter, Status};
use std::time::{Duration, Instant};

/// `services:` entries added to a site's dev template.
pub fn with_services(site: &Site, extra: &str) -> String {
    site.template()
        .replace("\ntimeouts:", &format!("{extra}\ntimeouts:"))
}

pub fn admin_token(site: &Site) -> String {
    let c = chora_api::auth::Credentials::load(&site.home().join("credentials.json")).unwrap();
    chora_api::auth::mint_admin_token(c.jwt_secret().unwrap(), "test", Duration::from_secs(600))
}

/// The orchestrator's row for `name`.
pub async fn deployment(site: &Site, name: &str) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/v1/services",
            site.port("orchestrator")
        ))
        .bearer_auth(admin_token(site))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    rows.into_iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not deployed"))
}

pub fn manifest(site: &Site) -> chora_api::ManifestClient {
    chora_api::ManifestClient::new([format!("http://127.0.0.1:{}", site.port("manifest"))]).unwrap()
}

/// Follows the Manifest with blocking reads until `pred` holds for the `up`
/// instances of `name`; returns them and how long it took. A Manifest that does
/// not answer (restarting) is asked again.
pub async fn until_up(
    client: &chora_api::ManifestClient,
    name: &str,
    pred: impl Fn(&[chora_api::manifest::Instance]) -> bool,
) -> (Vec<chora_api::manifest::Instance>, Duration) {
    let filter = ListFilter {
        name: Some(name.into()),
        status: Some(Status::Up),
        ..Default::default()
    };
    let t = Instant::now();
    let mut index = None;
    loop {
        match client
            .watch(&filter, index.map(|i| (i, Duration::from_secs(5))))
            .await
        {
            Ok((list, i)) => {
                if pred(&list) {
                    return (list, t.elapsed());
                }
                index = Some(i);
            }
            Err(_) => {
                index = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{name}: condition not reached in 60 s"
        );
    }
}

#[tokio::test]
async fn a_plain_program_is_registered_on_its_behalf_routed_and_followed() {
    if !chora_testkit::python3_available(
        "anyprogram::a_plain_program_is_registered_on_its_behalf_routed_and_followed",
    ) {
        return;
    }
    let site = Site::new();
    let www = site.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from python").unwrap();
    let port = chora_testkit::free_port();
    site.write_config(&with_services(
        &site,
        &format!(
            r#"
  web:
    phase: 3
    deploy_via: orchestrator
    command: [python3, -m, http.server, "{port}", --bind, 127.0.0.1, --directory, "{www}"]
    port: {port}
    health_endpoint: http://127.0.0.1:{port}/
    timeout: 30
    dependencies: [orchestrator]
"#,
            www = www.display()
        ),
    ));
    let site = std::sync::Arc::new(site);
    let s = site.clone();
    let out = tokio::task::spawn_blocking(move || s.ok(&["bootstrap"]))
        .await
        .unwrap();
    assert!(out.contains("web"), "{out}");

    // Registered on its behalf, under its own URL.
    let (up, _) = until_up(&manifest(&site), "web", |l| !l.is_empty()).await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].interfaces["REST"], format!("http://127.0.0.1:{port}"));

    // Routed through the gateway.
    let gw = format!("http://127.0.0.1:{}", site.port("gateway"));
    let r = reqwest::get(format!("{gw}/api/v1/web/hello.txt"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from python");

    // Killed: out of discovery within 1 s, then back once restarted.
    let row = deployment(&site, "web").await;
    let pid = row["pid"].as_u64().expect("a pid") as i32;
    let old_id = up[0].id.clone();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (_, gone_in) = until_up(&manifest(&site), "web", |l| {
        l.iter().all(|i| i.id != old_id)
    })
    .await;
    assert!(
        gone_in < Duration::from_secs(1),
        "left discovery only after {gone_in:?}"
    );
    let (back, _) = until_up(&manifest(&site), "web", |l| !l.is_empty()).await;
    assert_ne!(back[0].id, old_id, "a new instance after the restart");
    let row = deployment(&site, "web").await;
    assert_eq!(row["restarts"], 1, "{row}");
    let r = reqwest::get(format!("{gw}/api/v1/web/hello.txt"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Validation agrees with discovery.
    let s = site.clone();
    tokio::task::spawn_blocking(move || s.ok(&["bootstrap", "validate"]))
        .await
        .unwrap();
}

#[test]
fn a_service_whose_health_check_never_passes_fails_phase_3_and_is_named() {
    let site = Site::new();
    let port = chora_testkit::free_port();
    site.write_config(&with_services(
        &site,
        &format!(
            r#"
  mute:
    phase: 3
    deploy_via: orchestrator
    command: [sleep, "60"]
    port: {port}
    health_endpoint: tcp://127.0.0.1:{port}
    timeout: 2
    dependencies: [orchestrator]
"#
        ),
    ));
    let (code, out, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 4, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("`mute`"), "{err}");
    let state = site.state();
    assert_eq!(state["status"], "failed");
    assert!(
        state["last_error"].as_str().unwrap().contains("mute"),
        "{state}"
    );
}

#[tokio::test]
async fn a_phase_2_program_is_registered_by_the_bootstrap_while_it_runs() {
    if !chora_testkit::python3_available(
        "anyprogram::a_phase_2_program_is_registered_by_the_bootstrap_while_it_runs",
    ) {
        return;
    }
    let site = Site::new();
    let port = chora_testkit::free_port();
    site.write_config(&with_services(
        &site,
        &format!(
            r#"
  files:
    phase: 2
    command: [python3, -m, http.server, "{port}", --bind, 127.0.0.1]
    port: {port}
    health_endpoint: tcp://127.0.0.1:{port}
    timeout: 30
    dependencies: [manifest]
"#
        ),
    ));
    let site = std::sync::Arc::new(site);
    let s = site.clone();
    tokio::task::spawn_blocking(move || s.ok(&["bootstrap"]))
        .await
        .unwrap();
    let (up, _) = until_up(&manifest(&site), "files", |l| l.len() == 1).await;
    assert_eq!(up[0].interfaces["REST"], format!("http://127.0.0.1:{port}"));
    // The program dies: the bootstrap is not running, yet it leaves discovery
    // (its registrar saw it go) and the next bootstrap brings both back.
    let pid = site.state()["services"]["files"]["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (_, gone_in) = until_up(&manifest(&site), "files", |l| l.is_empty()).await;
    assert!(gone_in < Duration::from_secs(2), "left after {gone_in:?}");
    let s = site.clone();
    let out = tokio::task::spawn_blocking(move || s.ok(&["bootstrap"]))
        .await
        .unwrap();
    assert!(out.contains("files was not running: restarted"), "{out}");
    until_up(&manifest(&site), "files", |l| l.len() == 1).await;
    // Reset stops the program and its registrar: nothing of this home is left.
    let s = site.clone();
    tokio::task::spawn_blocking(move || s.ok(&["bootstrap", "reset", "--force"]))
        .await
        .unwrap();
    let home = site.home().display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("keep-registered") && c.contains(&format!("{port}")))
        .collect();
    assert!(left.is_empty(), "{home}: {left:?}");
}
