//! Tailscale: the package from Tailscale's apt repository, `tailscaled`
//! running, and `tailscale up --auth-key=file:PATH`. The auth key is read from
//! the inventory's file here and written to a root-only file on the host through
//! the script's stdin; it is never in argv or a log, and the file is removed
//! after `tailscale up`. A host has joined when `tailscale status --json` says
//! `BackendState: Running` and gives it an address.

use super::{Ctx, Member, Provider};
use crate::report::Status;
use crate::steps::{StepResult, apt_install, without_autostart};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct Tailscale {
    pub auth_key_file: PathBuf,
    pub tags: Vec<String>,
}

/// The part of `tailscale status --json` chora reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TailscaleStatus {
    #[serde(default)]
    pub backend_state: String,
    #[serde(default, rename = "AuthURL")]
    pub auth_url: String,
    #[serde(default, rename = "Self")]
    pub self_: Option<PeerStatus>,
    #[serde(default)]
    pub peer: Option<BTreeMap<String, PeerStatus>>,
    #[serde(default)]
    pub health: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerStatus {
    #[serde(default)]
    pub host_name: String,
    #[serde(default, rename = "DNSName")]
    pub dns_name: String,
    #[serde(default)]
    pub tailscale_i_ps: Option<Vec<String>>,
    #[serde(default)]
    pub online: bool,
}

/// Whether a host has joined, by its `tailscale status --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// Running, with its first (IPv4) tailnet address and the peers it sees.
    Yes { ip: String, peers: usize },
    /// Not joined; why, in words.
    No(String),
}

impl TailscaleStatus {
    pub fn parse(json: &str) -> Result<TailscaleStatus, String> {
        serde_json::from_str(json).map_err(|e| format!("unreadable `tailscale status --json`: {e}"))
    }

    pub fn joined(&self) -> Joined {
        let ips: Vec<String> = self
            .self_
            .as_ref()
            .and_then(|s| s.tailscale_i_ps.clone())
            .unwrap_or_default();
        let ip = ips
            .iter()
            .find(|ip| !ip.contains(':'))
            .or_else(|| ips.first())
            .cloned();
        match (self.backend_state.as_str(), ip) {
            ("Running", Some(ip)) => Joined::Yes {
                ip,
                peers: self.peer.as_ref().map(|p| p.len()).unwrap_or(0),
            },
            ("Running", None) => Joined::No("running but without a tailnet address".into()),
            ("NeedsLogin", _) if !self.auth_url.is_empty() => {
                Joined::No("needs login (the auth key was refused or expired?)".into())
            }
            ("NeedsLogin", _) => Joined::No("needs login".into()),
            ("NeedsMachineAuth", _) => {
                Joined::No("waits for an admin to approve the machine".into())
            }
            ("Stopped", _) => Joined::No("stopped (`tailscale up` not run)".into()),
            (other, _) => Joined::No(format!(
                "backend state `{}`{}",
                if other.is_empty() { "unknown" } else { other },
                self.health
                    .as_ref()
                    .and_then(|h| h.first())
                    .map(|h| format!(": {h}"))
                    .unwrap_or_default()
            )),
        }
    }
}

const CHECK_INSTALL: &str = r#"command -v tailscale >/dev/null 2>&1 && echo installed=yes
tailscale status --json >/dev/null 2>&1 && echo daemon=yes
[ "$(tailscale status --json 2>/dev/null | grep -c BackendState)" != 0 ] && echo daemon=yes
exit 0
"#;

/// Tailscale's apt repository for this host's distribution, then the package.
fn install_script(lock_timeout: std::time::Duration) -> String {
    format!(
        r#"set -e
. /etc/os-release
{curl}
url="https://pkgs.tailscale.com/stable/$ID/$VERSION_CODENAME"
curl -fsS --max-time 30 "$url.noarmor.gpg" -o /usr/share/keyrings/tailscale-archive-keyring.gpg 2>/tmp/chora-curl.log || {{
  echo "cannot reach Tailscale's apt repository ($url): $(tail -1 /tmp/chora-curl.log)" >&2; exit 1; }}
curl -fsS --max-time 30 "$url.tailscale-keyring.list" -o /etc/apt/sources.list.d/tailscale.list
apt-get -q -o DPkg::Lock::Timeout={t} update >/dev/null
{install}
"#,
        curl = apt_install("curl ca-certificates", lock_timeout),
        t = lock_timeout.as_secs(),
        install = apt_install("tailscale", lock_timeout),
    )
}

const START_DAEMON: &str = r#"if [ -d /run/systemd/system ]; then systemctl enable --now tailscaled >/dev/null 2>&1
else pidof tailscaled >/dev/null 2>&1 || { mkdir -p /var/lib/tailscale; setsid nohup tailscaled --state=/var/lib/tailscale/tailscaled.state >>/var/log/tailscaled.log 2>&1 </dev/null & }
fi
i=0; while ! tailscale status --json >/dev/null 2>&1 && [ $i -lt 20 ]; do i=$((i+1)); sleep 1; done
tailscale version >/dev/null 2>&1
"#;

async fn status(ctx: &Ctx<'_>) -> Result<Option<TailscaleStatus>, String> {
    let out = ctx
        .remote
        .run("tailscale status --json 2>/dev/null")
        .await?;
    if out.stdout.trim().is_empty() {
        return Ok(None);
    }
    TailscaleStatus::parse(&out.stdout).map(Some)
}

