//! The fleet (DESIGN.md §13): `chora bootstrap --environment prod --inventory`
//! on three test hosts that `chora infra bootstrap` itself prepared (Docker,
//! a WireGuard mesh, a swarm of three managers), from this machine over SSH.
//! One fleet at a time (it holds the prod/staging turn); every host, network
//! and image tag it makes goes when its guards drop, pass or fail.

mod change;
mod common;
mod dashboard;
mod faults;
mod fifty;

use crate::infra_swarm::answers;
use crate::prod::Prod;
use chora_testkit::infra_host;
use common::{cold_bootstrap, image_service, nodes_of, settle, three_prepared_hosts};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Three fresh hosts → `chora infra bootstrap` → `chora bootstrap --inventory`:
/// every unit a Swarm service of the stack, placed as §13 says (an etcd
/// member and a Manifest node on each host, the gateway on every host and
/// the only port answering on a host's address, the orchestrator on a
/// manager), each Manifest node under its own instance id; validation
/// passes from this machine through the door, and so does the dashboard
/// (`chora bootstrap ui`); a restarted orchestrator leaves the capabilities
/// running and adopts them; a re-run changes nothing; reset leaves no
/// service or network of the stack.
#[test]
fn three_prepared_hosts_run_prod_as_a_swarm_and_validate() {
    let test = "fleet::three_prepared_hosts_run_prod_as_a_swarm_and_validate";
    if !infra_host::available(test) {
        return;
    }
    // The hosts' dockerds and the fault timings want the machine: no other
    // system of this run beside them.
    let turn = crate::one_system_turn();
    let (kit, inv) = three_prepared_hosts();

    let p = Prod::new_in(turn);
    // Beside the built-ins, any program from an image of its own (here the
    // chora image running a Manifest on SQLite), registered on its behalf:
    // its image must reach the hosts.
    let notes = image_service("notes", &p.image, chora_testkit::free_port(), 60);
    let (cold, out) = cold_bootstrap(&kit, &p, &inv, &notes, |c| c);
    println!(
        "BENCH 3 prepared hosts -> healthy prod, cold|{:.1} s|< 30 s",
        cold.as_secs_f64()
    );
    assert!(out.contains("Phase 4"), "{out}");
    let config = std::fs::read_to_string(p.home().join("bootstrap-config.yml")).unwrap();
    assert!(
        config.contains(&format!("inventory: \"{}\"", inv.display())),
        "{config}"
    );

    // Every unit a service of the stack, placed as §13 says.
    let s1 = kit.host("f-1");
    let services = s1.sh(&format!(
        "docker service ls --filter label=com.docker.stack.namespace={} --format '{{{{.Name}}}} {{{{.Mode}}}}' | sort",
        p.project
    ));
    for unit in [
        "notes",
        "etcd-1",
        "etcd-2",
        "etcd-3",
        "manifest-1",
        "manifest-2",
        "manifest-3",
        "orchestrator",
        "analyzer",
    ] {
        assert!(
            services.contains(&format!("{}_{unit} replicated", p.project)),
            "{unit}: {services}"
        );
    }
    assert!(
        services.contains(&format!("{}_gateway global", p.project)),
        "{services}"
    );
    let node_of = |unit: &str| {
        s1.sh(&format!(
            "docker service ps {}_{unit} --filter desired-state=running --format '{{{{.Node}}}}'",
            p.project
        ))
    };
    for (i, h) in ["f-1", "f-2", "f-3"].iter().enumerate() {
        assert_eq!(node_of(&format!("etcd-{}", i + 1)), *h);
        assert_eq!(node_of(&format!("manifest-{}", i + 1)), *h);
    }
    let mtu = s1.sh(&format!(
        "docker network inspect {} --format '{{{{index .Options \"com.docker.network.driver.mtu\"}}}} {{{{.Attachable}}}} {{{{.Driver}}}}'",
        p.project
    ));
    assert_eq!(mtu, "1370 true overlay");
    // The gateway answers on every host's address; nothing else does.
    let gateway = p.port("gateway");
    for n in ["f-1", "f-2", "f-3"] {
        let ip = kit.host(n).ip.clone();
        assert!(answers(&ip, gateway), "{n}: the gateway does not answer");
        for other in [p.manifest_port, p.port("orchestrator"), 2379] {
            assert!(!answers(&ip, other), "{n}: port {other} answers on {ip}");
        }
    }
    // Each Manifest node registered under an id of its own: asked through
    // the gateway on another host than the one the door is on.
    let f2 = kit.host("f-2").ip.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nodes: Value = rt.block_on(async {
        reqwest::get(format!(
            "http://{f2}:{gateway}/api/v1/manifest/v1/services/manifest"
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    });
    let ids: std::collections::BTreeSet<String> = nodes["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{nodes}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{nodes}");

    let (code, out, err) = p.run(&["bootstrap", "validate"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let st: Value = p.status();
    assert_eq!(st["overall_status"], "healthy", "{st}");
    // Operating it from here: the host of each unit, its logs.
    let unit = |name: &str| {
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {st}"))
    };
    assert_eq!(unit("manifest-2")["host"], "f-2", "{st}");
    assert_eq!(unit("gateway")["host"], "f-1,f-2,f-3", "{st}");
    let (code, out, err) = p.run(&["ps"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("on f-3"), "{out}");
    let (code, out, err) = p.run(&["logs", "manifest-1", "--tail", "5"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.trim().is_empty(), "no log lines\n{err}");
    dashboard::dashboard(&p);
    // A unit of phase 1 restarted from here, one of phase 3 through the
    // orchestrator; a rollback to phase 2 and a bootstrap bring phase 3 back.
    for unit in ["manifest-3", "analyzer"] {
        let (code, out, err) = p.run(&["restart", unit]);
        assert_eq!(code, 0, "{unit}: {out}\n{err}");
    }
    settle(&p);
    assert_eq!(nodes_of(&kit, &p.project, "manifest-3"), ["f-3"]);
    // The orchestrator restarted (as Swarm would after a failed health
    // check, or a rolling update of it): Swarm keeps the capabilities; they
    // run on, the same tasks, and the new orchestrator adopts them.
    let tasks = || {
        s1.sh(&format!(
            "for s in notes {caps}; do docker service ps -q --filter desired-state=running {pr}_$s; done",
            caps = common::CAPABILITIES.join(" "),
            pr = p.project
        ))
    };
    let before = tasks();
    assert_eq!(before.lines().count(), 6, "{before}");
    let (code, out, err) = p.run(&["restart", "orchestrator"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Healthy means every capability's instance is the orchestrator's
    // again (`status` tells them apart by the ids it gave): adopted.
    settle(&p);
    assert_eq!(tasks(), before, "the capabilities' tasks changed");
    let (code, out, err) = p.run(&["bootstrap", "rollback", "--to-phase", "2", "--force"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(nodes_of(&kit, &p.project, "analyzer").is_empty());
    let (code, out, err) = p.run(&["bootstrap"]);
    assert_eq!(code, 0, "{out}\n{err}");
    settle(&p);

    // A re-run changes nothing.
    let t = Instant::now();
    let (code, out, err) = p.run(&["bootstrap"]);
    assert_eq!(code, 0, "{out}\n{err}");
    println!(
        "BENCH no-op re-run|{:.1} s|< 5 s",
        t.elapsed().as_secs_f64()
    );

    change::rolling_change(&kit, &p);
    faults::faults(&kit, &inv, &p);

    // Reset: no service or network of the stack is left; the swarm stays.
    let (code, out, err) = p.run(&["bootstrap", "reset", "--force"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The swarm forgot them at once; a host drops its copy of the network
    // once its tasks have stopped (their stop grace period).
    let t = Instant::now();
    loop {
        let left = s1.sh(&format!(
            "docker service ls -q --filter label=io.chora.project={pr}; docker network ls -q --filter name=^{pr}$; docker ps -q --filter label=io.chora.project={pr}",
            pr = p.project
        ));
        if left.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{out}\n{err}\nleft: {left}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        s1.sh("docker info --format '{{.Swarm.LocalNodeState}}'"),
        "active"
    );
}
