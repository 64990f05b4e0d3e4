//! The steps every host goes through, each check → act → verify: facts, the
//! dpkg lock, Docker, and the final verification. The network provider's two
//! steps live in `network`.
//!
//! A step returns `Ok((status, detail))` or `Err(reason)`; `dry` steps only
//! check and say what they would do (status `changed`, detail "would …").
//!
//! Invariants:
//!
//! - A step's check only reads the host; it acts only on what the check found
//!   missing, and reports `ok` when there was nothing to do, so a second run
//!   over a prepared host changes nothing.
//! - Packages are installed with [`apt_install`] (apt's own wait for the dpkg
//!   lock, bounded by the inventory's `apt.lock_timeout`; no prompts, no
//!   recommends), after the `apt-lock` step has waited for any other apt.
//! - A host that is not Debian-like, or whose user has no password-less sudo,
//!   fails at `facts`, before anything is changed on it.

use crate::inventory::DockerInstall;
use crate::report::Status;
use crate::ssh::{Output, Remote};
use std::time::Duration;

pub type StepResult<T = ()> = Result<(Status, String, T), String>;

/// What the `facts` step reads off a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub os: String,
    pub version: String,
    pub codename: String,
    pub like: String,
    pub arch: String,
    /// PID 1 is systemd.
    pub systemd: bool,
    /// The SSH user.
    pub user: String,
    pub root: bool,
    /// `sudo -n` works (always true for root).
    pub sudo: bool,
}

impl Facts {
    pub fn parse(text: &str) -> Facts {
        let mut f = Facts::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim() {
                "ID" => f.os = v,
                "VERSION_ID" => f.version = v,
                "VERSION_CODENAME" => f.codename = v,
                "ID_LIKE" => f.like = v,
                "arch" => f.arch = v,
                "pid1" => f.systemd = v == "systemd",
                "user" => f.user = v,
                "uid" => f.root = v == "0",
                "sudo" => f.sudo = v == "yes",
                _ => {}
            }
        }
        f
    }

    pub fn debian_like(&self) -> bool {
        self.os == "debian"
            || self.os == "ubuntu"
            || self.like.split_whitespace().any(|l| l == "debian")
    }

    pub fn summary(&self) -> String {
        format!(
            "{} {} ({}), {}, {}, {}",
            self.os,
            self.version,
            if self.codename.is_empty() {
                "?"
            } else {
                &self.codename
            },
            self.arch,
            if self.systemd {
                "systemd"
            } else {
                "no systemd"
            },
            if self.root {
                "root".to_owned()
            } else {
                format!("{} with sudo -n", self.user)
            }
        )
    }
}

const FACTS: &str = r#"
[ -r /etc/os-release ] && cat /etc/os-release
echo "arch=$(dpkg --print-architecture 2>/dev/null || uname -m)"
if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then echo pid1=systemd; else echo "pid1=$(cat /proc/1/comm 2>/dev/null)"; fi
echo "uid=$(id -u)"
echo "user=$(id -un)"
if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi
"#;

/// `facts`: read-only; fails on a host chora cannot prepare.
pub async fn facts(r: &Remote) -> StepResult<Facts> {
    let out = r.run_as_user(FACTS).await?;
    if !out.ok() {
        return Err(format!("cannot read the host's facts: {}", out.tail()));
    }
    let f = Facts::parse(&out.stdout);
    if !f.debian_like() {
        return Err(format!(
            "unsupported OS `{}` (Debian or Ubuntu expected)",
            f.os
        ));
    }
    if !f.sudo {
        return Err(format!(
            "user `{}` is not root and `sudo -n` asks for a password: give it NOPASSWD sudo",
            f.user
        ));
    }
    let s = f.summary();
    Ok((Status::Ok, s, f))
}

/// Prints the pid holding any dpkg/apt lock and exits 1, or exits 0 when all are
/// free. apt takes these with fcntl(F_SETLK), so F_GETLK is the question to ask
/// (`flock` would not see them). perl-base is Essential on Debian.
const LOCK_HOLDER: &str = r#"lock_holder() {
perl -MFcntl -e '
for my $f (@ARGV) {
  open(my $h, "<", $f) or next;
  my $s = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
  fcntl($h, F_GETLK, $s) or next;
  my ($t, $w, $st, $len, $pid) = unpack("s s x4 q q i x4", $s);
  if ($t != F_UNLCK) { my $c = ""; if (open(my $p, "<", "/proc/$pid/comm")) { $c = <$p>; chomp $c; } print "$pid $c\n"; exit 1 }
}
exit 0' /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock
}
"#;

