//! The dashboard's join: one [`Row`] per name that the Manifest, the
//! orchestrator's deployments or the bootstrap's state file knows, with the
//! status the page shows, and the [`Target`] its chart is drawn from. Pure:
//! [`joined`] reads a [`Sources`] and nothing else, so every rule below is tested
//! without a server.

use super::bootstrap;
use super::model::Row;
use chora_api::manifest::{Instance, Status};
use chora_api::orchestrator::{ServiceStatus, State as RunState};
use std::collections::BTreeMap;

/// Everything the rows are computed from (the feed task keeps it current).
pub struct Sources {
    pub instances: Vec<Instance>,
    pub manifest_ok: bool,
    pub deployments: BTreeMap<String, ServiceStatus>,
    pub bootstrap: bootstrap::Reader,
    pub manifest_url: String,
    /// Units that are not in the Manifest (etcd members): did their health
    /// check pass at the last look (every resync).
    pub probed: BTreeMap<String, bool>,
}

/// Where a row's request rate and latency come from: the Manifest service (and,
/// for a replica's unit, its one instance) whose instances it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `service` label the registry's Prometheus discovery gives.
    pub service: String,
    /// The `instance` label (an instance id), for a replica's unit only.
    pub instance: Option<String>,
    /// The `REST` URLs of those instances, whose `/metrics` the orchestrator
    /// samples when no Prometheus is configured.
    pub urls: Vec<String>,
}

/// What [`joined`] makes: the rows, and the targets of the rows that have some
/// (a unit that is not in the Manifest, an etcd member, has none).
pub struct Joined {
    pub rows: BTreeMap<String, Row>,
    pub targets: BTreeMap<String, Target>,
}

fn best(instances: &[&Instance]) -> Option<&'static str> {
    if instances.is_empty() {
        None
    } else if instances.iter().any(|i| i.status == Status::Up) {
        Some("up")
    } else {
        Some("unhealthy")
    }
}

/// The rows of [`joined`].
pub fn compute(src: &Sources) -> BTreeMap<String, Row> {
    joined(src).rows
}

