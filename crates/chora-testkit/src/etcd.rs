//! etcd clusters for tests: `n` members of Debian's `etcd` on free loopback
//! ports, each with its own data directory in one temp dir, started together
//! (members wait for a quorum before they serve), each stoppable and
//! restartable on the same data. Ask [`crate::etcd_available`] first.

use crate::{Server, Starting, start_process, temp_dir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One etcd member started by a test, on free loopback ports, with its own
/// data directory; it can be stopped and started again on the same data.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data: PathBuf,
    cluster: String,
    pub server: Option<Server>,
}

impl EtcdMember {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts) the member and waits until it serves clients.
    pub fn start(&mut self, new_cluster: bool) {
        let pending = self.spawn(new_cluster);
        self.ready(pending);
    }

    fn ready(&mut self, pending: Starting) {
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        self.server = Some(pending.wait(move |line| {
            line.contains("serving insecure client requests")
                .then_some(addr)
        }));
    }

    /// Starts the process on this thread without waiting.
    fn spawn(&self, new_cluster: bool) -> Starting {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.data.display().to_string();
        let state = if new_cluster { "new" } else { "existing" };
        let args = [
            "--name",
            &self.name,
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &self.cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "chora-test",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ];
        let dir = self.data.parent().unwrap().to_owned();
        start_process(
            Path::new("etcd"),
            &dir,
            &args,
            &[],
            format!("etcd {}", self.name),
        )
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
    }
}

/// An etcd cluster of `n` members started by a test.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        let dir = temp_dir();
        let ports: Vec<(u16, u16)> = {
            let held: Vec<std::net::TcpListener> = (0..2 * n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            let p: Vec<u16> = held
                .iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect();
            (0..n).map(|i| (p[2 * i], p[2 * i + 1])).collect()
        };
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<EtcdMember> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| EtcdMember {
                name: format!("e{i}"),
                client_port: *c,
                peer_port: *p,
                data: dir.path().join(format!("e{i}")),
                cluster: cluster.clone(),
                server: None,
            })
            .collect();
        let mut c = EtcdCluster {
            members: Vec::new(),
            _dir: dir,
        };
        std::mem::swap(&mut c.members, &mut members);
        c.start_all(true);
        c
    }

    /// Starts every member (on this thread) and waits for all of them together:
    /// members wait for a quorum before they serve.
    pub fn start_all(&mut self, new_cluster: bool) {
        let pending: Vec<Starting> = self.members.iter().map(|m| m.spawn(new_cluster)).collect();
        std::thread::scope(|s| {
            for (m, p) in self.members.iter_mut().zip(pending) {
                s.spawn(move || m.ready(p));
            }
        });
    }

    /// `etcd:URL,URL,…` for `chora manifest serve --storage`.
    pub fn storage(&self) -> String {
        format!("etcd:{}", self.urls().join(","))
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::url).collect()
    }
}
