//! `chora bootstrap --environment staging` against the real Docker engine:
//! every service a container (DESIGN.md §9). Each test has its own project
//! (container names, network, volumes), its own free ports and its own image
//! tag, and removes every container, network, volume and image tag it made,
//! even when it fails.

use crate::anyprogram::{manifest, until_up};
use crate::bootstrap::{DEFAULT_PORTS, SERVICES, Site};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

/// A staging project: a [`Site`] (temp dir, free ports, the `chora` runner)
/// with its own project name and image.
pub struct Staging {
    pub site: Site,
    pub project: String,
    pub image: String,
    /// Image tags the test made itself.
    pub extra_images: Vec<String>,
    /// Released after `Drop` has removed everything (fields drop last).
    _one_at_a_time: tokio::sync::OwnedMutexGuard<()>,
}

impl std::ops::Deref for Staging {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.site
    }
}

impl Staging {
    /// A project whose chora image is built now under a tag of its own.
    /// Waits for any other staging or prod system of this test run to be gone
    /// first (call it from a blocking context: a sync test or `spawn_blocking`).
    pub fn new() -> Staging {
        Staging::new_in(crate::one_system_turn())
    }

    /// [`Staging::new`] in a turn the caller already holds.
    pub fn new_in(turn: tokio::sync::OwnedMutexGuard<()>) -> Staging {
        let project = format!("chora-t{}", chora_api::random_hex(4));
        let s = Staging {
            site: Site::bare(),
            image: format!("{project}:test"),
            project,
            extra_images: Vec::new(),
            _one_at_a_time: turn,
        };
        let (code, out, err) = s.run(&["image", "build", "--tag", &s.image]);
        assert_eq!(code, 0, "image build failed\n{out}\n{err}");
        s.write_config(&s.template());
        s
    }

    /// The staging template on this project's ports, name and image, without
    /// its Prometheus (staging_day_two.rs has a test of its own for that).
    pub fn template(&self) -> String {
        self.template_with_monitoring()
            .replace("  prometheus: true\n", "  prometheus: false\n")
    }

    /// The staging template as it is, Prometheus included.
    pub fn template_with_monitoring(&self) -> String {
        let mut t =
            chora_bootstrap::template::template(chora_bootstrap::config::Environment::Staging)
                .unwrap()
                .replace("project: chora", &format!("project: {}", self.project))
                .replace("chora:${CHORA_VERSION}", &self.image);
        for (d, p) in DEFAULT_PORTS.iter().zip(&self.ports) {
            t = t.replace(&d.to_string(), &p.to_string());
        }
        t
    }

    /// The template with `extra` added to its services.
    pub fn with_services(&self, extra: &str) -> String {
        self.template()
            .replace("\ntimeouts:", &format!("{extra}\ntimeouts:"))
    }

