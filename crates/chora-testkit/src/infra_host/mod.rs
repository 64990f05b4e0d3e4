//! Test hosts for `chora infra`: containers on a private Docker network, each a
//! fresh Debian bookworm (a `debootstrap` root filesystem, imported with
//! `docker import`) running its own sshd with its own host key, reached with
//! an ed25519 client key made for the test.
//!
//! The root filesystem is built once by `rootfs.sh` and cached under the
//! SHA-256 of that recipe in [`cache_dir`], so reruns only import it. Every
//! image tag, network and container a test makes is removed when its guard
//! drops, pass or fail. Hosts start with the capabilities a Docker daemon needs
//! inside them (`--privileged` is refused on the CI machines) and /dev/net/tun
//! for wireguard-go.
//!
//! Ask [`available`] first: it checks all of that can happen here, and skips
//! (or, under `CHORA_REQUIRE_*`, fails) the test with the reason when not.
//!
//! A host can run containers, as a real one can: it has a cgroup namespace of
//! its own (`--cgroupns=private`), and its cgroup hierarchies, which Docker
//! mounts read-only into a container that is not privileged, are mounted
//! again read-write ([`CGROUPS_RW`]) before anything starts in it. That is
//! the test harness emulating a real host; chora itself does nothing of the
//! kind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

const RECIPE: &str = include_str!("rootfs.sh");

/// Runs `docker args…`; panics with its output when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = docker_try(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker pause` of a test host: a hung host. The kernel's freezer may give
/// up on a cgroup as busy as a host running its own dockerd ("unable to
/// freeze", seen once in a few dozen runs), so a refused pause is tried
/// again, up to five times.
pub fn pause(container: &str) {
    let mut last = String::new();
    for _ in 0..5 {
        let out = docker_try(&["pause", container]);
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "docker pause {container} refused, trying again: {}",
            last.trim()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("docker pause {container} failed five times: {last}");
}

pub fn docker_try(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Where built root filesystems are kept between runs: `CHORA_TEST_CACHE`, else
/// /var/cache/chora-test when writable (root, CI), else
/// `$XDG_CACHE_HOME/chora-test` or ~/.cache/chora-test.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CHORA_TEST_CACHE") {
        return PathBuf::from(d);
    }
    let var = PathBuf::from("/var/cache/chora-test");
    if std::fs::create_dir_all(&var).is_ok() && tempfile::tempfile_in(&var).is_ok() {
        return var;
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("chora-test")
}

fn recipe_hash() -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(RECIPE.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

static BUILD: Mutex<()> = Mutex::new(());

/// Where the root filesystem of the current recipe is (or will be) cached.
fn rootfs_path() -> PathBuf {
    cache_dir().join(format!("rootfs-{}.tar", recipe_hash()))
}

/// Whether test hosts can be made here: a Docker engine, an ssh client, and
/// their root filesystem, cached or built now by debootstrap, as root. When
/// not, says why (see [`crate::needs`]) and answers `false`.
pub fn available(test: &str) -> bool {
    if !(crate::docker_available(test) && crate::ssh_available(test)) {
        return false;
    }
    rootfs_path().exists()
        || (crate::debootstrap_available(test)
            && crate::root_available(test, "debootstrap builds the test hosts' root filesystem"))
}

/// The cached root filesystem tarball, built now if missing (a few minutes:
/// debootstrap downloads from deb.debian.org). Concurrent builders, in this
/// process or another, wait for one another (a lock file).
pub fn rootfs() -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let tar = rootfs_path();
    let dir = tar.parent().expect("in the cache dir").to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    if tar.exists() {
        return tar;
    }
    let lock = std::fs::File::create(dir.join("rootfs.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !tar.exists() {
        let script = dir.join(format!("rootfs-{}.sh", recipe_hash()));
        std::fs::write(&script, RECIPE).unwrap();
        eprintln!(
            "building the test hosts' root filesystem (debootstrap) into {}",
            tar.display()
        );
        let out = Command::new("sh").arg(&script).arg(&tar).output().unwrap();
        assert!(
            out.status.success() && tar.exists(),
            "building the root filesystem failed (is debootstrap installed, and are we root?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tar
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 4];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        u32::from_le_bytes(b) % 100_000
    )
}

/// An image tag imported for one test; untagged on drop.
pub struct TestImage {
    pub tag: String,
}

impl TestImage {
    pub fn import() -> TestImage {
        let tar = rootfs();
        let tag = format!("{}:test", unique("chora-infra-host"));
        docker(&[
            "import",
            "--change",
            r#"CMD ["sleep", "infinity"]"#,
            tar.to_str().unwrap(),
            &tag,
        ]);
        TestImage { tag }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = docker_try(&["rmi", "-f", &self.tag]);
    }
}

/// A private bridge network; removed on drop.
pub struct TestNet {
    pub name: String,
}

impl TestNet {
    pub fn create() -> TestNet {
        let name = unique("chora-infra-net");
        docker(&["network", "create", "--label", "chora-test=infra", &name]);
        TestNet { name }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = docker_try(&["network", "rm", &self.name]);
    }
}

/// Mounts the host's cgroup hierarchies read-write again, each over itself,
/// inside its own cgroup namespace: cgroup v1 (one mount per controller;
/// `name=systemd` for systemd's), a cgroup2 `unified` beside them, or a
/// cgroup2-only /sys/fs/cgroup.
pub const CGROUPS_RW: &str = r#"fstype() { awk -v m="$1" '$5 == m { for (i = 7; $i != "-"; i++); t = $(i+1) } END { print t }' /proc/self/mountinfo; }
if [ "$(fstype /sys/fs/cgroup)" = cgroup2 ]; then
  umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
  for d in /sys/fs/cgroup/*; do
    [ -L "$d" ] && continue
    c=${d##*/}
    case "$(fstype "$d")" in
      cgroup) case "$c" in systemd) o=none,name=systemd ;; *) o=$c ;; esac
              umount "$d" && mount -t cgroup -o "$o" cgroup "$d" ;;
      cgroup2) umount "$d" && mount -t cgroup2 cgroup2 "$d" ;;
    esac
  done
