//! The `swarm` step (DESIGN.md §13): the hosts that got through `verify` form
//! one Docker Swarm on the mesh. Unlike the other steps it is one round over
//! all hosts at once, in four parts:
//!
//! 1. **look**, every host at once: the swarm's ports are let in from the mesh
//!    only ([`firewall`]), a local socket is forwarded to the host's Docker
//!    over its SSH master (`Remote::forward_socket`) and `GET /info` says where
//!    it stands;
//! 2. **decide** ([`decide`]): which swarm is ours, which hosts are in it,
//!    which are to join, which are in another swarm (`failed`, left alone);
//! 3. **act**: with no swarm yet, the first manager host that is ready runs
//!    `swarm init`; managers join one after another (Raft takes them one at a
//!    time), then workers all at once; the dispatcher heartbeat is set; from
//!    a manager, every node gets its role and labels, and a node of an
//!    inventory host that has since joined again under a new id is removed
//!    once it is down (`nodes.rs`);
//! 4. **verify**, from a manager, until every host's node is `ready` with its
//!    role and labels and advertises its mesh address (bounded:
//!    [`VERIFY_WITHIN`]; a dry run, as `chora infra status`, looks once).
//!
//! Roles follow inventory order: the first `swarm.managers` hosts are
//! managers, the rest workers, so a host's role never depends on which hosts
//! happened to be up. Every node listens (2377), gossips (7946) and carries
//! overlay data (4789) on its mesh address only: `--listen-addr`,
//! `--advertise-addr` and `--data-path-addr` are all the mesh address.
//!
//! Everything goes through Docker's API over the forwarded socket: a join
//! token is read from a manager and sent to the joining host inside the SSH
//! channel, in a request body. It is never in a script, an argv, a log or the
//! report. (bollard logs request and response bodies at debug level through
//! the `log` crate; chora routes no `log` records anywhere, there is no
//! `tracing-log` bridge: keep it so, or a token reaches the log.)
//!
//! Node labels: `io.chora.host=<name>`, the host's `labels:` from the
//! inventory, and `io.chora.labels`, the list of the inventory's label keys
//! chora set, so that a label taken out of the inventory is taken off the
//! node while labels set by hand stay.

pub mod decide;
pub mod firewall;
mod nodes;

use crate::inventory::Host;
use crate::report::Status;
use crate::ssh::{Forward, Remote};
use crate::steps::StepResult;
use bollard::Docker;
use bollard::models::{SwarmInitRequest, SwarmJoinRequest, SwarmSpec, SwarmSpecDispatcher};
use decide::{Class, Input, Seen};
use futures_util::future::join_all;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often a node heartbeats its manager: a node is marked down after three
/// missed beats and some jitter (measured 2.0-4.3 s with 1 s), within the 5 s
/// of DESIGN.md §13.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The managers' port (the swarm API and Raft).
pub const MANAGER_PORT: u16 = 2377;

/// How long verification waits for every node to be `ready`.
pub const VERIFY_WITHIN: Duration = Duration::from_secs(20);

/// Node labels chora sets itself.
pub const HOST_LABEL: &str = "io.chora.host";
pub const LABELS_LABEL: &str = "io.chora.labels";

/// One host in the swarm step.
pub struct Member<'a> {
    pub index: usize,
    pub host: &'a Host,
    pub remote: &'a Remote,
    pub mesh_ip: String,
    pub manager: bool,
}

impl Member<'_> {
    fn role(&self) -> &'static str {
        if self.manager { "manager" } else { "worker" }
    }

    /// The node labels this host's node carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.host.labels.clone();
        let keys: Vec<&str> = self.host.labels.keys().map(String::as_str).collect();
        l.insert(HOST_LABEL.into(), self.host.name.clone());
        l.insert(LABELS_LABEL.into(), keys.join(","));
        l
    }
}

/// What every member shares.
pub struct Settings<'a> {
    /// The mesh interface and the systemd unit that brings it up.
    pub iface: &'a str,
    pub mesh_unit: &'a str,
    /// The mesh's network: a swarm whose managers are all inside it is ours.
    pub mesh: decide::MeshNet,
    /// The overlay networks' address pool (clear of the mesh's).
    pub pool: String,
    pub dry: bool,
}

/// A host that answered: its Docker through the tunnel, and what it said.
struct Live {
    docker: Docker,
    forward: Forward,
    seen: Seen,
}

/// The round's bookkeeping, one slot per member.
struct Round<'a, 'm> {
    members: &'a [Member<'m>],
    live: Vec<Option<Live>>,
    failed: Vec<Option<String>>,
    /// What was (or, dry, would be) done, per member.
    done: Vec<Vec<String>>,
}

