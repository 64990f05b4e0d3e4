//! WireGuard: `wireguard-tools` (plus `wireguard-go` where the kernel has no
//! WireGuard), a key pair made on each host whose private half never leaves
//! it, and a full mesh over the hosts' inventory addresses, brought up with
//! wg-quick (as `wg-quick@chora0` under systemd).
//!
//! The config chora writes holds no private key: wg-quick's `PostUp` loads it
//! from /etc/wireguard/chora0.key, which only the host itself ever reads.

use super::{Ctx, Member, Provider};
use crate::report::Status;
use crate::steps::{StepResult, apt_install, without_autostart};
use futures_util::future::BoxFuture;
use std::fmt::Write;

pub const IFACE: &str = "chora0";
const KEY: &str = "/etc/wireguard/chora0.key";
const CONF: &str = "/etc/wireguard/chora0.conf";

pub struct WireGuard {
    pub prefix: u8,
    pub listen_port: u16,
}

/// The wg-quick config for `me` meshed with `peers`, peers sorted by name so the
/// same mesh gives the same bytes.
pub fn config(me: &Member, prefix: u8, listen_port: u16, peers: &[Member]) -> String {
    let mut s = format!(
        "# Written by chora infra bootstrap: the mesh of this inventory. Edits are overwritten.\n[Interface]\nAddress = {}/{prefix}\nListenPort = {listen_port}\nPostUp = wg set %i private-key {KEY}\n",
        me.mesh_ip.as_deref().unwrap_or_default()
    );
    let mut peers: Vec<&Member> = peers.iter().filter(|p| p.name != me.name).collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    for p in peers {
        let endpoint = if p.endpoint.contains(':') {
            format!("[{}]", p.endpoint)
        } else {
            p.endpoint.clone()
        };
        let _ = write!(
            s,
            "\n[Peer]\n# {}\nPublicKey = {}\nEndpoint = {endpoint}:{listen_port}\nAllowedIPs = {}/32\nPersistentKeepalive = 25\n",
            p.name,
            p.public_key.as_deref().unwrap_or_default(),
            p.mesh_ip.as_deref().unwrap_or_default()
        );
    }
    s
}

fn is_key(s: &str) -> bool {
    s.len() == 44
        && s.ends_with('=')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
}

const CHECK_INSTALL: &str = r#"command -v wg >/dev/null 2>&1 && command -v wg-quick >/dev/null 2>&1 && echo tools=yes
if ip link add chora-wgprobe type wireguard 2>/dev/null; then ip link del chora-wgprobe; echo kernel=yes; fi
[ -e /sys/module/wireguard ] && echo kernel=yes
command -v wireguard-go >/dev/null 2>&1 && echo go=yes
[ -s /etc/wireguard/chora0.key ] && command -v wg >/dev/null 2>&1 && echo "pub=$(wg pubkey < /etc/wireguard/chora0.key)"
exit 0
"#;

#[derive(Default)]
struct Installed {
    tools: bool,
    kernel: bool,
    go: bool,
    public_key: Option<String>,
}

async fn check_install(ctx: &Ctx<'_>) -> Result<Installed, String> {
    let out = ctx.remote.run(CHECK_INSTALL).await?;
    let mut i = Installed::default();
    for line in out.stdout.lines() {
        match line.split_once('=') {
            Some(("tools", _)) => i.tools = true,
            Some(("kernel", _)) => i.kernel = true,
            Some(("go", _)) => i.go = true,
            Some(("pub", k)) if is_key(k.trim()) => i.public_key = Some(k.trim().to_owned()),
            _ => {}
        }
    }
    Ok(i)
}

