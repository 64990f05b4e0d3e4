//! The bootstrap lock in etcd, for runs on different machines against one
//! cluster (`etcd.endpoints` in the config). It is a key on a lease: it records
//! who holds it, since when and why; it disappears when its holder dies (the
//! lease is no longer kept alive); and its creation revision is a fencing token
//! that grows with every new holder, which the orchestrator checks on deploys so
//! that a stale holder cannot deploy after a newer one took over.

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
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
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://").to_owned())
        .collect();
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    let mut client = Client::connect(eps, Some(opts))
        .await
        .map_err(|e| format!("cannot reach etcd at {}: {e}", endpoints.join(",")))?;
    let lease = client
        .lease_grant(LEASE_TTL, None)
        .await
        .map_err(|e| e.to_string())?
        .id();
    let holder = serde_json::json!({
        "host": crate::proc::hostname(),
        "pid": std::process::id(),
        "since": chora_api::bootstrap_state::now(),
        "command": what,
        "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
    })
    .to_string();
    let txn = Txn::new()
        .when(vec![Compare::create_revision(KEY, CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::put(
            KEY,
            holder,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else(vec![TxnOp::get(KEY, None)]);
    let resp = client.txn(txn).await.map_err(|e| e.to_string())?;
    if !resp.succeeded() {
        let _ = client.lease_revoke(lease).await;
        let holder = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| kv.value_str().unwrap_or("").to_owned()),
                _ => None,
            })
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&holder).unwrap_or_default();
        return Err(format!(
            "`{}` on {} (pid {}, since {}, in {}) holds the bootstrap lock in etcd ({KEY}); it is released when that run ends or within {LEASE_TTL} s of its death",
            v["command"].as_str().unwrap_or("chora bootstrap"),
            v["host"].as_str().unwrap_or("?"),
            v["pid"],
            v["since"].as_str().unwrap_or("?"),
            v["cwd"].as_str().unwrap_or("?"),
        ));
    }
    let token = resp.header().map(|h| h.revision()).unwrap_or(0) as u64;
    let mut c = client.clone();
    let keeper = tokio::spawn(async move {
        let Ok((mut k, mut stream)) = c.lease_keep_alive(lease).await else {
            return;
        };
        loop {
            if k.keep_alive().await.is_err() || stream.message().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs((LEASE_TTL / 3).max(1) as u64)).await;
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
    pub async fn release(mut self) {
        self.keeper.abort();
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        // Without a release, the lease (and the key) expire within LEASE_TTL.
        self.keeper.abort();
    }
}
