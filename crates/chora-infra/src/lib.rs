//! `chora infra`: fresh Debian/Ubuntu hosts, reached over SSH, get Docker
//! (installed, running, usable by the SSH user), join one mesh network
//! (DESIGN.md §11) and form one Docker Swarm on it (§13).
//!
//! A run goes in four rounds over the inventory's hosts, each round in
//! parallel (at most `parallel` hosts at once), and one host's failure never
//! stops another's:
//!
//! 1. per host: `ssh` (connect), `facts`, `apt-lock` (wait, bounded, for the
//!    dpkg lock), `docker`, and the provider's install step (`wireguard`,
//!    `tailscale`);
//! 2. per host that got through round 1: `mesh` (join the mesh with the other
//!    hosts that did);
//! 3. per host that got through round 2: `verify` (Docker runs a container
//!    for the SSH user, every mesh peer answers a ping);
//! 4. the hosts that got through round 3 together: `swarm` ([`swarm`]: one
//!    swarm on the mesh addresses, managers first in inventory order), unless
//!    the inventory says `swarm: false`.
//!
//! [`tunnel`] is the way to a host's Docker from here (a forwarded socket over
//! SSH) and to images there without a registry, for whoever deploys onto the
//! swarm.
//!
//! Every step is check → act → verify ([`steps`]), so a second run changes
//! nothing and says `ok`, and a step whose SSH connection was lost can be run
//! again on a new one (`on_host!`). [`bootstrap`] returns a [`Report`]; the binary front
//! prints it and maps it to the exit code.
//!
//! ```no_run
//! # async fn f() -> Result<(), chora_infra::InventoryError> {
//! let inv = chora_infra::Inventory::load("hosts.yml".as_ref())?;
//! let report = chora_infra::bootstrap(&inv, &chora_infra::Options::default(), |_| {}).await;
//! assert!(report.all_ready());
//! # Ok(()) }
//! ```

pub mod inventory;
pub mod network;
pub mod report;
pub mod ssh;
pub mod state;
pub mod steps;
pub mod swarm;
pub mod tunnel;

/// The Docker client the tunnel gives ([`tunnel::DockerTunnel::docker`]).
pub use bollard;

pub use inventory::{Inventory, InventoryError};
pub use report::{HostReport, HostStatus, Report, Status, StepReport};

use network::{Ctx, Member, Provider};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hosts at once.
    pub parallel: usize,
    /// Check only: connect, read facts, say what would be done.
    pub dry_run: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            parallel: 10,
            dry_run: false,
        }
    }
}

/// Progress, as it happens.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step that may take a while has started.
    Begin { host: String, step: String },
    /// A step has ended.
    Step { host: String, report: StepReport },
}

/// The steps that get a `Begin` event (the others take a few milliseconds).
const SLOW: [&str; 6] = [
    "apt-lock",
    "docker",
    "wireguard",
    "tailscale",
    "mesh",
    "swarm",
];

type Sink = Arc<dyn Fn(Event) + Send + Sync>;

struct HostRun {
    index: usize,
    host: inventory::Host,
    remote: Option<ssh::Remote>,
    facts: Option<steps::Facts>,
    steps: Vec<StepReport>,
    error: Option<String>,
    public_key: Option<String>,
    mesh_ip: Option<String>,
    /// The SSH user was just added to the docker group: reconnect to use it.
    reconnect: bool,
    /// Some step would change something (dry run).
    pending: bool,
}

impl HostRun {
    fn begin(&self, sink: &Sink, step: &str) -> Instant {
        if SLOW.contains(&step) {
            sink(Event::Begin {
                host: self.host.name.clone(),
                step: step.to_owned(),
            });
        }
        Instant::now()
    }

    /// Records a step's outcome; `None` when it failed (the host stops there).
    fn end<T>(
        &mut self,
        sink: &Sink,
        step: &str,
        t: Instant,
        r: steps::StepResult<T>,
    ) -> Option<T> {
        let (status, detail, value) = match r {
            Ok((s, d, v)) => (s, d, Some(v)),
            Err(e) => (Status::Failed, e, None),
        };
        if status == Status::Failed {
            self.error = Some(format!("{step}: {detail}"));
        }
        if status == Status::Changed {
            self.pending = true;
        }
        let report = StepReport {
            step: step.to_owned(),
            status,
            detail: (!detail.is_empty()).then_some(detail),
            duration_ms: t.elapsed().as_millis() as u64,
        };
        sink(Event::Step {
            host: self.host.name.clone(),
            report: report.clone(),
        });
        self.steps.push(report);
        value
    }

    fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn member(&self, inv: &Inventory) -> Member {
        Member {
            name: self.host.name.clone(),
            endpoint: self.host.address.clone(),
            mesh_ip: self
                .mesh_ip
                .clone()
                .or_else(|| inv.mesh_address(self.index).map(|(ip, _)| ip.to_string())),
            public_key: self.public_key.clone(),
        }
    }
}

/// Runs one step on the host: `on_host!(remote, |r| async-expression using r)`.
/// A master idle for long (a host waits between rounds while others install
/// Docker; ssh closes an idle master after [`ssh::IDLE_EXIT`]) is replaced
/// first. When the connection is lost during the step, chora reconnects and
/// runs the step once more: it is check → act → verify, so that is safe. A
/// host-key or authentication failure on reconnecting is not retried
/// (`ssh::connect` retries only connection faults). (A macro: an async closure
/// borrowing the host's facts is not `Send` for every lifetime.)
macro_rules! on_host {
    ($remote:expr, |$r:ident| $step:expr) => {{
        let remote: &mut ssh::Remote = $remote;
        match remote.freshen().await {
            Err(e) => Err(format!("reconnecting: {e}")),
            Ok(()) => {
                let first = {
                    let $r: &ssh::Remote = &*remote;
                    $step.await
                };
                match first {
                    Err(e) if remote.lost() => {
                        tracing::debug!(host = %remote.host.name, error = %e, "ssh: reconnecting to run the step again");
                        match remote.reconnect().await {
                            Err(c) => Err(format!("{e}; reconnecting: {c}")),
                            Ok(()) => {
                                let $r: &ssh::Remote = &*remote;
                                $step.await.map(|(s, d, v)| {
                                    (s, format!("{d} (run again on a new connection: {e})"), v)
                                })
                            }
                        }
                    }
                    r => r,
                }
            }
        }
    }};
}

/// Round 1 for one host.
async fn prepare(
    mut run: HostRun,
    inv: Arc<Inventory>,
    provider: Option<Arc<dyn Provider>>,
    opts: Options,
    sink: Sink,
) -> HostRun {
    let t = run.begin(&sink, "ssh");
    let r = ssh::connect(&run.host, &inv.ssh).await;
    let r = r.map(|remote| {
        let d = format!("{}@{}:{}", run.host.user, run.host.address, run.host.port);
        (Status::Ok, d, remote)
    });
    let r = r.map_err(|e| e.to_string());
    run.remote = run.end(&sink, "ssh", t, r);
    let Some(mut remote) = run.remote.take() else {
        return run;
    };
    let t = run.begin(&sink, "facts");
    let r = on_host!(&mut remote, |r| steps::facts(r));
    run.facts = run.end(&sink, "facts", t, r);
    if let Some(facts) = run.facts.clone() {
        let t = run.begin(&sink, "apt-lock");
        let r = on_host!(&mut remote, |r| steps::apt_lock(
            r,
            inv.apt_lock_timeout,
            opts.dry_run
        ));
        if run.end(&sink, "apt-lock", t, r).is_some() {
            let t = run.begin(&sink, "docker");
            let r = on_host!(&mut remote, |r| steps::docker(
                r,
                &facts,
                inv.docker,
                inv.apt_lock_timeout,
                opts.dry_run
            ));
            if let Some(regroup) = run.end(&sink, "docker", t, r) {
                run.reconnect = regroup;
                if let Some(p) = &provider {
                    let t = run.begin(&sink, p.name());
                    let r = on_host!(&mut remote, |r| async {
                        let ctx = Ctx {
                            remote: r,
                            facts: &facts,
                            lock_timeout: inv.apt_lock_timeout,
                            dry: opts.dry_run,
                        };
                        p.install(&ctx).await
                    });
                    if let Some(key) = run.end(&sink, p.name(), t, r) {
                        run.public_key = key;
                    }
                }
            }
        }
    }
    run.remote = Some(remote);
    run
}

