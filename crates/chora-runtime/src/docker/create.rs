//! Creating a unit's container: the project network, named volumes labelled
//! with this home, the port published on 127.0.0.1, the labels, the aliases.
//! A leftover container of the same name is replaced only when it is this
//! home's; a volume of another home is never reused.

use super::{
    DockerRuntime, LABEL_HOME, LABEL_PROJECT, LABEL_SERVICE, NETWORK_ENV, docker_err, is_status,
    remove,
};
use crate::{RuntimeError, UnitSpec};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig, PortBinding,
    VolumeCreateRequest,
};
use bollard::query_parameters::CreateContainerOptions;
use std::collections::HashMap;
use std::time::Duration;

impl DockerRuntime {
    pub(super) async fn create(&self, spec: &UnitSpec) -> Result<String, RuntimeError> {
        let image = spec
            .image
            .clone()
            .ok_or_else(|| RuntimeError::Unsupported(format!("`{}` has no image", spec.name)))?;
        self.ensure_network().await?;
        let cname = self.container_name(&spec.name);
        // A container of that name left behind (exited, or from a start that
        // was cut short) is ours to replace; anyone else's is not.
        match self.docker.inspect_container(&cname, None).await {
            Ok(c) => {
                let ours = c
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(LABEL_HOME).cloned())
                    == Some(self.home.clone());
                if !ours {
                    return Err(RuntimeError::Docker(format!(
                        "a container named `{cname}` exists and does not belong to this chora home ({})",
                        self.home
                    )));
                }
                remove(&self.docker, &cname).await?;
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(docker_err(e)),
        }
        let mut binds = Vec::new();
        for v in &spec.volumes {
            let source = if v.is_bind() {
                v.source.clone()
            } else {
                let name = self.volume_name(&v.source);
                if let Some(other) = self.volume_owner(&name).await.filter(|h| *h != self.home) {
                    return Err(RuntimeError::Docker(format!(
                        "the volume `{name}` belongs to the chora home {other}: give this home a `project:` of its own, or remove the volume (docker volume rm {name})"
                    )));
                }
                self.docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(name.clone()),
                        labels: Some(
                            [
                                (LABEL_HOME.to_string(), self.home.clone()),
                                (LABEL_PROJECT.to_string(), self.project.clone()),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    })
                    .await
                    .map_err(docker_err)?;
                name
            };
            let mode = if v.read_only { "ro" } else { "rw" };
            binds.push(format!("{source}:{}:{mode}", v.target));
        }
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        let published = spec
            .port
            .zip(spec.inner_port())
            .into_iter()
            .chain(spec.more_ports.iter().map(|p| (*p, *p)));
        for (port, inner) in published {
            let key = format!("{inner}/tcp");
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.to_string()),
                }]),
            );
        }
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
            env: Some(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain([format!("{NETWORK_ENV}={}", self.project)])
                    .collect(),
            ),
            labels: Some(self.labels(spec)),
            hostname: Some(spec.name.clone()),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(port_bindings),
                binds: Some(binds),
                network_mode: Some(self.project.clone()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(
                    [(
                        self.project.clone(),
                        EndpointSettings {
                            aliases: Some(aliases(spec)),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
            }),
            ..Default::default()
        };
        // The container this one replaces may still be being removed (an exit
        // is reported before its removal ends): its name frees up shortly.
        let mut tries = 0;
        let created = loop {
            let r = self
                .docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(cname.clone()),
                        ..Default::default()
                    }),
                    body.clone(),
                )
                .await;
            match r {
                Err(e) if is_status(&e, 409) && tries < 50 => {
                    tries += 1;
                    let _ = remove(&self.docker, &cname).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r,
            }
        }
        .map_err(|e| {
                if is_status(&e, 404) {
                    RuntimeError::Docker(format!(
                        "the image `{image}` does not exist here and no registry can provide it (build it with `chora image build`)"
                    ))
                } else {
                    docker_err(e)
                }
            })?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            // Nothing half-started is left behind.
            let _ = remove(&self.docker, &created.id).await;
            return Err(docker_err(e));
        }
        Ok(created.id)
    }
}

/// The names a container answers to on the project network: its unit name,
/// and for a replica also its service's name.
fn aliases(spec: &UnitSpec) -> Vec<String> {
    let mut a = vec![spec.name.clone()];
    if let Some(s) = spec.labels.get(LABEL_SERVICE)
        && *s != spec.name
    {
        a.push(s.clone());
    }
    a
}
