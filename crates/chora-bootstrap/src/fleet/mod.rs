//! The fleet (DESIGN.md §13): a config with `inventory:` runs every container
//! as a Swarm service on the inventory's hosts, from the operator's machine.
//!
//! - **One way to the hosts.** The inventory is `chora infra`'s, parsed by
//!   its parser; the swarm is reached through `chora_infra::tunnel` (the
//!   first manager that answers, over SSH with the inventory's settings), and
//!   images travel the same way (`ensure_image`, skipped where the host has
//!   the image id). Nothing here opens a port or talks SSH itself.
//! - **One runtime.** The swarm is one more implementation of the runtime
//!   seam ([`chora_runtime::swarm::SwarmRuntime`]); `runtimes.rs` picks it for
//!   every container of a fleet and nothing after asks which runtime it holds.
//! - **Placement is a pure function** of the inventory and the unit
//!   ([`placement`]): etcd member n on the n-th manager (or the host labelled
//!   `chora.etcd=n`), Manifest node n on the n-th host (or `chora.manifest=n`),
//!   the gateway on every host publishing its port in host mode (the only
//!   port of the system on a host's inventory address), the orchestrator
//!   once on a manager, with that manager's Docker socket and the swarm as
//!   its container runtime; the rest Swarm spreads.

use crate::config::ServiceSpec;
use crate::ctx::Ctx;
use crate::failure::StepError;
use chora_infra::Inventory;
use chora_infra::tunnel::{DockerTunnel, ImageLoad};
use chora_runtime::swarm::SwarmRuntime;
use chora_runtime::{Placement, UnitSpec};
use std::path::PathBuf;
use std::sync::Arc;

pub mod handle;
pub use handle::Fleet;

/// Etcd member n is reached from here on 127.0.0.1:`ETCD_DOOR + n`.
pub const ETCD_DOOR: u16 = 23790;

/// The host label that keeps the gateway to the hosts carrying it.
pub const GATEWAY_LABEL: &str = "chora.gateway";

/// The overlay's MTU inside the mesh's: VXLAN adds 50 bytes.
pub const VXLAN_OVERHEAD: u32 = 50;

impl Ctx {
    /// The inventory file this config names (relative to the config's
    /// directory), if any.
    pub fn inventory_path(&self) -> Option<PathBuf> {
        let p = PathBuf::from(self.substitute(self.config.inventory.as_deref()?));
        Some(if p.is_absolute() {
            p
        } else {
            self.config_path.parent().map(|d| d.join(&p)).unwrap_or(p)
        })
    }

    /// The inventory this config names, parsed by `chora infra`'s parser.
    pub fn inventory(&self) -> Option<Result<Inventory, StepError>> {
        let path = self.inventory_path()?;
        Some(Inventory::load(&path).map_err(|e| {
            StepError::new(e.to_string()).action(format!(
                "Fix {} (`chora infra status --inventory {}` checks it)",
                path.display(),
                path.display()
            ))
        }))
    }

    /// The fleet's swarm, reached once per run: the first manager of the
    /// inventory whose Docker answers over SSH.
    pub async fn fleet(&self) -> Result<Arc<Fleet>, StepError> {
        self.fleet
            .get_or_try_init(|| async {
                let path = self.inventory_path().unwrap_or_default();
                let inventory = self.inventory().ok_or_else(|| {
                    StepError::new("this config names no inventory (`inventory:`)")
                })??;
                let mut why = Vec::new();
                for (i, h) in inventory.hosts.iter().enumerate() {
                    if !inventory.is_manager(i) {
                        continue;
                    }
                    match chora_infra::tunnel::docker_tunnel(&inventory, &h.name).await {
                        Ok(manager) => {
                            let mtu = inventory.network.mtu() - VXLAN_OVERHEAD;
                            let mut swarm = SwarmRuntime::new(
                                manager.docker().clone(),
                                self.home.root.display().to_string(),
                                self.config.project().to_owned(),
                                mtu,
                            );
                            swarm.chora_image = self.chora_image();
                            self.open_door(&inventory, &manager, &swarm).await?;
                            return Ok(Arc::new(Fleet {
                                inventory,
                                manager,
                                swarm: Arc::new(swarm),
                                ensured: Default::default(),
                                tunnels: Default::default(),
                            }));
                        }
                        Err(e) => why.push(e.to_string()),
                    }
                }
                let mut err = StepError::new(format!(
                    "no manager of the swarm in {} answers",
                    path.display()
                ));
                if why.is_empty() {
                    err = err.cause("the inventory has no swarm (`swarm: false`)");
                }
                for w in why {
                    err = err.cause(w);
                }
                Err(err.action(format!(
                    "Prepare the hosts first: chora infra bootstrap --inventory {}",
                    path.display()
                )))
            })
            .await
            .cloned()
    }