/// Round 2 for one host: join the mesh with `members` (the hosts that got
/// through round 1).
async fn join(
    mut run: HostRun,
    inv: Arc<Inventory>,
    provider: Arc<dyn Provider>,
    members: Arc<Vec<Member>>,
    opts: Options,
    sink: Sink,
) -> HostRun {
    let (Some(mut remote), Some(facts)) = (run.remote.take(), run.facts.clone()) else {
        return run;
    };
    let me = run.member(&inv);
    let t = run.begin(&sink, "mesh");
    let r = on_host!(&mut remote, |r| async {
        let ctx = Ctx {
            remote: r,
            facts: &facts,
            lock_timeout: inv.apt_lock_timeout,
            dry: opts.dry_run,
        };
        provider.join(&ctx, &me, &members).await
    });
    if let Some(ip) = run.end(&sink, "mesh", t, r) {
        run.mesh_ip = ip.or(me.mesh_ip);
    }
    run.remote = Some(remote);
    run
}

/// Round 3 for one host: Docker runs a container, `peers` (name, mesh address) answer a ping.
async fn verify(
    mut run: HostRun,
    peers: Arc<Vec<(String, String)>>,
    opts: Options,
    sink: Sink,
) -> HostRun {
    let Some(mut remote) = run.remote.take() else {
        return run;
    };
    let t = run.begin(&sink, "verify");
    if opts.dry_run && run.pending {
        run.end(
            &sink,
            "verify",
            t,
            Ok((
                Status::Changed,
                "would verify after the changes above".into(),
                (),
            )),
        );
        run.remote = Some(remote);
        return run;
    }
    if run.reconnect {
        // Group membership is read at login: a new connection sees `docker`.
        if let Err(e) = remote.reconnect().await {
            run.end::<()>(&sink, "verify", t, Err(format!("reconnecting: {e}")));
            return run;
        }
    }
    let mine: Vec<(String, String)> = peers
        .iter()
        .filter(|(n, _)| *n != run.host.name)
        .cloned()
        .collect();
    let r = on_host!(&mut remote, |r| steps::verify(r, &mine));
    run.end(&sink, "verify", t, r);
    run.remote = Some(remote);
    run
}

/// Runs `f` on every run in `runs` that is still ok, at most `parallel` at once.
async fn round<F, Fut>(runs: Vec<HostRun>, parallel: usize, f: F) -> Vec<HostRun>
where
    F: Fn(HostRun) -> Fut,
    Fut: std::future::Future<Output = HostRun> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let mut done = Vec::new();
    for run in runs {
        if !run.ok() {
            done.push(run);
            continue;
        }
        let fut = f(run);
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            fut.await
        });
    }
    while let Some(r) = set.join_next().await {
        done.push(r.expect("a host task panicked"));
    }
    done.sort_by_key(|r| r.index);
    done
}

/// Round 4: the hosts still ok form the swarm (see [`swarm`]). A host with
/// changes still pending (dry run) is only told what would happen.
async fn form_swarm(
    runs: &mut [HostRun],
    inv: &Inventory,
    provider: &dyn Provider,
    opts: &Options,
    sink: &Sink,
) {
    let started = Instant::now();
    for run in runs.iter().filter(|r| r.ok()) {
        run.begin(sink, "swarm");
    }
    // Masters idle since verify may be stale; pending hosts wait for the changes.
    let mut ready = Vec::new();
    for (k, run) in runs.iter_mut().enumerate() {
        if !run.ok() {
            continue;
        }
        if opts.dry_run && run.pending {
            let role = if inv.is_manager(run.index) {
                "manager"
            } else {
                "worker"
            };
            let r = Ok((
                Status::Changed,
                format!("would join the swarm as a {role} after the changes above"),
                (),
            ));
            run.end(sink, "swarm", started, r);
            continue;
        }
        let Some(remote) = run.remote.as_mut() else {
            continue;
        };
        if let Err(e) = remote.freshen().await {
            run.end::<()>(sink, "swarm", started, Err(format!("reconnecting: {e}")));
            continue;
        }
        ready.push(k);
    }
    let (network, prefix) = inv
        .mesh_network()
        .expect("a swarm has a mesh (inventory.rs)");
    let mesh = swarm::decide::MeshNet { network, prefix };
    let settings = swarm::Settings {
        iface: provider.interface(),
        mesh_unit: provider.unit(),
        mesh,
        pool: swarm::address_pool(mesh),
        dry: opts.dry_run,
    };
    let mut members = Vec::new();
    let mut unknown = Vec::new();
    for &k in &ready {
        let run = &runs[k];
        match (run.remote.as_ref(), run.mesh_ip.clone()) {
            (Some(remote), Some(mesh_ip)) => members.push(swarm::Member {
                index: run.index,
                host: &run.host,
                remote,
                mesh_ip,
                manager: inv.is_manager(run.index),
            }),
            _ => unknown.push(k),
        }
    }
    let results = swarm::form(&members, &settings).await;
    let order: Vec<usize> = ready
        .iter()
        .copied()
        .filter(|k| !unknown.contains(k))
        .collect();
    drop(members);
    for (k, r) in order.into_iter().zip(results) {
        runs[k].end(sink, "swarm", started, r);
    }
    for k in unknown {
        runs[k].end::<()>(
            sink,
            "swarm",
            started,
            Err("its mesh address is not known".into()),
        );
    }
}

