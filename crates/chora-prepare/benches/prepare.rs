//! `chora prepare` on a tree of 50 modules, cold (everything to create) and warm
//! (nothing to do). Plain std timing; prints a table.
//!
//! cargo bench -p chora-prepare --bench prepare
//! PREPARE_BENCH_MODULES=50 PREPARE_BENCH_COLD=15 PREPARE_BENCH_WARM=51 PREPARE_BENCH_DIR=/path

use chora_prepare::{Context, Runner};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `n` modules under `root/modules`: each with two directories (one with
/// a mode), a database of two tables and an index, a JSON template and a 4 KiB
/// local-path download.
fn build_tree(root: &Path, n: usize) {
    let asset: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&asset));
    for i in 0..n {
        let id = format!("mod{i:02}");
        let dir = root.join("modules").join(&id);
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("assets/asset.bin"), &asset).unwrap();
        std::fs::write(
            dir.join("schema.sql"),
            format!(
                "CREATE TABLE {id}_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL);\n\
                 CREATE INDEX {id}_items_name ON {id}_items (name);\n\
                 CREATE TABLE {id}_events (id INTEGER PRIMARY KEY, item INTEGER NOT NULL, kind TEXT NOT NULL);\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.json.tmpl"),
            "{\"module\": \"${MODULE_ID}\", \"port\": ${PORT}, \"db\": \"data/${MODULE_ID}.db\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("module.yml"),
            format!(
                "id: {id}\nvariables:\n  PORT: {port}\nbootstrap_requirements:\n  directories:\n    - data/{id}\n    - path: logs/{id}\n      mode: \"0750\"\n  database:\n    path: data/{id}.db\n    schema: schema.sql\n  templates:\n    - template: config.json.tmpl\n      target: config/{id}.json\n  downloads:\n    - path: assets/asset.bin\n      target: data/{id}/asset.bin\n      sha256: {sha}\n",
                port = 9000 + i
            ),
        )
        .unwrap();
    }
}

/// One `chora prepare`: discover the modules, run every handler.
fn prepare(root: &Path) -> (Duration, chora_prepare::Report) {
    let start = Instant::now();
    let ctx = Context::discover(root)
        .expect("discover")
        .with_process_env(false);
    let report = Runner::new(ctx).run();
    (start.elapsed(), report)
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]))
}

fn main() {
    let n = env_usize("PREPARE_BENCH_MODULES", 50);
    let cold_runs = env_usize("PREPARE_BENCH_COLD", 15);
    let warm_runs = env_usize("PREPARE_BENCH_WARM", 51);
    let base: PathBuf = std::env::var("PREPARE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).unwrap();

    let mut cold = Vec::new();
    let mut last_cold = None;
    for _ in 0..cold_runs {
        let tmp = tempfile::tempdir_in(&base).unwrap();
        build_tree(tmp.path(), n);
        let (d, report) = prepare(tmp.path());
        assert!(report.ok, "{report}");
        if std::env::var("PREPARE_BENCH_BREAKDOWN").is_ok() {
            let mut by: std::collections::BTreeMap<String, Duration> = Default::default();
            for e in &report.entries {
                *by.entry(e.handler.clone()).or_default() += e.duration;
            }
            eprintln!(
                "cold {:.1} ms; summed per handler {by:?}",
                d.as_secs_f64() * 1000.0
            );
        }
        cold.push(d);
        last_cold = Some(report);
    }
    let cold_report = last_cold.expect("at least one cold run");

    let tmp = tempfile::tempdir_in(&base).unwrap();
    build_tree(tmp.path(), n);
    assert!(prepare(tmp.path()).1.ok);
    let mut warm = Vec::new();
    let mut last_warm = None;
    for _ in 0..warm_runs {
        let (d, report) = prepare(tmp.path());
        assert!(report.nothing_to_do(), "{report}");
        warm.push(d);
        last_warm = Some(report);
    }
    let warm_report = last_warm.expect("at least one warm run");
    if std::env::var("PREPARE_BENCH_BREAKDOWN").is_ok() {
        for _ in 0..5 {
            breakdown(tmp.path());
        }
    }

    let (cm, cmin, cmax) = stats(cold);
    let (wm, wmin, wmax) = stats(warm);
    let handlers = cold_report.entries.len();
    let changes = cold_report.changes().count();
    println!(
        "chora prepare, {n} modules ({handlers} handlers), tree in {}",
        base.display()
    );
    println!("| run  | runs | median ms | min ms | max ms | goal ms | met |");
    println!("|------|-----:|----------:|-------:|-------:|--------:|-----|");
    let row = |name: &str, runs: usize, m: f64, lo: f64, hi: f64, goal: f64| {
        println!(
            "| {name} | {runs:>4} | {m:>9.2} | {lo:>6.2} | {hi:>6.2} | {goal:>7.0} | {} |",
            if m < goal { "yes" } else { "NO" }
        )
    };
    row("cold", cold_runs, cm, cmin, cmax, 500.0);
    row("warm", warm_runs, wm, wmin, wmax, 20.0);
    println!(
        "cold: {changes} changes; last line: {}",
        cold_report.to_string().lines().last().unwrap_or_default()
    );
    println!("warm: {}", warm_report.to_string().trim_end());
}

/// Where a warm run's time goes (PREPARE_BENCH_BREAKDOWN=1).
fn breakdown(root: &Path) {
    let t = Instant::now();
    let ctx = Context::discover(root).unwrap().with_process_env(false);
    let d = t.elapsed();
    let report = Runner::new(ctx).run();
    let mut by: std::collections::BTreeMap<String, Duration> = Default::default();
    for e in &report.entries {
        *by.entry(e.handler.clone()).or_default() += e.duration;
    }
    eprintln!("discover {d:?} run {:?} {by:?}", report.duration);
}