/// `apt-lock`: waits (bounded) until no other process holds the dpkg lock.
pub async fn apt_lock(r: &Remote, timeout: Duration, dry: bool) -> StepResult {
    let secs = timeout.as_secs();
    let wait = if dry { 0 } else { secs };
    let script = format!(
        r#"{LOCK_HOLDER}
start=$(date +%s); first=""
while holder=$(lock_holder); [ -n "$holder" ]; do
  [ -z "$first" ] && first="$holder"
  if [ $(( $(date +%s) - start )) -ge {wait} ]; then echo "held $holder"; exit 3; fi
  sleep 1
done
if [ -n "$first" ]; then echo "waited $(( $(date +%s) - start )) $first"; else echo free; fi
"#
    );
    let out = r.run(&script).await?;
    let line = out.last_line();
    match (out.code, line.split_once(' ')) {
        (0, None) if line == "free" => Ok((Status::Ok, "the dpkg lock is free".into(), ())),
        (0, Some(("waited", rest))) => {
            let (n, who) = rest.split_once(' ').unwrap_or((rest, ""));
            Ok((
                Status::Ok,
                format!("waited {n}s for the dpkg lock held by pid {who}"),
                (),
            ))
        }
        (3, Some((_, who))) if dry => Ok((
            Status::Changed,
            format!("would wait up to {secs}s for the dpkg lock held by pid {who}"),
            (),
        )),
        (3, Some((_, who))) => Err(format!(
            "the dpkg lock is still held after {secs}s by pid {who}"
        )),
        _ => Err(format!("cannot check the dpkg lock: {}", out.tail())),
    }
}

/// apt-get with the lock wait apt has itself (a second guard against a race),
/// no prompts, no recommends. `pkgs` are installed, refreshing the package lists
/// first when apt does not know them or the download fails.
pub fn apt_install(pkgs: &str, lock_timeout: Duration) -> String {
    format!(
        r#"export DEBIAN_FRONTEND=noninteractive
APT="apt-get -q -y -o DPkg::Lock::Timeout={t} -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
if ! apt-cache show {pkgs} >/dev/null 2>&1; then $APT update >/tmp/chora-apt.log 2>&1 || {{ tail -3 /tmp/chora-apt.log >&2; exit 1; }}; fi
$APT install --no-install-recommends {pkgs} >/tmp/chora-apt.log 2>&1 || {{
  $APT update >>/tmp/chora-apt.log 2>&1 && $APT install --no-install-recommends {pkgs} >>/tmp/chora-apt.log 2>&1
}} || {{ grep -E '^(E|W):' /tmp/chora-apt.log | tail -3 >&2; tail -2 /tmp/chora-apt.log >&2; exit 1; }}
"#,
        t = lock_timeout.as_secs()
    )
}

/// Runs `body` with a policy-rc.d that stops package scripts from starting
/// daemons: chora starts them itself, the way the host can (systemd, init
/// script or directly), after the install.
pub fn without_autostart(body: &str) -> String {
    format!(
        r#"added=""
if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added=1; fi
( {body} ); rc=$?
[ -n "$added" ] && rm -f /usr/sbin/policy-rc.d
exit $rc
"#
    )
}

/// The state of Docker on a host, as `docker_check` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerState {
    pub installed: bool,
    /// The daemon's version when it answers.
    pub running: Option<String>,
    /// The SSH user can use it (root, or in the `docker` group).
    pub user_ok: bool,
}

async fn docker_check(r: &Remote) -> Result<DockerState, String> {
    let user = &r.host.user;
    let script = format!(
        r#"command -v dockerd >/dev/null 2>&1 && echo installed=yes
v=$(docker version --format '{{{{.Server.Version}}}}' 2>/dev/null) && echo "running=$v"
if [ "$(id -u {user} 2>/dev/null)" = 0 ] || id -nG {user} 2>/dev/null | tr ' ' '\n' | grep -qx docker; then echo user=yes; fi
exit 0
"#
    );
    let out = r.run(&script).await?;
    let mut s = DockerState::default();
    for line in out.stdout.lines() {
        match line.split_once('=') {
            Some(("installed", _)) => s.installed = true,
            Some(("running", v)) if !v.trim().is_empty() => s.running = Some(v.trim().into()),
            Some(("user", _)) => s.user_ok = true,
            _ => {}
        }
    }
    Ok(s)
}