fn describe(e: bollard::errors::Error) -> String {
    crate::tunnel::describe(e)
}

async fn look(m: &Member<'_>, s: &Settings<'_>) -> Result<(Live, Option<String>), String> {
    let fw = firewall::ensure(m.remote, s.iface, s.mesh_unit, s.dry).await?;
    let forward = m
        .remote
        .forward_socket(crate::tunnel::DOCKER_SOCKET)
        .await?;
    let docker = crate::tunnel::client_on(forward.path(), crate::tunnel::CALL_TIMEOUT)
        .await
        .map_err(|e| format!("Docker through the SSH tunnel: {e}"))?;
    let seen = read(&docker).await?;
    Ok((
        Live {
            docker,
            forward,
            seen,
        },
        fw,
    ))
}

async fn read(d: &Docker) -> Result<Seen, String> {
    let info = d
        .info()
        .await
        .map_err(|e| format!("GET /info: {}", describe(e)))?;
    Ok(Seen::from_info(info.swarm))
}

impl<'a, 'm> Round<'a, 'm> {
    fn ok(&self, i: usize) -> bool {
        self.failed[i].is_none() && self.live[i].is_some()
    }

    fn fail(&mut self, i: usize, why: String) {
        if self.failed[i].is_none() {
            self.failed[i] = Some(why);
        }
    }

    fn seen(&self, i: usize) -> &Seen {
        &self.live[i].as_ref().expect("a live member").seen
    }

    fn docker(&self, i: usize) -> &Docker {
        &self.live[i].as_ref().expect("a live member").docker
    }

    async fn reread(&mut self, i: usize) -> Result<(), String> {
        let seen = read(self.docker(i)).await?;
        if let Some(l) = &mut self.live[i] {
            l.seen = seen;
        }
        Ok(())
    }

    fn mesh_addr(&self, i: usize) -> String {
        format!("{}:{MANAGER_PORT}", self.members[i].mesh_ip)
    }
}

/// Forms (or, `dry`, checks) the swarm over `members`; one step result per
/// member, in their order.
pub async fn form(members: &[Member<'_>], s: &Settings<'_>) -> Vec<StepResult> {
    let n = members.len();
    let mut r = Round {
        members,
        live: (0..n).map(|_| None).collect(),
        failed: vec![None; n],
        done: vec![Vec::new(); n],
    };
    for (i, looked) in join_all(members.iter().map(|m| look(m, s)))
        .await
        .into_iter()
        .enumerate()
    {
        match looked {
            Ok((live, fw)) => {
                r.live[i] = Some(live);
                r.done[i].extend(fw);
            }
            Err(e) => r.fail(i, e),
        }
    }
    let control = act(&mut r, s).await;
    // A dry run verifies what it would not change; a run, everything.
    let check: Vec<usize> = (0..n)
        .filter(|&i| r.ok(i) && (!s.dry || r.done[i].is_empty()))
        .collect();
    let within = if s.dry { Duration::ZERO } else { VERIFY_WITHIN };
    let report = match control {
        Some(c) if r.ok(c) => nodes::verify(&mut r, c, &check, within).await,
        _ => {
            for i in 0..n {
                r.fail(i, "not verified: no manager of the swarm answered".into());
            }
            vec![None; n]
        }
    };
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        if let Some(l) = r.live[i].take() {
            l.forward.close(members[i].remote).await;
        }
        results.push(match &r.failed[i] {
            Some(e) => Err(e.clone()),
            None => {
                let summary: Option<String> = report[i].clone();
                let status = if r.done[i].is_empty() {
                    Status::Ok
                } else {
                    Status::Changed
                };
                let head = summary.unwrap_or_else(|| format!("{} of the swarm", members[i].role()));
                let detail = if r.done[i].is_empty() {
                    head
                } else {
                    format!("{head}: {}", r.done[i].join("; "))
                };
                Ok((status, detail, ()))
            }
        });
    }
    results
}

