//! A unit as a Swarm service spec: image and command, environment (secrets
//! there only), the §9 labels on the service and its containers, the
//! stack's overlay with the unit's aliases, `dnsrr`, named volumes
//! `<project>-<volume>` (local to the host a task runs on), host-mode
//! publishing of its `port` (only units that have one: the gateway), where
//! it runs, a HEALTHCHECK of `chora probe` on its own health URL, Swarm's
//! restarts (any exit, 1 s delay), and rolling updates one task at a time,
//! start-first, rolled back by Swarm when a new task fails.

use super::{LABEL_HOST, SwarmRuntime};
use crate::UnitSpec;
use crate::docker::NETWORK_ENV;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum,
    HealthConfig, Mount, MountType, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use std::time::Duration;

fn nanos(d: Duration) -> i64 {
    d.as_nanos() as i64
}

/// A replicated unit's tasks each register under an instance id of their
/// own: the unit's id and the task's slot (Swarm fills in the template per
/// task; a task that replaces another in its slot takes its id over).
const SLOT_SUFFIX: &str = "-{{.Task.Slot}}";
/// ... and advertise their own address on the overlay: the task's name
/// (`<service>.<slot>.<task id>`), which the overlay's DNS resolves to that
/// task alone, so the gateway tells the tasks apart.
const TASK_NAME: &str = "{{.Task.Name}}";

/// The instance ids the `n` tasks of a replicated unit started under `id`
/// register under (what [`SLOT_SUFFIX`] makes of `id`: Swarm numbers the
/// slots 1 … n).
pub(super) fn slot_ids(id: &str, n: u32) -> Vec<String> {
    (1..=n).map(|slot| format!("{id}-{slot}")).collect()
}

/// `KEY=value` as a task of `spec` gets it: per task where a replicated
/// unit's tasks must differ (see [`SLOT_SUFFIX`]).
fn task_env(spec: &UnitSpec, replicated: bool, k: &str, v: &str) -> String {
    match k {
        "CHORA_INSTANCE_ID" if replicated => format!("{k}={v}{SLOT_SUFFIX}"),
        "CHORA_ADVERTISE_URL" if replicated => format!(
            "{k}={}",
            v.replacen(
                &format!("://{}:", spec.name),
                &format!("://{TASK_NAME}:"),
                1
            )
        ),
        _ => format!("{k}={v}"),
    }
}

/// The unit's own `KEY=value` back from a task's (the inverse of
/// [`task_env`]), as the runtime finds a service again.
pub(super) fn unit_env(name: &str, k: &str, v: &str) -> String {
    match k {
        "CHORA_INSTANCE_ID" => v.strip_suffix(SLOT_SUFFIX).unwrap_or(v).to_owned(),
        "CHORA_ADVERTISE_URL" => v.replacen(&format!("://{TASK_NAME}:"), &format!("://{name}:"), 1),
        _ => v.to_owned(),
    }
}

