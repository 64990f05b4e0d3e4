//! The operator's day two on one machine (DESIGN.md §14), with the real
//! binary in temp homes on free ports: a changed config applies while
//! clients of the gateway keep being served, a broken change gives way to
//! the old version, and the operator commands work on the system of
//! `CHORA_HOME`.

use crate::anyprogram::{admin_token, manifest, until_up};
use crate::bootstrap::{SERVICES, Site};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A client of the gateway that keeps asking the analyzer until stopped;
/// counts answers and failures (with the first few failures' words).
pub struct Client {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Client {
    pub fn start(gateway: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let http = reqwest::Client::new();
                let url = format!("http://127.0.0.1:{gateway}/api/v1/analyzer/analyze");
                let mut failed = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    let r = http
                        .post(&url)
                        .json(&serde_json::json!({"text": "one two three"}))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed.push(format!("HTTP {}", r.status())),
                        Err(e) => failed.push(chora_api::root_cause(&e)),
                    }
                }
                failed
            })
        });
        Client { stop, ok, handle }
    }

    /// Waits until it has had `n` answers (so it runs through what follows).
    pub fn warm(&self, n: usize) {
        let t = std::time::Instant::now();
        while self.ok.load(Ordering::Relaxed) < n {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the client never got {n} answers"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.handle.join().unwrap();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

fn pids(site: &Site) -> Vec<(String, u32)> {
    SERVICES
        .iter()
        .map(|s| (s.to_string(), site.pid_of(s)))
        .collect()
}

/// The analyzer's entry of the dev template with `extra` lines added.
fn analyzer_with(site: &Site, extra: &str) -> String {
    let port = site.port("analyzer");
    site.template().replace(
        &format!("    port: {port}\n    timeout: 30\n    dependencies: [manifest, orchestrator]\n\n  executor:"),
        &format!("    port: {port}\n    timeout: 30\n{extra}    dependencies: [manifest, orchestrator]\n\n  executor:"),
    )
}

#[test]
fn a_changed_config_replaces_only_what_changed_while_gateway_clients_keep_being_served() {
    let site = Site::new();
    site.ok(&["bootstrap"]);
    let before = pids(&site);

    // One service's env changes: the dry run says exactly that and changes nothing.
    site.write_config(&analyzer_with(&site, "    env: {GREETING: hello}\n"));
    let plan = site.ok(&["bootstrap", "--dry-run"]);
    assert!(plan.contains("(1; nothing is changed now)"), "{plan}");
    assert!(
        plan.contains("~ analyzer: env GREETING added (start-first"),
        "{plan}"
    );
    assert_eq!(pids(&site), before, "a dry run changed what runs");

    // Applied while a client goes through the gateway: not one request fails.
    let client = Client::start(site.port("gateway"));
    client.warm(20);
    let out = site.ok(&["bootstrap"]);
    let (served, failed) = client.finish();
    assert!(out.contains("analyzer replaced (start-first)"), "{out}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        served + failed.len()
    );
    let after = pids(&site);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        if name == "analyzer" {
            assert_ne!(a, b, "the analyzer was not replaced");
        } else {
            assert_eq!(a, b, "{name} was restarted though it did not change");
        }
    }
    site.assert_one_process_each();
    // The new spec is what runs now: nothing left to do.
    assert!(site.ok(&["bootstrap"]).contains("nothing to do"));

    // A service added is deployed and joins discovery; removed, it leaves.
    let port = chora_testkit::free_port();
    let web = format!(
        "\n  web:\n    phase: 3\n    deploy_via: orchestrator\n    command: [python3, -m, http.server, \"{port}\", --bind, 127.0.0.1]\n    port: {port}\n    health_endpoint: tcp://127.0.0.1:{port}\n"
    );
    let with_web = analyzer_with(&site, "    env: {GREETING: hello}\n")
        .replace("\ntimeouts:", &format!("{web}\ntimeouts:"));
    site.write_config(&with_web);
    assert!(
        site.ok(&["bootstrap", "--dry-run"])
            .contains("+ web: added (phase 3)")
    );
    let out = site.ok(&["bootstrap"]);
    assert!(out.contains("web added"), "{out}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(until_up(&manifest(&site), "web", |i| i.len() == 1));
    site.write_config(&analyzer_with(&site, "    env: {GREETING: hello}\n"));
    let out = site.ok(&["bootstrap"]);
    assert!(out.contains("web removed"), "{out}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "web still listens"
    );
    let left = rt
        .block_on(manifest(&site).list(&Default::default()))
        .unwrap();
    assert!(
        left.iter().all(|i| i.name != "web"),
        "web still registered: {left:?}"
    );
    assert_eq!(pids(&site)[..3], after[..3], "phases 1-2 were touched");
}

#[test]
fn a_new_version_that_fails_its_health_check_gives_way_to_the_old_one_and_exits_4() {
    let site = Site::new();
    site.ok(&["bootstrap"]);
    let analyzer = site.pid_of("analyzer");
    let gateway = site.pid_of("gateway");
    let port = site.port("analyzer");

    // Phase 3: the new version never answers its health check.
    let broken = analyzer_with(
        &site,
        &format!(
            "    env: {{GREETING: broken}}\n    health_endpoint: http://127.0.0.1:{port}/nope\n"
        ),
    )
    .replace(
        &format!("    port: {port}\n    timeout: 30\n"),
        &format!("    port: {port}\n    timeout: 2\n"),
    );
    site.write_config(&broken);
    let (code, out, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 4, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("CHANGE_ROLLED_BACK") && err.contains("`analyzer`"),
        "{err}"
    );
    assert!(err.contains("the old one keeps running"), "{err}");
    assert_eq!(
        site.pid_of("analyzer"),
        analyzer,
        "the old analyzer did not keep running"
    );
    assert_eq!(
        site.run(&["bootstrap", "status"]).0,
        0,
        "the system is not healthy"
    );
    // Not applied: it is still a change to make.
    assert!(site.ok(&["bootstrap", "--dry-run"]).contains("~ analyzer"));

    // Phase 2: a gateway that cannot start; the old one comes back.
    let gw = site.port("gateway");
    let bad_gateway = site.template().replace(
        &format!("command: [chora, gateway, serve, --listen, \"127.0.0.1:{gw}\","),
        &format!("command: [chora, gateway, serve, --no-such-flag, --listen, \"127.0.0.1:{gw}\","),
    );
    assert_ne!(bad_gateway, site.template());
    site.write_config(&bad_gateway);
    let (code, out, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 4, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("`gateway`") && err.contains("the old version runs again"),
        "{err}"
    );
    assert_ne!(
        site.pid_of("gateway"),
        gateway,
        "stop-first: a new process of the old spec"
    );
    assert_eq!(
        site.run(&["bootstrap", "status"]).0,
        0,
        "the system is not healthy"
    );
    site.assert_one_process_each();
}

#[test]
fn operator_commands_act_on_the_system_of_chora_home() {
    let site = Site::new();
    site.ok(&["bootstrap"]);

    // ps: every unit, running, with its pid.
    let ps: Vec<serde_json::Value> =
        serde_json::from_str(&site.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(ps.len(), 8, "{ps:?}");
    for row in &ps {
        assert_eq!(row["state"], "running", "{row}");
        let pid = site.pid_of(row["name"].as_str().unwrap());
        assert_eq!(row["place"], format!("pid {pid}"), "{row}");
    }

    // logs: the last lines; -f follows a restart's new output.
    let logs = site.ok(&["logs", "analyzer", "--tail", "50"]);
    assert!(logs.contains("chora analyzer listening on"), "{logs}");
    let mut follow = site.spawn(&["logs", "gateway", "-f", "--tail", "0"]);
    let old = site.pid_of("gateway");
    let out = site.ok(&["restart", "gateway"]);
    assert!(out.contains("gateway: running, pid"), "{out}");
    assert_ne!(site.pid_of("gateway"), old);
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|l: &String| l.contains("chora gateway listening on"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("`chora logs -f` showed no new output: {seen:?}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // stop and start: status sees it; the orchestrator's services too.
    site.ok(&["stop", "gateway"]);
    assert!(site.listeners(site.port("gateway")).is_empty());
    assert_eq!(site.run(&["bootstrap", "status"]).0, 1);
    site.ok(&["start", "gateway"]);
    site.ok(&["stop", "analyzer"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let row = rt.block_on(crate::anyprogram::deployment(&site, "analyzer"));
    assert_eq!(row["state"], "stopped", "{row}");
    site.ok(&["start", "analyzer"]);
    rt.block_on(until_up(&manifest(&site), "analyzer", |i| i.len() == 1));

    // token: an admin JWT the orchestrator accepts; a service's own key.
    let token = site.ok(&["token"]).trim().to_owned();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{}/v1/services",
                site.port("orchestrator")
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let creds = chora_api::auth::Credentials::load(&site.home().join("credentials.json")).unwrap();
    assert_eq!(
        site.ok(&["token", "--service", "analyzer"]).trim(),
        creds.api_key("analyzer").unwrap()
    );
    assert_ne!(token, admin_token(&site), "a fresh token each time");

    // The Manifest's URL comes from the home: this site's port, not 8500.
    let list = site.ok(&["manifest", "list", "--format", "json"]);
    assert!(list.contains("\"analyzer\""), "{list}");

    // Completions, and usage errors that do not collide with `status`'s 2.
    let bash = site.ok(&["completions", "bash"]);
    assert!(bash.contains("chora") && bash.contains("logs"), "{bash}");
    assert_eq!(site.run(&["bootstrap", "status", "--no-such-flag"]).0, 64);
    assert_eq!(site.run(&["logs", "no-such-service"]).0, 1);
}

#[test]
fn switching_environment_names_the_command_and_it_is_refused_while_the_system_runs() {
    let site = Site::new();
    site.ok(&["bootstrap"]);
    let (code, _, err) = site.run(&["bootstrap", "--environment", "staging"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("chora bootstrap config init --environment staging --force"),
        "{err}"
    );
    let (code, _, err) = site.run(&[
        "bootstrap",
        "config",
        "init",
        "--environment",
        "staging",
        "--force",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("runs (manifest"), "{err}");

    site.ok(&["bootstrap", "reset", "--force", "--keep-credentials"]);
    let (code, _, err) = site.run(&["bootstrap", "config", "init", "--environment", "staging"]);
    assert_eq!(code, 1, "an existing config needs --force: {err}");
    let out = site.ok(&[
        "bootstrap",
        "config",
        "init",
        "--environment",
        "staging",
        "--force",
    ]);
    assert!(out.contains("Kept the old config"), "{out}");
    let bak = std::fs::read_to_string(site.home().join("bootstrap-config.yml.bak")).unwrap();
    assert_eq!(bak, site.template(), "the old config was not kept");
    let now = std::fs::read_to_string(site.home().join("bootstrap-config.yml")).unwrap();
    assert!(now.contains("environment: staging"), "{now}");
}