    /// The chora image this system runs (the orchestrator's; by default
    /// this chora's `chora:<version>`): the door's too.
    pub fn chora_image(&self) -> String {
        self.config
            .service("orchestrator")
            .and_then(|o| o.image.as_deref())
            .map(|i| self.substitute(i))
            .unwrap_or_else(chora_docker::image::chora_tag)
    }

    /// The door (`chora_runtime::swarm` `door.rs`): every unit with a
    /// `port` relayed from the manager's loopback, each etcd member on
    /// `ETCD_DOOR + n`, and each of those ports plus the gateway's (host
    /// mode, on every host) forwarded from this machine's loopback over the
    /// manager's SSH master.
    async fn open_door(
        &self,
        inv: &Inventory,
        manager: &DockerTunnel,
        swarm: &SwarmRuntime,
    ) -> Result<(), StepError> {
        let mut pairs = Vec::new();
        let mut direct = Vec::new();
        for (name, s) in &self.config.services {
            let s = &s.value;
            let inner = s.container_port.or(s.port);
            match (s.port, inner) {
                (Some(p), _) if placement(inv, name, s).publish => direct.push(p),
                (Some(p), Some(i)) => pairs.push((p, format!("{name}:{i}"))),
                _ => {}
            }
        }
        for (n, m) in self.config.etcd_members().iter().enumerate() {
            pairs.push((ETCD_DOOR + n as u16 + 1, format!("{m}:2379")));
        }
        let tag = swarm.chora_image.clone();
        let local = chora_runtime::docker::connect()
            .await
            .map_err(|e| StepError::new(format!("the local Docker engine: {e}")))?;
        chora_infra::tunnel::ensure_image(&local, manager, &tag)
            .await
            .map_err(|e| StepError::new(e.to_string()))?;
        swarm.open_door(&pairs).await.map_err(|e| {
            StepError::new(format!("cannot open the door on {}: {e}", manager.host()))
        })?;
        let ports: Vec<u16> = pairs.iter().map(|(p, _)| *p).chain(direct).collect();
        manager.forward_ports(&ports).await.map_err(|e| {
            StepError::new(e.to_string())
                .cause("one of this machine's ports is taken (a system of another home?)")
        })
    }

    /// Puts `image` (of the local engine) onto every host of the fleet that
    /// lacks it, once per run: a second caller waits for the first one's
    /// load (see [`Ctx::prefetch_fleet_images`]).
    pub async fn ensure_fleet_image(&self, image: &str) -> Result<(), StepError> {
        let fleet = self.fleet().await?;
        fleet
            .ensured
            .get_or_try_init(image, || async {
                for line in self.ensure_fleet_images(&[image.to_owned()]).await? {
                    tracing::info!("{line}");
                }
                Ok::<_, StepError>(())
            })
            .await
    }

    /// Starts putting every image this config's units run onto the fleet's
    /// hosts, in the order the phases need them, while the first waves
    /// start (a wave asking for an image on its way waits for it); a load
    /// that fails here is tried again, and reported, by the unit that
    /// needs it.
    pub fn prefetch_fleet_images(self: &Arc<Self>) {
        let mut images: Vec<String> = Vec::new();
        for name in self.config.start_order() {
            if let Some(i) = self.unit_spec(&name, self.spec(&name)).image
                && !i.contains("${")
                && !images.contains(&i)
            {
                images.push(i);
            }
        }
        let ctx = self.clone();
        tokio::spawn(async move {
            for image in images {
                if let Err(e) = ctx.ensure_fleet_image(&image).await {
                    tracing::warn!(image, error = %e.message, "putting an image on the fleet's hosts ahead failed");
                }
            }
        });
    }

