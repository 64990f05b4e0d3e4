//! Units: what the rest of chora starts, after parsing. A service with
//! `replicas: N` becomes the units `<name>-1` … `<name>-N` (`${REPLICA}` and
//! `${PORT}` substituted in each), and a managed etcd cluster
//! (`etcd.members`) its member units `etcd-1` …; a dependency on a replicated
//! service means all of its units. After [`Config::expand_units`] nothing
//! else in chora knows replicas were ever written as one entry, except a
//! phase 3 service's on a fleet: those stay one entry with `replicas`, which
//! the orchestrator runs as one Swarm service of that many tasks.

use super::{Config, ConfigError, Etcd, Monitoring, Register, Replica, RuntimeKind, ServiceSpec};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::Path;

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// The service name of the etcd members chora runs.
pub const ETCD: &str = "etcd";

/// The service name of the Prometheus chora runs (`monitoring.prometheus`).
pub const PROMETHEUS: &str = "prometheus";

/// What Prometheus runs with, in both forms (its environment and its first
/// flags): the settings that cut its memory most while it scrapes 50
/// services every 5 s (issue 25's goal: under 50 MB resident; measured with
/// `bench/metrics.sh` and `bench/prometheus-variants.sh`, BENCHMARKS.md):
///
/// - `GOGC=10`: its Go heap may grow 10 % past what a collection left live
///   instead of 100 %. At 50 services ~10 MB are live and ~7 MB were
///   headroom not yet collected; this gives back ~6.5 MB for ~0.1 % of a
///   core, and scales with the heap (a `GOMEMLIMIT` bought as much, at more
///   CPU, and turns into back-to-back collections once the live heap
///   outgrows it).
/// - `--no-storage.tsdb.wal-compression`: ~1 MB less (snappy's buffers; the
///   WAL's files, truncated every two hours, get bigger instead).
///
/// Prometheus 2.42 then holds ~47 MB (55 MB without) until its first head
/// chunks go to disk, 10 minutes in at a 5 s interval, when it allocates a
/// 4 MiB write buffer no flag sizes: ~52-56 MB after (63-70 MB without).
/// The rest is Prometheus itself: ~31 MB of its binary's pages, ~10 MB of
/// heap live from the start, goroutine stacks and the runtime's own.
pub const PROMETHEUS_ENV: [(&str, &str); 1] = [("GOGC", "10")];
pub const PROMETHEUS_FLAGS: [&str; 1] = ["--no-storage.tsdb.wal-compression"];

/// The Prometheus of `monitoring` (DESIGN.md §16), a phase 2 unit on the
/// default runtime: a process of the local binary, or a container of the
/// image built from it (`${PROMETHEUS_IMAGE}`), its data in a volume and its
/// config (written by phase 0 under the home) mounted read-only. chora
/// registers it on its behalf, so the gateway reaches it at
/// `/api/v1/prometheus/`, and Prometheus scrapes it like every other service.
fn prometheus_unit(
    m: &Monitoring,
    runtime: RuntimeKind,
    gateway: Option<u16>,
    depends: Vec<String>,
) -> ServiceSpec {
    let port = m.port;
    let external =
        gateway.map(|g| format!("--web.external-url=http://127.0.0.1:{g}/api/v1/prometheus/"));
    let (command, image, volumes, container_port) = match runtime {
        RuntimeKind::Process => {
            let mut c = vec![
                m.binary.clone().unwrap_or_else(|| "prometheus".into()),
                "--config.file=${CHORA_HOME}/prometheus/prometheus.yml".into(),
                "--storage.tsdb.path=${CHORA_HOME}/data/prometheus".into(),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--web.route-prefix=/".into(),
            ];
            c.extend(PROMETHEUS_FLAGS.map(String::from));
            c.extend(external);
            (c, None, Vec::new(), None)
        }
        RuntimeKind::Docker => {
            let mut c = vec![
                "--config.file=/etc/prometheus/prometheus.yml".to_string(),
                "--storage.tsdb.path=/prometheus".into(),
                "--web.listen-address=0.0.0.0:9090".into(),
                "--web.route-prefix=/".into(),
            ];
            c.extend(PROMETHEUS_FLAGS.map(String::from));
            c.extend(external);
            (
                c,
                Some(
                    m.image
                        .clone()
                        .unwrap_or_else(|| "${PROMETHEUS_IMAGE}".into()),
                ),
                vec![
                    spanned("prometheus-data:/prometheus".to_string()),
                    spanned("${CHORA_HOME}/prometheus:/etc/prometheus:ro".to_string()),
                ],
                Some(9090),
            )
        }
    };
    ServiceSpec {
        phase: 2,
        command: Some(command),
        image,
        docker_compose: None,
        port: Some(port),
        health_endpoint: Some(format!("http://127.0.0.1:{port}/-/ready")),
        env: PROMETHEUS_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        dependencies: depends.into_iter().map(spanned).collect(),
        timeout: Some(60.0),
        deploy_via: None,
        version: None,
        register: Some(Register::Chora),
        volumes,
        container_port,
        ..Default::default()
    }
}

