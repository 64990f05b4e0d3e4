//! `chora bootstrap` end to end: the real binary in a temp dir, on free ports,
//! the seed's section 9.2 scenarios that apply on this machine.

use crate::chora_bin;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The eight services of the templates, in the order of their default ports.
pub const SERVICES: [&str; 8] = [
    "manifest",
    "orchestrator",
    "gateway",
    "analyzer",
    "executor",
    "storage",
    "monitor",
    "logger",
];

/// The default ports of the dev template, in order.
pub const DEFAULT_PORTS: [u16; 8] = [8500, 8600, 8700, 8800, 8900, 9000, 9100, 9200];

/// A project directory with its own `.chora` home and its own free ports. On
/// drop it runs `chora bootstrap reset --force`, so no test leaves a process.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
}

impl Site {
    pub fn new() -> Site {
        let s = Site::bare();
        s.write_config(&s.template());
        s
    }

    /// A site with its free ports and no config yet.
    pub fn bare() -> Site {
        let dir = chora_testkit::temp_dir();
        let ports = chora_testkit::free_ports(8);
        Site { dir, ports }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join(".chora")
    }

    /// The dev template on this site's ports.
    pub fn template(&self) -> String {
        let mut t = chora_bootstrap::template::DEV.to_owned();
        for (d, p) in DEFAULT_PORTS.iter().zip(&self.ports) {
            t = t.replace(&d.to_string(), &format!("{p}"));
        }
        t
    }

    pub fn port(&self, service: &str) -> u16 {
        let i = SERVICES.iter().position(|s| *s == service).unwrap();
        self.ports[i]
    }

    pub fn write_config(&self, text: &str) {
        std::fs::create_dir_all(self.home()).unwrap();
        std::fs::write(self.home().join("bootstrap-config.yml"), text).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(chora_bin());
        c.args(args)
            .current_dir(self.dir.path())
            .env("CHORA_HOME", self.home())
            .env("NO_COLOR", "1")
            .env_remove("MANIFEST_URL")
            .env_remove("CHORA_CREDENTIALS")
            .stdin(Stdio::null());
        c
    }