/// The join: every name the Manifest, the deployments or the bootstrap knows.
pub fn joined(src: &Sources) -> Joined {
    let mut by_name: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for i in &src.instances {
        by_name.entry(&i.name).or_default().push(i);
    }
    let records = src.bootstrap.services();
    // A replicated service shows as its units (`manifest-1` …), not once more
    // under its own name.
    let replicated: std::collections::BTreeSet<&str> = records
        .values()
        .filter_map(|r| r.service.as_deref())
        .collect();
    let mut names: Vec<&str> = by_name
        .keys()
        .copied()
        .filter(|n| !replicated.contains(n))
        .collect();
    names.extend(src.deployments.keys().map(String::as_str));
    names.extend(records.keys().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    let mut targets = BTreeMap::new();
    let rows = names
        .into_iter()
        .map(|name| {
            let dep = src.deployments.get(name);
            let rec = records.get(name);
            // A replica's instance: its service's, under its own id.
            let of_replica: Vec<&Instance>;
            let insts =
                match rec.and_then(|r| Some((r.service.as_deref()?, r.instance_id.as_deref()?))) {
                    Some((service, id)) => {
                        of_replica = by_name
                            .get(service)
                            .map(|v| v.iter().copied().filter(|i| i.id == id).collect())
                            .unwrap_or_default();
                        of_replica.as_slice()
                    }
                    None => by_name.get(name).map(Vec::as_slice).unwrap_or(&[]),
                };
            // A deployment's own instance is the one it registers now.
            let current: Vec<&Instance> = match dep.and_then(|d| d.instance_id.as_deref()) {
                Some(id) => insts.iter().copied().filter(|i| i.id == id).collect(),
                None => insts.to_vec(),
            };
            let status = match dep {
                Some(d) if d.state != RunState::Running => "down",
                Some(_) => best(&current).unwrap_or("down"),
                // Not in the Manifest: its own health check says.
                None if rec.is_some_and(|r| r.health.is_some()) => {
                    if src.probed.get(name).copied().unwrap_or(false) {
                        "up"
                    } else {
                        "down"
                    }
                }
                // What the Manifest said of itself holds only while it answers.
                None if (name == "manifest"
                    || rec.and_then(|r| r.service.as_deref()) == Some("manifest"))
                    && !src.manifest_ok =>
                {
                    "down"
                }
                None => best(insts).unwrap_or("down"),
            };
            let shown = current
                .iter()
                .chain(insts.iter())
                .max_by_key(|i| (i.status == Status::Up, i.last_heartbeat.clone()))
                .copied();
            let row = Row {
                name: name.to_owned(),
                status,
                version: shown
                    .map(|i| i.version.clone())
                    .or_else(|| dep.map(|d| d.version.clone())),
                url: shown
                    .and_then(|i| i.rest_url().map(str::to_owned))
                    .or_else(|| dep.map(|d| d.url.clone()))
                    .or_else(|| rec.and_then(|r| r.url.clone())),
                last_heartbeat: shown.map(|i| i.last_heartbeat.clone()),
                runtime: match (dep, rec) {
                    (Some(d), _) if !d.runtime.is_empty() => d.runtime.clone(),
                    (Some(d), _) if d.container.is_some() => "docker".into(),
                    (None, Some(r)) if r.container.is_some() => "docker".into(),
                    (Some(_), _) | (None, Some(_)) => "process".into(),
                    (None, None) => "-".into(),
                },
                pid: match dep {
                    Some(d) => d.pid,
                    None => rec.and_then(|r| r.pid),
                },
                container: match dep {
                    Some(d) => d.container.clone(),
                    None => rec.and_then(|r| r.container.clone()),
                },
                restarts: dep.map(|d| d.restarts),
                started_at: match dep {
                    Some(d) if d.state == RunState::Running => d.started_at.clone(),
                    Some(_) => None,
                    None => rec.map(|r| r.started_at.clone()).filter(|t| !t.is_empty()),
                },
                state: dep.map(|d| d.state.as_str()),
                phase: rec.map(|r| r.phase),
                instances: insts.len(),
            };
            if rec.is_none_or(|r| r.health.is_none()) {
                let replica = rec.and_then(|r| Some((r.service.clone()?, r.instance_id.clone()?)));
                let mut urls: Vec<String> = current
                    .iter()
                    .filter_map(|i| i.rest_url().map(str::to_owned))
                    .collect();
                urls.sort_unstable();
                urls.dedup();
                let target = match replica {
                    Some((service, id)) => Target {
                        service,
                        instance: Some(id),
                        urls,
                    },
                    None => Target {
                        service: name.to_owned(),
                        instance: None,
                        urls,
                    },
                };
                targets.insert(name.to_owned(), target);
            }
            (name.to_owned(), row)
        })
        .collect();
    Joined { rows, targets }
}

/// Instances and deployments for the tests of the feed.
#[cfg(test)]
pub mod fixtures {
    use chora_api::manifest::{Instance, Status};
    use chora_api::orchestrator::{ServiceStatus, State as RunState};

    pub fn instance(name: &str, id: &str, status: Status) -> Instance {
        serde_json::from_value(serde_json::json!({
            "name": name, "id": id, "version": "1.0.0",
            "interfaces": {"REST": "http://127.0.0.1:1"}, "metadata": {},
            "status": status, "last_heartbeat": "2026-01-01T00:00:00Z",
            "registered_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    pub fn deployment(name: &str, state: RunState, id: &str) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            version: "1.0.0".into(),
            state,
            pid: Some(7),
            container: None,
            runtime: "process".into(),
            restarts: 1,
            url: "http://127.0.0.1:1".into(),
            started_at: None,
            instance_id: Some(id.into()),
            instance_ids: Vec::new(),
            last_exit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{deployment, instance};
    use super::*;
    use chora_api::bootstrap_state::{RunStatus, ServiceRecord, State};

    #[test]
    fn replicas_show_as_their_units_and_etcd_members_by_their_health() {
        let dir = std::env::temp_dir().join(format!("chora-feed-{}", chora_api::random_hex(4)));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let mut state = State::fresh("prod");
        state.status = RunStatus::Completed;
        state.current_phase = 4;
        state.completed_phases = vec![0, 1, 2, 3, 4];
        let unit = |container: &str, service: &str| ServiceRecord {
            phase: 1,
            container: Some(container.into()),
            service: Some(service.into()),
            started_at: "t".into(),
            ..Default::default()
        };
        for n in [1, 2] {
            state.started(
                &format!("etcd-{n}"),
                ServiceRecord {
                    health: Some(format!("http://etcd-{n}:2379/health")),
                    ..unit(&format!("e{n}"), "etcd")
                },
            );
        }
        for (n, id) in [(1, "aaaa"), (2, "bbbb")] {
            state.started(
                &format!("manifest-{n}"),
                ServiceRecord {
                    instance_id: Some(format!("manifest-{n}-{id}")),
                    url: Some(format!("http://127.0.0.1:850{}", n - 1)),
                    ..unit(&format!("m{n}"), "manifest")
                },
            );
        }
        state.save(&dir.join("bootstrap-state.json")).unwrap();
        let mut reader = bootstrap::Reader::new(Some(dir.clone()));
        reader.refresh();
        let src = Sources {
            instances: vec![instance("manifest", "manifest-1-aaaa", Status::Up)],
            manifest_ok: true,
            deployments: BTreeMap::new(),
            bootstrap: reader,
            manifest_url: "http://127.0.0.1:8500".into(),
            probed: [("etcd-1".to_string(), true), ("etcd-2".to_string(), false)].into(),
        };
        let rows = compute(&src);
        let names: Vec<&str> = rows.keys().map(String::as_str).collect();
        assert_eq!(names, ["etcd-1", "etcd-2", "manifest-1", "manifest-2"]);
        assert_eq!(rows["manifest-1"].status, "up");
        assert_eq!(rows["manifest-1"].instances, 1);
        // Its instance is not in the Manifest: down, whatever the others say.
        assert_eq!(rows["manifest-2"].status, "down");
        assert_eq!(rows["etcd-1"].status, "up");
        assert_eq!(rows["etcd-2"].status, "down");
        assert_eq!(rows["etcd-1"].runtime, "docker");
        // Charts: a replica's unit by its one instance, an etcd member not at all.
        let targets = joined(&src).targets;
        assert_eq!(
            targets.keys().collect::<Vec<_>>(),
            ["manifest-1", "manifest-2"]
        );
        assert_eq!(
            targets["manifest-1"],
            Target {
                service: "manifest".into(),
                instance: Some("manifest-1-aaaa".into()),
                urls: vec!["http://127.0.0.1:1".into()],
            }
        );
        assert!(targets["manifest-2"].urls.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_row_is_up_only_while_its_current_instance_is() {
        let mut src = Sources {
            instances: vec![
                instance("manifest", "manifest-1", Status::Up),
                instance("analyzer", "analyzer-old", Status::Up),
                instance("storage", "storage-1", Status::Up),
                instance("gateway", "gateway-1", Status::Unhealthy),
            ],
            manifest_ok: true,
            deployments: BTreeMap::new(),
            bootstrap: bootstrap::Reader::new(None),
            manifest_url: "http://127.0.0.1:1".into(),
            probed: BTreeMap::new(),
        };
        // Restarted: its new instance has not registered yet, the old one lingers.
        src.deployments.insert(
            "analyzer".into(),
            deployment("analyzer", RunState::Running, "analyzer-new"),
        );
        src.deployments.insert(
            "storage".into(),
            deployment("storage", RunState::Restarting, "storage-1"),
        );
        src.deployments.insert(
            "logger".into(),
            deployment("logger", RunState::Stopped, "logger-1"),
        );
        let rows = compute(&src);
        let status = |n: &str| rows[n].status;
        assert_eq!(status("manifest"), "up");
        assert_eq!(status("analyzer"), "down");
        assert_eq!(status("storage"), "down", "restarting is down");
        assert_eq!(status("logger"), "down");
        assert_eq!(status("gateway"), "unhealthy");
        assert_eq!(rows["storage"].state, Some("restarting"));
        assert_eq!(rows["storage"].runtime, "process");
        assert_eq!(rows["gateway"].runtime, "-");
        src.instances
            .push(instance("analyzer", "analyzer-new", Status::Up));
        src.manifest_ok = false;
        let rows = compute(&src);
        assert_eq!(rows["analyzer"].status, "up");
        assert_eq!(
            rows["manifest"].status, "down",
            "the Manifest does not answer"
        );
    }
}