    /// Puts `images` (of the local engine) onto every host of the fleet that
    /// lacks them, over SSH, no registry. Returns a line per host.
    pub async fn ensure_fleet_images(&self, images: &[String]) -> Result<Vec<String>, StepError> {
        let fleet = self.fleet().await?;
        let local = chora_runtime::docker::connect()
            .await
            .map_err(|e| StepError::new(format!("the local Docker engine: {e}")))?;
        let fleet = &*fleet;
        let inv = &fleet.inventory;
        let hosts = futures_util::future::join_all(inv.hosts.iter().map(|h| {
            let local = local.clone();
            async move {
                let tunnel = if h.name == fleet.manager.host() {
                    None
                } else {
                    Some(fleet.tunnel(&h.name).await?)
                };
                let t = tunnel.as_deref().unwrap_or(&fleet.manager);
                let mut said = Vec::new();
                for image in images {
                    match chora_infra::tunnel::ensure_image(&local, t, image).await? {
                        ImageLoad::Present { .. } => said.push(format!("{image} present")),
                        ImageLoad::Loaded { bytes, took, .. } => said.push(format!(
                            "{image} loaded ({} MB in {:.1}s)",
                            bytes / 1_000_000,
                            took.as_secs_f64()
                        )),
                    }
                }
                Ok::<_, chora_infra::tunnel::TunnelError>(format!(
                    "{}: {}",
                    h.name,
                    said.join(", ")
                ))
            }
        }))
        .await;
        hosts
            .into_iter()
            .map(|r| {
                r.map_err(|e| {
                    StepError::new(e.to_string())
                        .action("Check the host with `chora infra status`, then run `chora bootstrap` again")
                })
            })
            .collect()
    }

    /// Unit `name` as the swarm runs it: where (see [`placement`]), its
    /// health check inside its container, no bind mount of this machine's
    /// paths (they are not on the hosts), and an orchestrator whose
    /// containers are the swarm's services.
    pub fn for_fleet(&self, name: &str, spec: &ServiceSpec, unit: &mut UnitSpec) {
        let Some(Ok(inv)) = self.inventory() else {
            return;
        };
        unit.placement = placement(&inv, name, spec);
        let member = spec
            .replica
            .as_ref()
            .is_some_and(|r| r.service == crate::config::ETCD);
        unit.health = if member {
            Some(ETCD_HEALTH_INSIDE.to_owned())
        } else {
            spec.health_url()
                .map(|u| inside(&u, spec.port, spec.container_port.or(spec.port)))
        };
        let home = self.home.root.display().to_string();
        unit.volumes
            .retain(|v| !(v.is_bind() && v.source.starts_with(&home)));
        if name == "orchestrator" {
            unit.argv.extend([
                "--swarm-mtu".to_string(),
                (inv.network.mtu() - VXLAN_OVERHEAD).to_string(),
            ]);
        }
    }
}

/// The host of replica `n` of `service`: the host labelled
/// `chora.<service>=n`, else the n-th of `candidates` (in inventory order,
/// wrapping around).
fn nth_host(inv: &Inventory, service: &str, n: u32, managers_only: bool) -> Option<String> {
    let label = format!("chora.{service}");
    if let Some(h) = inv
        .hosts
        .iter()
        .find(|h| h.labels.get(&label).is_some_and(|v| *v == n.to_string()))
    {
        return Some(h.name.clone());
    }
    let candidates: Vec<&str> = inv
        .hosts
        .iter()
        .enumerate()
        .filter(|(i, _)| !managers_only || inv.is_manager(*i))
        .map(|(_, h)| h.name.as_str())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[(n as usize - 1) % candidates.len()].to_owned())
}

/// Where unit `name` (of `spec`) runs on the fleet's hosts (see the module
/// head).
pub fn placement(inv: &Inventory, name: &str, spec: &ServiceSpec) -> Placement {
    let service = spec.replica.as_ref().map_or(name, |r| r.service.as_str());
    let n = spec.replica.as_ref().map_or(1, |r| r.n);
    match service {
        crate::config::ETCD => Placement {
            host: nth_host(inv, service, n, true),
            ..Placement::default()
        },
        "manifest" => Placement {
            host: nth_host(inv, service, n, false),
            ..Placement::default()
        },
        // Every host, or only the hosts labelled `chora.gateway: "true"`
        // when any is.
        "gateway" => Placement {
            global: true,
            publish: true,
            labelled: inv
                .hosts
                .iter()
                .any(|h| h.labels.get(GATEWAY_LABEL).is_some_and(|v| v == "true"))
                .then(|| (GATEWAY_LABEL.to_owned(), "true".to_owned())),
            ..Placement::default()
        },
        "orchestrator" => Placement {
            manager: true,
            ..Placement::default()
        },
        _ => Placement::default(),
    }
}

