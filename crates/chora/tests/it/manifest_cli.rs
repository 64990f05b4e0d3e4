//! `chora manifest list | get | query` as a person uses them.

use crate::{Registry, run_chora};

#[test]
fn unreachable_registry_says_what_to_do() {
    let dir = chora_testkit::temp_dir();
    let url = format!("http://127.0.0.1:{}", chora_testkit::free_port());
    let (code, out, err) = run_chora(dir.path(), &["manifest", "list", "--url", &url], &[]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(
        err.starts_with("✗ [MANIFEST_UNREACHABLE] cannot reach the Manifest at"),
        "{err}"
    );
    assert!(
        err.contains(&url) && err.contains("chora manifest serve"),
        "{err}"
    );
    assert!(
        !err.contains("Error {") && !err.contains("panicked"),
        "no debug output: {err}"
    );
}

#[tokio::test]
async fn list_get_and_query_print_tables_and_json() {
    let r = Registry::start(&["--no-auth"]);
    let a = r.register("analyzer", &["core"], None).await;
    let s = r.register("storage", &["data"], None).await;
    let url = r.server.url();
    let dir = r.dir.path().to_owned();
    let run = move |args: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&["--url", &url]);
        run_chora(&dir, &full, &[])
    };
    let run = std::sync::Arc::new(run);
    let (code, out, err) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["manifest", "list"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap();
    for col in [
        "NAME",
        "ID",
        "VERSION",
        "STATUS",
        "ADDRESS",
        "LAST HEARTBEAT",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(out.contains(&a) && out.contains(&s), "{out}");

    let (code, out, _) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["manifest", "query", "--tag", "core", "--format", "json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["id"], a.as_str());

    let (code, out, _) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["manifest", "get", "storage"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("storage 1.0.0 (up)"), "{out}");
    assert!(out.contains(&s));

    let (code, _, err) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["manifest", "get", "stor"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.starts_with("✗ [NOT_FOUND]") && err.contains("`stor`"),
        "{err}"
    );
}

#[test]
fn manifest_url_comes_from_the_environment() {
    let r = Registry::start(&["--no-auth"]);
    let (code, out, err) = run_chora(
        r.dir.path(),
        &["manifest", "list"],
        &[("MANIFEST_URL", &r.server.url())],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "No instances registered.");
}

#[test]
fn every_manifest_command_has_help_with_an_example() {
    let dir = chora_testkit::temp_dir();
    for cmd in ["serve", "list", "get", "query"] {
        let (code, out, _) = run_chora(dir.path(), &["manifest", cmd, "--help"], &[]);
        assert_eq!(code, 0);
        assert!(out.contains("Example:"), "{cmd}: {out}");
    }
}

#[test]
fn every_client_of_the_manifest_takes_every_node_url_and_fails_over() {
    let dir = chora_testkit::temp_dir();
    for cmd in [
        &["gateway", "serve", "--help"][..],
        &["orchestrator", "serve", "--help"],
        &["capability", "serve", "--help"],
        &["keep-registered", "--help"],
        &["manifest", "list", "--help"],
    ] {
        let (code, out, _) = run_chora(dir.path(), cmd, &[]);
        assert_eq!(code, 0, "{cmd:?}");
        assert!(
            out.contains("Every Manifest node's URL, comma-separated"),
            "{cmd:?}: {out}"
        );
    }
    // A node that is down is skipped.
    let r = Registry::start(&["--no-auth"]);
    let down = format!("http://127.0.0.1:{}", chora_testkit::free_port());
    let urls = format!("{down},{}", r.server.url());
    let (code, out, err) = run_chora(r.dir.path(), &["manifest", "list", "--url", &urls], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "No instances registered.");
}
