//! What the fleet test's parts share: the capabilities and their copies,
//! where a unit's tasks run, and waiting for the system to be healthy.

use crate::infra::bootstrap as infra_bootstrap;
use crate::infra_swarm::inventory;
use crate::prod::Prod;
use chora_testkit::infra_host::{HostKit, HostSpec};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A phase 3 service from an image of its own, registered on its behalf:
/// the chora image `image` running a Manifest on SQLite on `port` (any
/// program with a `/health`), given `timeout` seconds to be healthy. A
/// config block to put before `timeouts:`.
pub(super) fn image_service(name: &str, image: &str, port: u16, timeout: u32) -> String {
    format!(
        "  {name}:
    phase: 3
    register: chora
    deploy_via: orchestrator
    image: \"{image}\"
    command: [manifest, serve, --listen, \"0.0.0.0:{port}\", --storage, \"sqlite:/tmp/m.db\", --no-auth]
    port: {port}
    health_endpoint: http://127.0.0.1:{port}/health
    timeout: {timeout}
    dependencies: [orchestrator]

"
    )
}

/// Writes `p`'s prod config without Prometheus, `more` (service blocks)
/// added, and `alter` applied; then `chora bootstrap --environment prod
/// --inventory inv` must succeed. Returns how long it took and its output
/// (also printed: where the cold start's time goes, for the benchmark).
pub(super) fn cold_bootstrap(
    kit: &HostKit,
    p: &Prod,
    inv: &std::path::Path,
    more: &str,
    alter: impl FnOnce(String) -> String,
) -> (Duration, String) {
    let config = std::fs::read_to_string(p.home().join("bootstrap-config.yml")).unwrap();
    let mut config = alter(config.replace("  prometheus: true\n", "  prometheus: false\n"));
    let at = config
        .find("\ntimeouts:")
        .expect("the template has timeouts");
    config.insert_str(at + 1, more);
    p.write_config(&config);
    let t = Instant::now();
    let (code, out, err) = p.run(&[
        "bootstrap",
        "--environment",
        "prod",
        "--inventory",
        inv.to_str().unwrap(),
    ]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{out}\n{err}\n{}", swarm_report(kit, p));
    eprintln!("{out}");
    (took, out)
}

/// What the swarm holds and what the orchestrator said, to explain a failed
/// bootstrap (the stack is removed with the test's hosts).
pub(super) fn swarm_report(kit: &HostKit, p: &Prod) -> String {
    let out = kit.host("f-1").sh_try(&format!(
        "docker service ls; docker node ls; \
         docker service logs --no-task-ids --tail 300 {0}_orchestrator 2>&1 | tail -300",
        p.project
    ));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Three fresh test hosts prepared by `chora infra bootstrap` (Docker, a
/// WireGuard mesh, a swarm of three managers), and their inventory.
pub(super) fn three_prepared_hosts() -> (HostKit, PathBuf) {
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
    (kit, inv)
}

/// Waits until `status` says the system is healthy (after a restart).
pub(super) fn settle(p: &Prod) {
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
pub(super) const CAPABILITIES: [&str; 5] = ["analyzer", "executor", "storage", "monitor", "logger"];

/// How many copies of capability `c` run once `rolling_change` gave
/// analyzer two replicas.
pub(super) fn copies(c: &str) -> usize {
    if c == "analyzer" { 2 } else { 1 }
}

/// The hosts unit `unit`'s running tasks are on, as a manager sees them.
pub(super) fn nodes_of(kit: &HostKit, project: &str, unit: &str) -> Vec<String> {
    nodes_of_each(kit, project, &[unit]).remove(0)
}

/// [`nodes_of`] for each of `units`, in one call.
pub(super) fn nodes_of_each(kit: &HostKit, project: &str, units: &[&str]) -> Vec<Vec<String>> {
    let services: Vec<String> = units.iter().map(|u| format!("{project}_{u}")).collect();
    let out = kit.host("f-1").sh(&format!(
        "docker service ps {} --filter desired-state=running --format '{{{{.Name}}}} {{{{.Node}}}} {{{{.CurrentState}}}}' 2>/dev/null || true",
        services.join(" ")
    ));
    services
        .iter()
        .map(|s| {
            // Task names are `<service>.<slot>`.
            let prefix = format!("{s}.");
            out.lines()
                .filter(|l| l.starts_with(&prefix) && l.contains("Running"))
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
                .collect()
        })
        .collect()
}

/// How many containers of unit `unit` run on the hosts still up.
pub(super) fn containers_of(kit: &HostKit, project: &str, unit: &str, hosts: &[&str]) -> usize {
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
