//! Failures name their module, file and line and leave nothing half made.

use crate::fixtures::*;
use chora_prepare::Context;

#[test]
fn a_bad_schema_names_module_file_and_statement_and_leaves_no_database() {
    let app = App::new();
    app.write(
        "ledger",
        "module.yml",
        "bootstrap_requirements:\n  database: {path: data/ledger.db, schema: ledger.sql}\n",
    );
    app.write(
        "ledger",
        "ledger.sql",
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY);\n\nCREATE TABLE entries (id INTEGER PRIMARY KEY,\n  account INTEGER REFERENCES accounts(id)\n  amount NUMERIC);\n",
    );
    let report = app.run();
    assert!(!report.ok);
    let e = failure(&report);
    assert_eq!(e.module.as_deref(), Some("ledger"));
    assert_eq!(e.handler.as_deref(), Some("databases"));
    assert!(e.message.contains("ledger.sql"), "{e}");
    assert!(e.message.contains("statement 2 (line 3)"), "{e}");
    assert!(
        e.message
            .contains("CREATE TABLE entries (id INTEGER PRIMARY KEY,"),
        "{e}"
    );
    assert!(e.message.contains("syntax error"), "{e}");
    assert_eq!(e.location.as_ref().unwrap().line, 3);
    assert!(
        e.action.as_ref().unwrap().contains("nothing was created"),
        "{e:?}"
    );
    assert!(!app.p("data/ledger.db").exists());
    assert!(app.temp_files().is_empty(), "{:?}", app.temp_files());
    let text = report.to_string();
    assert!(text.contains("✗ databases [ledger]: schema"), "{text}");
    assert!(text.contains("    → Fix the statement in"), "{text}");
    assert!(!failure(&report).retryable);
    let db = report
        .entries
        .iter()
        .find(|e| e.handler == "databases")
        .unwrap();
    assert_eq!(db.attempts, 1, "a bad schema is not retried");
}

#[test]
fn a_schema_that_fails_on_an_existing_database_changes_nothing() {
    let app = App::new();
    app.write(
        "ledger",
        "module.yml",
        "bootstrap_requirements:\n  database: {path: data/ledger.db, schema: ledger.sql}\n",
    );
    app.write(
        "ledger",
        "ledger.sql",
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY);\n",
    );
    assert!(app.run().ok);
    // A new version of the schema adds a table, then an index on a column
    // that does not exist: the table must not be kept either.
    app.write(
        "ledger",
        "ledger.sql",
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY);\nCREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC);\nCREATE INDEX entries_x ON entries (nope);\n",
    );
    let report = app.run();
    let e = failure(&report);
    assert!(e.message.contains("statement 3 (line 3)"), "{e}");
    assert!(e.message.contains("no such column: nope"), "{e}");
    assert!(
        e.action
            .as_ref()
            .unwrap()
            .contains("nothing was changed in"),
        "{e:?}"
    );
    assert_eq!(tables(&app.p("data/ledger.db")), set(&["accounts"]));
}

#[test]
fn an_unreachable_url_fails_naming_the_module_and_leaves_nothing() {
    let app = App::new();
    let url = dead_url();
    app.write(
        "vision",
        "module.yml",
        format!(
            "bootstrap_requirements:\n  downloads:\n    - url: {url}\n      target: data/vision/model.bin\n      sha256: {}\n",
            sha(b"weights")
        ),
    );
    let report = app.runner().attempts(2).run();
    let e = failure(&report);
    assert_eq!(e.module.as_deref(), Some("vision"));
    assert_eq!(e.handler.as_deref(), Some("downloads"));
    assert!(e.message.contains(&url), "{e}");
    assert!(e.message.contains("refused"), "{e}");
    let action = e.action.as_deref().unwrap();
    assert!(
        action.contains("reachable") && action.contains("data/vision/model.bin"),
        "{action}"
    );
    let entry = report
        .entries
        .iter()
        .find(|e| e.handler == "downloads")
        .unwrap();
    assert_eq!(entry.attempts, 2, "a network failure is retried");
    assert!(!app.p("data/vision/model.bin").exists());
    assert!(app.temp_files().is_empty());
}

#[test]
fn a_hash_mismatch_fails_and_leaves_no_partial_file() {
    let server = Server::start(&[("/model.bin", Reply::Ok(b"tampered".to_vec()))]);
    let app = App::new();
    app.write(
        "vision",
        "module.yml",
        format!(
            "bootstrap_requirements:\n  downloads:\n    - url: {}\n      target: data/vision/model.bin\n      sha256: {}\n",
            server.url("/model.bin"),
            sha(b"weights")
        ),
    );
    let report = app.run();
    let e = failure(&report);
    assert_eq!(e.module.as_deref(), Some("vision"));
    assert!(e.message.contains("sha256 mismatch"), "{e}");
    assert!(
        e.message.contains(&sha(b"weights")) && e.message.contains(&sha(b"tampered")),
        "{e}"
    );
    assert!(e.action.as_deref().unwrap().contains("nothing was written"));
    assert_eq!(server.hits("/model.bin"), 1, "a mismatch is not retried");
    assert!(!app.p("data/vision/model.bin").exists());
    assert!(app.temp_files().is_empty());
    // A corrupt file already there stays as it was (and the run still fails).
    std::fs::write(app.p("data/vision/model.bin"), b"old").unwrap();
    assert!(!app.run().ok);
    assert_eq!(
        std::fs::read(app.p("data/vision/model.bin")).unwrap(),
        b"old"
    );
}

