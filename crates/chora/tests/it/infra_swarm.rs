//! The swarm `chora infra bootstrap` forms (DESIGN.md §13), and the way to a
//! host's Docker over SSH (`chora_infra::tunnel`), on three test hosts made
//! as the infra tests make them (chora-testkit's `infra_host`), by `chora
//! infra bootstrap` itself.

use crate::infra::{STEPS, bootstrap, host, infra, statuses, step};
use chora_infra::bollard;
use chora_testkit::infra_host::{self, HostKit, HostSpec, docker, docker_try};
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// The inventory of the kit's hosts with per-host `labels` (YAML flow maps).
pub(crate) fn inventory(kit: &HostKit, hosts: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut y = String::from("hosts:\n");
    for (n, labels) in hosts {
        let h = kit.host(n);
        y.push_str(&format!(
            "  - {{name: {}, address: {}, user: {}, labels: {labels}}}\n",
            h.name, h.ip, h.user
        ));
    }
    y.push_str(&format!(
        "ssh:\n  identity_file: {}\n  known_hosts: {}\n  connect_timeout: 5\n{extra}",
        kit.key.display(),
        kit.known_hosts.display()
    ));
    let path = kit.path().join("swarm.yml");
    std::fs::write(&path, y).unwrap();
    path
}