/// Member `n` of the etcd cluster chora runs: configured through the
/// environment (`ETCD_*`), so the same spec runs etcd's own image and one
/// `chora image build` made from a local binary. Members find each other by
/// container name on the project network; the client port 2379 is not
/// published.
fn etcd_member(e: &Etcd, units: &[String], n: u32, project: &str) -> ServiceSpec {
    let unit = format!("{ETCD}-{n}");
    let host = format!("{project}-{unit}");
    let cluster: Vec<String> = units
        .iter()
        .map(|u| format!("{u}=http://{project}-{u}:2380"))
        .collect();
    let env: BTreeMap<String, String> = [
        ("ETCD_NAME", unit.clone()),
        ("ETCD_DATA_DIR", "/data/etcd".into()),
        ("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379".into()),
        ("ETCD_ADVERTISE_CLIENT_URLS", format!("http://{host}:2379")),
        ("ETCD_LISTEN_PEER_URLS", "http://0.0.0.0:2380".into()),
        (
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://{host}:2380"),
        ),
        ("ETCD_INITIAL_CLUSTER", cluster.join(",")),
        ("ETCD_INITIAL_CLUSTER_STATE", "new".into()),
        ("ETCD_INITIAL_CLUSTER_TOKEN", format!("chora-{project}")),
        ("ETCD_HEARTBEAT_INTERVAL", e.heartbeat_ms.to_string()),
        ("ETCD_ELECTION_TIMEOUT", e.election_ms.to_string()),
        ("ETCD_PRE_VOTE", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    ServiceSpec {
        phase: 1,
        command: None,
        image: Some("${ETCD_IMAGE}".into()),
        docker_compose: None,
        port: None,
        // From the host its address on the project network (see Ctx::reach).
        health_endpoint: Some(format!("http://{unit}:2379/health")),
        env,
        dependencies: Vec::new(),
        timeout: Some(60.0),
        deploy_via: None,
        version: None,
        register: Some(Register::Itself),
        volumes: vec![spanned(format!("{unit}-data:/data"))],
        container_port: Some(2379),
        replica: Some(Replica {
            service: ETCD.into(),
            n,
            unregistered: true,
        }),
        ..Default::default()
    }
}

impl Config {
    /// Replicas become entries of their own, and a managed etcd cluster its
    /// members; a dependency on a replicated service means on all its replicas.
    pub(super) fn expand_units(&mut self, file: &Path, etcd_line: u64) -> Result<(), ConfigError> {
        let fail = |loc: serde_saphyr::Location, message: String| ConfigError {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message,
            snippet: String::new(),
        };
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let s = &self.services[&name];
            let Some(n) = s.value.replicas else { continue };
            let loc = s.referenced;
            if n == 0 || n > 9 {
                return Err(fail(
                    loc,
                    format!("services.{name}.replicas: {n} is not between 1 and 9"),
                ));
            }
            if name == "orchestrator" {
                return Err(fail(
                    loc,
                    "services.orchestrator.replicas: the orchestrator runs once".to_owned(),
                ));
            }
            if s.value.phase == 3 {
                // The orchestrator runs a capability's replicas itself: one
                // Swarm service of `n` tasks spread over the hosts. One
                // machine's runtimes run one copy of a unit.
                if self.inventory.is_none() && n > 1 {
                    return Err(fail(
                        loc,
                        format!(
                            "services.{name}.replicas: a phase 3 service runs as replicas only on a fleet (`inventory:`, DESIGN.md §13); on one machine, give each copy an entry of its own"
                        ),
                    ));
                }
                continue;
            }
            if n == 1 {
                continue;
            }
            let base = self.services.remove(&name).expect("listed above");
            let mut units = Vec::new();
            for i in 1..=n {
                let unit = format!("{name}-{i}");
                if self.services.contains_key(&unit) {
                    return Err(fail(
                        loc,
                        format!("services.{name}.replicas: `{unit}` is also a service of its own"),
                    ));
                }
                let mut spec = base.value.clone();
                spec.replica = Some(Replica {
                    service: name.clone(),
                    n: i,
                    unregistered: false,
                });
                spec.replicas = None;
                spec.port = spec.port.map(|p| p + (i - 1) as u16);
                let r = i.to_string();
                let port = spec.port.map(|p| p.to_string()).unwrap_or_default();
                let sub = |t: &String| t.replace("${REPLICA}", &r).replace("${PORT}", &port);
                spec.command = spec.command.map(|c| c.iter().map(sub).collect());
                spec.env = spec.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect();
                for v in &mut spec.volumes {
                    v.value = sub(&v.value);
                }
                spec.health_endpoint = spec.health_endpoint.as_ref().map(sub);
                self.services.insert(
                    unit.clone(),
                    Spanned {
                        value: spec,
                        referenced: base.referenced,
                        defined: base.defined,
                    },
                );
                units.push(unit);
            }
            groups.insert(name, units);
        }
        let at_etcd = |message: String| ConfigError {
            file: file.to_owned(),
            line: etcd_line,
            column: 1,
            message,
            snippet: String::new(),
        };
        if let Some(e) = self.etcd.clone().filter(|e| e.managed() > 0) {
            let n = e.managed();
            if !e.endpoints.is_empty() {
                return Err(at_etcd(
                    "etcd: give `members` (chora runs the cluster) or `endpoints` (one that runs already), not both".into(),
                ));
            }
            if n > 9 {
                return Err(at_etcd(format!("etcd.members: {n} is not between 1 and 9")));
            }
            let units: Vec<String> = (1..=n).map(|i| format!("{ETCD}-{i}")).collect();
            for (i, unit) in units.iter().enumerate() {
                if let Some(s) = self.services.get(unit).or_else(|| self.services.get(ETCD)) {
                    return Err(fail(
                        s.referenced,
                        format!(
                            "services: `{unit}` is a member of the etcd cluster chora runs (etcd.members); rename the service"
                        ),
                    ));
                }
                let spec = etcd_member(&e, &units, i as u32 + 1, self.project());
                self.services.insert(unit.clone(), spanned(spec));
            }
            // The Manifest stands on the cluster.
            for m in groups
                .get("manifest")
                .cloned()
                .unwrap_or_else(|| vec!["manifest".into()])
            {
                if let Some(s) = self.services.get_mut(&m) {
                    for u in &units {
                        s.value.dependencies.push(spanned(u.clone()));
                    }
                }
            }
            groups.insert(ETCD.into(), units);
        }
        if let Some(m) = self.monitoring.clone().filter(|m| m.prometheus) {
            if let Some(s) = self.services.get(PROMETHEUS) {
                return Err(fail(
                    s.referenced,
                    format!(
                        "services: `{PROMETHEUS}` is the Prometheus chora runs (monitoring.prometheus); rename the service"
                    ),
                ));
            }
            let runtime = self.default_runtime();
            let runnable = m.image.is_some() || m.binary_path().is_some();
            if runnable {
                let gateway = self.service("gateway").and_then(|g| g.port);
                let depends = groups
                    .get("manifest")
                    .cloned()
                    .unwrap_or_else(|| vec!["manifest".into()])
                    .into_iter()
                    .filter(|d| self.services.contains_key(d))
                    .collect();
                let unit = prometheus_unit(&m, runtime, gateway, depends);
                self.services.insert(PROMETHEUS.into(), spanned(unit));
            } else {
                self.notes.push(format!(
                    "Prometheus: no `{}` on this machine (apt-get install prometheus, or monitoring.binary / monitoring.image): not started",
                    m.binary.as_deref().unwrap_or("prometheus")
                ));
            }
        }
        for s in self.services.values_mut() {
            let deps = std::mem::take(&mut s.value.dependencies);
            for d in deps {
                match groups.get(&d.value) {
                    Some(units) => s.value.dependencies.extend(units.iter().map(|u| Spanned {
                        value: u.clone(),
                        referenced: d.referenced,
                        defined: d.defined,
                    })),
                    None => s.value.dependencies.push(d),
                }
            }
        }
        Ok(())
    }
}
