//! `chora prepare` on real files, real SQLite databases and a real HTTP server
//! started on loopback by each test that needs one.

use chora_prepare::{
    Change, Context, Error, Handler, Need, Outcome, Report, Runner, Status, priority,
};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// --- fixtures ----------------------------------------------------------------

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What the test server answers on one path.
#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    Chunked(Vec<u8>),
    Redirect(String),
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
}

/// A tiny HTTP/1.1 server on 127.0.0.1:0 that counts requests per path.
struct Server {
    addr: String,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Server {
    fn start(routes: &[(&str, Reply)]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let routes: BTreeMap<String, Reply> = routes
            .iter()
            .map(|(p, r)| (p.to_string(), r.clone()))
            .collect();
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let counted = hits.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                *counted.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                let reply = routes.get(&path).cloned().unwrap_or(Reply::Status(404));
                let _ = match reply {
                    Reply::Ok(body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        stream
                            .write_all(head.as_bytes())
                            .and_then(|_| stream.write_all(&body))
                    }
                    Reply::Chunked(body) => {
                        let mut out =
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                        for chunk in body.chunks(7) {
                            out.extend(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
                            out.extend(chunk);
                            out.extend(b"\r\n");
                        }
                        out.extend(b"0\r\n\r\n");
                        stream.write_all(&out)
                    }
                    Reply::Redirect(to) => stream.write_all(
                        format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
                        )
                        .as_bytes(),
                    ),
                    Reply::Status(code) => stream.write_all(
                        format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    ),
                    Reply::Hang => {
                        held.push(stream);
                        Ok(())
                    }
                };
            }
        });
        Server { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A URL on a loopback port nothing listens on.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/gone.bin")
}

/// An application root in a temp dir.
struct App {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl App {
    fn new() -> App {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("app");
        std::fs::create_dir_all(&root).unwrap();
        App { _tmp: tmp, root }
    }

    /// Writes `modules/<id>/<name>`.
    fn write(&self, module: &str, name: &str, text: impl AsRef<[u8]>) {
        let p = self.root.join("modules").join(module).join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn ctx(&self) -> Context {
        Context::discover(&self.root)
            .unwrap()
            .with_process_env(false)
            .with_var("REGION", "eu-west")
    }

    fn runner(&self) -> Runner {
        Runner::new(self.ctx()).retry_delay(Duration::from_millis(1))
    }

    fn run(&self) -> Report {
        self.runner().run()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Every path under the root with its size and mode (a snapshot).
    fn snapshot(&self) -> BTreeMap<PathBuf, (u64, u32)> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u64, u32)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                let len = if m.is_dir() { 0 } else { m.len() };
                out.insert(e.path(), (len, m.permissions().mode()));
                if m.is_dir() {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &mut out);
        out
    }

    fn temp_files(&self) -> Vec<PathBuf> {
        self.snapshot()
            .into_keys()
            .filter(|p| p.to_string_lossy().contains("prepare-tmp"))
            .collect()
    }
}

fn tables(db: &Path) -> BTreeSet<String> {
    let conn = Connection::open(db).unwrap();
    let mut s = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

const BILLING_SQL: &str = "-- billing
CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total REAL NOT NULL);
CREATE INDEX invoices_customer ON invoices (customer);
CREATE TABLE payments (id INTEGER PRIMARY KEY, invoice INTEGER NOT NULL);
INSERT INTO payments (id, invoice) VALUES (0, 0);
";

const RATES: &[u8] = b"currency,rate\nEUR,1.0\nUSD,1.08\n";
const LOGO: &[u8] = b"\x89PNG not really";

/// Two modules: billing (YAML: every kind of requirement, a download over
/// HTTP) and search (JSON: a database and a local-path download).
fn full_app(server: &Server) -> App {
    let app = App::new();
    app.write("billing", "schema.sql", BILLING_SQL);
    app.write(
        "billing",
        "templates/billing.json.tmpl",
        "{\"currency\": \"${CURRENCY}\", \"port\": ${PORT}, \"region\": \"${REGION}\", \"module\": \"${MODULE_ID}\"}\n",
    );
    app.write(
        "billing",
        "module.yml",
        format!(
            r#"id: billing
variables:
  PORT: 8080
bootstrap_requirements:
  directories:
    - data/billing
    - path: logs/billing
      mode: "0750"
  files:
    - path: data/billing/.keep
  database:
    path: data/billing.db
    schema: schema.sql
  templates:
    - template: templates/billing.json.tmpl
      target: config/billing.json
      variables: {{CURRENCY: EUR}}
      mode: "0640"
  downloads:
    - url: {}
      target: data/billing/rates.csv
      sha256: {}
"#,
            server.url("/rates.csv"),
            sha(RATES)
        ),
    );
    app.write("search", "assets/logo.png", LOGO);
    app.write(
        "search",
        "index.sql",
        "CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT);\nCREATE TABLE terms (term TEXT, doc TEXT);\n",
    );
    app.write(
        "search",
        "module.json",
        format!(
            r#"{{"bootstrap_requirements": {{
                "directories": ["cache/search"],
                "database": [{{"path": "data/search.db", "schema": "index.sql"}}],
                "downloads": [{{"path": "assets/logo.png", "target": "cache/search/logo.png", "sha256": "{}"}}]
            }}}}"#,
            sha(LOGO)
        ),
    );
    app
}

