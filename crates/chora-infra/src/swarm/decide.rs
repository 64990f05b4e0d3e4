//! Which swarm is this inventory's, and where each host stands: pure
//! functions of what the hosts said, so that they are tested without hosts.
//!
//! A swarm counts as **ours** when every manager a host knows of listens on an
//! address inside the mesh's network (the inventory's WireGuard CIDR, or
//! Tailscale's 100.64.0.0/10) and the host itself advertises its own mesh
//! address: chora only ever makes swarms like that, and a swarm made by hand
//! (`docker swarm init` with the public address) or another fleet's is not
//! one. Swarms are told apart by cluster id (a manager sees it; a worker is
//! placed through the managers it knows). When the hosts are in more than one
//! swarm of ours (hosts that were once split), the one with the most hosts is
//! the swarm, the earliest host in inventory order breaking a tie; a host in
//! any other is `in another swarm` and left alone, like one in a foreign swarm.

use bollard::models::{LocalNodeState, SwarmInfo};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The mesh's IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshNet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl MeshNet {
    /// Whether `ip` (an address, without a port) is inside it.
    pub fn contains(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            return false;
        };
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network) & mask
    }
}

/// What a host's `GET /info` says of its swarm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub state: String,
    pub node_id: String,
    pub node_addr: String,
    /// A manager that can answer the swarm's API.
    pub control: bool,
    /// The managers it knows: (node id, `ip:port`).
    pub managers: Vec<(String, String)>,
    /// The cluster id (managers only).
    pub cluster: Option<String>,
    pub error: String,
    pub nodes: i64,
    pub manager_count: i64,
}

impl Seen {
    pub fn from_info(s: Option<SwarmInfo>) -> Seen {
        let s = s.unwrap_or_default();
        let state = match s.local_node_state {
            Some(LocalNodeState::ACTIVE) => "active",
            Some(LocalNodeState::PENDING) => "pending",
            Some(LocalNodeState::ERROR) => "error",
            Some(LocalNodeState::LOCKED) => "locked",
            _ => "inactive",
        };
        Seen {
            state: state.into(),
            node_id: s.node_id.unwrap_or_default(),
            node_addr: s.node_addr.unwrap_or_default(),
            control: s.control_available.unwrap_or(false),
            managers: s
                .remote_managers
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.node_id.unwrap_or_default(), p.addr.unwrap_or_default()))
                .collect(),
            cluster: s.cluster.and_then(|c| c.id).filter(|c| !c.is_empty()),
            error: s.error.unwrap_or_default(),
            nodes: s.nodes.unwrap_or(0),
            manager_count: s.managers.unwrap_or(0),
        }
    }

    pub fn active(&self) -> bool {
        self.state == "active"
    }
}

/// Where one host stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// In no swarm: to join (or to start one).
    Inactive,
    /// In a swarm of ours, known by this key (a cluster id, or the managers it
    /// knows when no manager of ours answered).
    Ours(String),
    /// Left alone, for this reason.
    Elsewhere(String),
}

/// One host as the plan sees it.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub index: usize,
    pub name: &'a str,
    pub mesh_ip: &'a str,
    pub seen: &'a Seen,
}

/// The swarm's key and every host's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub classes: Vec<Class>,
    /// The swarm's key; `None` when no host is in a swarm of ours.
    pub swarm: Option<String>,
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(addr)
}

