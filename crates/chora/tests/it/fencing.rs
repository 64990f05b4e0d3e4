//! Fencing that fences (DESIGN.md §15): a bootstrap that lost its etcd lock
//! (paused past its lease) cannot act on the orchestrator after its
//! successor has, and says it lost its lock.

use crate::bootstrap::{Site, prod_config};
use std::time::{Duration, Instant};

/// Copies a home (state, pid files, credentials, applied specs): a second
/// bootstrap of the same system, as from another machine.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if e.file_name() != "bootstrap.lock" {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A bootstrap the test pauses: never left stopped, whatever happens.
struct Paused(std::process::Child);

impl Paused {
    fn resume_and_wait(mut self) -> std::process::Output {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        use std::io::Read;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        self.0.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        self.0.stderr.take().unwrap().read_to_end(&mut err).unwrap();
        let status = self.0.wait().unwrap();
        std::process::Output {
            status,
            stdout: out,
            stderr: err,
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether etcd still holds the bootstrap lock key.
fn lock_held(etcd: &str) -> bool {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(chora_bootstrap::etcdlock::KEY);
    let out = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", &format!("{etcd}/v3/kv/range"), "-d"])
        .arg(format!("{{\"key\":\"{key}\",\"count_only\":true}}"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["count"].as_str().is_some_and(|c| c != "0")
}

#[test]
fn a_bootstrap_paused_past_its_lease_is_refused_after_its_successor_acted_and_says_it_lost_its_lock()
 {
    if !chora_testkit::etcd_available("a_bootstrap_paused_past_its_lease") {
        return;
    }
    let cluster = chora_testkit::EtcdCluster::start(1);
    let etcd = cluster.urls()[0].clone();
    let a = Site::new();
    // `a` stops in a pre-phase-3 hook until the test lets it go.
    let (go, holding) = (a.dir.path().join("go"), a.dir.path().join("holding"));
    let hold = a.dir.path().join("hold.sh");
    std::fs::write(
        &hold,
        format!(
            "#!/bin/sh\ntouch {}\nwhile [ ! -e {} ]; do sleep 0.05; done\n",
            holding.display(),
            go.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hold, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = prod_config(&a, &cluster.urls());
    a.write_config(&format!(
        "{config}hooks:\n  pre_phase_3:\n    - script: {}\n      timeout: 300\n",
        hold.display()
    ));
    let first = Paused(a.spawn(&["bootstrap", "--environment", "prod", "--skip-validation"]));
    let t = Instant::now();
    while !holding.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the first run never got to phase 3"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lock_held(&etcd));
    // Paused: its lease runs out, and the lock frees by itself.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGSTOP) };
    let t = Instant::now();
    while lock_held(&etcd) {
        let limit = Duration::from_secs(chora_bootstrap::etcdlock::LEASE_TTL as u64 + 5);
        assert!(t.elapsed() < limit, "the paused run's lock never freed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Its successor: the same system (its home as another machine has it).
    let b = Site::bare();
    copy_dir(&a.home(), &b.home());
    b.write_config(&config);
    let out = b.ok(&["bootstrap", "--environment", "prod", "--skip-validation"]);
    assert!(out.contains("analyzer deployed"), "{out}");
    // An operator stops a capability: the paused run will want it back.
    b.ok(&["stop", "analyzer"]);

    std::fs::write(&go, "").unwrap();
    let out = first.resume_and_wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("[LOCK_LOST]") && err.contains("lost its lock"),
        "{err}"
    );
    assert!(
        err.contains("stale_fencing_token") || err.contains("older than"),
        "{err}"
    );
    // It did nothing: the analyzer stays as the successor's operator left it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let row = rt.block_on(crate::anyprogram::deployment(&a, "analyzer"));
    assert_eq!(row["state"], "stopped", "{row}");
}
