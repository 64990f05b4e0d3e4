//! Day two of a staging system (every service a container, DESIGN.md §14)
//! against the real Docker engine: a changed container is replaced
//! start-first while gateway clients are served, what an earlier system left
//! in a kept registry volume never fails a fresh bootstrap, and a second home
//! with the same project never silently takes the first one's volumes.

use crate::bootstrap::Site;
use crate::day_two::Client;
use crate::staging::{Staging, docker};

fn id_of(s: &Staging, service: &str) -> String {
    let ids = s.containers().remove(service).unwrap_or_default();
    assert_eq!(ids.len(), 1, "{service}: {ids:?}");
    ids[0].clone()
}

#[test]
fn a_changed_container_is_replaced_start_first_while_gateway_clients_keep_being_served() {
    if !chora_testkit::docker_available("a_changed_container_is_replaced_start_first") {
        return;
    }
    let s = Staging::new();
    s.ok(&["bootstrap"]);
    let before = s.containers();
    let port = s.port("analyzer");
    let changed = s.template().replace(
        &format!("    port: {port}\n    timeout: 30\n    dependencies: [manifest, orchestrator]\n\n  executor:"),
        &format!("    port: {port}\n    timeout: 30\n    env: {{GREETING: hello}}\n    dependencies: [manifest, orchestrator]\n\n  executor:"),
    );
    assert_ne!(changed, s.template());
    s.write_config(&changed);
    let client = Client::start(s.port("gateway"));
    client.warm(20);
    let out = s.ok(&["bootstrap"]);
    let (served, failed) = client.finish();
    assert!(out.contains("analyzer replaced (start-first)"), "{out}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        served + failed.len()
    );
    let after = s.containers();
    for (name, ids) in &before {
        if name == "analyzer" {
            assert_ne!(after.get(name), Some(ids), "the analyzer was not replaced");
        } else {
            assert_eq!(
                after.get(name),
                Some(ids),
                "{name} was replaced though it did not change"
            );
        }
    }
    // The stand-in is gone: one container each.
    s.assert_one_container_each();
    let env = docker(&["inspect", "-f", "{{.Config.Env}}", &id_of(&s, "analyzer")]);
    assert!(String::from_utf8_lossy(&env.stdout).contains("GREETING=hello"));
}

#[test]
fn records_an_earlier_system_left_never_fail_a_fresh_bootstrap_and_another_home_never_takes_its_volumes()
 {
    if !chora_testkit::docker_available("records_an_earlier_system_left") {
        return;
    }
    let s = Staging::new();
    s.ok(&["bootstrap"]);
    // The orchestrator dies; reset then removes its capability containers
    // with nobody to deregister them, and keeps the registry's volume.
    let orch = id_of(&s, "orchestrator");
    assert!(docker(&["kill", &orch]).status.success());
    s.ok(&["bootstrap", "reset", "--force"]);
    assert!(s.containers().is_empty(), "{:?}", s.containers());
    let out = s.ok(&["bootstrap"]);
    assert!(out.contains("stale record"), "{out}");
    assert!(out.contains("Health dashboard"), "{out}");
    s.ok(&["bootstrap", "reset", "--force"]);

    // A second home with the same project: its names are the first home's.
    let other = Site::bare();
    other.write_config(&s.template());
    let (code, out, err) = other.run(&["bootstrap"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let volume = format!("{}-manifest-data", s.project);
    assert!(
        err.contains(&format!(
            "the volume `{volume}` belongs to the chora home {}",
            s.home().display()
        )),
        "{err}"
    );
    assert!(err.contains("`project: <name>`"), "{err}");
    // It made nothing: no container, and the volume is still the first home's.
    let home = other.home().display().to_string();
    let made = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.chora.home={home}"),
    ]);
    assert!(
        made.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&made.stdout)
    );
    let label = docker(&[
        "volume",
        "inspect",
        "-f",
        "{{index .Labels \"io.chora.home\"}}",
        &volume,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&label.stdout).trim(),
        s.home().display().to_string()
    );
}

/// The staging template's own Prometheus (DESIGN §16): a 9th container built
/// from this machine's prometheus, discovering every service through the
/// Manifest, validated as scraping every service up, reached through the
/// gateway at /api/v1/prometheus/, and the orchestrator told where it is.
#[test]
fn a_staging_system_runs_its_own_prometheus_that_scrapes_every_service() {
    if !chora_testkit::docker_available("a_staging_system_runs_its_own_prometheus")
        || !chora_testkit::prometheus_available("a_staging_system_runs_its_own_prometheus")
    {
        return;
    }
    let mut s = Staging::new();
    let tag = crate::prod::prometheus_tag().expect("prometheus says its version");
    if !docker(&["image", "inspect", &tag]).status.success() {
        s.extra_images.push(tag.clone());
    }
    s.write_config(&s.template_with_monitoring());
    let out = s.ok(&["bootstrap"]);
    assert!(
        out.contains(&format!("prometheus image {tag}"))
            || out.contains(&format!("Built prometheus image {tag}")),
        "{out}"
    );
    assert!(out.contains("✓ Metrics scraped"), "{out}");
    let c = s.containers();
    assert_eq!(c.values().map(Vec::len).sum::<usize>(), 9, "{c:?}");
    assert_eq!(c.get("prometheus").map(Vec::len), Some(1), "{c:?}");

    // Through the gateway: every configured service has a target, up.
    let gw = s.port("gateway");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let targets: serde_json::Value = rt.block_on(async {
        reqwest::get(format!(
            "http://127.0.0.1:{gw}/api/v1/prometheus/api/v1/targets?state=active"
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    });
    let up: std::collections::BTreeSet<&str> = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["health"] == "up")
        .filter_map(|t| t["labels"]["service"].as_str())
        .collect();
    for svc in [
        "manifest",
        "orchestrator",
        "gateway",
        "analyzer",
        "logger",
        "prometheus",
    ] {
        assert!(up.contains(svc), "{svc} is not scraped up: {targets}");
    }
    // The orchestrator draws its charts from it.
    let env = docker(&[
        "inspect",
        "-f",
        "{{.Config.Env}}",
        &id_of(&s, "orchestrator"),
    ]);
    assert!(
        String::from_utf8_lossy(&env.stdout)
            .contains("CHORA_PROMETHEUS_URL=http://prometheus:9090"),
        "{}",
        String::from_utf8_lossy(&env.stdout)
    );
    // Prometheus runs with the settings that cut its memory (BENCHMARKS.md,
    // issue 25): its environment and flags, as Docker has them.
    let prom = docker(&[
        "inspect",
        "-f",
        "{{.Config.Env}} {{.Args}}",
        &id_of(&s, "prometheus"),
    ]);
    let seen = String::from_utf8_lossy(&prom.stdout);
    for (k, v) in chora_bootstrap::config::PROMETHEUS_ENV {
        assert!(seen.contains(&format!("{k}={v}")), "{seen}");
    }
    for f in chora_bootstrap::config::PROMETHEUS_FLAGS {
        assert!(seen.contains(f), "{seen}");
    }
}
