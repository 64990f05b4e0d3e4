//! What a test needs beyond Rust, and the one way a test asks for it.
//!
//! `cargo test --workspace` passes on a machine with Rust and nothing else. A
//! test that needs more asks one of the functions here first and returns when
//! it answers `false`, after it has printed one line:
//!
//! ```text
//! manifest_etcd::a_paused_node_costs_…: skipped: needs etcd (apt-get install etcd-server)
//! ```
//!
//! That line goes straight to the process's stderr, past the test harness's
//! capture, so `cargo test` shows it. Where `CHORA_REQUIRE_<X>=1` is set (CI
//! sets them all, `.ci/run`) the same absence fails the test instead: nothing
//! is skipped there by accident.
//!
//! | need | `CHORA_REQUIRE_…` | package |
//! |------|-------------------|---------|
//! | `etcd` on the PATH | `ETCD` | etcd-server |
//! | a Docker engine that answers | `DOCKER` | docker.io |
//! | `docker-compose` or `docker compose` (with Docker) | `DOCKER` | docker-compose |
//! | busybox, to build an image of (with Docker) | `DOCKER` | busybox-static |
//! | Chromium (`chromium`, or `CHORA_CHROMIUM`) | `CHROMIUM` | chromium |
//! | `python3`, a program that knows nothing of chora | `PYTHON3` | python3 |
//! | an ssh client, for `chora infra`'s test hosts | `DEBOOTSTRAP` | openssh-client |
//! | debootstrap, to build those hosts' root filesystem (once: it is cached) | `DEBOOTSTRAP` | debootstrap |
//! | root, to run debootstrap (likewise only while nothing is cached) | `ROOT` | - |
//! | `pebble` and `pebble-challtestsrv`, an ACME server for the gateway's TLS | `PEBBLE` | pebble |
//! | Prometheus (`prometheus`, or `CHORA_PROMETHEUS`) | `PROMETHEUS` | prometheus |

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// One thing a test may need, as its skip line and CI name it.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    /// What is missing, for the skip line: "etcd".
    pub what: &'static str,
    /// `CHORA_REQUIRE_<require>=1` makes its absence a failure.
    pub require: &'static str,
    /// How to get it: "apt-get install etcd-server".
    pub install: &'static str,
}

pub const ETCD: Need = Need {
    what: "etcd",
    require: "ETCD",
    install: "apt-get install etcd-server",
};
pub const DOCKER: Need = Need {
    what: "a Docker engine",
    require: "DOCKER",
    install: "apt-get install docker.io",
};
pub const COMPOSE: Need = Need {
    what: "Docker Compose",
    require: "DOCKER",
    install: "apt-get install docker-compose",
};
pub const BUSYBOX: Need = Need {
    what: "busybox",
    require: "DOCKER",
    install: "apt-get install busybox-static",
};
pub const CHROMIUM: Need = Need {
    what: "Chromium",
    require: "CHROMIUM",
    install: "apt-get install chromium",
};
pub const PYTHON3: Need = Need {
    what: "python3",
    require: "PYTHON3",
    install: "apt-get install python3",
};
pub const DEBOOTSTRAP: Need = Need {
    what: "debootstrap",
    require: "DEBOOTSTRAP",
    install: "apt-get install debootstrap",
};
pub const SSH: Need = Need {
    what: "an ssh client",
    require: "DEBOOTSTRAP",
    install: "apt-get install openssh-client",
};
pub const ROOT: Need = Need {
    what: "root",
    require: "ROOT",
    install: "run the tests as root",
};

impl Need {
    /// Whether `test` may go on. `missing` is `None` when the need is met,
    /// else what is wrong (empty when "not installed" says it all). Prints the
    /// skip line and answers `false`, or panics under `CHORA_REQUIRE_<X>=1`.
    pub fn met(&self, test: &str, missing: Option<String>) -> bool {
        let Some(why) = missing else { return true };
        let needs = self.needs(&why);
        if std::env::var(self.variable()).as_deref() == Ok("1") {
            panic!(
                "{test}: {needs}, and {}=1 forbids skipping it",
                self.variable()
            );
        }
        let line = format!("{test}: skipped: {needs}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        false
    }

    /// `CHORA_REQUIRE_<require>`.
    pub fn variable(&self) -> String {
        format!("CHORA_REQUIRE_{}", self.require)
    }

    /// `needs etcd (apt-get install etcd-server)`, and `: <why>` with the first
    /// line of `why` when there is one.
    fn needs(&self, why: &str) -> String {
        let mut out = format!("needs {} ({})", self.what, self.install);
        if let Some(w) = why.lines().next().map(str::trim).filter(|w| !w.is_empty()) {
            out.push_str(": ");
            out.push_str(w);
        }
        out
    }
}

/// `None` when `program args…` runs and exits 0, else why not.
fn runs(program: &str, args: &[&str]) -> Option<String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
        Err(e) => Some(format!("{program}: {e}")),
    }
}

