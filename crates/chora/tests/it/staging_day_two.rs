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