/// Parts 2 and 3: decide, then init, join, label. Returns the manager it
/// worked through, if any; every member that cannot go on has its reason.
async fn act(r: &mut Round<'_, '_>, s: &Settings<'_>) -> Option<usize> {
    let n = r.members.len();
    let live: Vec<usize> = (0..n).filter(|&i| r.ok(i)).collect();
    let inputs: Vec<Input<'_>> = live
        .iter()
        .map(|&i| Input {
            index: r.members[i].index,
            name: &r.members[i].host.name,
            mesh_ip: &r.members[i].mesh_ip,
            seen: r.seen(i),
        })
        .collect();
    let plan = decide::plan(&inputs, s.mesh);
    let mut inactive = Vec::new();
    let mut ours = Vec::new();
    for (&i, c) in live.iter().zip(plan.classes) {
        match c {
            Class::Inactive => inactive.push(i),
            Class::Ours(_) => ours.push(i),
            Class::Elsewhere(why) => r.fail(i, why),
        }
    }
    // The manager to work through: one of ours that answers for the swarm.
    let mut control = ours
        .iter()
        .copied()
        .filter(|&i| r.seen(i).control)
        .min_by_key(|&i| (!r.members[i].manager, r.members[i].index));
    if plan.swarm.is_none() {
        let Some(first) = inactive
            .iter()
            .copied()
            .filter(|&i| r.members[i].manager)
            .min_by_key(|&i| r.members[i].index)
        else {
            for &i in &inactive {
                r.fail(
                    i,
                    "no swarm yet, and none of the manager hosts (the first in the inventory) is ready to start one: it joins on the next run".into(),
                );
            }
            return None;
        };
        inactive.retain(|&i| i != first);
        if s.dry {
            r.done[first].push(format!(
                "would start the swarm here (manager, heartbeat {}s)",
                HEARTBEAT.as_secs()
            ));
        } else {
            if let Err(e) = init(r, first, s).await {
                let name = r.members[first].host.name.clone();
                r.fail(first, e);
                for &i in &inactive {
                    r.fail(
                        i,
                        format!("the swarm could not be started on {name} (see there)"),
                    );
                }
                return None;
            }
            r.done[first].push(format!(
                "started the swarm here (manager, heartbeat {}s)",
                HEARTBEAT.as_secs()
            ));
        }
        ours.push(first);
        control = Some(first);
    }
    let Some(control) = control else {
        for &i in inactive.iter().chain(&ours) {
            r.fail(
                i,
                "no manager of the swarm answers this run (its manager hosts failed above): joined or checked on the next run".into(),
            );
        }
        return None;
    };
    if s.dry {
        for &i in &inactive {
            let role = r.members[i].role();
            r.done[i].push(format!("would join the swarm as a {role}"));
        }
        if r.seen(control).active() {
            heartbeat(r, control, true).await;
            nodes::reconcile(r, control, &ours, true).await;
        }
        return Some(control);
    }
    join(r, control, &inactive).await;
    ours.extend(inactive.iter().copied().filter(|&i| r.ok(i)));
    ours.sort_by_key(|&i| r.members[i].index);
    if !heartbeat(r, control, false).await {
        return None;
    }
    nodes::reconcile(r, control, &ours, false).await;
    Some(control)
}

/// The prefix of each overlay network's subnet, carved from the pool.
pub const OVERLAY_SUBNET_SIZE: u32 = 24;