fn docker_repo_install(lock_timeout: Duration) -> String {
    format!(
        r#"set -e
. /etc/os-release
{curl}
install -m 0755 -d /etc/apt/keyrings
curl -fsS --max-time 30 "https://download.docker.com/linux/$ID/gpg" -o /etc/apt/keyrings/docker.asc 2>/tmp/chora-curl.log || {{ echo "cannot reach Docker's apt repository (https://download.docker.com): $(tail -1 /tmp/chora-curl.log)" >&2; exit 1; }}
chmod a+r /etc/apt/keyrings/docker.asc
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/$ID $VERSION_CODENAME stable" >/etc/apt/sources.list.d/docker.list
apt-get -q -o DPkg::Lock::Timeout={t} update >/dev/null
{install}
"#,
        curl = apt_install("curl ca-certificates", lock_timeout),
        t = lock_timeout.as_secs(),
        install = apt_install("docker-ce docker-ce-cli containerd.io", lock_timeout),
    )
}

/// Starts the daemon the way the host can: systemd where PID 1 is systemd, else
/// the init script, else (Debian's script fails under a hard open-files limit
/// it cannot raise) `dockerd` directly, detached, logging to
/// /var/log/dockerd.log. Prints how.
const DOCKER_START: &str = r#"up() { i=0; while ! docker version >/dev/null 2>&1; do i=$((i+1)); [ $i -ge "$1" ] && return 1; sleep 1; done; }
if [ -d /run/systemd/system ]; then
  systemctl enable --now docker >/tmp/chora-docker-start.log 2>&1 || systemctl restart docker >>/tmp/chora-docker-start.log 2>&1
  up 30 && { echo systemd; exit 0; }
  tail -3 /tmp/chora-docker-start.log >&2; journalctl -u docker -n 3 --no-pager >&2 2>/dev/null; exit 1
fi
if [ -x /etc/init.d/docker ] && /etc/init.d/docker start >/tmp/chora-docker-start.log 2>&1 && up 15; then echo "init script"; exit 0; fi
if ! pidof dockerd >/dev/null 2>&1; then
  rm -f /var/run/docker.pid
  setsid nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
fi
up 60 && { echo "dockerd directly (log: /var/log/dockerd.log)"; exit 0; }
echo "dockerd did not come up:" >&2; tail -3 /var/log/dockerd.log >&2; exit 1
"#;

/// `docker`: installed, running, and usable by the SSH user. The third value
/// says whether the user was just added to the `docker` group (a new SSH
/// connection is then needed to use it).
pub async fn docker(
    r: &Remote,
    facts: &Facts,
    install: DockerInstall,
    lock_timeout: Duration,
    dry: bool,
) -> StepResult<bool> {
    let before = docker_check(r).await?;
    if before.installed && before.running.is_some() && before.user_ok {
        let v = before.running.clone().unwrap_or_default();
        return Ok((Status::Ok, format!("Docker {v} running"), false));
    }
    let mut plan = Vec::new();
    if !before.installed {
        plan.push(match install {
            DockerInstall::Distro => "install docker.io",
            DockerInstall::DockerRepo => "install docker-ce from Docker's apt repository",
            DockerInstall::Skip => "(docker.install is skip, but Docker is not installed)",
        });
    }
    if before.running.is_none() {
        plan.push("start the daemon");
    }
    if !before.user_ok {
        plan.push("add the SSH user to the docker group");
    }
    if dry {
        return Ok((Status::Changed, format!("would {}", plan.join(", ")), false));
    }
    let mut did = Vec::new();
    if !before.installed {
        let script = match install {
            DockerInstall::Skip => {
                return Err("Docker is not installed and docker.install is `skip`".into());
            }
            DockerInstall::Distro => without_autostart(&apt_install("docker.io", lock_timeout)),
            DockerInstall::DockerRepo => without_autostart(&docker_repo_install(lock_timeout)),
        };
        let out = r.run(&script).await?;
        if !out.ok() {
            return Err(format!("installing Docker failed: {}", out.tail()));
        }
        did.push(match install {
            DockerInstall::DockerRepo => "installed docker-ce".to_owned(),
            _ => "installed docker.io".to_owned(),
        });
    }
    if before.running.is_none() || !before.installed {
        let out: Output = r.run(DOCKER_START).await?;
        if !out.ok() {
            return Err(format!("Docker did not start: {}", out.tail()));
        }
        did.push(format!("started ({})", out.stdout.trim()));
    }
    let mut joined_group = false;
    if !before.user_ok {
        let user = &r.host.user;
        let out = r
            .run(&format!(
                "getent group docker >/dev/null || groupadd docker; usermod -aG docker {user}"
            ))
            .await?;
        if !out.ok() {
            return Err(format!(
                "cannot add {user} to the docker group: {}",
                out.tail()
            ));
        }
        did.push(format!("added {user} to the docker group"));
        joined_group = true;
    }
    let after = docker_check(r).await?;
    match (&after.running, after.user_ok) {
        (Some(v), true) => Ok((
            Status::Changed,
            format!("Docker {v}: {}", did.join(", ")),
            joined_group,
        )),
        (None, _) => Err(format!(
            "Docker does not answer after: {} ({})",
            did.join(", "),
            if facts.systemd {
                "see journalctl -u docker"
            } else {
                "see /var/log/dockerd.log"
            }
        )),
        (_, false) => Err("the SSH user is still not in the docker group".into()),
    }
}