impl WireGuard {
    async fn do_install(&self, ctx: &Ctx<'_>) -> StepResult<Option<String>> {
        let before = check_install(ctx).await?;
        let done = |i: &Installed| i.tools && (i.kernel || i.go) && i.public_key.is_some();
        if done(&before) {
            let how = if before.kernel {
                "kernel"
            } else {
                "wireguard-go"
            };
            return Ok((
                Status::Ok,
                format!("wireguard-tools ({how}) and a key pair in place"),
                before.public_key,
            ));
        }
        let mut pkgs = Vec::new();
        if !before.tools {
            pkgs.push("wireguard-tools");
        }
        if !before.kernel && !before.go {
            pkgs.push("wireguard-go");
        }
        if ctx.dry {
            let mut plan = Vec::new();
            if !pkgs.is_empty() {
                plan.push(format!("install {}", pkgs.join(" ")));
            }
            if before.public_key.is_none() {
                plan.push("make a key pair on the host".into());
            }
            return Ok((Status::Changed, format!("would {}", plan.join(", ")), None));
        }
        let mut did = Vec::new();
        if !pkgs.is_empty() {
            let list = pkgs.join(" ");
            let out = ctx
                .remote
                .run(&without_autostart(&apt_install(&list, ctx.lock_timeout)))
                .await?;
            if !out.ok() {
                return Err(format!("installing {list} failed: {}", out.tail()));
            }
            did.push(format!("installed {list}"));
        }
        if before.public_key.is_none() {
            let out = ctx
                .remote
                .run(&format!(
                    "set -e; umask 077; mkdir -p /etc/wireguard; [ -s {KEY} ] || {{ wg genkey > {KEY}.tmp; mv {KEY}.tmp {KEY}; }}"
                ))
                .await?;
            if !out.ok() {
                return Err(format!("cannot make a key pair: {}", out.tail()));
            }
            did.push("made a key pair (the private key stays on the host)".into());
        }
        let after = check_install(ctx).await?;
        if !done(&after) {
            return Err(if !after.kernel && !after.go {
                "the kernel has no WireGuard and wireguard-go is missing".into()
            } else {
                "wireguard-tools or the key pair still missing after installing".into()
            });
        }
        Ok((Status::Changed, did.join(", "), after.public_key))
    }

