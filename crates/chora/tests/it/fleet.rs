//! The fleet (DESIGN.md §13): `chora bootstrap --environment prod --inventory`
//! on three test hosts that `chora infra bootstrap` itself prepared (Docker,
//! a WireGuard mesh, a swarm of three managers), from this machine over SSH.
//! One fleet at a time (it holds the prod/staging turn); every host, network
//! and image tag it makes goes when its guards drop, pass or fail.

use crate::infra::bootstrap as infra_bootstrap;
use crate::infra_swarm::{answers, inventory};
use crate::prod::{Prod, Window, around_reading, judge};
use chora_testkit::infra_host::{self, HostKit, HostSpec};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Three fresh hosts → `chora infra bootstrap` → `chora bootstrap --inventory`:
/// every unit a Swarm service of the stack, placed as §13 says (an etcd
/// member and a Manifest node on each host, the gateway on every host and
/// the only port answering on a host's address, the orchestrator on a
/// manager), each Manifest node under its own instance id; validation
/// passes from this machine through the door; a re-run changes nothing;
/// reset leaves no service or network of the stack.
#[test]
fn three_prepared_hosts_run_prod_as_a_swarm_and_validate() {
    let test = "fleet::three_prepared_hosts_run_prod_as_a_swarm_and_validate";
    if !infra_host::available(test) {
        return;
    }
    // The hosts' dockerds and the fault timings want the machine: no other
    // system of this run beside them.
    let turn = crate::one_system_turn();
    let spec = |name: &str| HostSpec {
        name: name.into(),
        ..HostSpec::default()
    };
    let kit = HostKit::start(&[spec("f-1"), spec("f-2"), spec("f-3")]);
    let inv = inventory(
        &kit,
        &[("f-1", "{}"), ("f-2", "{}"), ("f-3", "{}")],
        "network: {provider: wireguard}\nswarm: {managers: 3}\n",
    );
    let t = Instant::now();
    let (code, report, err) = infra_bootstrap(&kit, &inv);
    assert_eq!(code, 0, "{report}\n{err}");
    println!(
        "BENCH 3 fresh hosts prepared (chora infra bootstrap)|{:.1} s|-",
        t.elapsed().as_secs_f64()
    );

    let p = Prod::new_in(turn);
    let config = std::fs::read_to_string(p.home().join("bootstrap-config.yml")).unwrap();
    p.write_config(&config.replace("  prometheus: true\n", "  prometheus: false\n"));
    let t = Instant::now();
    let (code, out, err) = p.run(&[
        "bootstrap",
        "--environment",
        "prod",
        "--inventory",
        inv.to_str().unwrap(),
    ]);
    let cold = t.elapsed();
    assert_eq!(code, 0, "{out}\n{err}");
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
    // A unit of phase 1 restarted from here, one of phase 3 through the
    // orchestrator; a rollback to phase 2 and a bootstrap bring phase 3 back.
    for unit in ["manifest-3", "analyzer"] {
        let (code, out, err) = p.run(&["restart", unit]);
        assert_eq!(code, 0, "{unit}: {out}\n{err}");
    }
    settle(&p);
    assert_eq!(nodes_of(&kit, &p.project, "manifest-3"), ["f-3"]);
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

    rolling_change(&kit, &p);
    faults(&kit, &inv, &p);

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

/// Waits until `status` says the system is healthy (after a restart).
fn settle(p: &Prod) {
    let t = Instant::now();
    loop {
        let st = p.status();
        if st["overall_status"] == "healthy" {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not healthy again: {st}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The built-in capabilities the prod template deploys.
const CAPABILITIES: [&str; 5] = ["analyzer", "executor", "storage", "monitor", "logger"];

/// Unpauses a test host when dropped (a hung host comes back, pass or fail).
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = chora_testkit::infra_host::docker_try(&["unpause", &self.0]);
    }
}

/// The hosts unit `unit`'s running tasks are on, as a manager sees them.
fn nodes_of(kit: &HostKit, project: &str, unit: &str) -> Vec<String> {
    let out = kit.host("f-1").sh(&format!(
        "docker service ps {project}_{unit} --filter desired-state=running --format '{{{{.Node}}}} {{{{.CurrentState}}}}' 2>/dev/null || true"
    ));
    out.lines()
        .filter(|l| l.contains("Running"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

/// How many containers of unit `unit` run on the hosts still up.
fn containers_of(kit: &HostKit, project: &str, unit: &str, hosts: &[&str]) -> usize {
    hosts
        .iter()
        .map(|h| {
            kit.host(h)
                .sh(&format!(
                    "docker ps -q --filter label=com.docker.swarm.service.name={project}_{unit}"
                ))
                .lines()
                .count()
        })
        .sum()
}

/// Waits until every unit of `units` answers through the gateway from a task
/// on a host other than `gone`, and returns how long after `at` the last did.
fn back_elsewhere(
    rt: &tokio::runtime::Runtime,
    kit: &HostKit,
    p: &Prod,
    units: &[&str],
    gone: &str,
    at: Instant,
) -> Duration {
    let gateway = p.port("gateway");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut last = Duration::ZERO;
    for u in units {
        loop {
            let moved = nodes_of(kit, &p.project, u).iter().any(|n| n != gone);
            let answers = rt.block_on(async {
                http.get(format!("http://127.0.0.1:{gateway}/api/v1/{u}/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            });
            if moved && answers {
                last = last.max(at.elapsed());
                break;
            }
            assert!(
                at.elapsed() < Duration::from_secs(30),
                "{u} is not back elsewhere"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    last
}

/// The host to fail (f-2 or f-3: f-1 holds the door), the capabilities
/// that run there, and one that does not, for the reader (the first
/// capability when all run there).
fn pick_victim(kit: &HostKit, p: &Prod) -> (&'static str, Vec<&'static str>, &'static str) {
    let on: Vec<(&str, Vec<String>)> = CAPABILITIES
        .into_iter()
        .map(|c| (c, nodes_of(kit, &p.project, c)))
        .collect();
    let there = |h: &str| -> Vec<&'static str> {
        CAPABILITIES
            .into_iter()
            .zip(&on)
            .filter(|(_, (_, nodes))| nodes.iter().any(|n| n == h))
            .map(|(c, _)| c)
            .collect()
    };
    let victim = ["f-3", "f-2"]
        .into_iter()
        .max_by_key(|h| there(h).len())
        .unwrap();
    let ran_there = there(victim);
    let reader = CAPABILITIES
        .into_iter()
        .find(|c| !ran_there.contains(c))
        .unwrap_or(CAPABILITIES[0]);
    eprintln!("failing {victim}, where {ran_there:?} run; reading {reader}");
    (victim, ran_there, reader)
}

/// A hung host (paused 20 s), then a lost one (stopped), each with a writer
/// through the Manifest nodes and a reader through the gateway (prod.rs's
/// `around` and `judge`): the write gap stays ≤ 3 s, no acknowledged
/// registration is lost, the capabilities that ran there answer again from
/// another host within 15 s; the hung host rejoins and nothing runs twice.
fn faults(kit: &HostKit, inv: &std::path::Path, p: &Prod) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    // This test reaches the Manifest nodes and the gateway as the
    // operator's chora does: the door on f-1, over SSH (while no chora
    // command runs: theirs would take the same ports).
    let inventory = chora_infra::Inventory::load(inv).unwrap();
    let door = || {
        let tunnel = rt
            .block_on(chora_infra::tunnel::docker_tunnel(&inventory, "f-1"))
            .unwrap();
        for port in (0..3)
            .map(|i| p.manifest_port + i)
            .chain([p.port("gateway")])
        {
            rt.block_on(tunnel.forward_port(port, port)).unwrap();
        }
        tunnel
    };
    let window = Window {
        before: Duration::from_secs(1),
        after: Duration::from_secs(8),
        // The test's registrations have no heartbeat: those older than the
        // TTL expire by design.
        bench: true,
    };
    let bar = Duration::from_secs(3);
    let (victim, ran_there, reader) = pick_victim(kit, p);
    let container = kit.host(victim).container.clone();

    // A hung host.
    let tunnel = door();
    let mut thaw = None;
    let (rec, at, end) = rt.block_on(around_reading(
        p,
        "hung",
        reader,
        window.before,
        window.after,
        || {
            infra_host::docker(&["pause", &container]);
            thaw = Some(Thaw(container.clone()));
        },
    ));
    let t = rt.block_on(judge(p, "hung host", &rec, at, end, bar, window));
    let back = back_elsewhere(&rt, kit, p, &ran_there, victim, at);
    println!(
        "BENCH hung host (paused 20 s): write gap|{:.1} s|<= 3 s",
        t.gap.as_secs_f64()
    );
    println!(
        "BENCH hung host: {ran_there:?} back in discovery elsewhere|{:.1} s|< 10 s (bound 15 s)",
        back.as_secs_f64()
    );
    assert!(back <= Duration::from_secs(15), "back after {back:?}");
    drop(tunnel);
    std::thread::sleep(Duration::from_secs(20).saturating_sub(at.elapsed()));
    drop(thaw);
    // It rejoins by itself; nothing runs twice; its etcd member catches up.
    let s1 = kit.host("f-1");
    let back_at = Instant::now();
    while s1.sh(&format!(
        "docker node inspect {victim} --format '{{{{.Status.State}}}}'"
    )) != "ready"
    {
        assert!(
            back_at.elapsed() < Duration::from_secs(30),
            "{victim} does not rejoin"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = ["f-1", "f-2", "f-3"];
    for c in CAPABILITIES {
        let t = Instant::now();
        while containers_of(kit, &p.project, c, &all) != 1 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{c} runs {} times",
                containers_of(kit, &p.project, c, &all)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Its etcd member caught up: everything healthy again.
    settle(p);

    // A lost host: stopped, as a machine that lost power.
    let (victim, ran_there, reader) = pick_victim(kit, p);
    let container = kit.host(victim).container.clone();
    let tunnel = door();
    let (rec, at, end) = rt.block_on(around_reading(
        p,
        "lost",
        reader,
        window.before,
        window.after,
        || {
            infra_host::docker(&["stop", "-t", "0", &container]);
        },
    ));
    let t = rt.block_on(judge(p, "lost host", &rec, at, end, bar, window));
    let back = back_elsewhere(&rt, kit, p, &ran_there, victim, at);
    println!(
        "BENCH lost host (stopped): write gap|{:.1} s|<= 3 s",
        t.gap.as_secs_f64()
    );
    println!(
        "BENCH lost host: {ran_there:?} back in discovery elsewhere|{:.1} s|< 10 s (bound 15 s)",
        back.as_secs_f64()
    );
    println!(
        "BENCH lost host: gateway errors (reader on another host)|{}|0 outside the gap",
        t.gateway_errors
    );
    assert!(back <= Duration::from_secs(15), "back after {back:?}");
    // The gateway on the hosts left keeps answering.
    let others: Vec<&str> = all.into_iter().filter(|h| *h != victim).collect();
    for h in others {
        assert!(answers(&kit.host(h).ip, p.port("gateway")), "{h}'s gateway");
    }
    drop(tunnel);
}

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

/// A changed `env` of one capability, then `chora bootstrap`: that service
/// alone is replaced while a reader through the gateway of another host sees
/// no error; a new version that fails its health check gives way to the old
/// one and the run exits 4 naming it.
fn rolling_change(kit: &HostKit, p: &Prod) {
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
    p.write_config(&config.replace(block, &format!("{block}    env: {{CHORA_ROLL: \"2\"}}\n")));
    let t = Instant::now();
    let (code, out, err) = p.run(&["bootstrap"]);
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    let (ok, errors) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!(
        "BENCH rolling change of one capability (env)|{:.1} s|gateway errors {errors} of {}",
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
