//! The runner: priorities, custom handlers, panics, fail fast, retries, the
//! timeout, dry runs.

use crate::fixtures::*;
use chora_prepare::{Change, Context, Error, Handler, Need, Outcome, Runner, Status, priority};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
