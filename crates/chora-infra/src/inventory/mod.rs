//! The inventory (DESIGN.md §11, §13): which hosts, how to reach them, what to
//! install, and the swarm they form. Loading checks everything before any host
//! is contacted and names the file, line and field of each mistake (exit 7).
//!
//! The YAML is read into serde shapes (`Raw*`, unknown keys refused, values
//! that need a line kept `Spanned`), then checked into an [`Inventory`]; a
//! parse error's position and sentence come from `chora_text::YamlError`.
//!
//! Invariants of a loaded [`Inventory`]:
//!
//! - At least one host; names are unique, 1 to 63 of letters, digits, `-`,
//!   `_`, `.`; addresses have no whitespace; no port is 0.
//! - Files it names exist (`ssh.identity_file`, the Tailscale auth key file):
//!   `~/` is `$HOME`, a relative path is from the inventory's directory.
//! - A WireGuard CIDR is IPv4 with a prefix of 8 to 30 and has room for every
//!   host: host *i* (in inventory order) is network + *i* + 1.
//! - Defaults: port 22, user root, 10 s connect timeout, 15 s keep-alive, 3
//!   connection attempts, Docker from the distribution, no mesh network, 300 s
//!   for the dpkg lock, a swarm of 3 managers (`swarm: false` for none).

use serde_saphyr::{Location, Spanned};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod raw;
use raw::*;

/// An inventory mistake: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct InventoryError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// One host to prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Node labels it carries in the swarm, besides `io.chora.host=<name>`.
    pub labels: BTreeMap<String, String>,
}

/// How to reach the hosts.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// A key file; `None`: the agent, else ~/.ssh/id_* (ssh's own defaults).
    pub identity_file: Option<PathBuf>,
    /// `None`: ~/.ssh/known_hosts (ssh's default).
    pub known_hosts: Option<PathBuf>,
    /// Learn the key of a host seen for the first time (a changed key still fails).
    pub accept_new: bool,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    /// Connection attempts for connection faults (refused, timed out, reset).
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerInstall {
    /// Debian's `docker.io`.
    Distro,
    /// Docker's own apt repository (`docker-ce`).
    DockerRepo,
    /// Docker must already be there.
    Skip,
}

impl DockerInstall {
    pub fn as_str(self) -> &'static str {
        match self {
            DockerInstall::Distro => "distro",
            DockerInstall::DockerRepo => "docker-repo",
            DockerInstall::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkSpec {
    None,
    WireGuard {
        network: Ipv4Addr,
        prefix: u8,
        listen_port: u16,
    },
    Tailscale {
        auth_key_file: PathBuf,
        tags: Vec<String>,
    },
}

impl NetworkSpec {
    /// The MTU of the hosts' mesh interface: WireGuard's 1420 (what
    /// `wireguard.rs` leaves it at), Tailscale's 1280, else Ethernet's 1500.
    /// An overlay network across the hosts must fit inside it (DESIGN.md
    /// §13: the mesh's minus VXLAN's 50 bytes).
    pub fn mtu(&self) -> u32 {
        match self {
            NetworkSpec::None => 1500,
            NetworkSpec::WireGuard { .. } => 1420,
            NetworkSpec::Tailscale { .. } => 1280,
        }
    }

    pub fn provider(&self) -> &'static str {
        match self {
            NetworkSpec::None => "none",
            NetworkSpec::WireGuard { .. } => "wireguard",
            NetworkSpec::Tailscale { .. } => "tailscale",
        }
    }
}

/// The Docker Swarm the hosts form (DESIGN.md §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmSpec {
    /// The first `managers` hosts in inventory order are managers, the rest
    /// workers.
    pub managers: usize,
}

impl Default for SwarmSpec {
    fn default() -> SwarmSpec {
        SwarmSpec {
            managers: DEFAULT_MANAGERS,
        }
    }
}

/// A checked inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub file: PathBuf,
    pub hosts: Vec<Host>,
    pub ssh: SshOptions,
    pub docker: DockerInstall,
    pub network: NetworkSpec,
    pub apt_lock_timeout: Duration,
    /// `None`: `swarm: false`.
    pub swarm: Option<SwarmSpec>,
}

pub const DEFAULT_CIDR: &str = "10.77.0.0/24";
pub const DEFAULT_LOCK_TIMEOUT: u64 = 300;
pub const DEFAULT_MANAGERS: usize = 3;
/// Node labels under this prefix are chora's own (`io.chora.host`).
pub const RESERVED_LABELS: &str = "io.chora.";