impl Tailscale {
    async fn do_install(&self, ctx: &Ctx<'_>) -> StepResult<Option<String>> {
        let read = |s: &str| (s.contains("installed=yes"), s.contains("daemon=yes"));
        let (installed, daemon) = read(&ctx.remote.run(CHECK_INSTALL).await?.stdout);
        if installed && daemon {
            return Ok((
                Status::Ok,
                "tailscale installed, tailscaled running".into(),
                None,
            ));
        }
        if ctx.dry {
            let plan = if installed {
                "start tailscaled"
            } else {
                "add Tailscale's apt repository, install tailscale, start tailscaled"
            };
            return Ok((Status::Changed, format!("would {plan}"), None));
        }
        let mut did = Vec::new();
        if !installed {
            let out = ctx
                .remote
                .run(&without_autostart(&install_script(ctx.lock_timeout)))
                .await?;
            if !out.ok() {
                return Err(format!("installing tailscale failed: {}", out.tail()));
            }
            did.push("installed tailscale");
        }
        let out = ctx.remote.run(START_DAEMON).await?;
        if !out.ok() {
            return Err(format!("tailscaled did not start: {}", out.tail()));
        }
        did.push("started tailscaled");
        let (installed, daemon) = read(&ctx.remote.run(CHECK_INSTALL).await?.stdout);
        if !(installed && daemon) {
            return Err("tailscaled does not answer after starting it".into());
        }
        Ok((Status::Changed, did.join(", "), None))
    }

    async fn do_join(&self, ctx: &Ctx<'_>) -> StepResult<Option<String>> {
        if let Some(s) = status(ctx).await?
            && let Joined::Yes { ip, peers } = s.joined()
        {
            return Ok((
                Status::Ok,
                format!("joined as {ip}, {peers} peer(s)"),
                Some(ip),
            ));
        }
        if ctx.dry {
            return Ok((
                Status::Changed,
                "would run tailscale up with the auth key".into(),
                None,
            ));
        }
        let key = std::fs::read_to_string(&self.auth_key_file).map_err(|e| {
            format!(
                "cannot read the auth key file {}: {e}",
                self.auth_key_file.display()
            )
        })?;
        let key = key.trim();
        if key.is_empty() || key.contains('\n') || key.contains('\'') {
            return Err(format!(
                "the auth key file {} holds no single key",
                self.auth_key_file.display()
            ));
        }
        let tags = if self.tags.is_empty() {
            String::new()
        } else {
            format!(" --advertise-tags={}", self.tags.join(","))
        };
        // The key reaches the host inside this script, on stdin.
        let script = format!(
            "umask 077; f=/run/chora-tailscale.key\ncat > $f <<'CHORA_EOF'\n{key}\nCHORA_EOF\ntailscale up --auth-key=file:$f{tags} --timeout=60s >/tmp/chora-tailscale-up.log 2>&1; rc=$?\nrm -f $f\n[ $rc = 0 ] || tail -2 /tmp/chora-tailscale-up.log >&2\nexit $rc\n"
        );
        let out = ctx.remote.run(&script).await?;
        if !out.ok() {
            return Err(format!("tailscale up failed: {}", out.tail()));
        }
        match status(ctx).await?.map(|s| s.joined()) {
            Some(Joined::Yes { ip, peers }) => Ok((
                Status::Changed,
                format!("joined as {ip}, {peers} peer(s)"),
                Some(ip),
            )),
            Some(Joined::No(why)) => Err(format!("not joined after tailscale up: {why}")),
            None => Err("tailscale status --json says nothing after tailscale up".into()),
        }
    }
}

impl Provider for Tailscale {
    fn name(&self) -> &'static str {
        "tailscale"
    }

    fn interface(&self) -> &'static str {
        "tailscale0"
    }

    fn unit(&self) -> &'static str {
        "tailscaled.service"
    }

    fn install<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, StepResult<Option<String>>> {
        Box::pin(self.do_install(ctx))
    }

    fn join<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _me: &'a Member,
        _peers: &'a [Member],
    ) -> BoxFuture<'a, StepResult<Option<String>>> {
        Box::pin(self.do_join(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> TailscaleStatus {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        TailscaleStatus::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn running_with_peers_is_joined() {
        assert_eq!(
            fixture("tailscale-status-running.json").joined(),
            Joined::Yes {
                ip: "100.101.102.103".into(),
                peers: 2
            }
        );
    }

    #[test]
    fn needs_login_is_not_joined() {
        let j = fixture("tailscale-status-needs-login.json").joined();
        assert!(
            matches!(&j, Joined::No(w) if w.contains("needs login")),
            "{j:?}"
        );
    }

    #[test]
    fn stopped_is_not_joined() {
        let j = fixture("tailscale-status-stopped.json").joined();
        assert!(
            matches!(&j, Joined::No(w) if w.contains("stopped")),
            "{j:?}"
        );
    }

    #[test]
    fn needs_machine_auth_is_not_joined() {
        let j = fixture("tailscale-status-needs-machine-auth.json").joined();
        assert!(
            matches!(&j, Joined::No(w) if w.contains("approve")),
            "{j:?}"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(TailscaleStatus::parse("not json").is_err());
    }
}