fn rates_server() -> Server {
    Server::start(&[("/rates.csv", Reply::Ok(RATES.to_vec()))])
}

fn failure(report: &Report) -> &Error {
    report
        .first_failure()
        .unwrap_or_else(|| panic!("expected a failure:\n{}", report.render(true)))
}

// --- cold, warm, repair -------------------------------------------------------

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

// --- failures leave nothing behind --------------------------------------------

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

// --- the runner -----------------------------------------------------------------

/// A handler that records when it runs and can fail a number of times first.
struct Probe {
    name: String,
    priority: i32,
    log: Arc<Mutex<Vec<String>>>,
    fail_first: usize,
    calls: AtomicUsize,
    /// A file that must exist when it runs (proves it ran in its place).
    expects: Option<PathBuf>,
}

impl Probe {
    fn new(name: &str, priority: i32, log: &Arc<Mutex<Vec<String>>>) -> Probe {
        Probe {
            name: name.into(),
            priority,
            log: log.clone(),
            fail_first: 0,
            calls: AtomicUsize::new(0),
            expects: None,
        }
    }
}

impl Handler for Probe {
    fn name(&self) -> &str {
        &self.name
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn should_run(&self, _: &Context) -> Result<Need, Error> {
        Ok(Need::Run(vec![Change::create(&self.name, "probe")]))
    }

    fn run(&self, _: &Context) -> Result<Outcome, Error> {
        self.log.lock().unwrap().push(self.name.clone());
        if let Some(p) = &self.expects {
            assert!(
                p.exists(),
                "{} should exist before {}",
                p.display(),
                self.name
            );
        }
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            return Err(Error::new(format!("{} is not ready yet", self.name)));
        }
        Ok(Outcome::new(vec![Change::create(&self.name, "")]))
    }
}

#[test]
fn priorities_are_honoured_and_custom_handlers_run_in_their_place() {
    let server = rates_server();
    let app = full_app(&server);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut after_db = Probe::new("after-databases", 12, &log);
    after_db.expects = Some(app.p("data/billing.db"));
    let report = app
        .runner()
        .with_handler(Box::new(Probe::new("last", 1000, &log)))
        .with_handler(Box::new(after_db))
        .with_handler(Box::new(Probe::new("first", -1, &log)))
        .with_handler(Box::new(Probe::new("also-12", 12, &log)))
        .run();
    assert!(report.ok, "{}", report.render(true));
    assert_eq!(
        *log.lock().unwrap(),
        ["first", "after-databases", "also-12", "last"]
    );
    let order: Vec<(i32, String)> = report
        .entries
        .iter()
        .map(|e| {
            (
                e.priority,
                format!(
                    "{}{}",
                    e.handler,
                    e.module
                        .as_deref()
                        .map(|m| format!("[{m}]"))
                        .unwrap_or_default()
                ),
            )
        })
        .collect();
    let names: Vec<&str> = order.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "first",
            "directories",
            "directories[billing]",
            "directories[search]",
            "databases[billing]",
            "databases[search]",
            "after-databases",
            "also-12",
            "files[billing]",
            "templates[billing]",
            "downloads[billing]",
            "downloads[search]",
            "last",
        ]
    );
    assert!(order.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(
        (
            priority::DIRECTORIES,
            priority::DATABASES,
            priority::TEMPLATES,
            priority::DOWNLOADS
        ),
        (5, 10, 20, 30)
    );
}