impl SwarmRuntime {
    pub(super) fn service_spec(&self, spec: &UnitSpec) -> ServiceSpec {
        let labels = self.labels(spec);
        let replicated = !spec.placement.global && spec.placement.replicas > 1;
        let mut env: Vec<String> = spec
            .env
            .iter()
            .map(|(k, v)| task_env(spec, replicated, k, v))
            .collect();
        env.push(format!("{NETWORK_ENV}={}", self.project));
        let mounts: Vec<Mount> = spec
            .volumes
            .iter()
            .map(|v| Mount {
                target: Some(v.target.clone()),
                source: Some(if v.is_bind() {
                    v.source.clone()
                } else {
                    format!("{}-{}", self.project, v.source)
                }),
                typ: Some(if v.is_bind() {
                    MountType::BIND
                } else {
                    MountType::VOLUME
                }),
                read_only: Some(v.read_only),
                ..Default::default()
            })
            .collect();
        let health = spec.health.as_ref().map(|url| HealthConfig {
            test: Some(vec![
                "CMD".into(),
                chora_docker::image::CHORA_IN_IMAGE.into(),
                "probe".into(),
                url.clone(),
                "--timeout".into(),
                "2".into(),
            ]),
            interval: Some(nanos(Duration::from_secs(1))),
            timeout: Some(nanos(Duration::from_secs(3))),
            retries: Some(3),
            start_period: Some(nanos(Duration::from_secs(60))),
            start_interval: Some(nanos(Duration::from_millis(250))),
        });
        let mut constraints = Vec::new();
        if let Some(h) = &spec.placement.host {
            constraints.push(format!("node.labels.{LABEL_HOST}=={h}"));
        }
        if let Some((k, v)) = &spec.placement.labelled {
            constraints.push(format!("node.labels.{k}=={v}"));
        }
        if spec.placement.manager {
            constraints.push("node.role==manager".into());
        }
        // Its unit name, and its container name on one engine
        // (`<project>-<name>`), so a spec written for one engine (an etcd
        // member's peers) resolves the same here.
        let mut aliases = vec![spec.name.clone(), format!("{}-{}", self.project, spec.name)];
        if let Some(s) = spec.labels.get(crate::docker::LABEL_SERVICE)
            && *s != spec.name
        {
            aliases.push(s.clone());
        }
        let ports: Vec<EndpointPortConfig> = spec
            .port
            .zip(spec.inner_port())
            .into_iter()
            .chain(spec.more_ports.iter().map(|p| (*p, *p)))
            .filter(|_| spec.placement.publish)
            .map(|(p, inner)| EndpointPortConfig {
                target_port: Some(inner.into()),
                published_port: Some(p.into()),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                ..Default::default()
            })
            .collect();
        let mode = if spec.placement.global {
            ServiceSpecMode {
                global: Some(Default::default()),
                ..Default::default()
            }
        } else {
            ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(spec.placement.replicas.max(1).into()),
                }),
                ..Default::default()
            }
        };
        // A pinned unit, or one with a host port, cannot start a second
        // task beside the first on its host: those update stop-first.
        let start_first = spec.placement.host.is_none() && ports.is_empty();
        let order = if start_first {
            ServiceSpecUpdateConfigOrderEnum::START_FIRST
        } else {
            ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
        };
        ServiceSpec {
            name: Some(self.service_name(&spec.name)),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: spec.image.clone(),
                    labels: Some(labels),
                    args: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
                    hostname: Some(spec.name.clone()),
                    env: Some(env),
                    mounts: Some(mounts),
                    stop_grace_period: Some(nanos(Duration::from_secs(5))),
                    health_check: health,
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(nanos(Duration::from_secs(1))),
                    max_attempts: Some(0),
                    window: None,
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: (!constraints.is_empty()).then_some(constraints),
                    // Replicas spread over the hosts. A one-task service
                    // gets no preference: with one, every such service
                    // ties on the first host and they all land there;
                    // without, Swarm puts it on the host with the fewest
                    // tasks.
                    // No cap per host: the replica of a lost host runs
                    // on another one beside the one there.
                    preferences: replicated.then(|| {
                        vec![TaskSpecPlacementPreferences {
                            spread: Some(TaskSpecPlacementSpread {
                                spread_descriptor: Some(format!("node.labels.{LABEL_HOST}")),
                            }),
                        }]
                    }),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.project.clone()),
                    aliases: Some(aliases),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            mode: Some(mode),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(1),
                delay: Some(0),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
                monitor: Some(nanos(Duration::from_secs(5))),
                max_failure_ratio: Some(0.0),
                order: Some(order),
            }),
            rollback_config: Some(ServiceSpecRollbackConfig {
                parallelism: Some(1),
                delay: Some(0),
                monitor: Some(nanos(Duration::from_secs(5))),
                order: Some(if start_first {
                    ServiceSpecRollbackConfigOrderEnum::START_FIRST
                } else {
                    ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
                }),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ports: (!ports.is_empty()).then_some(ports),
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Placement;

    fn runtime() -> SwarmRuntime {
        let docker = bollard::Docker::connect_with_http(
            "http://127.0.0.1:9",
            1,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("a client connects lazily");
        SwarmRuntime::new(docker, "/home".into(), "p".into(), 1370)
    }

    fn unit(replicas: u32) -> UnitSpec {
        UnitSpec {
            name: "analyzer".into(),
            env: [
                ("CHORA_INSTANCE_ID".to_string(), "analyzer-1a2b".to_string()),
                (
                    "CHORA_ADVERTISE_URL".to_string(),
                    "http://analyzer:8800".to_string(),
                ),
                ("OTHER".to_string(), "x".to_string()),
            ]
            .into(),
            placement: Placement {
                replicas,
                ..Placement::default()
            },
            ..Default::default()
        }
    }

    fn env_of(s: &ServiceSpec) -> Vec<String> {
        let t = s.task_template.as_ref().unwrap();
        t.container_spec.as_ref().unwrap().env.clone().unwrap()
    }

    #[test]
    fn replicas_are_one_service_whose_tasks_register_apart_and_spread() {
        let rt = runtime();
        let s = rt.service_spec(&unit(3));
        let mode = s.mode.as_ref().unwrap().replicated.as_ref().unwrap();
        assert_eq!(mode.replicas, Some(3));
        let env = env_of(&s);
        assert!(
            env.contains(&"CHORA_INSTANCE_ID=analyzer-1a2b-{{.Task.Slot}}".to_owned()),
            "{env:?}"
        );
        assert!(
            env.contains(&"CHORA_ADVERTISE_URL=http://{{.Task.Name}}:8800".to_owned()),
            "{env:?}"
        );
        assert!(env.contains(&"OTHER=x".to_owned()), "{env:?}");
        let place = s
            .task_template
            .as_ref()
            .unwrap()
            .placement
            .as_ref()
            .unwrap();
        assert!(place.preferences.is_some(), "spread over the hosts");
        // A lost host's replica may run beside another one.
        assert_eq!(place.max_replicas, None);
        // Found again, the unit's own environment.
        for (k, want) in &unit(3).env {
            let kv = env
                .iter()
                .find(|kv| kv.starts_with(&format!("{k}=")))
                .unwrap();
            let v = &kv[k.len() + 1..];
            assert_eq!(&unit_env("analyzer", k, v), want, "{k}");
        }

        // One copy: the unit's own id and address, no preference.
        let s = rt.service_spec(&unit(1));
        let env = env_of(&s);
        assert!(
            env.contains(&"CHORA_INSTANCE_ID=analyzer-1a2b".to_owned()),
            "{env:?}"
        );
        assert!(
            env.contains(&"CHORA_ADVERTISE_URL=http://analyzer:8800".to_owned()),
            "{env:?}"
        );
        let place = s
            .task_template
            .as_ref()
            .unwrap()
            .placement
            .as_ref()
            .unwrap();
        assert!(place.preferences.is_none());
    }
}