    /// Runs `chora args…`; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `chora bootstrap …` that must succeed.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(
            code,
            0,
            "chora {args:?} failed\nstdout:\n{out}\nstderr:\n{err}\naudit:\n{}",
            self.audit()
        );
        out
    }

    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn state(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.home().join("bootstrap-state.json")).unwrap(),
        )
        .unwrap()
    }

    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.home().join("logs/bootstrap.log")).unwrap_or_default()
    }

    /// Pids of live processes whose command line listens on `port`.
    pub fn listeners(&self, port: u16) -> Vec<u32> {
        let needle = format!("127.0.0.1:{port}");
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
                .unwrap_or(true);
            if !zombie && cmd.contains(" serve ") && cmd.contains(&format!("--listen {needle}")) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Asserts one live process per service.
    #[track_caller]
    pub fn assert_one_process_each(&self) {
        for (i, p) in self.ports.iter().enumerate() {
            let l = self.listeners(*p);
            assert_eq!(l.len(), 1, "service #{i} on port {p} has processes {l:?}");
        }
    }

    pub fn pid_of(&self, service: &str) -> u32 {
        *self.listeners(self.port(service)).first().expect("running")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.run(&["bootstrap", "reset", "--force"]);
        if std::thread::panicking() {
            eprintln!("----- audit log -----\n{}", self.audit());
            for name in ["manifest", "orchestrator", "gateway", "analyzer"] {
                let p = self.home().join(format!("logs/{name}.log"));
                if let Ok(t) = std::fs::read_to_string(&p) {
                    eprintln!("----- {name}.log -----\n{t}");
                }
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn a_fresh_bootstrap_brings_everything_up_and_status_tells_the_truth() {
    let site = Site::new();
    let (code, _, _) = site.run(&["bootstrap", "status"]);
    assert_eq!(code, 2, "not bootstrapped yet");

    let out = site.ok(&["bootstrap"]);
    for phase in [
        "Phase 0: Pre-Bootstrap Validation",
        "Phase 1: Core Services",
        "Phase 2: Infrastructure Services",
        "Phase 3: Capability Services",
        "Phase 4: Validation",
    ] {
        assert!(out.contains(phase), "{out}");
    }
    assert!(
        out.contains("✓ Bootstrap completed successfully in"),
        "{out}"
    );
    site.assert_one_process_each();

    let state = site.state();
    assert_eq!(state["status"], "completed");
    assert_eq!(state["schema_version"], 1);
    assert_eq!(
        state["completed_phases"],
        serde_json::json!([0, 1, 2, 3, 4])
    );
    assert_eq!(state["services_started"].as_array().unwrap().len(), 8);
    assert!(state["services"]["manifest"]["pid"].is_u64());
    assert!(state["services"]["manifest"]["start_time"].is_u64());

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(site.home().join("credentials.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let (code, out, _) = site.run(&["bootstrap", "status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["overall_status"], "healthy");
    assert_eq!(v["services"].as_array().unwrap().len(), 8);
    assert!(
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "up")
    );
    for svc in v["services"].as_array().unwrap() {
        assert_eq!(svc["runtime"], "process", "{svc}");
        assert!(svc["pid"].is_u64() && svc["container"].is_null(), "{svc}");
    }

    // A killed infrastructure service shows in status (1), and the next
    // bootstrap restarts it.
    let gw = site.pid_of("gateway");
    unsafe { libc::kill(gw as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _, _) = site.run(&["bootstrap", "status"]);
        if code == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never noticed the dead gateway"
        );
        std::thread::sleep(Duration::from_millis(100)); // the registry notices after 2 missed heartbeats
    }
    let out = site.ok(&["bootstrap"]);
    assert!(out.contains("gateway was not running: restarted"), "{out}");
    site.assert_one_process_each();
    site.ok(&["bootstrap", "status"]);
    // The restarted gateway took over its old registration (a stable instance
    // id): no stale, unhealthy instance of it lingers until the TTL.
    let url = format!("http://127.0.0.1:{}", site.port("manifest"));
    let got: Value = serde_json::from_str(&site.ok(&[
        "manifest", "get", "gateway", "--url", &url, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(got["instances"].as_array().unwrap().len(), 1, "{got}");
    site.ok(&["bootstrap", "validate"]);

    // Every line of the audit log is JSON in the seed's shape.
    for line in site.audit().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for k in ["timestamp", "level", "action", "user", "result"] {
            assert!(!v[k].is_null(), "{k} missing in {line}");
        }
    }
}

#[test]
fn json_output_is_one_document_and_nothing_else() {
    let site = Site::new();
    let (code, out, err) = site.run(&["bootstrap", "--format", "json", "--parallel"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("stdout is exactly one JSON document");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["phases"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["phases"][1]["services_started"],
        serde_json::json!(["manifest"])
    );
    assert_eq!(v["phases"][0]["steps"][0]["status"], "passed");
    assert_eq!(v["services"].as_array().unwrap().len(), 8);
    site.assert_one_process_each();
}

#[test]
fn five_runs_in_a_row_are_idempotent() {
    let site = Site::new();
    site.ok(&["bootstrap"]);
    let pids: Vec<u32> = site.ports.iter().map(|p| site.listeners(*p)[0]).collect();
    for _ in 0..4 {
        let out = site.ok(&["bootstrap"]);
        assert!(out.contains("Already bootstrapped; nothing to do"), "{out}");
    }
    let after: Vec<u32> = site.ports.iter().map(|p| site.listeners(*p)[0]).collect();
    assert_eq!(pids, after, "nothing was restarted");
}

#[test]
fn resume_after_a_phase_1_failure_bad_command() {
    let site = Site::new();
    let good = site.template();
    site.write_config(&good.replacen(
        "command: [chora, manifest, serve",
        "command: [/nonexistent/chora-manifest, serve",
        1,
    ));
    let (code, _, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("✗ [CORE_FAILED]"), "{err}");
    assert!(
        err.contains("Suggested actions:") && err.contains("bootstrap.log"),
        "{err}"
    );
    let state = site.state();
    assert_eq!(
        (state["status"].as_str(), state["current_phase"].as_u64()),
        (Some("failed"), Some(1))
    );
    assert!(state["last_error"].as_str().unwrap().contains("manifest"));

    site.write_config(&good);
    let out = site.ok(&["bootstrap"]);
    assert!(out.contains("Resuming from phase 1"), "{out}");
    assert!(!out.contains("Phase 0:"), "phase 0 is not redone: {out}");
    site.assert_one_process_each();
}

#[test]
fn resume_after_a_phase_2_failure_health_that_never_answers() {
    let site = Site::new();
    let good = site.template();
    let dead = chora_testkit::free_port();
    let gw = site.port("gateway");
    site.write_config(&good.replace(
        &format!("health_endpoint: http://127.0.0.1:{gw}/health\n    timeout: 30"),
        &format!("health_endpoint: http://127.0.0.1:{dead}/health\n    timeout: 1"),
    ));
    let (code, _, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with("✗ [INFRA_FAILED]") && err.contains("gateway"),
        "{err}"
    );
    assert!(
        site.listeners(gw).is_empty(),
        "the unhealthy gateway was not left behind"
    );
    let manifest = site.pid_of("manifest");

    site.write_config(&good);
    let out = site.ok(&["bootstrap"]);
    assert!(out.contains("Resuming from phase 2"), "{out}");
    assert_eq!(
        site.pid_of("manifest"),
        manifest,
        "phase 1 was re-checked, not restarted"
    );
    site.assert_one_process_each();
}

#[test]
fn resume_after_a_phase_3_failure_bad_capability_command() {
    let site = Site::new();
    let good = site.template();
    let an = site.port("analyzer");
    site.write_config(&good.replace(
        &format!("    port: {an}\n"),
        &format!("    port: {an}\n    command: [/nonexistent/analyzer]\n"),
    ));
    let (code, _, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.starts_with("✗ [CAP_FAILED]") && err.contains("analyzer"),
        "{err}"
    );
    site.write_config(&good);
    let out = site.ok(&["bootstrap"]);
    assert!(out.contains("Resuming from phase 3"), "{out}");
    site.assert_one_process_each();
}

#[test]
fn a_taken_port_is_named_and_the_run_resumes_once_it_is_free() {
    let site = Site::new();
    let port = site.port("orchestrator");
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (code, _, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("✗ [PREREQ_FAILED]"), "{err}");
    assert!(
        err.contains(&format!(
            "port {port} (orchestrator) is held by pid {}",
            std::process::id()
        )),
        "{err}"
    );
    drop(squatter);
    site.ok(&["bootstrap"]);
    site.assert_one_process_each();
}

#[test]
fn rollback_from_3_and_from_2_then_resume() {
    let site = Site::new();
    site.ok(&["bootstrap"]);
    let analyzer = site.pid_of("analyzer");
    let orchestrator = site.pid_of("orchestrator");

    let out = site.ok(&["bootstrap", "rollback", "--to-phase", "2", "--force"]);
    assert!(out.contains("Updated state to Phase 2"), "{out}");
    assert!(!alive(analyzer), "capabilities stopped");
    assert!(alive(orchestrator), "infrastructure intact");
    let state = site.state();
    assert_eq!(state["status"], "rolled_back");
    assert_eq!(state["completed_phases"], serde_json::json!([0, 1, 2]));
    let (code, _, _) = site.run(&["bootstrap", "status"]);
    assert_eq!(code, 2);

    let out = site.ok(&["bootstrap", "rollback", "--force"]);
    assert!(out.contains("Updated state to Phase 1"), "{out}");
    assert!(!alive(orchestrator));
    assert!(site.listeners(site.port("gateway")).is_empty());
    assert_eq!(
        site.listeners(site.port("manifest")).len(),
        1,
        "the Manifest keeps running"
    );

    let (code, _, err) = site.run(&["bootstrap", "rollback", "--to-phase", "3", "--force"]);
    assert_eq!(code, 2, "an invalid target: {err}");
    let (code, _, err) = site.run(&["bootstrap", "rollback", "--to-phase", "0"]);
    assert_eq!(code, 3, "no --force without a terminal: {err}");

    site.ok(&["bootstrap"]);
    site.assert_one_process_each();
    assert_eq!(site.state()["status"], "completed");
}

#[test]
fn reset_leaves_no_process_and_every_port_free() {
    let site = Site::new();
    site.ok(&["bootstrap"]);
    let (code, _, _) = site.run(&["bootstrap", "reset"]);
    assert_eq!(code, 3, "no confirmation without a terminal or --force");
    site.assert_one_process_each();
    site.ok(&["bootstrap", "reset", "--force", "--keep-credentials"]);
    for p in &site.ports {
        assert!(
            site.listeners(*p).is_empty(),
            "port {p} still has a process"
        );
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok(),
            "port {p} is free"
        );
    }
    assert!(!site.home().join("bootstrap-state.json").exists());
    assert!(
        site.home().join("credentials.json").exists(),
        "--keep-credentials"
    );
    assert!(site.home().join("data").exists(), "data is kept");
}

#[test]
fn no_secret_reaches_a_log_the_output_the_state_or_argv() {
    let site = Site::new();
    let out = site.ok(&["bootstrap", "--verbose"]);
    let json = site.ok(&["bootstrap", "status", "--format", "json"]);
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(site.home().join("credentials.json")).unwrap(),
    )
    .unwrap();
    let secrets: Vec<String> = creds
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(secrets.len() >= 9);
    let mut haystacks = vec![("stdout".to_string(), out), ("status".to_string(), json)];
    haystacks.push((
        "state".into(),
        std::fs::read_to_string(site.home().join("bootstrap-state.json")).unwrap(),
    ));
    for e in std::fs::read_dir(site.home().join("logs"))
        .unwrap()
        .flatten()
    {
        haystacks.push((
            e.path().display().to_string(),
            std::fs::read_to_string(e.path()).unwrap(),
        ));
    }
    for p in &site.ports {
        for pid in site.listeners(*p) {
            let argv =
                String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
                    .into_owned();
            haystacks.push((format!("argv of {pid}"), argv));
        }
    }
    for (name, text) in &haystacks {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "a secret leaked into {name}");
        }
    }
}

#[test]
fn config_mistakes_name_file_line_and_field_and_exit_7() {
    let site = Site::new();
    let good = site.template();
    let cases = [
        (
            good.replacen("    port: ", "    colour: blue\n    port: ", 1),
            "unknown field `colour`",
        ),
        (good.replacen("phase: 1", "phase: one", 1), "phase"),
        (
            good.replace(
                "dependencies: [manifest]\n\n  gateway:",
                "dependencies: [manifest, gateway]\n\n  gateway:",
            )
            .replace(
                "dependencies: [manifest]\n\n  analyzer:",
                "dependencies: [manifest, orchestrator]\n\n  analyzer:",
            ),
            "cycle",
        ),
        (
            good.replacen("dependencies: []", "dependencies: [orchestrator]", 1),
            "after `manifest`",
        ),
        (
            good.replacen(
                &format!("port: {}", site.port("logger")),
                &format!("port: {}", site.port("storage")),
                1,
            ),
            "is also used by",
        ),
    ];
    for (text, want) in cases {
        site.write_config(&text);
        let (code, _, err) = site.run(&["bootstrap"]);
        assert_eq!(code, 7, "{err}");
        assert!(
            err.contains("bootstrap-config.yml:"),
            "names the file: {err}"
        );
        assert!(err.contains(want), "wanted `{want}` in: {err}");
        let line: u64 = err
            .split("bootstrap-config.yml:")
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(line > 1 || want == "cycle", "names a line: {err}");
        assert!(
            !site.home().join("bootstrap-state.json").exists(),
            "nothing started"
        );
        let (code, _, _) = site.run(&["bootstrap", "config", "validate"]);
        assert_eq!(code, 7);
    }
    site.write_config(&good);
    let out = site.ok(&["bootstrap", "config", "validate"]);
    assert!(out.contains("is valid (8 services"), "{out}");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let dir = chora_testkit::temp_dir();
    let out = Command::new(chora_bin())
        .args(["bootstrap", "--dry-run"])
        .current_dir(dir.path())
        .env_remove("CHORA_HOME")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "dry run",
        "Phase 1: Core Services",
        "start manifest",
        "deploy via orchestrator analyzer",
        "CHORA_API_KEY",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    assert!(!dir.path().join(".chora").exists(), "nothing was created");
}

#[test]
fn a_second_run_refuses_while_the_lock_is_held() {
    let site = Site::new();
    std::fs::create_dir_all(site.home()).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(site.home().join("bootstrap.lock"))
        .unwrap();
    f.try_lock().unwrap();
    std::fs::write(
        site.home().join("bootstrap.lock"),
        "{\"pid\": 4242, \"since\": \"then\", \"command\": \"chora bootstrap\"}",
    )
    .unwrap();
    let (code, _, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("LOCKED") && err.contains("pid 4242"), "{err}");
    assert!(
        !site.home().join("bootstrap-state.json").exists(),
        "nothing interleaved"
    );
    drop(f);
    site.ok(&["bootstrap", "--skip-validation"]);
}

#[test]
fn sigint_saves_the_state_and_exits_6() {
    let site = Site::new();
    let good = site.template();
    let dead = chora_testkit::free_port();
    let gw = site.port("gateway");
    // A gateway whose health never answers keeps phase 2 waiting.
    site.write_config(&good.replace(
        &format!("health_endpoint: http://127.0.0.1:{gw}/health\n    timeout: 30"),
        &format!("health_endpoint: http://127.0.0.1:{dead}/health\n    timeout: 60"),
    ));
    let child = site.spawn(&["bootstrap"]);
    // Wait until phase 2 is under way (the state file says so).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let phase = std::fs::read_to_string(site.home().join("bootstrap-state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["current_phase"].as_u64());
        if phase == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "never reached phase 2");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = site.state();
    assert_eq!(state["status"], "failed");
    assert!(
        state["last_error"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    site.write_config(&good);
    site.ok(&["bootstrap"]);
    site.assert_one_process_each();
}

#[test]
fn hooks_and_custom_validation_tests_run() {
    let site = Site::new();
    let marker = site.dir.path().join("hook-ran");
    let hook = site.dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"phase $CHORA_PHASE\" >> {}\n",
            marker.display()
        ),
    )
    .unwrap();
    let pass = site.dir.path().join("pass.sh");
    std::fs::write(
        &pass,
        "#!/bin/sh\ncurl -sf \"$GATEWAY_URL/api/v1/analyzer/health\" >/dev/null || exit 0\n",
    )
    .unwrap();
    let fail = site.dir.path().join("fail.sh");
    std::fs::write(&fail, "#!/bin/sh\necho 'broken on purpose' >&2\nexit 3\n").unwrap();
    for f in [&hook, &pass, &fail] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let with = |required: bool| {
        format!(
            "{}    - name: custom_ok\n      script: {}\n    - name: custom_broken\n      script: {}\n      timeout: 5\n      required: {required}\nhooks:\n  pre_phase_1:\n    - script: {}\n  post_phase_3:\n    - script: {}\n",
            site.template(),
            pass.display(),
            fail.display(),
            hook.display(),
            hook.display()
        )
    };
    site.write_config(&with(false));
    let out = site.ok(&["bootstrap"]);
    assert!(out.contains("Custom test custom_ok"), "{out}");
    assert!(
        out.contains("⚠ Custom test custom_broken") && out.contains("not required"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "phase 1\nphase 3\n"
    );

    site.write_config(&with(true));
    let (code, _, err) = site.run(&["bootstrap", "validate"]);
    assert_eq!(code, 1, "{err}");
    site.ok(&["bootstrap", "rollback", "--to-phase", "2", "--force"]);
    let (code, _, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 5, "a required custom test fails phase 4: {err}");
    assert!(
        err.contains("custom_broken") && err.contains("broken on purpose"),
        "{err}"
    );
}

#[test]
fn sigkill_at_twenty_moments_always_recovers_with_one_process_per_service() {
    let site = Site::new();
    // How long a cold run takes here, to spread the kills over all of it.
    site.ok(&["bootstrap", "--skip-validation"]);
    site.ok(&["bootstrap", "reset", "--force", "--keep-credentials"]);
    let t = Instant::now();
    site.ok(&["bootstrap", "--skip-validation"]);
    let full = t.elapsed();
    for i in 0..20u32 {
        site.ok(&["bootstrap", "reset", "--force", "--keep-credentials"]);
        let mut child = site.spawn(&["bootstrap", "--skip-validation"]);
        // The kill moment (not a synchronisation): i/20 of a full run.
        std::thread::sleep(full * i / 20);
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        let state_path = site.home().join("bootstrap-state.json");
        if let Ok(text) = std::fs::read_to_string(&state_path) {
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| {
                panic!("kill #{i}: the state file does not parse ({e}): {text}")
            });
        }
        let (code, out, err) = site.run(&["bootstrap", "--skip-validation"]);
        assert_eq!(
            code,
            0,
            "kill #{i} at {:?}: the next run failed\n{out}\n{err}",
            full * i / 20
        );
        site.assert_one_process_each();
        assert_eq!(site.state()["status"], "completed", "kill #{i}");
    }
}

/// Output with what varies between runs (paths, ports, pids, times, sizes)
/// replaced by names, for snapshots.
fn normalize(site: &Site, text: &str) -> String {
    let mut t = text.replace(&site.home().display().to_string(), "[HOME]");
    let names = [
        "manifest",
        "orchestrator",
        "gateway",
        "analyzer",
        "executor",
        "storage",
        "monitor",
        "logger",
    ];
    for (p, n) in site.ports.iter().zip(names) {
        t = t.replace(&p.to_string(), &format!("[{n}-port]"));
    }
    // Which port is lowest varies: any port is just [port].
    for n in names {
        t = t.replace(&format!("[{n}-port]"), "[port]");
    }
    // Numbers that vary (several digits: pids, sizes, versions) become N, and
    // durations become T; single digits (phases, counts) stay.
    let mut out = String::new();
    let chars: Vec<char> = t.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let unit = rest.starts_with("ms") || rest.starts_with('s') || rest.starts_with("m ");
            if unit {
                out.push('T');
                i += if rest.starts_with("ms") { 2 } else { 1 };
                // "2m 5s": swallow the seconds part too.
                if rest.starts_with("m ") {
                    while i < chars.len() && chars[i] != 's' {
                        i += 1;
                    }
                    i += 1;
                }
            } else if i - start > 1 {
                out.push('N');
            } else {
                out.push(chars[start]);
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn snapshot_of_a_successful_run() {
    let site = Site::new();
    let out = site.ok(&["bootstrap"]);
    insta::assert_snapshot!("bootstrap_success", normalize(&site, &out));
}

#[test]
fn snapshot_of_a_failed_run() {
    let site = Site::new();
    site.write_config(&site.template().replacen(
        "command: [chora, manifest, serve",
        "command: [/nonexistent/chora-manifest, serve",
        1,
    ));
    let (code, out, err) = site.run(&["bootstrap"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!("bootstrap_failure_stdout", normalize(&site, &out));
    insta::assert_snapshot!("bootstrap_failure_stderr", normalize(&site, &err));
}

#[test]
fn credentials_rotate_and_apply_and_config_show() {
    let site = Site::new();
    site.ok(&["bootstrap", "--skip-validation"]);
    let shown = site.ok(&["bootstrap", "config", "show"]);
    assert!(
        shown.contains("version: \"1.0\"") && shown.contains(&site.port("manifest").to_string())
    );
    let path = site.home().join("credentials.json");
    let before = std::fs::read_to_string(&path).unwrap();
    let out = site.ok(&["bootstrap", "config", "rotate-credentials"]);
    assert!(out.contains("apply-credentials"), "{out}");
    let after = std::fs::read_to_string(&path).unwrap();
    assert_ne!(before, after);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let manifest = site.pid_of("manifest");
    site.ok(&["bootstrap", "config", "apply-credentials"]);
    assert_ne!(
        site.pid_of("manifest"),
        manifest,
        "restarted with the new credentials"
    );
    site.assert_one_process_each();
    // The restarted system works with the new keys end to end.
    site.ok(&["bootstrap", "validate"]);
}

#[test]
fn status_watch_redraws_when_the_registry_changes() {
    let site = Site::new();
    site.ok(&["bootstrap", "--skip-validation"]);
    let mut watcher = site.spawn(&["bootstrap", "status", "--watch", "--format", "json"]);
    let stdout = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let de = serde_json::Deserializer::from_reader(stdout).into_iter::<Value>();
        for doc in de.flatten() {
            let _ = tx.send(doc);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a first status");
    assert_eq!(first["overall_status"], "healthy");
    site.ok(&["bootstrap", "rollback", "--to-phase", "2", "--force"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a redraw after the change");
        let analyzer = doc["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "analyzer")
            .unwrap()
            .clone();
        if analyzer["status"] == "down" {
            assert_ne!(doc["overall_status"], "healthy");
            break;
        }
    }
    unsafe { libc::kill(watcher.id() as i32, libc::SIGINT) };
    assert!(watcher.wait().unwrap().success());
}

/// The prod template on this site's ports, against `etcd` endpoints.
pub fn prod_config(site: &Site, etcd: &[String]) -> String {
    let mut t = chora_bootstrap::template::processes_on_etcd();
    for (d, p) in DEFAULT_PORTS.iter().zip(&site.ports) {
        t = t.replace(&d.to_string(), &format!("{p}"));
    }
    t.replace(
        "endpoints: [http://127.0.0.1:2379]",
        &format!("endpoints: [{}]", etcd.join(", ")),
    )
}

#[test]
fn two_prod_runs_against_one_etcd_cluster_never_interleave() {
    if !chora_testkit::etcd_available(
        "bootstrap::two_prod_runs_against_one_etcd_cluster_never_interleave",
    ) {
        return;
    }
    let cluster = chora_testkit::EtcdCluster::start(1);
    let (a, b) = (Site::new(), Site::new());
    // `a` holds the lock in a pre-phase-1 hook until the test lets it go.
    let go = a.dir.path().join("go");
    let hold = a.dir.path().join("hold.sh");
    std::fs::write(
        &hold,
        format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.05; done\n",
            go.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hold, std::fs::Permissions::from_mode(0o755)).unwrap();
    a.write_config(&format!(
        "{}hooks:\n  pre_phase_1:\n    - script: {}\n      timeout: 120\n",
        prod_config(&a, &cluster.urls()),
        hold.display()
    ));
    b.write_config(&prod_config(&b, &cluster.urls()));

    let mut holder = a.spawn(&["bootstrap", "--environment", "prod", "--skip-validation"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.home().join("bootstrap-state.json").metadata().is_err()
        || a.state()["completed_phases"] != serde_json::json!([0])
    {
        assert!(
            Instant::now() < deadline,
            "the first run never got to phase 1"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, err) = b.run(&["bootstrap", "--environment", "prod", "--skip-validation"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("[LOCKED]") && err.contains(&format!("pid {}", holder.id())),
        "names the holder: {err}"
    );
    assert!(
        !b.home().join("bootstrap-state.json").exists(),
        "the refused run changed nothing"
    );

    // The holder dies: its lease runs out and the lock frees by itself.
    unsafe { libc::kill(holder.id() as i32, libc::SIGKILL) };
    let _ = holder.wait();
    std::fs::write(&go, "").unwrap(); // ends the orphaned hook
    let t = Instant::now();
    loop {
        let (code, out, err) = b.run(&["bootstrap", "--environment", "prod", "--skip-validation"]);
        if code == 0 {
            break;
        }
        assert!(
            err.contains("[LOCKED]"),
            "only the lock may stop it: {out}\n{err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(chora_bootstrap::etcdlock::LEASE_TTL as u64 + 5),
            "the lock never freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("the lock freed {:?} after its holder died", t.elapsed());
    b.assert_one_process_each();
    let state = b.state();
    assert_eq!(state["environment"], "prod");
    let (_, out, _) = b.run(&["bootstrap", "status", "--format", "json"]);
    assert!(out.contains("\"overall_status\": \"healthy\""), "{out}");
    // The Manifest of the prod run keeps its instances in etcd.
    let url = format!("http://127.0.0.1:{}/v1/health", b.port("manifest"));
    let h: Value = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { reqwest::get(url).await?.json().await })
        .unwrap();
    assert_eq!(h["storage"], "etcd");
}