    /// This home's containers: service label → ids (running or not).
    pub fn containers(&self) -> BTreeMap<String, Vec<String>> {
        let home = self.home().display().to_string();
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=io.chora.home={home}"),
            "--format",
            "{{.ID}} {{.Label \"io.chora.service\"}}",
        ]);
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text(&out.stdout).lines() {
            if let Some((id, svc)) = line.split_once(' ') {
                m.entry(svc.to_owned()).or_default().push(id.to_owned());
            }
        }
        m
    }

    #[track_caller]
    pub fn assert_one_container_each(&self) {
        let c = self.containers();
        for s in SERVICES {
            assert_eq!(c.get(s).map(Vec::len), Some(1), "{s}: {c:?}");
        }
        assert_eq!(c.len(), 8, "{c:?}");
    }

    pub fn networks(&self) -> Vec<String> {
        let home = self.home().display().to_string();
        text(
            &docker(&[
                "network",
                "ls",
                "--filter",
                &format!("label=io.chora.home={home}"),
                "--format",
                "{{.Name}}",
            ])
            .stdout,
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    pub fn admin_token(&self) -> String {
        let c = chora_api::auth::Credentials::load(&self.home().join("credentials.json")).unwrap();
        chora_api::auth::mint_admin_token(c.jwt_secret().unwrap(), "test", Duration::from_secs(600))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for s in ["manifest", "orchestrator", "gateway"] {
                let out = docker(&["logs", "--tail", "30", &format!("{}-{s}", self.project)]);
                // A fleet's units run on its hosts, not here: nothing to show.
                if !out.status.success() {
                    continue;
                }
                eprintln!(
                    "----- {s} -----\n{}\n{}",
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
        }
        let _ = self.run(&["bootstrap", "reset", "--force"]);
        // Whatever reset could not remove (and what the test made itself).
        let home = self.home().display().to_string();
        let ids = text(
            &docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.chora.home={home}"),
            ])
            .stdout,
        );
        let named =
            text(&docker(&["ps", "-aq", "--filter", &format!("name=^{}-", self.project)]).stdout);
        for id in ids.lines().chain(named.lines()) {
            let _ = docker(&["rm", "-f", id]);
        }
        let _ = docker(&["network", "rm", &self.project]);
        let vols = text(
            &docker(&[
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("name={}-", self.project),
            ])
            .stdout,
        );
        for v in vols.lines() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        for i in std::iter::once(&self.image).chain(&self.extra_images) {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

fn container_id(s: &Staging, service: &str) -> String {
    let ids = s.containers().remove(service).unwrap_or_default();
    assert_eq!(ids.len(), 1, "{service}: {ids:?}");
    ids[0].clone()
}

#[tokio::test]
async fn staging_from_nothing_survives_kills_adopts_and_resets_exactly_its_own() {
    if !chora_testkit::docker_available(
        "staging::staging_from_nothing_survives_kills_adopts_and_resets_exactly_its_own",
    ) {
        return;
    }
    let s = std::sync::Arc::new(tokio::task::spawn_blocking(Staging::new).await.unwrap());
    let s2 = s.clone();
    let out =
        tokio::task::spawn_blocking(move || s2.ok(&["bootstrap", "--environment", "staging"]))
            .await
            .unwrap();
    assert!(out.contains("Docker") && out.contains("detected"), "{out}");
    assert!(out.contains("✓ Health dashboard"), "{out}");
    s.assert_one_container_each();
    assert_eq!(s.networks(), std::slice::from_ref(&s.project));
    let (code, json, _) = s.run(&["bootstrap", "status", "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["overall_status"], "healthy");
    let ids = s.containers();
    for svc in v["services"].as_array().unwrap() {
        assert_eq!(svc["runtime"], "docker", "{svc}");
        let id = svc["container"].as_str().unwrap_or_default();
        let name = svc["name"].as_str().unwrap();
        assert!(
            !id.is_empty() && ids[name].iter().any(|short| id.starts_with(short.as_str())),
            "{svc} vs {ids:?}"
        );
    }
    assert!(s.state()["services"]["manifest"]["container"].is_string());
    // No secret in any label or command line of this home's containers.
    let creds = std::fs::read_to_string(s.home().join("credentials.json")).unwrap();
    let secret: Value = serde_json::from_str(&creds).unwrap();
    for id in s.containers().values().flatten() {
        let inspect = text(
            &docker(&[
                "inspect",
                "--format",
                "{{json .Config.Labels}} {{json .Config.Cmd}} {{json .Args}}",
                id,
            ])
            .stdout,
        );
        for (_, v) in secret.as_object().unwrap() {
            assert!(
                !inspect.contains(v.as_str().unwrap()),
                "a secret in {id}: {inspect}"
            );
        }
    }

    // A killed capability container is restarted and back in discovery.
    let m = manifest(&s);
    let (before, _) = until_up(&m, "storage", |l| l.len() == 1).await;
    let old = container_id(&s, "storage");
    assert!(docker(&["kill", &old]).status.success());
    let (after, _) = until_up(&m, "storage", |l| l.len() == 1 && l[0].id != before[0].id).await;
    assert_eq!(after.len(), 1);
    assert_ne!(container_id(&s, "storage"), old, "a new container");

    // kill -9 of the orchestrator: the next bootstrap restarts it, and it adopts
    // the running capability containers (same ids, no duplicates).
    let caps: Vec<(String, String)> = ["analyzer", "executor", "storage", "monitor", "logger"]
        .iter()
        .map(|c| (c.to_string(), container_id(&s, c)))
        .collect();
    let orch = container_id(&s, "orchestrator");
    assert!(
        docker(&["kill", "--signal", "KILL", &orch])
            .status
            .success()
    );
    let s2 = s.clone();
    let out = tokio::task::spawn_blocking(move || s2.ok(&["bootstrap"]))
        .await
        .unwrap();
    assert!(
        out.contains("orchestrator was not running: restarted"),
        "{out}"
    );
    s.assert_one_container_each();
    for (c, id) in &caps {
        assert_eq!(&container_id(&s, c), id, "{c} was replaced, not adopted");
    }
    let rows: Vec<Value> = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/v1/services",
            s.port("orchestrator")
        ))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["runtime"] == "docker" && r["state"] == "running"),
        "{rows:?}"
    );
    // The adopted ones are supervised: a kill is still restarted.
    let old = container_id(&s, "analyzer");
    assert!(docker(&["kill", &old]).status.success());
    until_up(&m, "analyzer", |l| l.len() == 1 && l[0].id != old).await;

    // Rollback to phase 2 removes the capability containers; the next run
    // deploys them again.
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        s2.ok(&["bootstrap", "rollback", "--to-phase", "2", "--force"])
    })
    .await
    .unwrap();
    let left: Vec<String> = s.containers().into_keys().collect();
    assert_eq!(
        left,
        ["gateway", "manifest", "orchestrator"],
        "after rollback"
    );
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.ok(&["bootstrap"]))
        .await
        .unwrap();
    s.assert_one_container_each();

    // Reset removes exactly this home's containers and network, keeps volumes,
    // and leaves a container the test started itself running.
    // Named after the project, so the fixture removes it even if the test fails.
    let mine = format!("{}-bystander", s.project);
    let run = docker(&[
        "run",
        "-d",
        "--name",
        &mine,
        "--label",
        "io.chora.project=someone-else",
        "--entrypoint",
        "/usr/local/bin/chora",
        &s.image,
        "manifest",
        "serve",
        "--no-auth",
        "--listen",
        "127.0.0.1:0",
        "--storage",
        "sqlite:/tmp/m.db",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let s2 = s.clone();
    let out = tokio::task::spawn_blocking(move || s2.ok(&["bootstrap", "reset", "--force"]))
        .await
        .unwrap();
    assert!(s.containers().is_empty(), "{out}\n{:?}", s.containers());
    assert!(s.networks().is_empty(), "{out}");
    let running = text(&docker(&["inspect", "--format", "{{.State.Running}}", &mine]).stdout);
    assert_eq!(
        running, "true",
        "reset touched a container that is not its own"
    );
    let _ = docker(&["rm", "-f", &mine]);
    let vols = text(
        &docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name={}-", s.project),
        ])
        .stdout,
    );
    assert!(
        vols.contains(&format!("{}-manifest-data", s.project)),
        "volume kept: {vols}"
    );
}