/// Prepares every host of the inventory (or, with `dry_run`, says what it would
/// do). Never fails as a whole: the report says what happened to each host.
pub async fn bootstrap(
    inv: &Inventory,
    opts: &Options,
    on: impl Fn(Event) + Send + Sync + 'static,
) -> Report {
    let sink: Sink = Arc::new(on);
    let inv = Arc::new(inv.clone());
    let provider: Option<Arc<dyn Provider>> = network::provider(&inv).map(Arc::from);
    let runs: Vec<HostRun> = inv
        .hosts
        .iter()
        .enumerate()
        .map(|(index, host)| HostRun {
            index,
            host: host.clone(),
            remote: None,
            facts: None,
            steps: Vec::new(),
            error: None,
            public_key: None,
            mesh_ip: None,
            reconnect: false,
            pending: false,
        })
        .collect();
    let mut runs = round(runs, opts.parallel, |run| {
        prepare(
            run,
            inv.clone(),
            provider.clone(),
            opts.clone(),
            sink.clone(),
        )
    })
    .await;
    if let Some(p) = &provider {
        let members: Arc<Vec<Member>> = Arc::new(
            runs.iter()
                .filter(|r| r.ok())
                .map(|r| r.member(&inv))
                .collect(),
        );
        runs = round(runs, opts.parallel, |run| {
            join(
                run,
                inv.clone(),
                p.clone(),
                members.clone(),
                opts.clone(),
                sink.clone(),
            )
        })
        .await;
    }
    let peers: Arc<Vec<(String, String)>> = Arc::new(
        runs.iter()
            .filter(|r| r.ok() && provider.is_some())
            .filter_map(|r| r.mesh_ip.clone().map(|ip| (r.host.name.clone(), ip)))
            .collect(),
    );
    let mut runs = round(runs, opts.parallel, |run| {
        verify(run, peers.clone(), opts.clone(), sink.clone())
    })
    .await;
    if inv.swarm.is_some()
        && let Some(p) = &provider
    {
        form_swarm(&mut runs, &inv, p.as_ref(), opts, &sink).await;
    }
    let mut hosts = Vec::new();
    for mut run in runs {
        if let Some(r) = run.remote.take() {
            r.close().await;
        }
        hosts.push(HostReport {
            name: run.host.name.clone(),
            address: run.host.address.clone(),
            status: if run.ok() {
                HostStatus::Ready
            } else {
                HostStatus::Failed
            },
            error: run.error.clone(),
            steps: run.steps,
        });
    }
    Report::new(hosts)
}

/// Re-checks every host without changing anything: a step that would change
/// something is reported `failed` ("not done: …"), so a host is `ready` only
/// when everything is in place.
pub async fn status(inv: &Inventory, parallel: usize) -> Report {
    let opts = Options {
        parallel,
        dry_run: true,
    };
    let mut report = bootstrap(inv, &opts, |_| {}).await;
    for h in &mut report.hosts {
        for s in &mut h.steps {
            if s.status == Status::Changed {
                s.status = Status::Failed;
                let d = s.detail.take().unwrap_or_default();
                s.detail = Some(format!("not done: {}", d.trim_start_matches("would ")));
                if h.error.is_none() && s.step != "verify" {
                    h.error = Some(format!(
                        "{}: {}",
                        s.step,
                        s.detail.clone().unwrap_or_default()
                    ));
                }
            }
        }
        if h.steps.iter().any(|s| s.status == Status::Failed) {
            h.status = HostStatus::Failed;
            if h.error.is_none() {
                h.error = Some("not verified".into());
            }
        }
    }
    Report::new(report.hosts)
}
