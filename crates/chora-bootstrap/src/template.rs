//! The built-in configuration templates. A missing config file is written from
//! the template of the chosen environment. `chora` as a program means this binary;
//! `${CHORA_HOME}` is the chora home directory (`.chora` by default).

use crate::config::Environment;

/// The `dev` environment: every service a local process of this binary, the
/// Manifest on SQLite, health checks tuned to confirm a healthy service in tens of
/// milliseconds.
pub const DEV: &str = r#"# chora bootstrap configuration (written from the built-in `dev` template).
# `chora bootstrap config validate` checks it; unknown keys are errors.
version: "1.0"
environment: dev

services:
  manifest:
    phase: 1
    register: self
    command: [chora, manifest, serve, --listen, "127.0.0.1:8500",
              --storage, "sqlite:${CHORA_HOME}/data/manifest.db",
              --credentials, "${CHORA_HOME}/credentials.json",
              --ttl, "10", --heartbeat-interval, "1", --register-self]
    port: 8500
    health_endpoint: http://127.0.0.1:8500/health
    timeout: 30
    dependencies: []

  orchestrator:
    phase: 2
    register: self
    command: [chora, orchestrator, serve, --listen, "127.0.0.1:8600",
              --manifest-url, "http://127.0.0.1:8500",
              --credentials, "${CHORA_HOME}/credentials.json",
              --logs, "${CHORA_HOME}/logs", --home, "${CHORA_HOME}"]
    port: 8600
    health_endpoint: http://127.0.0.1:8600/health
    timeout: 30
    dependencies: [manifest]

  gateway:
    phase: 2
    register: self
    command: [chora, gateway, serve, --listen, "127.0.0.1:8700",
              --manifest-url, "http://127.0.0.1:8500"]
    port: 8700
    health_endpoint: http://127.0.0.1:8700/health
    timeout: 30
    dependencies: [manifest]

  analyzer:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 8800
    timeout: 30
    dependencies: [manifest, orchestrator]

  executor:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 8900
    timeout: 30
    dependencies: [manifest, orchestrator, analyzer]

  storage:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 9000
    timeout: 30
    dependencies: [manifest, orchestrator]

  monitor:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 9100
    timeout: 30
    dependencies: [manifest, orchestrator]

  logger:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 9200
    timeout: 30
    dependencies: [manifest, orchestrator]

timeouts:
  health_check: 30
  phase_0: 30
  phase_1: 60
  phase_2: 60
  phase_3: 120
  phase_4: 60

# Health waits: a check every 10 ms while healthy, backing off x1.5 up to
# 250 ms while not; 3 answers of 200 in a row confirm a service.
retry:
  initial_delay: 0.01
  max_delay: 0.25
  backoff_factor: 1.5
  max_attempts: 10
  required_consecutive: 3

credentials:
  jwt_secret_bits: 256
  api_key_bits: 256
  storage_permissions: "0600"

logging:
  level: info
  max_bytes: 10485760
  backup_count: 5

prerequisites:
  min_disk_gb: 1

validation:
  tests:
    - name: service_discovery
      timeout: 30
    - name: gateway_routing
      timeout: 30
    - name: orchestrator_control
      timeout: 60
    - name: health_dashboard
      timeout: 30
"#;

/// The services as local processes (the `dev` template) with the Manifest on
/// an etcd cluster that runs already (`etcd.endpoints`), where the bootstrap
/// lock lives too: several hosts' bootstraps against one cluster.
pub fn processes_on_etcd() -> String {
    DEV.replace(
        "written from the built-in `dev` template",
        "the `dev` template on an etcd cluster of yours",
    )
    // Local processes, though prod's default runtime is docker.
    .replace("environment: dev", "environment: prod\nruntime: process")
    .replace(
        "\"sqlite:${CHORA_HOME}/data/manifest.db\"",
        "\"etcd:${ETCD_ENDPOINTS}\"",
    )
    .replace(
        "--ttl, \"10\", --heartbeat-interval, \"1\"",
        "--ttl, \"15\", --heartbeat-interval, \"2\"",
    ) + "\n# The etcd cluster the Manifest keeps its instances in, and where the bootstrap\n# lock lives.\netcd:\n  endpoints: [http://127.0.0.1:2379]\n"
}

/// The `prod` environment (DESIGN.md §10): every service a container on the
/// project network; phase 1 an etcd cluster of `etcd.members` containers
/// (`chora-etcd-1` …, no published port) and `replicas` Manifest nodes on it
/// (`chora-manifest-1` … on 127.0.0.1:8500-8502); every client of the
/// Manifest is given all its nodes.
pub fn prod() -> String {
    let services = &STAGING[STAGING
        .find("\n  orchestrator:")
        .expect("staging has an orchestrator")..];
    format!(
        "{PROD_HEAD}{}{}",
        services.replace("\"http://manifest:8500\"", "\"${MANIFEST_URLS}\""),
        tail_of(DEV)
    )
}