/// `url` (a health URL as the bootstrap's config writes it: on the unit's
/// published `port`, or by its name) as the unit reaches itself inside its
/// container: `127.0.0.1` on its `inner` port. Inside, never by name: Swarm
/// adds a task's names to the overlay's DNS only once its health check has
/// passed.
pub fn inside(url: &str, port: Option<u16>, inner: Option<u16>) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let at = match authority.rsplit_once(':') {
        Some((_, p)) => match (p.parse::<u16>().ok(), port, inner) {
            (Some(p), Some(published), Some(i)) if p == published => i,
            (Some(p), _, _) => p,
            (None, _, _) => return url.to_owned(),
        },
        None => return url.to_owned(),
    };
    format!("{scheme}://127.0.0.1:{at}{path}")
}

/// The health check an etcd member runs inside its container: its client
/// port accepts connections. Not `/health`: that answers only once the
/// cluster has a leader, which needs the peers' names, which Swarm adds to
/// the overlay's DNS only once their health checks passed.
pub const ETCD_HEALTH_INSIDE: &str = "tcp://127.0.0.1:2379";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn inv(extra: &str) -> Inventory {
        let y = format!(
            "hosts:\n  - {{name: a, address: 10.0.0.1, user: root}}\n  - {{name: b, address: 10.0.0.2, user: root}}\n  - {{name: c, address: 10.0.0.3, user: root{extra}}}\nnetwork: {{provider: wireguard}}\nswarm: {{managers: 2}}\n"
        );
        Inventory::parse(&y, Path::new("hosts.yml")).unwrap()
    }

    #[test]
    fn prod_units_are_placed_one_per_host_and_the_gateway_everywhere() {
        let c = Config::parse(&crate::template::prod(), Path::new("t.yml")).unwrap();
        let inv = inv("");
        let at = |u: &str| placement(&inv, u, c.service(u).unwrap());
        assert_eq!(at("etcd-1").host.as_deref(), Some("a"));
        assert_eq!(at("etcd-2").host.as_deref(), Some("b"));
        // Two managers: the third member goes round to the first.
        assert_eq!(at("etcd-3").host.as_deref(), Some("a"));
        assert_eq!(at("manifest-1").host.as_deref(), Some("a"));
        assert_eq!(at("manifest-2").host.as_deref(), Some("b"));
        assert_eq!(at("manifest-3").host.as_deref(), Some("c"));
        let g = at("gateway");
        assert!(g.global && g.publish && g.host.is_none());
        let o = at("orchestrator");
        assert!(o.manager && !o.publish && !o.global);
        assert!(at("manifest-1").publish.not());
        assert_eq!(inv.network.mtu() - VXLAN_OVERHEAD, 1370);
    }

    #[test]
    fn a_host_label_pins_a_member_where_it_says() {
        let c = Config::parse(&crate::template::prod(), Path::new("t.yml")).unwrap();
        let inv = inv(", labels: {chora.etcd: \"3\"}");
        let at = |u: &str| placement(&inv, u, c.service(u).unwrap());
        assert_eq!(at("etcd-3").host.as_deref(), Some("c"));
    }

    #[test]
    fn hosts_labelled_chora_gateway_keep_the_gateway_to_themselves() {
        let c = Config::parse(&crate::template::prod(), Path::new("t.yml")).unwrap();
        let unlabelled = placement(&inv(""), "gateway", c.service("gateway").unwrap());
        assert_eq!(unlabelled.labelled, None);
        let inv = inv(", labels: {chora.gateway: \"true\"}");
        let g = placement(&inv, "gateway", c.service("gateway").unwrap());
        assert!(g.global && g.publish);
        assert_eq!(g.labelled, Some(("chora.gateway".into(), "true".into())));
    }

    #[test]
    fn a_health_url_inside_its_container_is_on_the_inner_port() {
        assert_eq!(
            inside("http://127.0.0.1:8502/health", Some(8502), Some(8500)),
            "http://127.0.0.1:8500/health"
        );
        assert_eq!(
            inside("http://etcd-1:2379/health", None, Some(2379)),
            "http://127.0.0.1:2379/health"
        );
        assert_eq!(
            inside("tcp://db:5432", Some(5432), Some(5432)),
            "tcp://127.0.0.1:5432"
        );
    }

    use std::ops::Not;
}
