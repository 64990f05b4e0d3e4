//! Cold, warm and half-prepared trees: everything is made once, then nothing
//! is to do, and what is missing or wrong is made or put right.

use crate::fixtures::*;
use chora_prepare::Status;
use rusqlite::Connection;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_cold_run_creates_everything() {
    let server = rates_server();
    let app = full_app(&server);
    let report = app.run();
    assert!(report.ok, "{}", report.render(true));

    for d in [
        "data",
        "logs",
        "cache",
        "temp",
        "data/billing",
        "logs/billing",
        "cache/search",
    ] {
        assert!(app.p(d).is_dir(), "{d}");
    }
    assert_eq!(mode(&app.p("logs/billing")), 0o750);
    assert!(app.p("data/billing/.keep").is_file());
    assert_eq!(
        tables(&app.p("data/billing.db")),
        set(&["invoices", "invoices_customer", "payments"])
    );
    assert_eq!(
        tables(&app.p("data/search.db")),
        set(&["docs", "terms", "sqlite_autoindex_docs_1"])
    );
    let config = std::fs::read_to_string(app.p("config/billing.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"currency": "EUR", "port": 8080, "region": "eu-west", "module": "billing"})
    );
    assert_eq!(mode(&app.p("config/billing.json")), 0o640);
    assert_eq!(
        std::fs::read(app.p("data/billing/rates.csv")).unwrap(),
        RATES
    );
    assert_eq!(std::fs::read(app.p("cache/search/logo.png")).unwrap(), LOGO);
    assert_eq!(server.hits("/rates.csv"), 1);
    assert!(app.temp_files().is_empty());

    // The report says what was created, handler by handler.
    let created: Vec<(String, Option<String>, String)> = report
        .changes()
        .map(|(e, c)| (e.handler.clone(), e.module.clone(), c.target.clone()))
        .collect();
    for want in [
        ("directories", None, "temp"),
        ("directories", Some("billing"), "logs/billing"),
        ("databases", Some("billing"), "data/billing.db"),
        ("databases", Some("search"), "data/search.db"),
        ("files", Some("billing"), "data/billing/.keep"),
        ("templates", Some("billing"), "config/billing.json"),
        ("downloads", Some("billing"), "data/billing/rates.csv"),
        ("downloads", Some("search"), "cache/search/logo.png"),
    ] {
        let want = (want.0.into(), want.1.map(String::from), want.2.into());
        assert!(created.contains(&want), "{want:?} not in {created:?}");
    }
    let text = report.to_string();
    assert!(
        text.contains(
            "✓ databases [billing]: created data/billing.db (tables: invoices, payments)"
        ),
        "{text}"
    );
    assert!(text.contains("✓ prepared:"), "{text}");
}

#[test]
fn a_second_run_does_nothing_and_says_so() {
    let server = rates_server();
    let app = full_app(&server);
    assert!(app.run().ok);
    let before = app.snapshot();

    let report = app.run();
    assert!(report.nothing_to_do(), "{}", report.render(true));
    assert!(
        report
            .entries
            .iter()
            .all(|e| matches!(e.status, Status::Skipped(_)))
    );
    assert!(
        report.to_string().starts_with("✓ nothing to do:"),
        "{report}"
    );
    assert_eq!(
        server.hits("/rates.csv"),
        1,
        "an intact download is not fetched again"
    );
    assert_eq!(app.snapshot(), before);

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["created"], serde_json::json!([]));
    assert_eq!(json["repaired"], serde_json::json!([]));
    let skipped = json["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), report.entries.len());
    assert!(skipped.iter().any(|s| s["module"] == "billing"
        && s["handler"] == "downloads"
        && s["reason"] == "1 dependency file present with the right sha256"));
}

#[test]
fn a_half_prepared_tree_is_completed_and_repaired() {
    let server = rates_server();
    let app = full_app(&server);
    assert!(app.run().ok);
    // Damage: one table missing (with its index), one directory missing, one
    // corrupt download, one wrong mode; keep data in the surviving table.
    let conn = Connection::open(app.p("data/billing.db")).unwrap();
    conn.execute_batch("INSERT INTO payments (id, invoice) VALUES (7, 1); DROP TABLE invoices;")
        .unwrap();
    drop(conn);
    std::fs::remove_dir_all(app.p("cache/search")).unwrap();
    std::fs::write(app.p("data/billing/rates.csv"), b"truncated").unwrap();
    std::fs::set_permissions(
        app.p("logs/billing"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();

    let report = app.run();
    assert!(report.ok, "{}", report.render(true));
    let changes: Vec<String> = report
        .changes()
        .map(|(e, c)| format!("{:?} {} {} {}", c.kind, e.handler, c.target, c.detail))
        .collect();
    assert!(
        changes.contains(
            &"Repair databases data/billing.db added index invoices_customer, table invoices"
                .to_owned()
        ),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("Create directories cache/search")),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("Create downloads cache/search/logo.png")),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("Repair downloads data/billing/rates.csv sha256 was")),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"Repair directories logs/billing mode 0777 -> 0750".to_owned()),
        "{changes:?}"
    );

    assert_eq!(
        tables(&app.p("data/billing.db")),
        set(&["invoices", "invoices_customer", "payments"])
    );
    let conn = Connection::open(app.p("data/billing.db")).unwrap();
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM payments ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ids,
        vec![0, 7],
        "existing rows are kept; seed INSERTs of kept tables do not run again"
    );
    assert_eq!(
        std::fs::read(app.p("data/billing/rates.csv")).unwrap(),
        RATES
    );
    assert_eq!(server.hits("/rates.csv"), 2);
    assert_eq!(mode(&app.p("logs/billing")), 0o750);
    assert!(app.run().nothing_to_do());
}