const PROD_HEAD: &str = r#"# chora bootstrap configuration (written from the built-in `prod` template).
# `chora bootstrap config validate` checks it; unknown keys are errors.
version: "1.0"
environment: prod
project: chora
runtime: docker

# A Prometheus of this system's own (DESIGN §16): phase 2, built from the
# prometheus on this machine (apt-get install prometheus; without one it is not
# started, and phase 0 says so), discovering every service through the
# Manifest, scraping every 5 s, reached through the gateway at /api/v1/prometheus/.
monitoring:
  prometheus: true
  port: 9090

# The etcd cluster under the Manifest: chora runs `members` containers on the
# project network (chora-etcd-1 ...). `image` is used when present or pullable;
# otherwise phase 0 builds chora-etcd:<version> from the etcd on this machine.
# Raft timings for a LAN (etcd's defaults, 100 ms / 1000 ms, do not reliably
# keep a partition's write gap under 2 s).
etcd:
  members: 3
  image: "quay.io/coreos/etcd:v3.5.17"
  heartbeat_ms: 50
  election_ms: 500

services:
  manifest:
    phase: 1
    register: self
    replicas: 3
    image: "chora:${CHORA_VERSION}"
    command: [manifest, serve, --listen, "0.0.0.0:8500",
              --storage, "etcd:${ETCD_ENDPOINTS}",
              --ttl, "15", --heartbeat-interval, "2", --register-self]
    port: 8500
    container_port: 8500
    env:
      CHORA_CREDENTIALS_JSON: "${CHORA_CREDENTIALS_JSON}"
    timeout: 60
    dependencies: []
"#;

/// The `staging` environment: every service a container of the `chora` image
/// (built by phase 0 when missing) on the project network, the Manifest on
/// SQLite in a volume, the capabilities deployed by the orchestrator's Docker
/// runtime. Ports are published on 127.0.0.1 only; secrets reach the
/// containers in their environment.
pub const STAGING: &str = r#"# chora bootstrap configuration (written from the built-in `staging` template).
# `chora bootstrap config validate` checks it; unknown keys are errors.
version: "1.0"
environment: staging
project: chora
runtime: docker

# A Prometheus of this system's own (DESIGN §16): phase 2, built from the
# prometheus on this machine (apt-get install prometheus; without one it is not
# started, and phase 0 says so), discovering every service through the
# Manifest, scraping every 5 s, reached through the gateway at /api/v1/prometheus/.
monitoring:
  prometheus: true
  port: 9090

services:
  manifest:
    phase: 1
    register: self
    image: "chora:${CHORA_VERSION}"
    command: [manifest, serve, --listen, "0.0.0.0:8500",
              --storage, "sqlite:/data/manifest.db",
              --ttl, "10", --heartbeat-interval, "1", --register-self]
    port: 8500
    volumes: ["manifest-data:/data"]
    env:
      CHORA_CREDENTIALS_JSON: "${CHORA_CREDENTIALS_JSON}"
    health_endpoint: http://127.0.0.1:8500/health
    timeout: 30
    dependencies: []

  orchestrator:
    phase: 2
    register: self
    image: "chora:${CHORA_VERSION}"
    command: [orchestrator, serve, --listen, "0.0.0.0:8600",
              --manifest-url, "http://manifest:8500",
              --runtime, docker, --chora-image, "chora:${CHORA_VERSION}",
              --logs, "${CHORA_HOME}/logs", --home, "${CHORA_HOME}"]
    port: 8600
    volumes: ["/var/run/docker.sock:/var/run/docker.sock",
              "${CHORA_HOME}:${CHORA_HOME}"]
    env:
      CHORA_CREDENTIALS_JSON: "${CHORA_CREDENTIALS_JSON}"
    health_endpoint: http://127.0.0.1:8600/health
    timeout: 30
    dependencies: [manifest]

  gateway:
    phase: 2
    register: self
    image: "chora:${CHORA_VERSION}"
    command: [gateway, serve, --listen, "0.0.0.0:8700",
              --manifest-url, "http://manifest:8500"]
    port: 8700
    health_endpoint: http://127.0.0.1:8700/health
    timeout: 30
    dependencies: [manifest]

  analyzer:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 8800
    timeout: 30
    dependencies: [manifest, orchestrator]

  executor:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 8900
    timeout: 30
    dependencies: [manifest, orchestrator, analyzer]

  storage:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 9000
    volumes: ["storage-data:/data"]
    env:
      CHORA_DATA_DIR: /data
    timeout: 30
    dependencies: [manifest, orchestrator]

  monitor:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 9100
    timeout: 30
    dependencies: [manifest, orchestrator]

  logger:
    phase: 3
    register: self
    deploy_via: orchestrator
    version: "1.0.0"
    port: 9200
    volumes: ["logger-data:/data"]
    env:
      CHORA_DATA_DIR: /data
    timeout: 30
    dependencies: [manifest, orchestrator]
