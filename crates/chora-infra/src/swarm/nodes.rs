//! The swarm's nodes as a manager sees them: each inventory host's node gets
//! its role and labels ([`reconcile`]), what a host left behind when it
//! joined again is removed, and [`verify`] waits until every node is ready as
//! it should be.

use super::decide::short;
use super::{HEARTBEAT, HOST_LABEL, LABELS_LABEL, Round, describe};
use bollard::Docker;
use bollard::models::{Node, NodeSpec, NodeSpecRoleEnum, NodeState};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The labels a node should end with: `want` over what it has, less the keys
/// chora set before (its `io.chora.labels`) that `want` no longer has.
fn merged_labels(
    have: &HashMap<String, String>,
    want: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut out = have.clone();
    let before: Vec<&str> = have
        .get(LABELS_LABEL)
        .map(|l| l.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    for k in before {
        if !want.contains_key(k) {
            out.remove(k);
        }
    }
    for (k, v) in want {
        out.insert(k.clone(), v.clone());
    }
    out
}

fn node_role(n: &Node) -> &'static str {
    match n.spec.as_ref().and_then(|s| s.role) {
        Some(NodeSpecRoleEnum::MANAGER) => "manager",
        _ => "worker",
    }
}

fn node_state(n: &Node) -> Option<NodeState> {
    n.status.as_ref().and_then(|s| s.state)
}