fi
"#;

/// How a host starts.
#[derive(Debug, Clone, Default)]
pub struct HostSpec {
    pub name: String,
    /// A non-root SSH user with passwordless sudo; root when `None`.
    pub sudo_user: Option<String>,
    /// Leave sshd stopped (start it later with [`TestHost::start_sshd`]).
    pub no_sshd: bool,
}

/// One test host; removed (with its volumes) on drop.
pub struct TestHost {
    pub name: String,
    pub container: String,
    pub ip: String,
    pub user: String,
}

impl TestHost {
    pub fn start(image: &TestImage, net: &TestNet, spec: &HostSpec, client_pub: &str) -> TestHost {
        let container = unique(&format!("chora-infra-{}", spec.name));
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            &spec.name,
            "--network",
            &net.name,
            "--label",
            "chora-test=infra",
            "--init",
            "--cgroupns=private",
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--device",
            "/dev/net/tun",
            // Docker's data on a volume, as a real host's is on its own
            // disk: not on this container's root (overlayfs, or
            // fuse-overlayfs), where the inner dockerd could only use `vfs`
            // and every layer it writes would cross that filesystem too.
            // Removed with the host (`rm -v`).
            "--volume",
            "/var/lib/docker",
            &image.tag,
        ]);
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container,
        ]);
        let host = TestHost {
            name: spec.name.clone(),
            container,
            ip,
            user: spec.sudo_user.clone().unwrap_or_else(|| "root".into()),
        };
        host.sh(CGROUPS_RW);
        let mut setup = String::from(
            "set -e\nssh-keygen -A >/dev/null\nmkdir -p /run/sshd /root/.ssh\nchmod 700 /root/.ssh\n",
        );
        setup.push_str(&format!(
            "echo '{client_pub}' > /root/.ssh/authorized_keys\n"
        ));
        if let Some(u) = &spec.sudo_user {
            setup.push_str(&format!(
                "useradd -m -s /bin/bash {u}\nmkdir -p /home/{u}/.ssh\ncp /root/.ssh/authorized_keys /home/{u}/.ssh/\nchown -R {u}: /home/{u}/.ssh\nchmod 700 /home/{u}/.ssh\necho '{u} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{u}\nchmod 440 /etc/sudoers.d/{u}\n"
            ));
        }
        host.sh(&setup);
        if !spec.no_sshd {
            host.start_sshd();
        }
        host
    }

    /// Runs a shell script in the host as root; panics when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.sh_try(script);
        assert!(
            out.status.success(),
            "{}: `{script}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn sh_try(&self, script: &str) -> Output {
        let mut child = Command::new("docker")
            .args(["exec", "-i", &self.container, "sh", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn start_sshd(&self) {
        self.sh("/usr/sbin/sshd");
    }

    /// The known_hosts line for this host's real key.
    pub fn known_hosts_line(&self) -> String {
        let key = self.sh("cat /etc/ssh/ssh_host_ed25519_key.pub");
        let mut parts = key.split_whitespace();
        format!(
            "{} {} {}",
            self.ip,
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default()
        )
    }

    /// Holds the dpkg frontend lock the way apt does (fcntl) for `secs`
    /// seconds, in the background; returns once it is held.
    pub fn hold_dpkg_lock(&self, secs: u32) {
        self.sh(&format!(
            r#"rm -f /tmp/lock-held
nohup perl -MFcntl -e 'open(my $h, ">>", "/var/lib/dpkg/lock-frontend") or die; my $s = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0); fcntl($h, F_SETLKW, $s) or die "lock: $!"; open(my $m, ">", "/tmp/lock-held"); close $m; $0 = "unattended-upgr"; sleep {secs}' >/dev/null 2>&1 &
i=0; while [ ! -e /tmp/lock-held ] && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.1; done
[ -e /tmp/lock-held ]"#
        ));
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = docker_try(&["rm", "-f", "-v", &self.container]);
    }
}

/// A set of hosts with the image and network they need, a client key and a
/// known_hosts file with every started host's real key. Fields drop in order:
/// hosts, then the network, then the image tag, then the temp dir.
pub struct HostKit {
    pub hosts: Vec<TestHost>,
    pub net: TestNet,
    pub image: TestImage,
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

impl HostKit {
    pub fn start(specs: &[HostSpec]) -> HostKit {
        let dir = crate::temp_dir();
        let key = dir.path().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "chora-test", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let image = TestImage::import();
        let net = TestNet::create();
        let mut kit = HostKit {
            hosts: Vec::new(),
            net,
            image,
            known_hosts: dir.path().join("known_hosts"),
            key,
            dir,
        };
        // Hosts start one after another: each is a few docker calls.
        for s in specs {
            let h = TestHost::start(&kit.image, &kit.net, s, public.trim());
            kit.hosts.push(h);
        }
        kit.write_known_hosts(&[]);
        kit
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("a host of the kit")
    }

    /// known_hosts with every host's real key, except `wrong`, which gets a key
    /// of its own that the host does not have.
    pub fn write_known_hosts(&self, wrong: &[&str]) {
        let mut text = String::new();
        for h in &self.hosts {
            if wrong.contains(&h.name.as_str()) {
                let other = self.dir.path().join(format!("other-{}", h.name));
                let _ = std::fs::remove_file(&other);
                let _ = std::fs::remove_file(other.with_extension("pub"));
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&other)
                    .output()
                    .unwrap();
                let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
                let mut parts = public.split_whitespace();
                text.push_str(&format!(
                    "{} {} {}\n",
                    h.ip,
                    parts.next().unwrap(),
                    parts.next().unwrap()
                ));
            } else {
                text.push_str(&h.known_hosts_line());
                text.push('\n');
            }
        }
        std::fs::write(&self.known_hosts, text).unwrap();
    }

    /// An inventory of `hosts` (by name) with the kit's key and known_hosts, and
    /// `extra` YAML after it (docker, network, apt …). Returns its path.
    pub fn inventory(&self, file: &str, hosts: &[&str], extra: &str) -> PathBuf {
        let mut y = String::from("hosts:\n");
        for n in hosts {
            let h = self.host(n);
            y.push_str(&format!(
                "  - {{name: {}, address: {}, user: {}}}\n",
                h.name, h.ip, h.user
            ));
        }
        y.push_str(&format!(
            "ssh:\n  identity_file: {}\n  known_hosts: {}\n  connect_timeout: 5\n",
            self.key.display(),
            self.known_hosts.display()
        ));
        y.push_str(extra);
        let path = self.dir.path().join(file);
        std::fs::write(&path, y).unwrap();
        path
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