"#;

/// The template text for `env`, if there is one.
pub fn template(env: Environment) -> Option<String> {
    match env {
        Environment::Dev => Some(DEV.to_owned()),
        Environment::Staging => Some(format!("{STAGING}{}", tail_of(DEV))),
        Environment::Prod => Some(prod()),
    }
}

/// The shared part of every template after its services (timeouts, retry,
/// credentials, logging, prerequisites, validation).
fn tail_of(template: &str) -> &str {
    &template[template
        .find("\ntimeouts:")
        .expect("templates have timeouts")..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Environment};
    use std::path::Path;

    #[test]
    fn processes_on_etcd_use_the_given_endpoints() {
        let c = Config::parse(&processes_on_etcd(), Path::new("t.yml")).unwrap();
        assert_eq!(c.environment, crate::config::Environment::Prod);
        assert_eq!(c.etcd.clone().unwrap().endpoints, ["http://127.0.0.1:2379"]);
        assert!(c.etcd_members().is_empty());
        assert!(!c.needs_docker(), "processes only: no image to build");
        let cmd = c.service("manifest").unwrap().command.clone().unwrap();
        assert!(
            cmd.contains(&"etcd:${ETCD_ENDPOINTS}".to_string()),
            "{cmd:?}"
        );
    }

    #[test]
    fn the_prod_template_is_thirteen_containers_on_an_etcd_cluster() {
        let c = Config::parse(&prod(), Path::new("t.yml")).unwrap();
        assert_eq!(c.environment, Environment::Prod);
        // And Prometheus, where this machine has one (DESIGN §16).
        let monitoring = usize::from(c.service(crate::config::PROMETHEUS).is_some());
        assert_eq!(
            monitoring,
            usize::from(crate::config::on_path("prometheus").is_some())
        );
        assert_eq!(c.services.len(), 13 + monitoring, "{:?}", c.services.keys());
        assert_eq!(c.etcd_members(), ["etcd-1", "etcd-2", "etcd-3"]);
        assert_eq!(
            c.units_of("manifest"),
            ["manifest-1", "manifest-2", "manifest-3"]
        );
        let ports: Vec<_> = c
            .units_of("manifest")
            .iter()
            .map(|u| c.service(u).unwrap().port)
            .collect();
        assert_eq!(ports, [Some(8500), Some(8501), Some(8502)]);
        // The Manifest nodes wait for the whole cluster; phase 2 for every node.
        let m2 = c.service("manifest-2").unwrap();
        let deps: Vec<&str> = m2.deps().collect();
        assert_eq!(deps, ["etcd-1", "etcd-2", "etcd-3"]);
        let g: Vec<&str> = c.service("gateway").unwrap().deps().collect();
        assert_eq!(g, ["manifest-1", "manifest-2", "manifest-3"]);
        assert_eq!(
            c.waves(1),
            [
                vec!["etcd-1", "etcd-2", "etcd-3"],
                vec!["manifest-1", "manifest-2", "manifest-3"]
            ]
        );
        for (name, s) in &c.services {
            assert_eq!(
                s.value.runtime(c.default_runtime()),
                crate::config::RuntimeKind::Docker,
                "{name}"
            );
        }
        let e1 = c.service("etcd-1").unwrap();
        assert!(e1.port.is_none(), "etcd publishes no port");
        assert_eq!(
            e1.env["ETCD_INITIAL_CLUSTER"],
            "etcd-1=http://chora-etcd-1:2380,etcd-2=http://chora-etcd-2:2380,etcd-3=http://chora-etcd-3:2380"
        );
        assert_eq!(e1.env["ETCD_HEARTBEAT_INTERVAL"], "50");
        assert_eq!(c.registered_units().len(), 10 + monitoring);
        let gw = c.service("gateway").unwrap().command.clone().unwrap();
        assert!(gw.contains(&"${MANIFEST_URLS}".to_string()), "{gw:?}");
    }

    #[test]
    fn process_replicas_listen_on_their_own_ports() {
        let dev = DEV
            .replace(
                "    command: [chora, manifest, serve, --listen, \"127.0.0.1:8500\",",
                "    replicas: 2\n    command: [chora, manifest, serve, --listen, \"127.0.0.1:${PORT}\",",
            )
            .replacen(
                "health_endpoint: http://127.0.0.1:8500/health",
                "health_endpoint: http://127.0.0.1:${PORT}/health",
                1,
            );
        let c = Config::parse(&dev, Path::new("t.yml")).unwrap();
        let m2 = c.service("manifest-2").unwrap();
        assert_eq!(m2.port, Some(8501));
        assert!(
            m2.command
                .as_ref()
                .unwrap()
                .contains(&"127.0.0.1:8501".to_string())
        );
        assert_eq!(m2.health_url().unwrap(), "http://127.0.0.1:8501/health");
        assert_eq!(c.units_of("manifest"), ["manifest-1", "manifest-2"]);
    }

    #[test]
    fn replicas_and_members_are_checked() {
        let bad = prod().replace("replicas: 3", "replicas: 0");
        let e = Config::parse(&bad, Path::new("t.yml")).unwrap_err();
        assert!(e.message.contains("replicas"), "{e}");
        // A capability's replicas: one entry the orchestrator runs as one
        // Swarm service on a fleet; on one machine, an error naming the line.
        let block = "  analyzer:\n    phase: 3\n";
        let two = prod().replace(block, &format!("{block}    replicas: 2\n"));
        let e = Config::parse(&two, Path::new("t.yml")).unwrap_err();
        assert!(e.message.contains("services.analyzer.replicas: "), "{e}");
        assert!(e.message.contains("only on a fleet"), "{e}");
        // The line of the service's block.
        assert_eq!(
            e.line,
            two.lines().position(|l| l == "  analyzer:").unwrap() as u64 + 2,
            "{e}"
        );
        let fleet = format!("inventory: hosts.yml\n{two}");
        let c = Config::parse(&fleet, Path::new("t.yml")).unwrap();
        assert_eq!(c.units_of("analyzer"), ["analyzer"]);
        assert_eq!(c.service("analyzer").unwrap().replicas, Some(2));
        let both = prod().replace("  members: 3", "  members: 3\n  endpoints: [http://x:2379]");
        let e = Config::parse(&both, Path::new("t.yml")).unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
        assert_eq!(
            e.line,
            prod().lines().position(|l| l == "etcd:").unwrap() as u64 + 1
        );
    }

    #[test]
    fn the_staging_template_runs_everything_in_containers() {
        let c =
            Config::parse(&template(Environment::Staging).unwrap(), Path::new("t.yml")).unwrap();
        assert_eq!(c.environment, Environment::Staging);
        assert_eq!(c.project(), "chora");
        assert!(c.needs_docker());
        for (name, s) in &c.services {
            assert_eq!(
                s.value.runtime(c.default_runtime()),
                crate::config::RuntimeKind::Docker,
                "{name}"
            );
            // Prometheus knows nothing of chora: chora registers it.
            let register = if name == crate::config::PROMETHEUS {
                crate::config::Register::Chora
            } else {
                crate::config::Register::Itself
            };
            assert_eq!(s.value.registers(), register, "{name}");
        }
        assert_eq!(c.waves(3)[1], ["executor"]);
    }

    /// Prometheus runs with the same memory settings as a container (staging)
    /// and as a process (dev).
    #[test]
    fn prometheus_runs_with_its_memory_settings_in_both_forms() {
        let staging = template(Environment::Staging).unwrap().replace(
            "  prometheus: true\n",
            "  prometheus: true\n  binary: /bin/sh\n",
        );
        let monitoring = "monitoring:\n  prometheus: true\n  binary: /bin/sh\n";
        for (yaml, kind) in [
            (staging, crate::config::RuntimeKind::Docker),
            (
                format!("{DEV}{monitoring}"),
                crate::config::RuntimeKind::Process,
            ),
        ] {
            let c = Config::parse(&yaml, Path::new("t.yml")).unwrap();
            let p = c
                .service(crate::config::PROMETHEUS)
                .expect("a Prometheus unit");
            assert_eq!(p.runtime(c.default_runtime()), kind);
            for (k, v) in crate::config::PROMETHEUS_ENV {
                assert_eq!(p.env.get(k).map(String::as_str), Some(v), "{kind:?}");
            }
            let command = p.command.as_ref().unwrap();
            for f in crate::config::PROMETHEUS_FLAGS {
                assert!(command.iter().any(|a| a == f), "{kind:?}: {command:?}");
            }
        }
    }

    #[test]
    fn the_dev_template_is_valid_and_ordered() {
        let c = Config::parse(DEV, Path::new("t.yml")).unwrap();
        assert_eq!(c.phase_services(1), ["manifest"]);
        assert_eq!(c.phase_services(2), ["gateway", "orchestrator"]);
        let waves = c.waves(3);
        assert_eq!(waves[0], ["analyzer", "logger", "monitor", "storage"]);
        assert_eq!(waves[1], ["executor"]);
    }
}
