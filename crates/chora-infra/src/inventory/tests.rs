//! The inventory's parsing and checks, one mistake at a time.

use super::*;

fn parse(text: &str) -> Result<Inventory, InventoryError> {
    Inventory::parse(text, Path::new("/tmp/hosts.yml"))
}

#[test]
fn the_design_example_parses() {
    let inv = parse(
        "hosts:\n  - {name: app-1, address: 192.0.2.10}\n  - {name: app-2, address: 192.0.2.11, port: 2222, user: deploy}\nssh:\n  connect_timeout: 10\ndocker: {install: distro}\nnetwork:\n  provider: wireguard\n  cidr: 10.77.0.0/24\n",
    )
    .unwrap();
    assert_eq!(inv.hosts.len(), 2);
    assert_eq!(inv.hosts[0].user, "root");
    assert_eq!(inv.hosts[1].port, 2222);
    assert_eq!(inv.docker, DockerInstall::Distro);
    assert_eq!(inv.mesh_address(1), Some((Ipv4Addr::new(10, 77, 0, 2), 24)));
    assert_eq!(inv.apt_lock_timeout, Duration::from_secs(300));
}

#[test]
fn a_typo_names_line_and_field() {
    let e = parse("hosts:\n  - {name: a, address: 192.0.2.1}\nssh:\n  conect_timeout: 3\n")
        .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("conect_timeout"), "{e}");
    assert!(
        !e.message.contains("line 4"),
        "the position is said once: {e}"
    );
}

#[test]
fn an_unknown_provider_is_named() {
    let e = parse("hosts:\n  - {name: a, address: 192.0.2.1}\nnetwork:\n  provider: zerotier\n")
        .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("zerotier"), "{e}");
}

#[test]
fn a_missing_key_file_is_named() {
    let e = parse(
        "hosts:\n  - {name: a, address: 192.0.2.1}\nssh:\n  identity_file: /nonexistent/key\n",
    )
    .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("/nonexistent/key"), "{e}");
}

const WG: &str = "network: {provider: wireguard}\n";

#[test]
fn the_swarm_is_on_by_default_with_three_managers() {
    let inv = parse(&format!(
        "hosts:\n  - {{name: a, address: 192.0.2.1, labels: {{zone: eu, chora.etcd: 1}}}}\n  - {{name: b, address: 192.0.2.2}}\n{WG}"
    ))
    .unwrap();
    assert_eq!(inv.swarm, Some(SwarmSpec { managers: 3 }));
    assert!(inv.is_manager(1) && !inv.is_manager(3));
    assert_eq!(inv.hosts[0].labels["zone"], "eu");
    assert_eq!(inv.hosts[0].labels["chora.etcd"], "1");
    assert!(inv.hosts[1].labels.is_empty());
    let two = parse(&format!(
        "hosts:\n  - {{name: a, address: 192.0.2.1}}\n{WG}swarm: {{managers: 2}}\n"
    ))
    .unwrap();
    assert_eq!(two.swarm, Some(SwarmSpec { managers: 2 }));
    let off = parse("hosts:\n  - {name: a, address: 192.0.2.1}\nswarm: false\n").unwrap();
    assert_eq!(off.swarm, None);
    assert!(!off.is_manager(0));
}

#[test]
fn swarm_mistakes_name_line_and_field() {
    let e = parse(&format!(
        "hosts:\n  - {{name: a, address: 192.0.2.1}}\n{WG}swarm:\n  managers: 3\n  manager: 2\n"
    ))
    .unwrap_err();
    assert_eq!(e.line, 6, "{e}");
    assert!(e.message.contains("manager"), "{e}");
    let e = parse(&format!(
        "hosts:\n  - {{name: a, address: 192.0.2.1}}\n{WG}swarm: {{managers: 0}}\n"
    ))
    .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("swarm.managers"), "{e}");
    let e = parse("hosts:\n  - {name: a, address: 192.0.2.1}\nswarm: {managers: 1}\n").unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("swarm: false"), "{e}");
    let e = parse("hosts:\n  - {name: a, address: 192.0.2.1}\n").unwrap_err();
    assert!(e.message.contains("network.provider"), "{e}");
    let e = parse(&format!(
        "hosts:\n  - name: a\n    address: 192.0.2.1\n    labels: {{io.chora.host: b}}\n{WG}"
    ))
    .unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("chora's own"), "{e}");
    let e = parse(&format!(
        "hosts:\n  - {{name: a, address: 192.0.2.1, labels: {{\"a b\": c}}}}\n{WG}"
    ))
    .unwrap_err();
    assert!(e.message.contains("label `a b`"), "{e}");
}

#[test]
fn cidrs() {
    assert_eq!(
        parse_cidr("10.77.0.9/24"),
        Some((Ipv4Addr::new(10, 77, 0, 0), 24))
    );
    assert_eq!(parse_cidr("10.77.0.0/31"), None);
    assert_eq!(parse_cidr("nope"), None);
}
