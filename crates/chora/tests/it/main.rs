//! chora's one integration test binary: every test runs the real `chora` binary
//! in a temp dir, over real sockets, and kills what it started even when it fails
//! (the captured output of every process is printed then).

mod anyprogram;
mod bootstrap;
mod capabilities;
mod day_two;
mod ecosystem;
mod fencing;
mod fleet;
mod gateway;
mod image;
mod infra;
mod infra_swarm;
mod manifest_api;
mod manifest_auth;
mod manifest_cli;
mod manifest_durability;
mod manifest_etcd;
mod prepare;
mod prod;
mod prometheus;
mod staging;
mod staging_day_two;
mod tls;
mod ui;

use chora_testkit::{Server, spawn_server};
use serde_json::Value;
use std::path::Path;
use tempfile::TempDir;

/// Runs each listed `async fn name(b: Backend)` once on SQLite and once on etcd,
/// as `…::sqlite::name` and `…::etcd::name`.
#[macro_export]
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::Backend::sqlite()).await
            })*
        }
        mod etcd {
            $(#[tokio::test]
            async fn $name() {
                let test = format!(
                    "{}::{}",
                    module_path!().trim_start_matches("it::"),
                    stringify!($name)
                );
                let Some(b) = $crate::Backend::etcd(&test) else { return };
                super::$name(b).await
            })*
        }
    };
}

/// Container-heavy tests (each brings up a whole staging or prod system, and
/// asserts how fast it notices a fault) hold this for their lifetime, so that
/// two of them never share the machine's cores: a bound like "out of discovery
/// within 1 s" then measures chora, not the neighbour.
pub static ONE_SYSTEM_AT_A_TIME: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

/// A turn of [`ONE_SYSTEM_AT_A_TIME`], waited for (from a blocking context).
/// The test hosts' tests (infra, the fleet) take it too: each runs several
/// dockerds and asserts fault timings of its own.
pub fn one_system_turn() -> tokio::sync::OwnedMutexGuard<()> {
    ONE_SYSTEM_AT_A_TIME.clone().blocking_lock_owned()
}

pub fn chora_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chora"))
}

/// Where a test registry keeps its instances. The contract suite runs every
/// test once per backend.
#[derive(Clone)]
pub enum Backend {
    Sqlite,
    /// An etcd cluster started for the test, and its `--storage` argument.
    Etcd {
        storage: String,
        cluster: std::sync::Arc<std::sync::Mutex<chora_testkit::EtcdCluster>>,
    },
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite
    }

    /// An etcd backend, or `None` (with the reason printed) where etcd is not
    /// installed and not required.
    pub fn etcd(test: &str) -> Option<Backend> {
        chora_testkit::etcd_available(test)
            .then(|| Backend::on(chora_testkit::EtcdCluster::start(1)))
    }

    pub fn on(cluster: chora_testkit::EtcdCluster) -> Backend {
        Backend::Etcd {
            storage: cluster.storage(),
            cluster: std::sync::Arc::new(std::sync::Mutex::new(cluster)),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Etcd { .. } => "etcd",
        }
    }
}

/// A registry process on a free port over a SQLite file in its own temp dir, or
/// over an etcd cluster.
pub struct Registry {
    pub server: Server,
    pub dir: TempDir,
    pub http: reqwest::Client,
    pub backend: Backend,
    extra: Vec<String>,
}

impl Registry {
    /// `chora manifest serve --listen 127.0.0.1:0 --storage sqlite:<dir>/manifest.db`
    /// plus `extra` (e.g. `--no-auth`, `--ttl 0.6`).
    pub fn start(extra: &[&str]) -> Registry {
        Self::start_in(chora_testkit::temp_dir(), "127.0.0.1:0", extra)
    }

    pub fn start_in(dir: TempDir, listen: &str, extra: &[&str]) -> Registry {
        Self::start_on(Backend::Sqlite, dir, listen, extra)
    }

    pub fn start_on(backend: Backend, dir: TempDir, listen: &str, extra: &[&str]) -> Registry {
        let storage = match &backend {
            Backend::Sqlite => format!("sqlite:{}", dir.path().join("manifest.db").display()),
            Backend::Etcd { storage, .. } => storage.clone(),
        };
        let mut args = vec![
            "manifest",
            "serve",
            "--listen",
            listen,
            "--storage",
            &storage,
        ];
        args.extend_from_slice(extra);
        let server = spawn_server(chora_bin(), dir.path(), &args, &[]);
        Registry {
            server,
            dir,
            http: reqwest::Client::new(),
            backend,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// SIGKILLs the registry and starts it again on the same address and storage.
    pub fn kill_and_restart(mut self) -> Registry {
        let addr = self.server.addr.to_string();
        self.server.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Self::start_on(self.backend.clone(), self.dir, &addr, &extra)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.url(), path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        status_json(r).await
    }

    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        status_json(req.send().await.unwrap()).await
    }

    pub async fn put(&self, path: &str, body: Option<&Value>, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.put(self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        status_json(req.send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.delete(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        status_json(req.send().await.unwrap()).await
    }

    /// Registers `name` with a REST interface; returns the instance id.
    pub async fn register(&self, name: &str, tags: &[&str], token: Option<&str>) -> String {
        let (status, body) = self
            .post(
                "/v1/services",
                &serde_json::json!({
                    "name": name, "version": "1.0.0",
                    "interfaces": {"REST": "http://127.0.0.1:9"},
                    "metadata": {"tags": tags},
                }),
                token,
            )
            .await;
        assert_eq!(status, 201, "register {name}: {body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// `GET path` as a blocking read: returns status, body and the new index.
    pub async fn watch(&self, path: &str, index: u64, wait: &str) -> (u16, Value, u64) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = self
            .http
            .get(self.url(&format!("{path}{sep}index={index}&wait={wait}")))
            .send()
            .await
            .unwrap();
        let idx = index_of(&r);
        let (s, v) = status_json(r).await;
        (s, v, idx)
    }
}

pub fn index_of(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("x-chora-index")
        .expect("every GET carries X-Chora-Index")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, v)
}

/// Asserts an error answer: the status and a JSON `{"error", "message"}` body.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert!(got.1["error"].is_string(), "no `error` in {}", got.1);
    assert!(got.1["message"].is_string(), "no `message` in {}", got.1);
}

/// Runs `chora args…` to completion in `dir`; returns (exit code, stdout, stderr).
pub fn run_chora(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(chora_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("MANIFEST_URL")
        .env_remove("CHORA_CREDENTIALS")
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
