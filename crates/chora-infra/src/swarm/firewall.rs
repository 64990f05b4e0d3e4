//! The swarm's ports answer on the mesh only (DESIGN.md §13). 2377 (the
//! managers' API) and 7946 (gossip) are bound to the mesh address by
//! `--listen-addr`; 4789 (VXLAN, the overlay networks' data) is the kernel's
//! and listens on every address, so packets from anywhere but the mesh could
//! reach the overlays. An iptables chain, `CHORA-SWARM`, jumped to from the top
//! of INPUT for those ports, lets them in from the mesh interface (and
//! loopback) and drops the rest, for all three ports alike.
//!
//! The rules live in a script on the host, `/usr/local/sbin/chora-swarm-firewall`
//! (`check` asks, no argument applies), so that a host that boots runs it
//! again: under systemd a oneshot unit runs it before Docker, and a drop-in
//! starts Docker after the mesh's unit, so that the swarm can bind its mesh
//! address (without systemd, the next `chora infra bootstrap` puts them back).

use crate::ssh::Remote;

pub const SCRIPT: &str = "/usr/local/sbin/chora-swarm-firewall";
const UNIT: &str = "/etc/systemd/system/chora-swarm-firewall.service";
const DROP_IN: &str = "/etc/systemd/system/docker.service.d/10-chora-mesh.conf";

/// The host's script for the mesh interface `iface`.
fn script(iface: &str) -> String {
    format!(
        r#"#!/bin/sh
# Written by chora infra bootstrap: Docker Swarm's ports (2377/tcp, 7946/tcp+udp,
# 4789/udp) answer on the mesh ({iface}) only. `check` exits 1 when a rule is missing.
want='-A CHORA-SWARM -i {iface} -j RETURN
-A CHORA-SWARM -i lo -j RETURN
-A CHORA-SWARM -j DROP'
tcp="-p tcp -m multiport --dports 2377,7946 -j CHORA-SWARM"
udp="-p udp -m multiport --dports 7946,4789 -j CHORA-SWARM"
chain() {{ iptables -w -S CHORA-SWARM 2>/dev/null | grep -v '^-N'; }}
if [ "${{1:-}}" = check ]; then
  [ "$(chain)" = "$want" ] && iptables -w -C INPUT $tcp 2>/dev/null && iptables -w -C INPUT $udp 2>/dev/null
  exit $?
fi
set -e
command -v iptables >/dev/null || {{ echo "iptables is not installed" >&2; exit 1; }}
iptables -w -n -L CHORA-SWARM >/dev/null 2>&1 || iptables -w -N CHORA-SWARM
if [ "$(chain)" != "$want" ]; then
  iptables -w -F CHORA-SWARM
  iptables -w -A CHORA-SWARM -i {iface} -j RETURN
  iptables -w -A CHORA-SWARM -i lo -j RETURN
  iptables -w -A CHORA-SWARM -j DROP
fi
iptables -w -C INPUT $tcp 2>/dev/null || iptables -w -I INPUT $tcp
iptables -w -C INPUT $udp 2>/dev/null || iptables -w -I INPUT $udp
"#
    )
}

fn unit() -> String {
    format!(
        "# Written by chora infra bootstrap.\n[Unit]\nDescription=chora: Docker Swarm's ports answer on the mesh only\nBefore=docker.service\nAfter=network-pre.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={SCRIPT}\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

fn drop_in(mesh_unit: &str) -> String {
    format!(
        "# Written by chora infra bootstrap: the swarm listens on the mesh address.\n[Unit]\nWants={mesh_unit} chora-swarm-firewall.service\nAfter={mesh_unit} chora-swarm-firewall.service\n"
    )
}

/// check → act → verify on one host: `Ok(None)` already so, `Ok(Some(what))`
/// done (or, `dry`, would be done).
pub async fn ensure(
    r: &Remote,
    iface: &str,
    mesh_unit: &str,
    dry: bool,
) -> Result<Option<String>, String> {
    let files = [
        (SCRIPT, script(iface), "0755"),
        (UNIT, unit(), "0644"),
        (DROP_IN, drop_in(mesh_unit), "0644"),
    ];
    let mut s = String::from("d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT\nmissing=\"\"\n");
    for (i, (path, text, _)) in files.iter().enumerate() {
        // Only the script on a host without systemd.
        let guard = if i == 0 {
            ""
        } else {
            "[ -d /run/systemd/system ] && "
        };
        s.push_str(&format!(
            "cat > \"$d/{i}\" <<'CHORA_EOF'\n{text}CHORA_EOF\n{guard}{{ cmp -s \"$d/{i}\" {path} || missing=\"$missing {path}\"; }}\n"
        ));
    }
    s.push_str(&format!(
        "sh \"$d/0\" check || missing=\"$missing rules\"\n[ -d /run/systemd/system ] && {{ systemctl is-enabled chora-swarm-firewall >/dev/null 2>&1 || missing=\"$missing boot\"; }}\n[ -z \"$missing\" ] && {{ echo ok; exit 0; }}\n{}",
        if dry {
            "echo \"missing$missing\"; exit 0\n".to_owned()
        } else {
            let mut act = String::from("set -e\n");
            for (i, (path, _, mode)) in files.iter().enumerate() {
                let write = format!(
                    "mkdir -p \"$(dirname {path})\"; install -m {mode} \"$d/{i}\" {path}"
                );
                if i == 0 {
                    act.push_str(&format!("{write}\n"));
                } else {
                    act.push_str(&format!("if [ -d /run/systemd/system ]; then {write}; fi\n"));
                }
            }
            act.push_str(&format!(
                "{SCRIPT}\nif [ -d /run/systemd/system ]; then systemctl daemon-reload; systemctl enable chora-swarm-firewall >/dev/null 2>&1; fi\n{SCRIPT} check || {{ echo \"the rules are still missing after {SCRIPT}\" >&2; exit 1; }}\necho \"changed$missing\"\n"
            ));
            act
        }
    ));
    let out = r.run(&s).await?;
    let line = out.last_line();
    match line.split_once(' ').map(|(a, _)| a).unwrap_or(&line) {
        "ok" if out.ok() => Ok(None),
        "missing" if out.ok() => Ok(Some(format!(
            "would let the swarm's ports in from {iface} only"
        ))),
        "changed" if out.ok() => Ok(Some(format!("swarm ports answer on {iface} only"))),
        _ => Err(format!(
            "cannot restrict the swarm's ports to {iface}: {}",
            out.tail()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_name_the_mesh_interface_and_all_three_ports() {
        let s = script("chora0");
        assert!(s.contains("-A CHORA-SWARM -i chora0 -j RETURN"));
        assert!(s.contains("--dports 2377,7946") && s.contains("--dports 7946,4789"));
        assert!(drop_in("wg-quick@chora0.service").contains("After=wg-quick@chora0.service"));
    }
}