/// From `control`: each of `ours` gets its role and labels; nodes an
/// inventory host left behind (it joined again under a new id) are removed
/// once down. `dry`: only says what it would do.
pub(super) async fn reconcile(r: &mut Round<'_, '_>, control: usize, ours: &[usize], dry: bool) {
    let d = r.docker(control).clone();
    let nodes = match d
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            let why = format!("cannot list the swarm's nodes: {}", describe(e));
            for &i in ours {
                r.fail(i, why.clone());
            }
            return;
        }
    };
    for &i in ours {
        if !r.ok(i) {
            continue;
        }
        let m = &r.members[i];
        let id = r.seen(i).node_id.clone();
        let Some(node) = nodes.iter().find(|n| n.id.as_deref() == Some(id.as_str())) else {
            r.fail(i, format!("its node {id} is not in the manager's list"));
            continue;
        };
        let spec = node.spec.clone().unwrap_or_default();
        let have = spec.labels.clone().unwrap_or_default();
        let labels = merged_labels(&have, &m.labels());
        let mut what = Vec::new();
        if labels != have {
            what.push(format!(
                "labels {}",
                m.labels()
                    .iter()
                    .filter(|(k, _)| k.as_str() != LABELS_LABEL)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // The manager chora works through stays one until another answers.
        let role_changes = node_role(node) != m.role() && (m.manager || i != control);
        if role_changes {
            what.push(format!(
                "{} to {}",
                if m.manager { "promoted" } else { "demoted" },
                m.role()
            ));
        }
        if !what.is_empty() {
            if dry {
                r.done[i].push(format!("would set {}", what.join(", ")));
            } else {
                let role = match (role_changes, m.manager) {
                    (false, _) => spec.role,
                    (true, true) => Some(NodeSpecRoleEnum::MANAGER),
                    (true, false) => Some(NodeSpecRoleEnum::WORKER),
                };
                let new = NodeSpec {
                    labels: Some(labels),
                    role,
                    ..spec
                };
                let version = node.version.as_ref().and_then(|v| v.index).unwrap_or(0) as i64;
                match d
                    .update_node(
                        &id,
                        new,
                        bollard::query_parameters::UpdateNodeOptions { version },
                    )
                    .await
                {
                    Ok(()) => r.done[i].push(what.join(", ")),
                    Err(e) => r.fail(i, format!("updating its node: {}", describe(e))),
                }
            }
        }
        // What this host left behind.
        let name = r.members[i].host.name.clone();
        for old in nodes.iter().filter(|n| {
            n.id.as_deref() != Some(id.as_str())
                && n.spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(HOST_LABEL))
                    == Some(&name)
        }) {
            let old_id = old.id.clone().unwrap_or_default();
            if node_state(old) != Some(NodeState::DOWN) {
                continue;
            }
            if dry {
                r.done[i].push(format!("would remove its old node {}", short(&old_id)));
                continue;
            }
            match remove_node(&d, old).await {
                Ok(()) => r.done[i].push(format!("removed its old node {}", short(&old_id))),
                Err(e) => r.fail(
                    i,
                    format!(
                        "its old node {} (down) cannot be removed: {e}",
                        short(&old_id)
                    ),
                ),
            }
        }
    }
}

/// Removes a down node, demoting it first if it was a manager (a down manager
/// still counts towards the Raft quorum).
async fn remove_node(d: &Docker, node: &Node) -> Result<(), String> {
    let id = node.id.clone().unwrap_or_default();
    if node_role(node) == "manager" {
        let spec = NodeSpec {
            role: Some(NodeSpecRoleEnum::WORKER),
            ..node.spec.clone().unwrap_or_default()
        };
        let version = node.version.as_ref().and_then(|v| v.index).unwrap_or(0) as i64;
        d.update_node(
            &id,
            spec,
            bollard::query_parameters::UpdateNodeOptions { version },
        )
        .await
        .map_err(describe)?;
    }
    d.delete_node(
        &id,
        Some(bollard::query_parameters::DeleteNodeOptions { force: true }),
    )
    .await
    .map_err(describe)
}

/// Part 4: from `control`, until each of `members` has its node ready with
/// its role and labels and advertises its mesh address, or `within` is over.
/// Returns each member's summary ("manager on 10.77.0.1, swarm …").
pub(super) async fn verify(
    r: &mut Round<'_, '_>,
    control: usize,
    members: &[usize],
    within: Duration,
) -> Vec<Option<String>> {
    let n = r.members.len();
    let mut summary: Vec<Option<String>> = vec![None; n];
    let deadline = Instant::now() + within;
    let d = r.docker(control).clone();
    let mut wrong: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        wrong.clear();
        let (nodes, unlisted) = match d
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
        {
            Ok(n) => (n, "not listed by the managers".to_owned()),
            Err(e) => (
                Vec::new(),
                format!("the managers do not answer: {}", describe(e)),
            ),
        };
        let beat = d
            .inspect_swarm()
            .await
            .ok()
            .and_then(|s| s.spec)
            .and_then(|s| s.dispatcher)
            .and_then(|d| d.heartbeat_period);
        if members.contains(&control) && beat != Some(HEARTBEAT.as_nanos() as i64) {
            wrong.insert(control, format!("the dispatcher heartbeat is {beat:?} ns"));
        }
        for &i in members {
            if let Err(e) = r.reread(i).await {
                wrong.insert(i, e);
                continue;
            }
            let m = &r.members[i];
            let seen = r.seen(i);
            if !seen.active() || seen.node_addr != m.mesh_ip {
                wrong.insert(
                    i,
                    format!(
                        "swarm state {} advertising {} (expected active on {})",
                        seen.state, seen.node_addr, m.mesh_ip
                    ),
                );
                continue;
            }
            let Some(node) = nodes
                .iter()
                .find(|x| x.id.as_deref() == Some(seen.node_id.as_str()))
            else {
                wrong.insert(i, format!("node {} {unlisted}", seen.node_id));
                continue;
            };
            let labels = node
                .spec
                .as_ref()
                .and_then(|s| s.labels.clone())
                .unwrap_or_default();
            let missing: Vec<String> = m
                .labels()
                .into_iter()
                .filter(|(k, v)| labels.get(k) != Some(v))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let state = node_state(node);
            if node_role(node) != m.role() || !missing.is_empty() || state != Some(NodeState::READY)
            {
                wrong.insert(
                    i,
                    format!(
                        "node {}: {} {:?}, missing labels [{}]",
                        short(&seen.node_id),
                        node_role(node),
                        state,
                        missing.join(", ")
                    ),
                );
                continue;
            }
            let cs = r.seen(control);
            summary[i] = Some(format!(
                "{} on {}, swarm {} ({} nodes, {} managers)",
                m.role(),
                m.mesh_ip,
                short(cs.cluster.as_deref().unwrap_or("?")),
                cs.nodes,
                cs.manager_count
            ));
        }
        if wrong.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let waited = if within.is_zero() {
        String::new()
    } else {
        format!(" after {}s", within.as_secs())
    };
    for (i, why) in wrong {
        r.fail(i, format!("not as it should be{waited}: {why}"));
        summary[i] = None;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_taken_out_of_the_inventory_come_off_and_hand_made_ones_stay() {
        let have: HashMap<String, String> = [
            ("io.chora.host", "a"),
            ("io.chora.labels", "zone,rack"),
            ("zone", "eu"),
            ("rack", "r1"),
            ("by-hand", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let want: BTreeMap<String, String> = [
            ("io.chora.host", "a"),
            ("io.chora.labels", "zone"),
            ("zone", "us"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let got = merged_labels(&have, &want);
        assert_eq!(got.get("zone").map(String::as_str), Some("us"));
        assert_eq!(got.get("rack"), None);
        assert_eq!(got.get("by-hand").map(String::as_str), Some("x"));
        assert_eq!(got.get("io.chora.labels").map(String::as_str), Some("zone"));
    }
}
