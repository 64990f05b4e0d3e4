//! `chora prepare` as a person uses it (the handlers themselves are tested in
//! chora-prepare).

use crate::run_chora;

fn tree() -> tempfile::TempDir {
    let dir = chora_testkit::temp_dir();
    let m = dir.path().join("modules/billing");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("module.yml"),
        "bootstrap_requirements:\n  directories: [data/billing]\n  database: {path: data/billing.db, schema: schema.sql}\n",
    )
    .unwrap();
    std::fs::write(
        m.join("schema.sql"),
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);\n",
    )
    .unwrap();
    dir
}

#[test]
fn prepare_creates_then_has_nothing_to_do_and_dry_run_changes_nothing() {
    let dir = tree();
    let root = dir.path().display().to_string();
    let (code, out, err) = run_chora(dir.path(), &["prepare", "--root", &root, "--dry-run"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would create data/billing.db"), "{out}");
    assert!(
        !dir.path().join("data").exists(),
        "a dry run changes nothing"
    );

    let (code, out, err) = run_chora(dir.path(), &["prepare", "--root", &root], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created data/billing.db"), "{out}");
    assert!(err.is_empty(), "no log noise: {err}");
    let (code, out, _) = run_chora(
        dir.path(),
        &["prepare", "--root", &root, "--format", "json"],
        &[],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["created"].as_array().unwrap().len(),
        0,
        "nothing to do the second time: {out}"
    );
}

#[test]
fn prepare_failures_name_the_module_and_exit_non_zero() {
    let dir = tree();
    let root = dir.path().display().to_string();
    std::fs::write(
        dir.path().join("modules/billing/schema.sql"),
        "CREATE TABLE broken (\n",
    )
    .unwrap();
    let (code, _, err) = run_chora(dir.path(), &["prepare", "--root", &root], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("✗ [PREPARE_FAILED]")
            && err.contains("billing")
            && err.contains("schema.sql"),
        "{err}"
    );
    assert!(
        !dir.path().join("data/billing.db").exists(),
        "no partial database"
    );

    std::fs::write(
        dir.path().join("modules/billing/module.yml"),
        "bootstrap_requirements:\n  directorys: [x]\n",
    )
    .unwrap();
    let (code, _, err) = run_chora(dir.path(), &["prepare", "--root", &root], &[]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("module.yml:2:") && err.contains("directorys"),
        "{err}"
    );
}
