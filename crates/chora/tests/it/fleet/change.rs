//! A rolling change of one capability (its `env` and `replicas`), and a new
//! version that fails its health check.

use super::common::nodes_of;
use crate::prod::Prod;
use chora_testkit::infra_host::HostKit;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Each service of the stack as `name id version` lines (a service replaced
/// or updated changes its id or its version).
fn service_versions(kit: &HostKit, project: &str) -> Vec<String> {
    kit.host("f-1")
        .sh(&format!(
            "docker service ls -q --filter label=io.chora.project={project} | xargs docker service inspect --format '{{{{.Spec.Name}}}} {{{{.ID}}}} {{{{.Version.Index}}}}' | sort"
        ))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A changed `env` and `replicas: 2` of one capability, then `chora
/// bootstrap`: that service alone is replaced while a reader through the
/// gateway of another host sees no error, and runs as two tasks on two
/// hosts, each registered under an id and address of its own; a new version
/// that fails its health check gives way to the old one and the run exits 4
/// naming it.
pub(super) fn rolling_change(kit: &HostKit, p: &Prod) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let config_path = p.home().join("bootstrap-config.yml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let block = "  analyzer:\n    phase: 3\n";
    assert!(config.contains(block), "{config}");
    let before = service_versions(kit, &p.project);
    let url = format!(
        "http://{}:{}/api/v1/analyzer/health",
        kit.host("f-2").ip,
        p.port("gateway")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let good = rt.block_on(async {
                    http.get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                });
                if good { &ok } else { &errors }.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    p.write_config(&config.replace(
        block,
        &format!("{block}    replicas: 2\n    env: {{CHORA_ROLL: \"2\"}}\n"),
    ));
    let t = Instant::now();
    let (code, out, err) = p.run(&["bootstrap"]);
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!(
        "BENCH rolling change of one capability (env, replicas 1 → 2)|{:.1} s|gateway errors {errors} of {}",
        took.as_secs_f64(),
        ok + errors
    );
    assert_eq!(errors, 0, "{ok} requests answered, {errors} failed\n{out}");
    let after = service_versions(kit, &p.project);
    let untouched = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !l.starts_with(&format!("{}_analyzer", p.project)))
            .cloned()
            .collect()
    };
    assert_eq!(untouched(&before), untouched(&after), "{out}");
    assert_ne!(before, after, "analyzer was not replaced\n{out}");
    assert!(out.contains("replicas 1 → 2"), "{out}");
    // Swarm's own rolling update, one task at a time, not a stand-in.
    assert!(out.contains("analyzer replaced (rolling"), "{out}");
    // Two tasks on two hosts, each in discovery under its own id and address.
    let mut hosts = nodes_of(kit, &p.project, "analyzer");
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    let st = p.status();
    let analyzer = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "analyzer")
        .cloned()
        .unwrap();
    assert_eq!(analyzer["host"], hosts.join(","), "{st}");
    let listed: Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::get(format!(
            "http://{}:{}/api/v1/manifest/v1/services/analyzer",
            kit.host("f-3").ip,
            p.port("gateway")
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    });
    let up: Vec<(String, String)> = listed["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter(|i| i["status"] == "up")
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["interfaces"]["REST"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(up.len(), 2, "{listed}");
    assert_ne!(up[0].0, up[1].0, "{listed}");
    assert_ne!(up[0].1, up[1].1, "{listed}");

    // A new version that never passes its health check.
    let good = std::fs::read_to_string(&config_path).unwrap();
    let port = p.port("analyzer");
    let broken = good
        .replace(
            "    env: {CHORA_ROLL: \"2\"}\n",
            &format!("    env: {{CHORA_ROLL: \"3\"}}\n    health_endpoint: http://127.0.0.1:{port}/nope\n"),
        )
        .replace(
            &format!("    port: {port}\n    timeout: 30\n"),
            &format!("    port: {port}\n    timeout: 5\n"),
        );
    assert_ne!(broken, good);
    p.write_config(&broken);
    let (code, out, err) = p.run(&["bootstrap"]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(err.contains("`analyzer`"), "{err}");
    p.write_config(&good);
    assert_eq!(
        untouched(&service_versions(kit, &p.project)),
        untouched(&before)
    );
}
