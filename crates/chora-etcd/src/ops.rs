//! etcd's operations: reads, transactions, leases. Each is one call through
//! `Client::call` (failover, and what an error says; see the crate doc).

use crate::wire::{
    LeaseGrantResponse, LeaseKeepAliveResponse, RangeResponse, StreamLine, TxnResponse, b64,
    prefix_end,
};
use crate::{Client, Error, Failure};
use serde::de::DeserializeOwned;

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Puts `value` under `key`, attached to `lease` (0: none).
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

impl Op {
    fn json(&self) -> serde_json::Value {
        match self {
            Op::Put { key, value, lease } => serde_json::json!({"request_put": {
                "key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string(),
            }}),
            Op::Delete { key } => {
                serde_json::json!({"request_delete_range": {"key": b64(key.as_bytes())}})
            }
            Op::Get { key } => serde_json::json!({"request_range": {"key": b64(key.as_bytes())}}),
        }
    }
}

/// A transaction's condition: the key's create revision equals this one (0:
/// the key does not exist).
#[derive(Debug, Clone)]
pub struct CreatedAt {
    pub key: String,
    pub revision: i64,
}

impl Client {
    async fn unary<T: DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, Error> {
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        self.call(path, body, |bytes, url| {
            serde_json::from_slice(bytes)
                .map_err(|e| Failure::Unknown(format!("{url}: unexpected answer ({e})")))
        })
        .await
    }

    /// The key `key`, or with `prefix` every key that starts with it.
    pub async fn range(&self, key: &str, prefix: bool) -> Result<RangeResponse, Error> {
        let mut body = serde_json::json!({"key": b64(key.as_bytes())});
        if prefix {
            body["range_end"] = b64(&prefix_end(key.as_bytes())).into();
        }
        self.unary("/v3/kv/range", body).await
    }

    /// How many keys start with `prefix` (a linearizable read: a member
    /// that answers is part of a working cluster).
    pub async fn count(&self, prefix: &str) -> Result<i64, Error> {
        let body = serde_json::json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "count_only": true,
        });
        let r: RangeResponse = self.unary("/v3/kv/range", body).await?;
        Ok(r.count)
    }

    /// A transaction: when every condition holds, `success`, else `failure`.
    pub async fn txn(
        &self,
        when: &[CreatedAt],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResponse, Error> {
        let compare: Vec<serde_json::Value> = when
            .iter()
            .map(|c| {
                serde_json::json!({"target": "CREATE", "result": "EQUAL",
                    "key": b64(c.key.as_bytes()), "create_revision": c.revision.to_string()})
            })
            .collect();
        let body = serde_json::json!({
            "compare": compare,
            "success": success.iter().map(Op::json).collect::<Vec<_>>(),
            "failure": failure.iter().map(Op::json).collect::<Vec<_>>(),
        });
        self.unary("/v3/kv/txn", body).await
    }

    /// A new lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, Error> {
        let r: LeaseGrantResponse = self
            .unary(
                "/v3/lease/grant",
                serde_json::json!({"TTL": ttl.to_string()}),
            )
            .await?;
        if !r.error.is_empty() || r.id == 0 {
            return Err(Error::Refused {
                code: 0,
                message: format!("no lease granted: {}", r.error),
            });
        }
        Ok(r.id)
    }

    /// Revokes a lease (deleting every key on it): true when it was there,
    /// false when it was already gone.
    pub async fn revoke(&self, lease: i64) -> Result<bool, Error> {
        let body = serde_json::json!({"ID": lease.to_string()});
        match self
            .unary::<serde_json::Value>("/v3/lease/revoke", body)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews leases, all in one request (the gateway's keep-alive stream
    /// takes one message per lease and answers each); each lease's TTL
    /// left, 0 for one that is gone. Every lease asked is in the answer.
    pub async fn keep_alive(&self, leases: &[i64]) -> Result<Vec<(i64, i64)>, Error> {
        let mut body = Vec::with_capacity(leases.len() * 32);
        for l in leases {
            body.extend_from_slice(format!("{{\"ID\":\"{l}\"}}\n").as_bytes());
        }
        self.call("/v3/lease/keepalive", body, |bytes, url| {
            let mut out = Vec::with_capacity(leases.len());
            for line in bytes.split(|&b| b == b'\n') {
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let msg: StreamLine<LeaseKeepAliveResponse> = serde_json::from_slice(line)
                    .map_err(|e| Failure::Unknown(format!("{url}: unexpected answer ({e})")))?;
                match (msg.result, msg.error) {
                    (Some(r), _) => out.push((r.id, r.ttl)),
                    (None, Some(e)) => return Err(Failure::from_etcd(e.grpc_code, e.message)),
                    (None, None) => {}
                }
            }
            if out.len() != leases.len() {
                return Err(Failure::Unknown(format!(
                    "{url}: {} of {} renewals answered",
                    out.len(),
                    leases.len()
                )));
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn calls_fail_over_renew_in_one_request_and_say_when_nothing_happened() {
        if !chora_testkit::etcd_available("chora_etcd::calls_fail_over") {
            return;
        }
        let mut cluster = chora_testkit::EtcdCluster::start(1);
        let dead = format!("http://127.0.0.1:{}", chora_testkit::free_port());
        let client = Client::new(&[dead, cluster.urls()[0].clone()]).unwrap();

        // The first endpoint refuses: the call goes on to the second.
        let lease = client.grant(30).await.unwrap();
        let put = Op::Put {
            key: "/t/a".into(),
            value: b"1".to_vec(),
            lease,
        };
        let r = client.txn(&[], &[put], &[]).await.unwrap();
        assert!(r.header.revision > 0);
        let got = client.range("/t/", true).await.unwrap();
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(
            (got.kvs[0].key_str(), &got.kvs[0].value[..]),
            (Some("/t/a"), &b"1"[..])
        );
        assert_eq!(got.kvs[0].lease, lease);
        assert_eq!(client.count("/t/").await.unwrap(), 1);

        // One request renews several leases; a gone one says so.
        let renewed = client.keep_alive(&[lease, 12345, lease]).await.unwrap();
        assert_eq!(renewed.len(), 3);
        assert!(renewed[0].1 > 0 && renewed[2].1 > 0, "{renewed:?}");
        assert_eq!(renewed[1], (12345, 0));

        // A definite refusal is not a failure to reach etcd.
        let late = Op::Put {
            key: "/t/b".into(),
            value: b"1".to_vec(),
            lease: 12345,
        };
        let e = client.txn(&[], &[late], &[]).await.unwrap_err();
        assert!(e.is_not_found() && !e.may_have_happened(), "{e:?}");
        assert!(client.revoke(lease).await.unwrap());
        assert!(!client.revoke(lease).await.unwrap());

        // Nothing listens: known not to have happened, at once. (The first
        // call may meet a pooled connection the dead member closed: a request
        // written there may have been read, so that one may be unknown.)
        cluster.members[0].kill();
        let t = Instant::now();
        let _ = client.grant(30).await.unwrap_err();
        let e = client.grant(30).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        assert!(!e.may_have_happened());
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