/// Debian's `etcd` is installed.
pub fn etcd_available(test: &str) -> bool {
    ETCD.met(test, runs("etcd", &["--version"]))
}

/// A Docker engine answers `docker version` (at `DOCKER_HOST`, if set).
pub fn docker_available(test: &str) -> bool {
    DOCKER.met(
        test,
        runs("docker", &["version", "--format", "{{.Server.Version}}"]),
    )
}

/// A Docker engine, and Compose to drive it (`docker-compose`, or the
/// `docker compose` plugin).
pub fn compose_available(test: &str) -> bool {
    if !docker_available(test) {
        return false;
    }
    let missing = match runs("docker-compose", &["version"]) {
        None => None,
        Some(_) => runs("docker", &["compose", "version"]),
    };
    COMPOSE.met(test, missing)
}

/// A busybox binary (the static one CI installs, or a dynamic one).
pub fn busybox(test: &str) -> Option<PathBuf> {
    let found = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let missing = found.is_none().then(String::new);
    if BUSYBOX.met(test, missing) {
        found
    } else {
        None
    }
}

/// The Chromium program tests drive: `CHORA_CHROMIUM`, else `chromium`.
pub fn chromium() -> String {
    std::env::var("CHORA_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Chromium runs (`--version`).
pub fn chromium_available(test: &str) -> bool {
    CHROMIUM.met(test, runs(&chromium(), &["--version"]))
}

/// `python3` is installed.
pub fn python3_available(test: &str) -> bool {
    PYTHON3.met(test, runs("python3", &["--version"]))
}

/// The ssh client and ssh-keygen are installed.
pub fn ssh_available(test: &str) -> bool {
    let missing = runs("ssh", &["-V"]).or_else(|| {
        which("ssh-keygen")
            .is_none()
            .then(|| "ssh-keygen is missing".to_owned())
    });
    SSH.met(test, missing)
}

/// `debootstrap` is installed (it is a script: found on the PATH).
pub fn debootstrap_available(test: &str) -> bool {
    let missing = which("debootstrap").is_none().then(String::new);
    DEBOOTSTRAP.met(test, missing)
}

pub const PEBBLE: Need = Need {
    what: "pebble",
    require: "PEBBLE",
    install: "apt-get install pebble",
};

/// Debian's `pebble` (Let's Encrypt's ACME test server) and its
/// `pebble-challtestsrv` are installed.
pub fn pebble_available(test: &str) -> bool {
    let missing = ["pebble", "pebble-challtestsrv"]
        .into_iter()
        .find(|p| which(p).is_none())
        .map(|p| format!("{p} is not on the PATH"));
    PEBBLE.met(test, missing)
}

pub const PROMETHEUS: Need = Need {
    what: "prometheus",
    require: "PROMETHEUS",
    install: "apt-get install prometheus",
};

/// The Prometheus program tests run: `CHORA_PROMETHEUS`, else `prometheus`.
pub fn prometheus() -> String {
    std::env::var("CHORA_PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

/// Prometheus runs (`--version`).
pub fn prometheus_available(test: &str) -> bool {
    PROMETHEUS.met(test, runs(&prometheus(), &["--version"]))
}

/// The tests run as root; `why` says what for.
pub fn root_available(test: &str, why: &str) -> bool {
    // SAFETY: geteuid never fails.
    let root = unsafe { libc::geteuid() } == 0;
    ROOT.met(test, (!root).then(|| why.to_owned()))
}

/// `program` as the PATH finds it.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_need_lets_the_test_go_on() {
        assert!(ETCD.met("t", None));
    }

    #[test]
    fn a_missing_need_is_named_with_its_package_and_the_first_line_of_why() {
        assert_eq!(ETCD.needs(""), "needs etcd (apt-get install etcd-server)");
        assert_eq!(
            DOCKER.needs("Cannot connect to the Docker daemon\nmore"),
            "needs a Docker engine (apt-get install docker.io): Cannot connect to the Docker daemon"
        );
        assert_eq!(ROOT.variable(), "CHORA_REQUIRE_ROOT");
    }

    #[test]
    fn a_program_that_is_not_there_does_not_run() {
        assert_eq!(runs("/nonexistent/program", &[]), Some(String::new()));
        assert_eq!(runs("true", &[]), None);
    }
}