/// Creates a file when it runs.
struct Maker(PathBuf, i32);

impl Handler for Maker {
    fn name(&self) -> &str {
        "maker"
    }
    fn priority(&self) -> i32 {
        self.1
    }
    fn should_run(&self, _: &Context) -> Result<Need, Error> {
        Ok(if self.0.exists() {
            Need::Skip("made".into())
        } else {
            Need::Run(vec![Change::create("made", "")])
        })
    }
    fn run(&self, _: &Context) -> Result<Outcome, Error> {
        std::fs::write(&self.0, "x").unwrap();
        Ok(Outcome::new(vec![Change::create("made", "")]))
    }
}

/// Needed only once the maker's file exists: it must be asked after the maker
/// ran, not before.
struct Follower(PathBuf, PathBuf);

impl Handler for Follower {
    fn name(&self) -> &str {
        "follower"
    }
    fn priority(&self) -> i32 {
        50
    }
    fn should_run(&self, _: &Context) -> Result<Need, Error> {
        Ok(if self.0.exists() && !self.1.exists() {
            Need::Run(vec![Change::create("followed", "")])
        } else {
            Need::Skip("nothing to follow".into())
        })
    }
    fn run(&self, _: &Context) -> Result<Outcome, Error> {
        std::fs::write(&self.1, "y").unwrap();
        Ok(Outcome::new(vec![Change::create("followed", "")]))
    }
}

#[test]
fn should_run_is_asked_after_the_handlers_before_it_ran() {
    let app = App::new();
    let (made, followed) = (app.p("made"), app.p("followed"));
    let runner = || {
        Runner::empty(app.ctx())
            .with_handler(Box::new(Follower(made.clone(), followed.clone())))
            .with_handler(Box::new(Maker(made.clone(), 10)))
    };
    let report = runner().run();
    assert!(report.ok, "{report}");
    assert!(followed.exists(), "{}", report.render(true));
    assert!(runner().run().nothing_to_do());
}

struct Panicky;

impl Handler for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }
    fn should_run(&self, _: &Context) -> Result<Need, Error> {
        Ok(Need::Run(vec![]))
    }
    fn run(&self, _: &Context) -> Result<Outcome, Error> {
        panic!("boom")
    }
}

#[test]
fn a_panicking_handler_is_a_failure_not_a_crash() {
    let app = App::new();
    let report = Runner::empty(app.ctx())
        .with_handler(Box::new(Panicky))
        .run();
    let e = failure(&report);
    assert_eq!(e.handler.as_deref(), Some("panicky"));
    assert!(e.message.contains("panicked: boom"), "{e}");
}

#[test]
fn fail_fast_stops_and_can_be_turned_off() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let app = App::new();
    let failing = || {
        let mut p = Probe::new("broken", 10, &log);
        p.fail_first = usize::MAX;
        p
    };
    let report = Runner::empty(app.ctx())
        .attempts(1)
        .with_handler(Box::new(failing()))
        .with_handler(Box::new(Probe::new("after", 20, &log)))
        .run();
    assert!(!report.ok);
    assert!(
        matches!(&report.entries[1].status, Status::NotRun(why) if why == "not run: broken failed")
    );
    assert_eq!(*log.lock().unwrap(), ["broken"]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["failed"][0]["handler"], "broken");
    assert_eq!(json["failed"][0]["message"], "broken is not ready yet");
    assert_eq!(json["not_run"][0]["handler"], "after");

    log.lock().unwrap().clear();
    let report = Runner::empty(app.ctx())
        .attempts(1)
        .fail_fast(false)
        .with_handler(Box::new(failing()))
        .with_handler(Box::new(Probe::new("after", 20, &log)))
        .run();
    assert!(!report.ok);
    assert_eq!(*log.lock().unwrap(), ["broken", "after"]);
    assert!(matches!(report.entries[1].status, Status::Done(_)));
}

#[test]
fn a_failed_handler_is_retried() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let app = App::new();
    let flaky = |n| {
        let mut p = Probe::new("flaky", 10, &log);
        p.fail_first = n;
        p
    };
    let report = Runner::empty(app.ctx())
        .attempts(3)
        .retry_delay(Duration::from_millis(1))
        .with_handler(Box::new(flaky(2)))
        .run();
    assert!(report.ok, "{report}");
    assert_eq!(report.entries[0].attempts, 3);

    let report = Runner::empty(app.ctx())
        .attempts(2)
        .retry_delay(Duration::from_millis(1))
        .with_handler(Box::new(flaky(2)))
        .run();
    assert!(!report.ok);
    assert_eq!(report.entries[0].attempts, 2);
}