/// Why a node label key or value cannot be used, if it cannot.
fn label_problem(key: &str, value: &str) -> Option<String> {
    let key_ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    if !key_ok {
        return Some(format!(
            "label `{key}`: letters, digits, `.`, `_`, `-` and `/` only, 1 to 128 of them"
        ));
    }
    if key.starts_with(RESERVED_LABELS) {
        return Some(format!(
            "label `{key}`: `{RESERVED_LABELS}*` labels are chora's own"
        ));
    }
    if value.len() > 1024 || value.chars().any(char::is_control) {
        return Some(format!(
            "label `{key}`: the value must be one line of at most 1024 bytes"
        ));
    }
    None
}

/// `~/x` → `$HOME/x`; relative paths are taken from the inventory's directory.
fn expand(path: &str, base: &Path) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    let p = PathBuf::from(path);
    if p.is_absolute() { p } else { base.join(p) }
}

/// Parses `10.77.0.0/24` into its network address and prefix length.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.trim().parse().ok()?;
    let prefix: u8 = prefix.trim().parse().ok()?;
    if !(8..=30).contains(&prefix) {
        return None;
    }
    let mask = u32::MAX << (32 - prefix);
    Some((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

impl Inventory {
    /// Reads and checks an inventory file.
    pub fn load(file: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(file).map_err(|e| InventoryError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read the inventory: {e}"),
        })?;
        Inventory::parse(&text, file)
    }

    /// Parses and checks the YAML text of `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Inventory, InventoryError> {
        let raw: RawInventory = serde_saphyr::from_str(text).map_err(|e| {
            let e = chora_text::YamlError::new(&e);
            InventoryError {
                file: file.to_owned(),
                line: e.line.max(1),
                column: e.column.max(1),
                message: e.message,
            }
        })?;
        let err = |loc: Location, message: String| InventoryError {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message,
        };
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if raw.hosts.is_empty() {
            return Err(InventoryError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: "`hosts` lists no host".into(),
            });
        }
        let mut hosts: Vec<Host> = Vec::new();
        for (i, h) in raw.hosts.iter().enumerate() {
            let at = |m: String| err(h.referenced, format!("hosts[{i}]: {m}"));
            let v = &h.value;
            let name_ok = !v.name.is_empty()
                && v.name.len() <= 63
                && v.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !name_ok {
                return Err(at(format!(
                    "name `{}`: letters, digits, `-`, `_` and `.` only, 1 to 63 of them",
                    v.name
                )));
            }
            if hosts.iter().any(|o| o.name == v.name) {
                return Err(at(format!("name `{}` is used twice", v.name)));
            }
            if v.address.trim().is_empty() || v.address.contains(char::is_whitespace) {
                return Err(at(format!(
                    "address `{}` is not a host name or IP",
                    v.address
                )));
            }
            if v.port == Some(0) {
                return Err(at("port: 0 is not a port".into()));
            }
            let labels = match &v.labels {
                Some(l) => {
                    if let Some(p) = l.value.iter().find_map(|(k, v)| label_problem(k, v)) {
                        return Err(err(l.referenced, format!("hosts[{i}]: labels: {p}")));
                    }
                    l.value.clone()
                }
                None => BTreeMap::new(),
            };
            hosts.push(Host {
                name: v.name.clone(),
                address: v.address.clone(),
                port: v.port.unwrap_or(22),
                user: v.user.clone().unwrap_or_else(|| "root".into()),
                labels,
            });
        }
        let identity_file = match &raw.ssh.identity_file {
            Some(s) => {
                let p = expand(&s.value, base);
                if !p.is_file() {
                    return Err(err(
                        s.referenced,
                        format!(
                            "ssh.identity_file: no such key file: {} ({})",
                            s.value,
                            p.display()
                        ),
                    ));
                }
                Some(p)
            }
            None => None,
        };
        let ssh = SshOptions {
            identity_file,
            known_hosts: raw.ssh.known_hosts.as_deref().map(|k| expand(k, base)),
            accept_new: raw.ssh.accept_new,
            connect_timeout: Duration::from_secs(raw.ssh.connect_timeout.unwrap_or(10).max(1)),
            keepalive: Duration::from_secs(raw.ssh.keepalive.unwrap_or(15).max(1)),
            attempts: raw.ssh.retries.unwrap_or(3).max(1),
        };
        let docker = match &raw.docker.install {
            None => DockerInstall::Distro,
            Some(s) => match s.value.as_str() {
                "distro" => DockerInstall::Distro,
                "docker-repo" => DockerInstall::DockerRepo,
                "skip" => DockerInstall::Skip,
                other => {
                    return Err(err(
                        s.referenced,
                        format!(
                            "docker.install: unknown value `{other}` (expected distro, docker-repo or skip)"
                        ),
                    ));
                }
            },
        };
        let network = match &raw.network {
            None => NetworkSpec::None,
            Some(n) => {
                let v = &n.value;
                match v.provider.value.as_str() {
                    "none" => NetworkSpec::None,
                    "wireguard" => {
                        let (cidr_text, loc) = v
                            .cidr
                            .as_ref()
                            .map(|c| (c.value.as_str(), c.referenced))
                            .unwrap_or((DEFAULT_CIDR, n.referenced));
                        let Some((network, prefix)) = parse_cidr(cidr_text) else {
                            return Err(err(
                                loc,
                                format!(
                                    "network.cidr: `{cidr_text}` is not an IPv4 CIDR such as 10.77.0.0/24 (prefix 8 to 30)"
                                ),
                            ));
                        };
                        let room = (1u64 << (32 - prefix)) - 2;
                        if (hosts.len() as u64) > room {
                            return Err(err(
                                loc,
                                format!(
                                    "network.cidr: {cidr_text} has room for {room} hosts, the inventory lists {}",
                                    hosts.len()
                                ),
                            ));
                        }
                        NetworkSpec::WireGuard {
                            network,
                            prefix,
                            listen_port: v.listen_port.unwrap_or(51820),
                        }
                    }
                    "tailscale" => {
                        let Some(ts) = &v.tailscale else {
                            return Err(err(
                                n.referenced,
                                "network.tailscale: the tailscale provider needs `tailscale: {auth_key_file: PATH}`".into(),
                            ));
                        };
                        let p = expand(&ts.auth_key_file.value, base);
                        if !p.is_file() {
                            return Err(err(
                                ts.auth_key_file.referenced,
                                format!(
                                    "network.tailscale.auth_key_file: no such file: {} ({})",
                                    ts.auth_key_file.value,
                                    p.display()
                                ),
                            ));
                        }
                        NetworkSpec::Tailscale {
                            auth_key_file: p,
                            tags: ts.tags.clone(),
                        }
                    }
                    other => {
                        return Err(err(
                            v.provider.referenced,
                            format!(
                                "network.provider: unknown provider `{other}` (expected wireguard, tailscale or none)"
                            ),
                        ));
                    }
                }
            }
        };
        let swarm = match raw.swarm.as_ref() {
            Some(Spanned {
                value: RawSwarm::Off,
                ..
            }) => None,
            given => {
                let managers = match given.map(|s| &s.value) {
                    Some(RawSwarm::On(RawSwarmMap {
                        managers: Some(m), ..
                    })) => {
                        if m.value < 1 {
                            return Err(err(
                                m.referenced,
                                format!("swarm.managers: {} (1 or more)", m.value),
                            ));
                        }
                        m.value as usize
                    }
                    _ => DEFAULT_MANAGERS,
                };
                if network == NetworkSpec::None {
                    let loc = given
                        .map(|s| s.referenced)
                        .or(raw.network.as_ref().map(|n| n.referenced));
                    let (line, column) = loc.map(|l| (l.line(), l.column())).unwrap_or((1, 1));
                    return Err(InventoryError {
                        file: file.to_owned(),
                        line,
                        column,
                        message: "swarm: the swarm runs on the mesh (each host advertises its mesh address), and `network.provider` is none: set `network.provider` (wireguard or tailscale), or `swarm: false`".into(),
                    });
                }
                Some(SwarmSpec { managers })
            }
        };
        Ok(Inventory {
            file: file.to_owned(),
            hosts,
            ssh,
            docker,
            network,
            apt_lock_timeout: Duration::from_secs(
                raw.apt.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT),
            ),
            swarm,
        })
    }

    /// Whether the host at `index` is a swarm manager (the first
    /// `swarm.managers` hosts in inventory order are).
    pub fn is_manager(&self, index: usize) -> bool {
        self.swarm.is_some_and(|s| index < s.managers)
    }

    /// The mesh's IPv4 network: WireGuard's `cidr`, Tailscale's CGNAT range
    /// (100.64.0.0/10); `None` without a mesh.
    pub fn mesh_network(&self) -> Option<(Ipv4Addr, u8)> {
        match &self.network {
            NetworkSpec::None => None,
            NetworkSpec::WireGuard {
                network, prefix, ..
            } => Some((*network, *prefix)),
            NetworkSpec::Tailscale { .. } => Some((Ipv4Addr::new(100, 64, 0, 0), 10)),
        }
    }

    /// The mesh address of the host at `index` (WireGuard: in host order).
    pub fn mesh_address(&self, index: usize) -> Option<(Ipv4Addr, u8)> {
        match &self.network {
            NetworkSpec::WireGuard {
                network, prefix, ..
            } => Some((
                Ipv4Addr::from(u32::from(*network) + index as u32 + 1),
                *prefix,
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
