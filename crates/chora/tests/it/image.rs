//! `chora image build` against the real engine (no registry: FROM scratch only)
//! and `chora probe` against servers the tests start on loopback. Every image
//! and container a test makes is removed when it ends, failed or not.

use crate::{chora_bin, run_chora};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Image tags and container names made by one test, removed on drop.
#[derive(Default)]
struct Cleanup {
    images: Vec<String>,
    containers: Vec<String>,
}

impl Cleanup {
    /// A tag no other test (or run) uses.
    fn tag(&mut self) -> String {
        let t = format!("chora-test-{}:t", unique());
        self.images.push(t.clone());
        t
    }

    fn container(&mut self) -> String {
        let c = format!("chora-test-{}", unique());
        self.containers.push(c.clone());
        c
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Without Docker (a test that skipped) there is nothing to remove.
        let remove = |args: &[&str]| Command::new("docker").args(args).output();
        for c in &self.containers {
            let _ = remove(&["rm", "-f", c]);
        }
        for i in &self.images {
            let _ = remove(&["rmi", "-f", i]);
        }
    }
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", tag]).status.success()
}

/// A loopback HTTP server answering every request with `status`, or (`None`)
/// accepting connections and never answering. Serves until the test ends.
fn http_server(status: Option<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Some(status) = status else {
                held.push(conn);
                continue;
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "{\"status\":\"healthy\"}";
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

fn refused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn probe(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["probe"];
    all.extend_from_slice(args);
    run_chora(Path::new("."), &all, &[])
}

#[test]
fn probe_is_healthy_on_2xx_only() {
    let ok = http_server(Some(200));
    let (code, out, err) = probe(&[&format!("http://127.0.0.1:{ok}/health")]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let created = http_server(Some(204));
    assert_eq!(probe(&[&format!("http://127.0.0.1:{created}")]).0, 0);

    let bad = http_server(Some(500));
    let url = format!("http://127.0.0.1:{bad}/health");
    let (code, _, err) = probe(&[&url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("[PROBE_FAILED] {url}: answered 500")),
        "{err}"
    );
    let moved = http_server(Some(301));
    assert_eq!(probe(&[&format!("http://127.0.0.1:{moved}/")]).0, 1);
}

#[test]
fn probe_fails_on_a_refused_port_and_a_server_that_never_answers() {
    let port = refused_port();
    let (code, _, err) = probe(&[&format!("http://127.0.0.1:{port}/health")]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");

    let silent = http_server(None);
    let started = Instant::now();
    let (code, _, err) = probe(&[&format!("http://127.0.0.1:{silent}/"), "--timeout", "0.5"]);
    let took = started.elapsed();
    assert_eq!(code, 1);
    assert!(err.contains("no answer within 0.5s"), "{err}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn probe_tcp_means_it_connects() {
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = open.local_addr().unwrap().port();
    let (code, _, err) = probe(&[&format!("tcp://127.0.0.1:{port}")]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = probe(&[&format!("tcp://127.0.0.1:{}", refused_port())]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");
    let (code, _, err) = probe(&["tcp://127.0.0.1"]);
    assert_eq!(code, 1);
    assert!(err.contains("needs a port"), "{err}");
    let (code, _, err) = probe(&[&format!("https://127.0.0.1:{}/", refused_port())]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");
    drop(open);
}

#[test]
fn image_and_probe_help_show_examples() {
    for args in [
        &["image", "build", "--help"][..],
        &["image", "--help"],
        &["probe", "--help"],
    ] {
        let (code, out, _) = run_chora(Path::new("."), args, &[]);
        assert_eq!(code, 0);
        assert!(out.contains("Example"), "{out}");
    }
}

#[test]
fn bad_input_fails_clearly_before_docker_and_leaves_no_image() {
    let dir = chora_testkit::temp_dir();
    let mut cleanup = Cleanup::default();
    let tag = cleanup.tag();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "echo not a program\n").unwrap();
    // /bin/true with its libc renamed: a real ELF that needs a library nobody has.
    let broken = dir.path().join("true-broken");
    let mut elf = std::fs::read("/bin/true").unwrap();
    let (from, to) = (b"libc.so.6\0", b"libQ.so.6\0");
    let mut patched = 0;
    for i in 0..elf.len().saturating_sub(from.len()) {
        if &elf[i..i + from.len()] == from {
            elf[i..i + to.len()].copy_from_slice(to);
            patched += 1;
        }
    }
    assert!(patched > 0, "/bin/true names libc.so.6");
    std::fs::write(&broken, &elf).unwrap();
    let notes = notes.display().to_string();
    let broken = broken.display().to_string();

    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["--binary", "/nonexistent/program"],
            "[BINARY_NOT_FOUND]",
            "/nonexistent/program does not exist",
        ),
        (
            &["--binary", &notes],
            "[NOT_AN_ELF_BINARY]",
            "is not an ELF executable",
        ),
        (
            &["--binary", &broken],
            "[LIBRARY_NOT_FOUND]",
            "libQ.so.6, needed by",
        ),
        (&[], "[BAD_IMAGE_NAME]", "is not a valid image name"),
    ];
    for (args, code_name, message) in cases {
        let mut all = vec!["image", "build"];
        all.extend_from_slice(args);
        let bad_tag = "Chora:Bad Tag";
        all.extend_from_slice(&["--tag", if args.is_empty() { bad_tag } else { &tag }]);
        let (code, out, err) = run_chora(dir.path(), &all, &[]);
        assert_eq!(code, 1, "{all:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(code_name) && err.contains(message),
            "{all:?}: {err}"
        );
        assert!(err.contains("Suggested actions:"), "{err}");
        assert!(
            !err.contains("Error:") && !err.contains("panicked"),
            "{err}"
        );
    }
    if chora_testkit::docker_available(
        "image::bad_input_fails_clearly_before_docker_and_leaves_no_image",
    ) {
        assert!(!image_exists(&tag), "no image left behind");
    }
}

#[test]
fn image_build_says_when_docker_is_down() {
    let dir = chora_testkit::temp_dir();
    let (code, out, err) = run_chora(
        dir.path(),
        &["image", "build", "--tag", "chora-test-never:t"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("[DOCKER_UNAVAILABLE]"), "{err}");
    assert!(
        err.contains(
            "the Docker daemon is not running (cannot connect to unix:///nonexistent/docker.sock"
        ),
        "{err}"
    );
    assert!(err.contains("systemctl start docker"), "{err}");
}

/// The files an image of `binary` must hold: the binary, and for it and chora
/// the loader and libraries, under the names the loader opens.
fn expected_files(entry: &str, binaries: &[&Path]) -> std::collections::BTreeSet<String> {
    let resolver = chora_docker::elf::Resolver::system();
    let mut want = std::collections::BTreeSet::from([entry.to_string()]);
    want.insert("/usr/local/bin/chora".into());
    for b in binaries {
        let needs = resolver.resolve(b).unwrap();
        want.extend(needs.loader.map(|l| l.display().to_string()));
        want.extend(needs.libraries.iter().map(|l| l.path.display().to_string()));
    }
    want
}

async fn image_files(tag: &str) -> Vec<chora_docker::image::Entry> {
    let docker = chora_docker::connect().await.unwrap();
    chora_docker::image::files_in(&docker, tag).await.unwrap()
}

#[tokio::test]
async fn image_build_of_chora_runs_probes_and_holds_nothing_else() {
    if !chora_testkit::docker_available(
        "image::image_build_of_chora_runs_probes_and_holds_nothing_else",
    ) {
        return;
    }
    let mut cleanup = Cleanup::default();
    let tag = cleanup.tag();
    let dir = chora_testkit::temp_dir();
    let (code, out, err) = run_chora(dir.path(), &["image", "build", "--tag", &tag], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("✓ built {tag} (")), "{out}");
    assert!(
        out.contains("/usr/local/bin/chora") && out.contains("libc.so.6"),
        "{out}"
    );
    assert!(out.contains("debug info stripped"), "{out}");

    // Exactly the binary, its loader and libraries, /tmp (1777) and /data.
    let entries = image_files(&tag).await;
    let files: std::collections::BTreeSet<String> = entries
        .iter()
        .filter(|e| !e.path.ends_with('/'))
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        files,
        expected_files("/usr/local/bin/chora", &[chora_bin()])
    );
    let mode = |p: &str| entries.iter().find(|e| e.path == p).map(|e| e.mode);
    assert_eq!(mode("/tmp/"), Some(0o1777), "{entries:?}");
    assert_eq!(mode("/data/"), Some(0o755), "{entries:?}");
    let stripped = entries
        .iter()
        .find(|e| e.path == "/usr/local/bin/chora")
        .unwrap();
    assert!(
        stripped.size <= std::fs::metadata(chora_bin()).unwrap().len(),
        "stripped, never bigger"
    );

    // It runs: the entrypoint is chora.
    let name = cleanup.container();
    let run = docker(&["run", "--rm", "--name", &name, &tag, "--version"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(
        text(&run.stdout).trim(),
        format!("chora {}", env!("CARGO_PKG_VERSION"))
    );

    // And probes, as a health check would, a server this test started.
    for (status, want) in [(Some(200), 0), (Some(503), 1)] {
        let port = http_server(status);
        let name = cleanup.container();
        let url = format!("http://127.0.0.1:{port}/health");
        let run = docker(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            "host",
            &tag,
            "probe",
            &url,
        ]);
        assert_eq!(run.status.code(), Some(want), "{}", text(&run.stderr));
    }

    let docker = chora_docker::connect().await.unwrap();
    assert!(
        chora_docker::image::image_exists(&docker, &tag)
            .await
            .unwrap()
    );
    chora_docker::image::remove_image(&docker, &tag)
        .await
        .unwrap();
    assert!(
        !chora_docker::image::image_exists(&docker, &tag)
            .await
            .unwrap()
    );
    // Removing what is gone is fine.
    chora_docker::image::remove_image(&docker, &tag)
        .await
        .unwrap();
}

#[tokio::test]
async fn image_build_of_etcd_runs_etcd_with_chora_beside_it() {
    const TEST: &str = "image::image_build_of_etcd_runs_etcd_with_chora_beside_it";
    if !chora_testkit::docker_available(TEST) || !chora_testkit::etcd_available(TEST) {
        return;
    }
    let etcd = Path::new("/usr/bin/etcd");
    let mut cleanup = Cleanup::default();
    let tag = cleanup.tag();
    let dir = chora_testkit::temp_dir();
    let (code, out, err) = run_chora(
        dir.path(),
        &["image", "build", "--binary", "/usr/bin/etcd", "--tag", &tag],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("entrypoint /usr/local/bin/etcd"), "{out}");

    let entries = image_files(&tag).await;
    let files: std::collections::BTreeSet<String> = entries
        .iter()
        .filter(|e| !e.path.ends_with('/'))
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        files,
        expected_files("/usr/local/bin/etcd", &[etcd, chora_bin()])
    );

    let name = cleanup.container();
    let run = docker(&["run", "--rm", "--name", &name, &tag, "--version"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("etcd Version:"),
        "{}",
        text(&run.stdout)
    );

    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://127.0.0.1:{}", open.local_addr().unwrap().port());
    let name = cleanup.container();
    let run = docker(&[
        "run",
        "--rm",
        "--name",
        &name,
        "--network",
        "host",
        "--entrypoint",
        "/usr/local/bin/chora",
        &tag,
        "probe",
        &url,
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
}

#[tokio::test]
async fn connect_negotiates_and_reads_the_engine_version() {
    if !chora_testkit::docker_available("image::connect_negotiates_and_reads_the_engine_version") {
        return;
    }
    let docker = chora_docker::connect().await.unwrap();
    let version = chora_docker::engine_version(&docker).await.unwrap();
    let cli = docker_version();
    assert_eq!(version, cli, "the engine's own version string");
    assert!(
        chora_docker::version_at_least(&version, (20, 10)),
        "{version}"
    );
}

fn docker_version() -> String {
    let out = docker(&["version", "--format", "{{.Server.Version}}"]);
    text(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn ensure_image_builds_only_what_is_missing() {
    if !chora_testkit::docker_available("image::ensure_image_builds_only_what_is_missing") {
        return;
    }
    let mut cleanup = Cleanup::default();
    let tag = cleanup.tag();
    let docker = chora_docker::connect().await.unwrap();
    let spec = chora_docker::image::BuildSpec {
        binary: "/bin/true".into(),
        tag: tag.clone(),
    };
    let built = chora_docker::image::ensure_image(&docker, spec.clone())
        .await
        .unwrap()
        .expect("missing, so built");
    assert_eq!(built.tag, tag);
    assert!(built.id.starts_with("sha256:"), "{}", built.id);
    assert!(built.size > 0);
    assert_eq!(built.entrypoint, "/usr/local/bin/true");
    let paths: Vec<&str> = built.files.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"/usr/local/bin/true"), "{paths:?}");
    assert!(paths.contains(&"/usr/local/bin/chora"), "{paths:?}");
    let again = chora_docker::image::ensure_image(&docker, spec)
        .await
        .unwrap();
    assert!(again.is_none(), "already there: not built again");

    let name = cleanup.container();
    let run = docker_cli_run(&name, &tag);
    assert!(run.status.success(), "{}", text(&run.stderr));
}

fn docker_cli_run(name: &str, tag: &str) -> Output {
    docker(&["run", "--rm", "--name", name, tag])
}
