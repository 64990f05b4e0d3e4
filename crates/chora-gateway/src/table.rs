//! The route table: which services exist and where their `up` instances listen.
//! It follows the Manifest with blocking reads (no registry call per request) and
//! keeps serving the last table it had while the registry is unreachable.

use crate::balance::Load;
use axum::http::HeaderValue;
use chora_api::ManifestClient;
use chora_api::manifest::{Instance, ListFilter, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where an `up` instance's REST interface listens.
pub struct Upstream {
    /// Its URL as registered, without a trailing `/` (`http://127.0.0.1:8800`).
    pub base: String,
    /// Where requests for it go; `Err` says why the URL is not usable (only
    /// `http://` is).
    pub target: Result<Target, String>,
    /// Its requests outstanding and its ejection, carried over by `base` when
    /// the table is rebuilt (one per URL, whichever services list it).
    pub load: Arc<Load>,
}

/// A usable upstream URL, taken apart once when the table is built.
pub struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// The same, as the `Host` header.
    pub host: HeaderValue,
    /// The URL's path, prefixed to every proxied path (usually empty).
    pub prefix: String,
}

impl Upstream {
    pub fn new(url: &str) -> Upstream {
        let base = url.trim_end_matches('/').to_owned();
        let target = base
            .parse::<axum::http::Uri>()
            .map_err(|e| e.to_string())
            .and_then(|u| {
                if u.scheme_str() != Some("http") {
                    return Err("only http:// upstreams are supported".to_owned());
                }
                let auth = u.authority().ok_or("no host in the URL")?;
                let authority = format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80));
                Ok(Target {
                    host: HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
                    authority,
                    prefix: u.path().trim_end_matches('/').to_owned(),
                })
            });
        Upstream {
            base,
            target,
            load: Arc::default(),
        }
    }
}

/// One service's routes.
pub struct Routes {
    /// Its `up` instances.
    pub up: Vec<Upstream>,
    /// Where the round-robin among equally loaded upstreams starts, carried
    /// over when the table is rebuilt.
    pub next: Arc<AtomicUsize>,
}

#[derive(Default)]
pub struct Table {
    pub services: HashMap<String, Routes>,
}

impl Table {
    /// The table for `list`. Services of the old table that have no instance any
    /// more stay, with no route: they are known but down (503), not unknown (404).
    /// An upstream already in the old table keeps its [`Load`].
    fn build(list: &[Instance], old: &Table) -> Table {
        let loads: HashMap<&str, &Arc<Load>> = old
            .services
            .values()
            .flat_map(|r| &r.up)
            .map(|u| (u.base.as_str(), &u.load))
            .collect();
        let mut services: HashMap<String, Routes> = old
            .services
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    Routes {
                        up: Vec::new(),
                        next: r.next.clone(),
                    },
                )
            })
            .collect();
        for i in list {
            let r = services.entry(i.name.clone()).or_insert_with(|| Routes {
                up: Vec::new(),
                next: Default::default(),
            });
            if i.status == Status::Up
                && let Some(url) = i.rest_url()
            {
                let mut u = Upstream::new(url);
                if let Some(&load) = loads.get(u.base.as_str()) {
                    u.load = load.clone();
                }
                r.up.push(u);
            }
        }
        Table { services }
    }
}

/// The shared, swappable table.
#[derive(Default)]
pub struct Shared {
    table: RwLock<Arc<Table>>,
    /// False while the registry cannot be reached (the table is the last known).
    pub connected: AtomicBool,
    /// True once a first table was loaded.
    pub loaded: AtomicBool,
}

impl Shared {
    pub fn get(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, t: Table) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }
}

/// Follows the Manifest forever (until the task is aborted).
pub async fn follow(client: ManifestClient, shared: Arc<Shared>) {
    let mut index: Option<u64> = None;
    let mut delay = Duration::from_millis(50);
    // With several nodes, a read parked on one that pauses (it never answers)
    // is given up soon after its wait: a short wait keeps the table current.
    let wait = if client.urls().len() > 1 {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    };
    loop {
        let block = index.map(|i| (i, wait));
        match client.watch(&ListFilter::default(), block).await {
            Ok((list, new_index)) => {
                let old = shared.get();
                shared.set(Table::build(&list, &old));
                if !shared.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        instances = list.len(),
                        "route table loaded from the Manifest"
                    );
                }
                shared.loaded.store(true, Ordering::Relaxed);
                index = Some(new_index);
                delay = Duration::from_millis(50);
            }
            Err(e) => {
                if shared.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the Manifest is unreachable; serving the last known routes");
                }
                // The registry may come back as a new incarnation: read afresh.
                index = None;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Table, Upstream};
    use chora_api::manifest::{Instance, Status};
    use std::sync::Arc;

    fn instance(name: &str, id: &str, url: &str, status: Status) -> Instance {
        Instance {
            name: name.into(),
            id: id.into(),
            version: "1".into(),
            interfaces: [("REST".to_owned(), url.to_owned())].into(),
            metadata: Default::default(),
            status,
            last_heartbeat: String::new(),
            registered_at: String::new(),
        }
    }

    #[test]
    fn a_rebuilt_table_keeps_each_upstreams_load_and_the_round_robin_position() {
        let a = instance("svc", "a", "http://127.0.0.1:1/", Status::Up);
        let b = instance("svc", "b", "http://127.0.0.1:2", Status::Up);
        let t1 = Table::build(&[a.clone(), b.clone()], &Table::default());
        let svc = &t1.services["svc"];
        let (load_a, load_b) = (svc.up[0].load.clone(), svc.up[1].load.clone());
        assert!(!Arc::ptr_eq(&load_a, &load_b));
        svc.next.store(7, std::sync::atomic::Ordering::Relaxed);

        // b is unhealthy, c comes; a keeps its state (its URL without the `/`).
        let mut b_down = b;
        b_down.status = Status::Unhealthy;
        let a2 = instance("svc", "a", "http://127.0.0.1:1", Status::Up);
        let c = instance("svc", "c", "http://127.0.0.1:3", Status::Up);
        let t2 = Table::build(&[a2, b_down, c], &t1);
        let svc = &t2.services["svc"];
        assert_eq!(svc.up.len(), 2);
        assert!(Arc::ptr_eq(&svc.up[0].load, &load_a));
        assert!(!Arc::ptr_eq(&svc.up[1].load, &load_a));
        assert!(!Arc::ptr_eq(&svc.up[1].load, &load_b));
        assert_eq!(svc.next.load(std::sync::atomic::Ordering::Relaxed), 7);

        // A request in flight across the rebuild still counts.
        let _pending = load_a.begin();
        let t3 = Table::build(&[a], &t2);
        assert_eq!(t3.services["svc"].up[0].load.outstanding(), 1);
    }

    #[test]
    fn an_upstream_url_is_taken_apart_once() {
        let u = Upstream::new("http://10.0.0.7:8800/base/");
        assert_eq!(u.base, "http://10.0.0.7:8800/base");
        let t = u.target.unwrap();
        assert_eq!(t.authority, "10.0.0.7:8800");
        assert_eq!(t.host, "10.0.0.7:8800");
        assert_eq!(t.prefix, "/base");

        let t = Upstream::new("http://svc.local").target.unwrap();
        assert_eq!(
            (t.authority.as_str(), t.prefix.as_str()),
            ("svc.local:80", "")
        );

        let e = Upstream::new("https://svc.local:443").target.err().unwrap();
        assert!(e.contains("only http://"), "{e}");
        assert!(Upstream::new("not a url").target.is_err());
    }
}