    async fn do_join(
        &self,
        ctx: &Ctx<'_>,
        me: &Member,
        peers: &[Member],
    ) -> StepResult<Option<String>> {
        let want = config(me, self.prefix, self.listen_port, peers);
        let mut want_peers: Vec<String> = peers
            .iter()
            .filter(|p| p.name != me.name)
            .filter_map(|p| p.public_key.clone())
            .collect();
        want_peers.sort();
        let check = format!(
            r#"cat {CONF} 2>/dev/null; echo '@@chora@@'; ip link show {IFACE} >/dev/null 2>&1 && [ "$(wg show {IFACE} public-key 2>/dev/null)" = "$(wg pubkey < {KEY} 2>/dev/null)" ] && echo up=yes; wg show {IFACE} peers 2>/dev/null | sort; exit 0"#
        );
        let read = |out: &crate::ssh::Output| {
            let (conf, rest) = out
                .stdout
                .split_once("@@chora@@\n")
                .unwrap_or((out.stdout.as_str(), ""));
            let up = rest.lines().any(|l| l == "up=yes");
            let peers: Vec<String> = rest
                .lines()
                .filter(|l| is_key(l.trim()))
                .map(|l| l.trim().to_owned())
                .collect();
            (conf.to_owned(), up, peers)
        };
        let (conf, up, live) = read(&ctx.remote.run(&check).await?);
        let mesh_ip = me.mesh_ip.clone();
        let n = want_peers.len();
        if conf == want && up && live == want_peers {
            return Ok((Status::Ok, format!("{IFACE} up, {n} peer(s)"), mesh_ip));
        }
        if ctx.dry {
            return Ok((
                Status::Changed,
                format!("would write {CONF} and bring {IFACE} up with {n} peer(s)"),
                mesh_ip,
            ));
        }
        // The [Interface] part unchanged and the link up: only peers change, so
        // `wg syncconf` applies them without dropping the tunnel. Else (re)start.
        let head = |c: &str| c.split("\n[Peer]").next().unwrap_or_default().to_owned();
        let same_interface = up && head(&conf) == head(&want);
        let apply = if same_interface {
            format!(
                // `wg syncconf` clears a private key the file does not give, so
                // awk reads the key into the host-local temp file (never argv).
                r#"umask 077; wg-quick strip {IFACE} | awk -v kf={KEY} 'BEGIN {{ getline k < kf }} {{ print }} /^\[Interface\]/ {{ print "PrivateKey = " k }}' > /run/chora-wg.conf && wg syncconf {IFACE} /run/chora-wg.conf; rc=$?; rm -f /run/chora-wg.conf; exit $rc"#
            )
        } else {
            format!(
                r#"if [ -d /run/systemd/system ]; then
  systemctl enable wg-quick@{IFACE} >/dev/null 2>&1; systemctl restart wg-quick@{IFACE} || {{ journalctl -u wg-quick@{IFACE} -n 3 --no-pager >&2; exit 1; }}
else
  ip link show {IFACE} >/dev/null 2>&1 && wg-quick down {IFACE} >/dev/null 2>&1
  wg-quick up {IFACE} >/tmp/chora-wg.log 2>&1 || {{ tail -3 /tmp/chora-wg.log >&2; exit 1; }}
fi"#
            )
        };
        let script = format!(
            "set -e; umask 077; mkdir -p /etc/wireguard\ncat > {CONF}.tmp <<'CHORA_EOF'\n{want}CHORA_EOF\nmv {CONF}.tmp {CONF}\nset +e\n{apply}\n"
        );
        let out = ctx.remote.run(&script).await?;
        if !out.ok() {
            return Err(format!("bringing {IFACE} up failed: {}", out.tail()));
        }
        let (conf, up, live) = read(&ctx.remote.run(&check).await?);
        if conf != want || !up || live != want_peers {
            return Err(format!(
                "{IFACE} is not as configured after applying (up: {up}, {} of {n} peers)",
                live.len()
            ));
        }
        Ok((
            Status::Changed,
            format!(
                "{IFACE} {} with {n} peer(s)",
                if same_interface {
                    "peers updated"
                } else {
                    "up"
                }
            ),
            mesh_ip,
        ))
    }
}

impl Provider for WireGuard {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    fn interface(&self) -> &'static str {
        IFACE
    }

    fn unit(&self) -> &'static str {
        "wg-quick@chora0.service"
    }

    fn install<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, StepResult<Option<String>>> {
        Box::pin(self.do_install(ctx))
    }

    fn join<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        me: &'a Member,
        peers: &'a [Member],
    ) -> BoxFuture<'a, StepResult<Option<String>>> {
        Box::pin(self.do_join(ctx, me, peers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, ip: &str, mesh: &str) -> Member {
        Member {
            name: name.into(),
            endpoint: ip.into(),
            mesh_ip: Some(mesh.into()),
            public_key: Some(format!("{:A<43}=", name)),
        }
    }

    #[test]
    fn the_config_is_a_full_mesh_without_the_private_key() {
        let a = m("a", "192.0.2.1", "10.77.0.1");
        let peers = vec![
            m("c", "192.0.2.3", "10.77.0.3"),
            a.clone(),
            m("b", "192.0.2.2", "10.77.0.2"),
        ];
        let c = config(&a, 24, 51820, &peers);
        assert!(c.contains("Address = 10.77.0.1/24"));
        assert!(c.contains("PostUp = wg set %i private-key /etc/wireguard/chora0.key"));
        assert!(!c.contains("PrivateKey"));
        assert_eq!(c.matches("[Peer]").count(), 2);
        assert!(c.find("# b").unwrap() < c.find("# c").unwrap());
        assert!(c.contains("Endpoint = 192.0.2.3:51820\nAllowedIPs = 10.77.0.3/32"));
        assert!(is_key("BcduyyK69lydjQaijwY6JTm27TPTb1ksw9hfH4YSoic="));
        assert!(!is_key("not a key"));
    }
}
