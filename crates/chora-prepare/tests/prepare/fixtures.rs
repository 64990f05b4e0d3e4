//! What the tests share: a loopback HTTP server, an application root in a temp
//! dir, a full application with three modules, and small readers.

use chora_prepare::{Context, Error, Report, Runner};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What the test server answers on one path.
#[derive(Clone)]
pub(crate) enum Reply {
    Ok(Vec<u8>),
    Chunked(Vec<u8>),
    Redirect(String),
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
}

/// A tiny HTTP/1.1 server on 127.0.0.1:0 that counts requests per path.
pub(crate) struct Server {
    pub(crate) addr: String,
    pub(crate) hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Server {
    pub(crate) fn start(routes: &[(&str, Reply)]) -> Server {
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

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    pub(crate) fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A URL on a loopback port nothing listens on.
pub(crate) fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/gone.bin")
}

/// An application root in a temp dir.
pub(crate) struct App {
    _tmp: tempfile::TempDir,
    pub(crate) root: PathBuf,
}

impl App {
    pub(crate) fn new() -> App {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("app");
        std::fs::create_dir_all(&root).unwrap();
        App { _tmp: tmp, root }
    }

    /// Writes `modules/<id>/<name>`.
    pub(crate) fn write(&self, module: &str, name: &str, text: impl AsRef<[u8]>) {
        let p = self.root.join("modules").join(module).join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub(crate) fn ctx(&self) -> Context {
        Context::discover(&self.root)
            .unwrap()
            .with_process_env(false)
            .with_var("REGION", "eu-west")
    }

    pub(crate) fn runner(&self) -> Runner {
        Runner::new(self.ctx()).retry_delay(Duration::from_millis(1))
    }

    pub(crate) fn run(&self) -> Report {
        self.runner().run()
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Every path under the root with its size and mode (a snapshot).
    pub(crate) fn snapshot(&self) -> BTreeMap<PathBuf, (u64, u32)> {
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

    pub(crate) fn temp_files(&self) -> Vec<PathBuf> {
        self.snapshot()
            .into_keys()
            .filter(|p| p.to_string_lossy().contains("prepare-tmp"))
            .collect()
    }
}

pub(crate) fn tables(db: &Path) -> BTreeSet<String> {
    let conn = Connection::open(db).unwrap();
    let mut s = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub(crate) fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

pub(crate) const BILLING_SQL: &str = "-- billing
CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total REAL NOT NULL);
CREATE INDEX invoices_customer ON invoices (customer);
CREATE TABLE payments (id INTEGER PRIMARY KEY, invoice INTEGER NOT NULL);
INSERT INTO payments (id, invoice) VALUES (0, 0);
";

pub(crate) const RATES: &[u8] = b"currency,rate\nEUR,1.0\nUSD,1.08\n";
pub(crate) const LOGO: &[u8] = b"\x89PNG not really";

/// Two modules: billing (YAML: every kind of requirement, a download over
/// HTTP) and search (JSON: a database and a local-path download).
pub(crate) fn full_app(server: &Server) -> App {
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

pub(crate) fn rates_server() -> Server {
    Server::start(&[("/rates.csv", Reply::Ok(RATES.to_vec()))])
}

pub(crate) fn failure(report: &Report) -> &Error {
    report
        .first_failure()
        .unwrap_or_else(|| panic!("expected a failure:\n{}", report.render(true)))
}