/// Whether a TCP connection to `ip:port` from here (the test network, as a
/// stranger on the hosts' public network would) is accepted.
pub(crate) fn answers(ip: &str, port: u16) -> bool {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn assert_all_ok(report: &Value, names: &[&str]) {
    for n in names {
        for (s, status) in statuses(host(report, n)) {
            assert_eq!(status, "ok", "{n} {s}: {}", host(report, n));
        }
    }
}

/// Three fresh hosts, two managers and a worker (a non-root sudo user): the
/// swarm forms on the mesh addresses with each host's labels, its ports answer
/// on the mesh only, each host ran a container, a re-run changes nothing, a
/// frozen host is down within 5 s; a host that someone put in a swarm of its
/// own fails alone, and joins again once it left that swarm. Then the Docker
/// tunnel and the image loader.
#[test]
fn three_hosts_form_one_swarm_on_the_mesh_and_a_host_in_another_swarm_fails_alone() {
    let test = "infra_swarm::three_hosts_form_one_swarm_on_the_mesh_and_a_host_in_another_swarm_fails_alone";
    if !infra_host::available(test) {
        return;
    }
    // "Down within 5 s" measures Swarm, not a neighbour's load.
    let _turn = crate::one_system_turn();
    let spec = |name: &str| HostSpec {
        name: name.into(),
        ..HostSpec::default()
    };
    let kit = HostKit::start(&[
        spec("s-1"),
        spec("s-2"),
        HostSpec {
            sudo_user: Some("deploy".into()),
            ..spec("s-3")
        },
    ]);
    let names = ["s-1", "s-2", "s-3"];
    let inv = inventory(
        &kit,
        &[
            ("s-1", "{zone: a}"),
            ("s-2", "{zone: b}"),
            ("s-3", "{zone: b, chora.gateway: \"true\"}"),
        ],
        "network: {provider: wireguard}\nswarm: {managers: 2}\n",
    );

    // Run 1: everything from nothing.
    let t = std::time::Instant::now();
    let (code, report, err) = bootstrap(&kit, &inv);
    eprintln!("cold run: {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(code, 0, "{report}\n{err}");
    for (i, n) in names.iter().enumerate() {
        let h = host(&report, n);
        let got: Vec<String> = statuses(h).into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, STEPS, "{h}");
        let swarm = step(h, "swarm");
        assert_eq!(swarm["status"], "changed", "{h}");
        let detail = swarm["detail"].as_str().unwrap();
        let role = if i < 2 { "manager" } else { "worker" };
        assert!(
            detail.starts_with(&format!("{role} on 10.77.0.{}", i + 1)),
            "{detail}"
        );
        let verify = step(h, "verify")["detail"].as_str().unwrap();
        assert!(verify.contains("ran a container as"), "{verify}");
    }
    assert!(
        step(host(&report, "s-1"), "swarm")["detail"]
            .as_str()
            .unwrap()
            .contains("started the swarm here")
    );

    // The nodes, as the managers see them: roles, labels, addresses.
    let s1 = kit.host("s-1");
    let nodes = s1.sh(
        "docker node ls -q | xargs docker node inspect --format '{{.Description.Hostname}} {{.Spec.Role}} {{.Status.State}} {{.Status.Addr}} {{with .ManagerStatus}}{{.Addr}}{{else}}-{{end}} {{range $k, $v := .Spec.Labels}}{{$k}}={{$v}},{{end}}' | sort",
    );
    assert_eq!(
        nodes,
        "s-1 manager ready 10.77.0.1 10.77.0.1:2377 io.chora.host=s-1,io.chora.labels=zone,zone=a,\n\
         s-2 manager ready 10.77.0.2 10.77.0.2:2377 io.chora.host=s-2,io.chora.labels=zone,zone=b,\n\
         s-3 worker ready 10.77.0.3 - chora.gateway=true,io.chora.host=s-3,io.chora.labels=chora.gateway,zone,zone=b,",
        "{nodes}"
    );
    assert_eq!(
        s1.sh("docker info --format '{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}'"),
        "1s"
    );
    for (i, n) in names.iter().enumerate() {
        let h = kit.host(n);
        let mesh = format!("10.77.0.{}", i + 1);
        // Each advertises, listens and carries data on its mesh address.
        assert_eq!(h.sh("docker info --format '{{.Swarm.NodeAddr}}'"), mesh);
        let state = h.sh("cat /var/lib/docker/swarm/docker-state.json");
        for want in [
            format!("\"ListenAddr\":\"{mesh}:2377\""),
            format!("\"AdvertiseAddr\":\"{mesh}:2377\""),
            format!("\"DataPathAddr\":\"{mesh}\""),
        ] {
            assert!(state.contains(&want), "{want} not in {state}");
        }
        // The swarm's ports: not on the public address, on the mesh they do;
        // 4789/udp (the kernel's) is let in from the mesh interface only.
        assert!(!answers(&h.ip, 2377), "{n}: 2377 answers on {}", h.ip);
        assert!(!answers(&h.ip, 7946), "{n}: 7946 answers on {}", h.ip);
        if i < 2 {
            kit.host("s-3")
                .sh(&format!("timeout 3 bash -c '</dev/tcp/{mesh}/2377'"));
        }
        h.sh("iptables -C INPUT -p udp -m multiport --dports 7946,4789 -j CHORA-SWARM && iptables -S CHORA-SWARM | grep -qx -- '-A CHORA-SWARM -j DROP'");
        // The container verify ran is gone, and its image.
        assert_eq!(
            h.sh("docker ps -aq; docker images -q; ls -d /tmp/chora-verify.* 2>/dev/null; true"),
            ""
        );
    }
    // The join tokens never reached the output.
    let tokens = s1.sh("docker swarm join-token -q worker; docker swarm join-token -q manager");
    for t in tokens.lines() {
        assert!(!report.to_string().contains(t) && !err.contains(t));
    }

    // Run 2: nothing to do, every step of every host `ok`, and status agrees.
    let t = std::time::Instant::now();
    let (code, report, _) = bootstrap(&kit, &inv);
    eprintln!("warm run: {:.2}s", t.elapsed().as_secs_f64());
    assert_eq!(code, 0);
    assert_all_ok(&report, &names);
    assert_eq!(report["summary"]["changed"], 0);
    let (code, out, err) = infra(
        kit.path(),
        &["infra", "status", "--inventory", inv.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("SWARM") && out.contains("3 ready, 0 failed"),
        "{out}"
    );

    // A lost host (its machine frozen) is marked down within 5 s.
    let s3 = kit.host("s-3");
    let state_of_s3 = || s1.sh("docker node inspect s-3 --format '{{.Status.State}}'");
    {
        let _frozen = Paused::new(&s3.container);
        let t = std::time::Instant::now();
        while state_of_s3() != "down" {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "s-3 is still not down"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = t.elapsed();
        eprintln!("a lost host is down after {:.1}s", took.as_secs_f64());
        assert!(took <= Duration::from_secs(5), "down after {took:?}");
    }
    let t = std::time::Instant::now();
    while state_of_s3() != "ready" {
        assert!(t.elapsed() < Duration::from_secs(30), "s-3 is not back");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Someone takes s-3 out and starts a swarm of its own there, on its
    // public address: it fails alone, named, and is left alone.
    s3.sh(&format!(
        "docker swarm leave >/dev/null && docker swarm init --advertise-addr {ip} --listen-addr {ip}:2377 >/dev/null",
        ip = s3.ip
    ));
    let theirs = s3.sh("docker info --format '{{.Swarm.Cluster.ID}}'");
    let (code, report, err) = bootstrap(&kit, &inv);
    assert_eq!(code, 1, "{report}");
    let h = host(&report, "s-3");
    assert_eq!(h["status"], "failed");
    let why = h["error"].as_str().unwrap();
    assert!(
        why.starts_with("swarm: already in another swarm")
            && why.contains(&format!("{}:2377", s3.ip)),
        "{why}"
    );
    assert!(err.contains("s-3") && !err.contains("s-1:"), "{err}");
    assert_all_ok(&report, &["s-1", "s-2"]);
    assert_eq!(
        s3.sh("docker info --format '{{.Swarm.Cluster.ID}}'"),
        theirs
    );

    // Once it has left that swarm, the next run joins it again, and its old
    // node (down since it left) is removed. Logged at trace level, the run
    // still shows no join token.
    s3.sh("docker swarm leave --force >/dev/null");
    let home = kit.path().join(".chora");
    let (code, out, err) = crate::run_chora(
        kit.path(),
        &[
            "infra",
            "bootstrap",
            "--inventory",
            inv.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[
            ("CHORA_HOME", home.to_str().unwrap()),
            ("CHORA_LOG", "trace"),
        ],
    );
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(code, 0, "{report}\n{err}");
    for t in tokens.lines() {
        assert!(
            !out.contains(t) && !err.contains(t),
            "a join token in the output"
        );
    }
    let swarm = step(host(&report, "s-3"), "swarm");
    let detail = swarm["detail"].as_str().unwrap();
    assert_eq!(swarm["status"], "changed");
    assert!(
        detail.contains("joined as a worker") && detail.contains("removed its old node"),
        "{detail}"
    );
    assert_all_ok(&report, &["s-1", "s-2"]);
    let hostnames = s1.sh("docker node ls --format '{{.Hostname}} {{.Status}}' | sort");
    assert_eq!(hostnames, "s-1 Ready\ns-2 Ready\ns-3 Ready", "{hostnames}");

    tunnel_and_images(&inv);
}

/// A test host frozen (`docker pause`: its dockerd stops heartbeating, as a
/// machine that lost power would); thawed on drop.
pub(crate) struct Paused<'a>(&'a str);

impl<'a> Paused<'a> {
    pub(crate) fn new(container: &'a str) -> Paused<'a> {
        infra_host::pause(container);
        Paused(container)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = docker_try(&["unpause", self.0]);
    }
}

/// An image tag made in the local engine for the test; removed on drop.
struct LocalImage(String);

impl Drop for LocalImage {
    fn drop(&mut self) {
        let _ = docker_try(&["rmi", "-f", &self.0]);
    }
}

/// The tunnel to a manager's and to the sudo user's host's Docker: the API
/// answers through a 0600 socket that is gone after the drop; an image made
/// here gets there once, then is found there.
fn tunnel_and_images(inv: &std::path::Path) {
    let inv = chora_infra::Inventory::load(inv).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A one-file image, made here.
    let dir = chora_testkit::temp_dir();
    std::fs::create_dir(dir.path().join("root")).unwrap();
    std::fs::write(dir.path().join("root/hello"), "hello from chora\n").unwrap();
    let tar = dir.path().join("image.tar");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("root"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let image = LocalImage(format!("chora-infra-load-{}:test", std::process::id()));
    let id = docker(&["import", tar.to_str().unwrap(), &image.0]);
    rt.block_on(async {
        let local = bollard::Docker::connect_with_local_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        for name in ["s-1", "s-3"] {
            let tunnel = chora_infra::tunnel::docker_tunnel(&inv, name)
                .await
                .unwrap();
            let path = tunnel.path().to_owned();
            assert!(
                path.starts_with("/tmp") && path.as_os_str().len() < 40,
                "{path:?}"
            );
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            let meta = std::fs::metadata(&path).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{path:?}");
            let d = tunnel.docker();
            assert_eq!(d.ping().await.unwrap(), "OK");
            let info = d.info().await.unwrap();
            assert_eq!(info.name.as_deref(), Some(name));
            // A second client through the same socket, as DOCKER_HOST would.
            let other = chora_infra::tunnel::client_on(&path, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(other.version().await.unwrap().api_version.is_some());

            let first = chora_infra::tunnel::ensure_image(&local, &tunnel, &image.0)
                .await
                .unwrap();
            let chora_infra::tunnel::ImageLoad::Loaded { id: got, bytes, .. } = &first else {
                panic!("{first:?}")
            };
            assert_eq!(got, &id);
            assert!(*bytes > 0);
            let there = d.inspect_image(&image.0).await.unwrap();
            assert_eq!(there.id.as_deref(), Some(id.as_str()));
            let again = chora_infra::tunnel::ensure_image(&local, &tunnel, &image.0)
                .await
                .unwrap();
            assert_eq!(
                again,
                chora_infra::tunnel::ImageLoad::Present {
                    id: id.clone(),
                    tagged: false
                }
            );
            d.remove_image(
                &image.0,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .unwrap();
            drop(tunnel);
            assert!(!path.exists(), "{path:?} is still there");
            assert!(!path.parent().unwrap().exists());
        }
        let e = chora_infra::tunnel::docker_tunnel(&inv, "nope")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no host `nope`"), "{e}");
    });
}