#[test]
fn sigkill_of_a_staging_bootstrap_at_several_moments_recovers_with_one_container_each() {
    if !chora_testkit::docker_available(
        "staging::sigkill_of_a_staging_bootstrap_at_several_moments_recovers_with_one_container_each",
    ) {
        return;
    }
    let s = Staging::new();
    let t = Instant::now();
    s.ok(&["bootstrap", "--skip-validation"]);
    let full = t.elapsed();
    for i in 1..=4u32 {
        s.ok(&["bootstrap", "reset", "--force", "--keep-credentials"]);
        let mut child = s.spawn(&["bootstrap", "--skip-validation"]);
        // The kill moment (not a synchronisation): i/5 of a full run.
        std::thread::sleep(full * i / 5);
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        let (code, out, err) = s.run(&["bootstrap", "--skip-validation"]);
        assert_eq!(
            code,
            0,
            "kill #{i} at {:?}: the next run failed\n{out}\n{err}",
            full * i / 5
        );
        s.assert_one_container_each();
        assert_eq!(s.state()["status"], "completed", "kill #{i}");
    }
}

#[tokio::test]
async fn a_busybox_container_that_knows_nothing_of_chora_joins_discovery_and_the_gateway() {
    const TEST: &str =
        "staging::a_busybox_container_that_knows_nothing_of_chora_joins_discovery_and_the_gateway";
    if !chora_testkit::docker_available(TEST) {
        return;
    }
    let Some(busybox) = chora_testkit::busybox(TEST) else {
        return;
    };
    let busybox = busybox.to_str().unwrap();
    let mut s = tokio::task::spawn_blocking(Staging::new).await.unwrap();
    let web_image = format!("{}-busybox:test", s.project);
    s.extra_images.push(web_image.clone());
    let (code, out, err) = s.run(&["image", "build", "--binary", busybox, "--tag", &web_image]);
    assert_eq!(code, 0, "{out}\n{err}");
    let www = s.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from busybox").unwrap();
    let port = chora_testkit::free_port();
    s.write_config(&s.with_services(&format!(
        r#"
  web:
    phase: 3
    deploy_via: orchestrator
    image: "{web_image}"
    command: [httpd, -f, -p, "{port}", -h, /www]
    port: {port}
    volumes: ["{www}:/www:ro"]
    health_endpoint: tcp://127.0.0.1:{port}
    timeout: 30
    dependencies: [orchestrator]
"#,
        www = www.display()
    )));
    let s = std::sync::Arc::new(s);
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.ok(&["bootstrap"]))
        .await
        .unwrap();
    let m = manifest(&s);
    let (up, _) = until_up(&m, "web", |l| l.len() == 1).await;
    assert_eq!(up[0].interfaces["REST"], format!("http://web:{port}"));
    let gw = format!("http://127.0.0.1:{}", s.port("gateway"));
    let r = reqwest::get(format!("{gw}/api/v1/web/index.html"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello from busybox");

    // Its death takes it out of discovery within 1 s; it comes back restarted.
    let old = container_id(&s, "web");
    assert!(docker(&["kill", &old]).status.success());
    let (_, gone) = until_up(&m, "web", |l| l.iter().all(|i| i.id != up[0].id)).await;
    assert!(
        gone < Duration::from_secs(1),
        "left discovery after {gone:?}"
    );
    until_up(&m, "web", |l| l.len() == 1).await;
    // The gateway follows the Manifest with blocking reads: routable again
    // shortly after the registration.
    let t = Instant::now();
    loop {
        let r = reqwest::get(format!("{gw}/api/v1/web/index.html"))
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "gateway: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_container_input_is_named_and_nothing_is_left_half_started() {
    if !chora_testkit::docker_available(
        "staging::bad_container_input_is_named_and_nothing_is_left_half_started",
    ) {
        return;
    }
    let s = Staging::new();
    // A malformed volume: exit 7, line and field named.
    s.write_config(&s.template().replace(
        "volumes: [\"manifest-data:/data\"]",
        "volumes: [\"manifest-data\"]",
    ));
    let (code, _, err) = s.run(&["bootstrap"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("services.manifest.volumes") && err.contains(":"),
        "{err}"
    );

    // An image that does not exist and cannot be built: phase 1 fails (exit 2),
    // says so, and leaves no container behind.
    s.write_config(
        &s.template()
            .replacen(&s.image, "chora-no-such-image:nope", 1),
    );
    let (code, _, err) = s.run(&["bootstrap"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("chora-no-such-image:nope") && err.contains("does not exist"),
        "{err}"
    );
    assert!(s.containers().is_empty(), "{:?}", s.containers());
    s.ok(&["bootstrap", "reset", "--force"]);

    // A taken port: phase 0 names it (exit 1).
    s.write_config(&s.template());
    let holder = std::net::TcpListener::bind(("127.0.0.1", s.port("gateway"))).unwrap();
    let (code, _, err) = s.run(&["bootstrap"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&s.port("gateway").to_string()), "{err}");
    drop(holder);
    assert!(s.containers().is_empty(), "{:?}", s.containers());

    // Docker down (an engine address nobody answers at): exit 1, clearly.
    let out = s
        .command(&["bootstrap"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Docker") && err.to_lowercase().contains("not"),
        "{err}"
    );
}

#[tokio::test]
async fn a_docker_compose_service_is_started_registered_and_brought_down() {
    if !chora_testkit::compose_available(
        "staging::a_docker_compose_service_is_started_registered_and_brought_down",
    ) {
        return;
    }
    let s = tokio::task::spawn_blocking(Staging::new).await.unwrap();
    let port = chora_testkit::free_port();
    let file = s.dir.path().join("cache.yml");
    std::fs::write(
        &file,
        format!(
            r#"version: "3"
services:
  cache:
    image: "{image}"
    command: [manifest, serve, --no-auth, --listen, "0.0.0.0:{port}", --storage, "sqlite:/tmp/c.db"]
    ports: ["127.0.0.1:{port}:{port}"]
"#,
            image = s.image
        ),
    )
    .unwrap();
    s.write_config(&s.with_services(&format!(
        r#"
  cache:
    phase: 2
    docker_compose: "{file}"
    port: {port}
    health_endpoint: http://127.0.0.1:{port}/health
    timeout: 30
    dependencies: [manifest]
"#,
        file = file.display()
    )));
    let s = std::sync::Arc::new(s);
    let s2 = s.clone();
    let out = tokio::task::spawn_blocking(move || s2.ok(&["bootstrap", "--skip-validation"]))
        .await
        .unwrap();
    assert!(out.contains("cache started (container"), "{out}");
    let compose_ps = |s: &Staging| {
        text(
            &docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={}", s.project),
            ])
            .stdout,
        )
    };
    assert_eq!(compose_ps(&s).lines().count(), 1);
    // Registered on its behalf while it runs.
    let (up, _) = until_up(&manifest(&s), "cache", |l| l.len() == 1).await;
    assert_eq!(up[0].interfaces["REST"], format!("http://127.0.0.1:{port}"));
    // A second run finds it running; reset brings it down (compose down).
    let s2 = s.clone();
    let out = tokio::task::spawn_blocking(move || s2.ok(&["bootstrap", "--skip-validation"]))
        .await
        .unwrap();
    assert!(
        out.contains("nothing to do") || out.contains("already running"),
        "{out}"
    );
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.ok(&["bootstrap", "reset", "--force"]))
        .await
        .unwrap();
    assert_eq!(compose_ps(&s), "", "compose's container is gone");
    let _ = docker(&["network", "rm", &format!("{}_default", s.project)]);
}
