//! The bootstrap lock in etcd, for runs on different machines against one
//! cluster (`etcd.endpoints` in the config). It is a key on a lease: it records
//! who holds it, since when and why; it disappears when its holder dies (the
//! lease is no longer kept alive); and its creation revision is a fencing token
//! that grows with every new holder, which the orchestrator checks on deploys so
//! that a stale holder cannot deploy after a newer one took over. etcd is
//! reached through `chora_etcd`, as the registry reaches it.

use chora_etcd::{Client, CreatedAt, Op};
use std::time::Duration;

pub const KEY: &str = "/chora/locks/bootstrap";
/// Seconds the lock outlives a holder that died.
pub const LEASE_TTL: i64 = 10;

pub struct EtcdLock {
    client: Client,
    lease: i64,
    /// The fencing token: the revision at which this holder created the key.
    pub token: u64,
    keeper: tokio::task::JoinHandle<()>,
}

/// Takes the lock, or says who holds it.
pub async fn acquire(endpoints: &[String], what: &str) -> Result<EtcdLock, String> {
    let unreachable =
        |e: chora_etcd::Error| format!("cannot reach etcd at {}: {e}", endpoints.join(","));
    let client = Client::new(endpoints).map_err(unreachable)?;
    let lease = client.grant(LEASE_TTL).await.map_err(unreachable)?;
    let holder = serde_json::json!({
        "host": crate::proc::hostname(),
        "pid": std::process::id(),
        "since": chora_api::bootstrap_state::now(),
        "command": what,
        "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
    })
    .to_string();
    let resp = client
        .txn(
            &[CreatedAt {
                key: KEY.into(),
                revision: 0,
            }],
            &[Op::Put {
                key: KEY.into(),
                value: holder.into_bytes(),
                lease,
            }],
            &[Op::Get { key: KEY.into() }],
        )
        .await
        .map_err(unreachable)?;
    let created: i64 = if resp.succeeded {
        resp.header.revision
    } else {
        let kv = resp
            .responses
            .iter()
            .find_map(|r| r.response_range.as_ref())
            .and_then(|r| r.kvs.first());
        match kv {
            // Ours after all: an attempt of this same call whose answer was
            // lost took it, and the call was repeated.
            Some(kv) if kv.lease == lease => kv.create_revision,
            _ => {
                let _ = client.revoke(lease).await;
                let v: serde_json::Value = kv
                    .and_then(|kv| serde_json::from_slice(&kv.value).ok())
                    .unwrap_or_default();
                return Err(format!(
                    "`{}` on {} (pid {}, since {}, in {}) holds the bootstrap lock in etcd ({KEY}); it is released when that run ends or within {LEASE_TTL} s of its death",
                    v["command"].as_str().unwrap_or("chora bootstrap"),
                    v["host"].as_str().unwrap_or("?"),
                    v["pid"],
                    v["since"].as_str().unwrap_or("?"),
                    v["cwd"].as_str().unwrap_or("?"),
                ));
            }
        }
    };
    let token = created as u64;
    let c = client.clone();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs((LEASE_TTL / 3).max(1) as u64)).await;
            match c.keep_alive(&[lease]).await {
                Ok(ttls) if ttls.iter().all(|&(_, ttl)| ttl > 0) => {}
                // Gone: the lock is lost (the orchestrator's fencing says so).
                Ok(_) => return,
                // Unreachable for now: the lease may still outlive this.
                Err(_) => {}
            }
        }
    });
    Ok(EtcdLock {
        client,
        lease,
        token,
        keeper,
    })
}

impl EtcdLock {
    /// Releases the lock (the key goes with its lease).
    pub async fn release(self) {
        self.keeper.abort();
        let _ = self.client.revoke(self.lease).await;
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        // Without a release, the lease (and the key) expire within LEASE_TTL.
        self.keeper.abort();
    }
}