/// The `verify` script, run as the SSH user: `docker version`; then, at once,
/// every mesh peer pinged (for up to ~30 s: a fresh tunnel needs its first
/// handshake, and a peer still finishing its own steps retries it only
/// every 5 s; 10 tries once let two healthy peers miss each other) and one
/// container run with no registry: `/bin/echo` and the libraries `ldd`
/// names for it (the host's own glibc, so any Debian or Ubuntu
/// architecture works), imported as a one-layer image and run with no
/// network. The container goes with `--rm`, the image and the temp dir by the
/// trap, whatever failed. Prints `version=`, `ran=` (what the container
/// printed, `{nonce}` making it this run's own) and `unanswered=` lines.
fn verify_script(nonce: &str, peers: &[(String, String)]) -> String {
    let mut pings = String::new();
    for (name, ip) in peers {
        pings.push_str(&format!(
            "ok=\"\"; for i in $(seq 30); do ping -c1 -W1 {ip} >/dev/null 2>&1 && {{ ok=1; break; }}; done; [ -n \"$ok\" ] || echo \"{name}({ip})\" >>\"$d/unanswered\"\n"
        ));
    }
    format!(
        r#"v=$(docker version --format '{{{{.Server.Version}}}}' 2>&1) || {{ echo "$v" >&2; exit 3; }}
echo "version=$v"
d=$(mktemp -d /tmp/chora-verify.XXXXXX) || exit 1
tag="chora-verify:$$"; name="chora-verify-$$"
trap 'docker rmi "$tag" >/dev/null 2>&1 || {{ docker rm -f "$name" >/dev/null 2>&1; docker rmi "$tag" >/dev/null 2>&1; }}; rm -rf "$d"' EXIT
touch "$d/unanswered"
(
:
{pings}) &
mkdir "$d/root"
for f in /bin/echo $(ldd /bin/echo | grep -o '/[^ ]*'); do
  mkdir -p "$d/root${{f%/*}}" && cp -L "$f" "$d/root$f" || {{ echo "cannot copy $f for the test image" >&2; exit 1; }}
done
tar -C "$d/root" -cf - . | docker import - "$tag" >"$d/log" 2>&1 || {{ echo "docker import failed: $(tail -1 "$d/log")" >&2; wait; exit 1; }}
echo "ran=$(docker run --rm --name "$name" --network none "$tag" /bin/echo "chora-ran-{nonce}" 2>&1 | tr '\n' ' ')"
wait
echo "unanswered=$(tr '\n' ' ' <"$d/unanswered")"
"#
    )
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", std::process::id(), t.subsec_nanos())
}

/// `verify`: Docker answers the SSH user (no sudo) and really runs a
/// container for them, and every mesh peer answers a ping (one script, see
/// [`verify_script`]).
pub async fn verify(r: &Remote, peers: &[(String, String)]) -> StepResult {
    let nonce = nonce();
    let out = r.run_as_user(&verify_script(&nonce, peers)).await?;
    let field = |k: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().to_owned())
    };
    let user = &r.host.user;
    let Some(version) = field("version") else {
        return Err(format!("Docker does not answer {user}: {}", out.tail()));
    };
    let ran = field("ran").unwrap_or_default();
    if ran != format!("chora-ran-{nonce}") {
        let why = if ran.is_empty() { out.tail() } else { ran };
        return Err(format!(
            "Docker {version} answers {user} but cannot run a container: {why}"
        ));
    }
    let docker = format!("Docker {version} ran a container as {user}");
    let unanswered = field("unanswered").unwrap_or_default();
    if !unanswered.is_empty() {
        return Err(format!(
            "{docker}, but mesh peers do not answer: {unanswered}"
        ));
    }
    if peers.is_empty() {
        return Ok((Status::Ok, docker, ()));
    }
    Ok((
        Status::Ok,
        format!("{docker}; {} mesh peer(s) answer", peers.len()),
        (),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verify_script_is_sh() {
        let peers = [("b".to_owned(), "10.77.0.2".to_owned())];
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &verify_script("1-2", &peers)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn facts_parse() {
        let f = Facts::parse(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\narch=amd64\npid1=sleep\nuid=1000\nuser=deploy\nsudo=yes\n",
        );
        assert!(f.debian_like());
        assert!(!f.systemd && !f.root && f.sudo);
        assert_eq!(
            f.summary(),
            "debian 12 (bookworm), amd64, no systemd, deploy with sudo -n"
        );
    }
}