/// `swarm init` on member `i`, everything on its mesh address.
async fn init(r: &mut Round<'_, '_>, i: usize, s: &Settings<'_>) -> Result<(), String> {
    let ip = r.members[i].mesh_ip.clone();
    let req = SwarmInitRequest {
        listen_addr: Some(r.mesh_addr(i)),
        advertise_addr: Some(ip.clone()),
        data_path_addr: Some(ip),
        default_addr_pool: Some(vec![s.pool.clone()]),
        // With a pool the subnet size must be given too (the CLI's default,
        // /24): the engine takes a missing one as 0, and its network
        // allocator then exits ("invalid pools size: 0"), so no overlay
        // network, service or attachment ever gets an address.
        subnet_size: Some(OVERLAY_SUBNET_SIZE),
        spec: Some(SwarmSpec {
            dispatcher: Some(SwarmSpecDispatcher {
                heartbeat_period: Some(HEARTBEAT.as_nanos() as i64),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    r.docker(i)
        .init_swarm(req)
        .await
        .map_err(|e| format!("swarm init: {}", describe(e)))?;
    r.reread(i).await
}

/// Joins `inactive` through `control`: managers one after another, then the
/// workers at once.
async fn join(r: &mut Round<'_, '_>, control: usize, inactive: &[usize]) {
    if inactive.is_empty() {
        return;
    }
    let tokens = match r.docker(control).inspect_swarm().await {
        Ok(sw) => sw.join_tokens.unwrap_or_default(),
        Err(e) => {
            let why = format!("cannot read the join tokens: {}", describe(e));
            for &i in inactive {
                r.fail(i, why.clone());
            }
            return;
        }
    };
    let via = r.mesh_addr(control);
    let request = |r: &Round<'_, '_>, i: usize| {
        let ip = r.members[i].mesh_ip.clone();
        SwarmJoinRequest {
            listen_addr: Some(r.mesh_addr(i)),
            advertise_addr: Some(ip.clone()),
            data_path_addr: Some(ip),
            remote_addrs: Some(vec![via.clone()]),
            join_token: if r.members[i].manager {
                tokens.manager.clone()
            } else {
                tokens.worker.clone()
            },
        }
    };
    let (managers, workers): (Vec<usize>, Vec<usize>) =
        inactive.iter().partition(|&&i| r.members[i].manager);
    for i in managers {
        let res = r.docker(i).join_swarm(request(r, i)).await;
        joined(r, i, res.map_err(describe)).await;
    }
    let reqs: Vec<(usize, SwarmJoinRequest)> =
        workers.iter().map(|&i| (i, request(r, i))).collect();
    let results = join_all(reqs.into_iter().map(|(i, req)| {
        let d = r.docker(i).clone();
        async move { (i, d.join_swarm(req).await.map_err(describe)) }
    }))
    .await;
    for (i, res) in results {
        joined(r, i, res).await;
    }
}

async fn joined(r: &mut Round<'_, '_>, i: usize, res: Result<(), String>) {
    match res {
        Err(e) => r.fail(i, format!("swarm join: {e}")),
        Ok(()) => {
            let role = r.members[i].role();
            r.done[i].push(format!("joined as a {role}"));
            if let Err(e) = r.reread(i).await {
                r.fail(i, e);
            }
        }
    }
}

/// The dispatcher heartbeat, set from `control` when it is not [`HEARTBEAT`]
/// (`dry`: only said). False when that failed (`control` has the reason).
async fn heartbeat(r: &mut Round<'_, '_>, control: usize, dry: bool) -> bool {
    let d = r.docker(control).clone();
    let sw = match d.inspect_swarm().await {
        Ok(sw) => sw,
        Err(e) => {
            r.fail(control, format!("GET /swarm: {}", describe(e)));
            return false;
        }
    };
    let want = HEARTBEAT.as_nanos() as i64;
    let mut spec = sw.spec.unwrap_or_default();
    let have = spec.dispatcher.as_ref().and_then(|d| d.heartbeat_period);
    if have == Some(want) {
        return true;
    }
    let what = format!(
        "dispatcher heartbeat {} → {}s",
        have.map(|h| format!("{}s", h as f64 / 1e9))
            .unwrap_or_else(|| "unset".into()),
        HEARTBEAT.as_secs()
    );
    if dry {
        r.done[control].push(format!("would set the {what}"));
        return true;
    }
    spec.dispatcher = Some(SwarmSpecDispatcher {
        heartbeat_period: Some(want),
    });
    let version = sw.version.and_then(|v| v.index).unwrap_or(0) as i64;
    let updated = d
        .update_swarm(
            spec,
            bollard::query_parameters::UpdateSwarmOptions {
                version,
                ..Default::default()
            },
        )
        .await;
    match updated {
        Ok(()) => {
            r.done[control].push(what);
            true
        }
        Err(e) => {
            r.fail(
                control,
                format!("setting the dispatcher heartbeat: {}", describe(e)),
            );
            false
        }
    }
}

/// An address pool for the overlay networks that stays clear of the mesh's
/// network (Docker's default, 10.0.0.0/8, could cover a mesh such as
/// 10.77.0.0/24).
pub fn address_pool(mesh: decide::MeshNet) -> String {
    const POOLS: [(&str, [u8; 4], u8); 3] = [
        ("10.128.0.0/9", [10, 128, 0, 0], 9),
        ("10.0.0.0/9", [10, 0, 0, 0], 9),
        ("172.16.0.0/12", [172, 16, 0, 0], 12),
    ];
    let overlaps = |net: [u8; 4], len: u8| {
        let (m, mlen) = (mesh.network, mesh.prefix);
        let shorter = len.min(mlen) as u32;
        let mask = if shorter == 0 {
            0
        } else {
            u32::MAX << (32 - shorter)
        };
        (u32::from(m) & mask) == (u32::from(std::net::Ipv4Addr::from(net)) & mask)
    };
    POOLS
        .iter()
        .find(|(_, net, len)| !overlaps(*net, *len))
        .map(|(p, _, _)| p.to_string())
        .unwrap_or_else(|| POOLS[0].0.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_overlay_pool_avoids_the_mesh() {
        let pool = |a, b, c, d, prefix| {
            address_pool(decide::MeshNet {
                network: Ipv4Addr::new(a, b, c, d),
                prefix,
            })
        };
        assert_eq!(pool(10, 77, 0, 0, 24), "10.128.0.0/9");
        assert_eq!(pool(10, 200, 0, 0, 16), "10.0.0.0/9");
        assert_eq!(pool(10, 0, 0, 0, 8), "172.16.0.0/12");
        assert_eq!(pool(100, 64, 0, 0, 10), "10.128.0.0/9");
    }
}