/// A short cluster id for messages.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Places every host (see the module head).
pub fn plan(hosts: &[Input<'_>], mesh: MeshNet) -> Plan {
    // Managers of ours that answered: node id → cluster id.
    let clusters: BTreeMap<&str, &str> = hosts
        .iter()
        .filter_map(|h| Some((h.seen.node_id.as_str(), h.seen.cluster.as_deref()?)))
        .collect();
    let mut classes: Vec<Class> = hosts
        .iter()
        .map(|h| {
            let s = h.seen;
            match s.state.as_str() {
                "inactive" | "" => return Class::Inactive,
                "active" => {}
                "locked" => {
                    return Class::Elsewhere(
                        "its swarm is locked (autolock): unlock it with `docker swarm unlock`, or leave it".into(),
                    );
                }
                other => {
                    return Class::Elsewhere(format!(
                        "its swarm state is `{other}`{}: leave it (`docker swarm leave --force`) to let chora join it again",
                        if s.error.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", s.error)
                        }
                    ));
                }
            }
            let foreign: Vec<&str> = s
                .managers
                .iter()
                .map(|(_, a)| a.as_str())
                .filter(|a| !mesh.contains(ip_of(a)))
                .collect();
            if !foreign.is_empty() || s.managers.is_empty() {
                return Class::Elsewhere(format!(
                    "already in another swarm{} (managers at {}), left alone: `docker swarm leave` there lets it join this one",
                    s.cluster
                        .as_deref()
                        .map(|c| format!(" {}", short(c)))
                        .unwrap_or_default(),
                    if foreign.is_empty() {
                        "none known".to_owned()
                    } else {
                        foreign.join(", ")
                    }
                ));
            }
            if s.node_addr != h.mesh_ip {
                return Class::Elsewhere(format!(
                    "in the swarm, but it advertises {}, not its mesh address {}: `docker swarm leave` there lets chora join it again",
                    s.node_addr, h.mesh_ip
                ));
            }
            let key = s.cluster.clone().or_else(|| {
                s.managers
                    .iter()
                    .find_map(|(id, _)| clusters.get(id.as_str()).map(|c| c.to_string()))
            });
            Class::Ours(key.unwrap_or_else(|| {
                let mut ids: Vec<&str> = s.managers.iter().map(|(id, _)| id.as_str()).collect();
                ids.sort();
                format!("managers:{}", ids.join(","))
            }))
        })
        .collect();
    // The swarm: most hosts, then the earliest host.
    let mut groups: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (h, c) in hosts.iter().zip(&classes) {
        if let Class::Ours(k) = c {
            let g = groups.entry(k.as_str()).or_insert((0, usize::MAX));
            g.0 += 1;
            g.1 = g.1.min(h.index);
        }
    }
    let swarm = groups
        .iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
        .map(|(k, _)| k.to_string());
    for c in &mut classes {
        if let Class::Ours(k) = c
            && Some(&*k) != swarm.as_ref()
        {
            *c = Class::Elsewhere(format!(
                "in another swarm of these hosts ({}), left alone: `docker swarm leave` there lets it join this one",
                short(k)
            ));
        }
    }
    Plan { classes, swarm }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(
        state: &str,
        id: &str,
        addr: &str,
        cluster: Option<&str>,
        managers: &[(&str, &str)],
    ) -> Seen {
        Seen {
            state: state.into(),
            node_id: id.into(),
            node_addr: addr.into(),
            control: cluster.is_some(),
            managers: managers
                .iter()
                .map(|(i, a)| (i.to_string(), a.to_string()))
                .collect(),
            cluster: cluster.map(str::to_owned),
            ..Seen::default()
        }
    }

    fn run(seens: &[Seen]) -> Plan {
        let ips: Vec<String> = (1..=seens.len()).map(|i| format!("10.77.0.{i}")).collect();
        let mesh = MeshNet {
            network: Ipv4Addr::new(10, 77, 0, 0),
            prefix: 24,
        };
        let inputs: Vec<Input<'_>> = seens
            .iter()
            .enumerate()
            .map(|(i, s)| Input {
                index: i,
                name: "h",
                mesh_ip: &ips[i],
                seen: s,
            })
            .collect();
        plan(&inputs, mesh)
    }

    #[test]
    fn mesh_networks_hold_their_addresses() {
        let ts = MeshNet {
            network: Ipv4Addr::new(100, 64, 0, 0),
            prefix: 10,
        };
        assert!(ts.contains("100.101.2.3") && !ts.contains("100.128.0.1"));
        assert!(!ts.contains("fd7a::1") && !ts.contains(""));
    }

    #[test]
    fn fresh_hosts_have_no_swarm() {
        let p = run(&[Seen::default(), Seen::default()]);
        assert_eq!(p.swarm, None);
        assert_eq!(p.classes, vec![Class::Inactive, Class::Inactive]);
    }

    #[test]
    fn a_worker_is_placed_through_its_managers() {
        let m = [("n1", "10.77.0.1:2377")];
        let p = run(&[
            seen("active", "n1", "10.77.0.1", Some("c1"), &m),
            seen("active", "n2", "10.77.0.2", None, &m),
            Seen::default(),
        ]);
        assert_eq!(p.swarm.as_deref(), Some("c1"));
        assert_eq!(p.classes[1], Class::Ours("c1".into()));
        assert_eq!(p.classes[2], Class::Inactive);
    }

    #[test]
    fn a_swarm_on_a_public_address_is_another_swarm() {
        let m = [("n1", "10.77.0.1:2377")];
        let p = run(&[
            seen("active", "n1", "10.77.0.1", Some("c1"), &m),
            Seen::default(),
            seen(
                "active",
                "x",
                "192.0.2.3",
                Some("c9"),
                &[("x", "192.0.2.3:2377")],
            ),
        ]);
        assert_eq!(p.swarm.as_deref(), Some("c1"));
        let Class::Elsewhere(why) = &p.classes[2] else {
            panic!("{:?}", p.classes[2])
        };
        assert!(
            why.contains("another swarm c9") && why.contains("192.0.2.3:2377"),
            "{why}"
        );
    }

    #[test]
    fn of_two_swarms_of_ours_the_larger_wins_then_the_earlier() {
        let a = [("n1", "10.77.0.1:2377")];
        let b = [("n3", "10.77.0.3:2377")];
        let p = run(&[
            seen("active", "n1", "10.77.0.1", Some("ca"), &a),
            Seen::default(),
            seen("active", "n3", "10.77.0.3", Some("cb"), &b),
            seen("active", "n4", "10.77.0.4", None, &b),
        ]);
        assert_eq!(p.swarm.as_deref(), Some("cb"));
        assert!(
            matches!(&p.classes[0], Class::Elsewhere(w) if w.contains("another swarm of these hosts"))
        );
        let p = run(&[
            seen("active", "n1", "10.77.0.1", Some("ca"), &a),
            Seen::default(),
            seen("active", "n3", "10.77.0.3", Some("cb"), &b),
        ]);
        assert_eq!(p.swarm.as_deref(), Some("ca"));
    }

    #[test]
    fn a_host_advertising_another_address_or_locked_is_left_alone() {
        let m = [("n1", "10.77.0.1:2377")];
        let p = run(&[
            seen("active", "n1", "10.77.0.1", Some("c1"), &m),
            seen("active", "n2", "192.0.2.2", None, &m),
            seen("locked", "", "", None, &[]),
        ]);
        assert!(matches!(&p.classes[1], Class::Elsewhere(w) if w.contains("advertises 192.0.2.2")));
        assert!(matches!(&p.classes[2], Class::Elsewhere(w) if w.contains("locked")));
    }
}