#[test]
fn the_timeout_bounds_the_phase() {
    let server = Server::start(&[("/slow.bin", Reply::Hang)]);
    let app = App::new();
    app.write(
        "vision",
        "module.yml",
        format!(
            "bootstrap_requirements:\n  downloads:\n    - url: {}\n      target: slow.bin\n      sha256: {}\n",
            server.url("/slow.bin"),
            sha(b"x")
        ),
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let report = app
        .runner()
        .timeout(Duration::from_millis(300))
        .with_handler(Box::new(Probe::new("after", 200, &log)))
        .run();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    let e = failure(&report);
    assert_eq!(e.module.as_deref(), Some("vision"));
    assert!(e.message.contains("timed out"), "{e}");
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing starts after the deadline"
    );
    assert!(!app.p("slow.bin").exists());
    assert!(app.temp_files().is_empty());
}

#[test]
fn a_dry_run_lists_everything_and_changes_nothing() {
    let server = rates_server();
    let app = full_app(&server);
    let before = app.snapshot();
    let report = app.runner().dry_run(true).run();
    assert!(report.ok, "{report}");
    assert!(report.dry_run);
    assert_eq!(app.snapshot(), before, "a dry run changes nothing");
    assert_eq!(server.hits("/rates.csv"), 0);
    let text = report.to_string();
    assert!(
        text.contains(
            "• databases [billing]: would create data/billing.db (tables: invoices, payments)"
        ),
        "{text}"
    );
    assert!(
        text.contains("• downloads [billing]: would create data/billing/rates.csv"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["planned"].as_array().unwrap().len() >= 12, "{json}");
    assert_eq!(json["created"], serde_json::json!([]));

    // After a real run, a dry run of a damaged tree lists the repairs.
    assert!(app.run().ok);
    std::fs::remove_dir(app.p("temp")).unwrap();
    let before = app.snapshot();
    let report = app.runner().dry_run(true).run();
    assert_eq!(app.snapshot(), before);
    let planned: Vec<_> = report.changes().map(|(_, c)| c.target.clone()).collect();
    assert_eq!(planned, ["temp"]);
}

#[test]
fn a_manifest_without_modules_dir_still_gets_standard_directories() {
    let app = App::new();
    let report = app.run();
    assert!(report.ok);
    for d in chora_prepare::STANDARD_DIRS {
        assert!(app.p(d).is_dir());
    }
    assert!(app.run().nothing_to_do());
}

#[test]
fn two_modules_may_share_a_database() {
    let app = App::new();
    for (m, table) in [("a", "alpha"), ("b", "beta"), ("c", "gamma")] {
        app.write(
            m,
            "s.sql",
            format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY);\n"),
        );
        app.write(
            m,
            "module.yml",
            "bootstrap_requirements:\n  database: {path: data/shared.db, schema: s.sql}\n",
        );
    }
    let report = app.run();
    assert!(report.ok, "{}", report.render(true));
    assert_eq!(
        tables(&app.p("data/shared.db")),
        set(&["alpha", "beta", "gamma"])
    );
    assert!(app.run().nothing_to_do());
}

#[test]
fn one_failing_module_stops_the_later_priorities() {
    let app = App::new();
    for i in 0..12 {
        let m = format!("m{i:02}");
        let sql = if i == 5 {
            "CREATE TABLE oops (;\n"
        } else {
            "CREATE TABLE t (id);\n"
        };
        app.write(&m, "s.sql", sql);
        app.write(
            &m,
            "module.yml",
            format!("bootstrap_requirements:\n  database: {{path: data/{m}.db, schema: s.sql}}\n  files: [data/{m}.txt]\n"),
        );
    }
    let report = app.run();
    let e = failure(&report);
    assert_eq!(e.module.as_deref(), Some("m05"));
    assert_eq!(report.failures().count(), 1);
    for entry in report.entries.iter().filter(|e| e.handler == "files") {
        assert!(
            matches!(&entry.status, Status::NotRun(why) if why == "not run: databases [m05] failed")
        );
    }
    assert!(!app.p("data/m05.db").exists());
    assert!(app.temp_files().is_empty());
}