#[test]
fn https_is_refused_clearly() {
    let app = App::new();
    app.write(
        "vision",
        "module.yml",
        format!(
            "bootstrap_requirements:\n  downloads:\n    - url: https://example.invalid/m.bin\n      target: m.bin\n      sha256: {}\n",
            sha(b"x")
        ),
    );
    let e = app.run().first_failure().cloned().unwrap();
    assert!(
        e.message.contains("https is not supported in this build"),
        "{e}"
    );
    assert!(!e.retryable);
}

#[test]
fn redirects_chunked_bodies_and_http_errors() {
    let body = b"0123456789abcdefghijklmnopqrstuvwxyz".to_vec();
    let server = Server::start(&[
        ("/old", Reply::Redirect("/chunked".into())),
        ("/chunked", Reply::Chunked(body.clone())),
        ("/broken", Reply::Status(500)),
    ]);
    let app = App::new();
    app.write(
        "m",
        "module.yml",
        format!(
            "bootstrap_requirements:\n  downloads:\n    - url: {}\n      target: a.bin\n      sha256: {}\n",
            server.url("/old"),
            sha(&body)
        ),
    );
    let report = app.run();
    assert!(report.ok, "{report}");
    assert_eq!(std::fs::read(app.p("a.bin")).unwrap(), body);
    assert_eq!((server.hits("/old"), server.hits("/chunked")), (1, 1));

    app.write(
        "m",
        "module.yml",
        format!(
            "bootstrap_requirements:\n  downloads:\n    - url: {}\n      target: b.bin\n      sha256: {}\n",
            server.url("/broken"),
            sha(&body)
        ),
    );
    let report = app.runner().attempts(3).run();
    assert!(failure(&report).message.contains("HTTP 500"), "{report}");
    assert_eq!(server.hits("/broken"), 3, "a server error is retried");
}

#[test]
fn template_errors_write_nothing() {
    let app = App::new();
    app.write("web", "a.json.tmpl", "{\"port\": ${PORT}}");
    app.write("web", "b.yml.tmpl", "a: [${PORT}\n");
    app.write(
        "web",
        "module.yml",
        "bootstrap_requirements:\n  templates:\n    - {template: a.json.tmpl, target: config/a.json}\n",
    );
    let e = app.run().first_failure().cloned().unwrap();
    assert!(e.message.contains("variable `PORT` is not defined"), "{e}");
    assert_eq!(e.module.as_deref(), Some("web"));
    assert!(e.action.unwrap().contains("config/a.json was not written"));
    assert!(!app.p("config/a.json").exists());

    app.write(
        "web",
        "module.yml",
        "variables: {PORT: 1}\nbootstrap_requirements:\n  templates:\n    - {template: b.yml.tmpl, target: config/b.yml}\n",
    );
    let e = app.run().first_failure().cloned().unwrap();
    assert!(e.message.contains("renders an invalid config/b.yml"), "{e}");
    assert!(!app.p("config/b.yml").exists());
    assert!(app.temp_files().is_empty());

    // An existing configuration is never overwritten, but it is validated.
    std::fs::create_dir_all(app.p("config")).unwrap();
    std::fs::write(app.p("config/b.yml"), "a: {\n").unwrap();
    let e = app.run().first_failure().cloned().unwrap();
    assert!(e.message.contains("config/b.yml is not valid"), "{e}");
    assert!(
        e.action
            .unwrap()
            .contains("delete it to have it written again")
    );
    std::fs::write(app.p("config/b.yml"), "a: hand-edited\n").unwrap();
    assert!(app.run().nothing_to_do());
    assert_eq!(
        std::fs::read_to_string(app.p("config/b.yml")).unwrap(),
        "a: hand-edited\n"
    );
}

#[test]
fn a_malformed_manifest_names_file_line_and_field() {
    let app = App::new();
    app.write(
        "broken",
        "module.yml",
        "bootstrap_requirements:\n  directories:\n    - path: data/x\n      mode: \"0750\"\n      owner: me\n",
    );
    let e = Context::discover(&app.root).unwrap_err();
    let loc = e.location.clone().unwrap();
    assert!(loc.file.ends_with("modules/broken/module.yml"));
    assert_eq!((loc.line, loc.column), (5, 7));
    assert!(
        e.message
            .contains("bootstrap_requirements.directories[0].owner: unknown field `owner`"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("module.yml:5:7: invalid module manifest"),
        "{e}"
    );
    assert_eq!(e.module.as_deref(), Some("broken"));
}

#[test]
fn two_modules_cannot_own_one_file() {
    let app = App::new();
    for m in ["a", "b"] {
        app.write(
            m,
            "module.yml",
            "bootstrap_requirements:\n  files: [config/shared.txt]\n  directories: [data/shared]\n",
        );
    }
    let e = Context::discover(&app.root).unwrap_err();
    assert!(
        e.message
            .contains("config/shared.txt is declared by both module a and module b"),
        "{e}"
    );
}

#[test]
fn files_are_created_once_and_never_overwritten() {
    let app = App::new();
    app.write(
        "flags",
        "module.yml",
        "bootstrap_requirements:\n  files:\n    - path: config/flags.txt\n      content: \"beta=off\\n\"\n      mode: \"0600\"\n",
    );
    assert!(app.run().ok);
    assert_eq!(
        std::fs::read_to_string(app.p("config/flags.txt")).unwrap(),
        "beta=off\n"
    );
    assert_eq!(mode(&app.p("config/flags.txt")), 0o600);
    std::fs::write(app.p("config/flags.txt"), "beta=on\n").unwrap();
    assert!(app.run().nothing_to_do());
    assert_eq!(
        std::fs::read_to_string(app.p("config/flags.txt")).unwrap(),
        "beta=on\n"
    );
}
