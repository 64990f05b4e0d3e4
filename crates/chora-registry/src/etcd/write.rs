//! Registrations and deregistrations, and the writes etcd did not confirm
//! (DESIGN §10).
//!
//! A write is answered with an error only when it is known not to have
//! happened. [`chora_etcd`] says which failed calls may have happened: none
//! when no endpoint took the request (every one refused the connection, or
//! etcd answered that it did nothing), so a write during a whole-cluster
//! outage answers 503 `storage_unavailable` at once (DESIGN §15: within 1 s).
//! A call that was sent and not answered (a timeout during an election, a
//! member lost mid-request) may still be applied, so:
//!
//! - **Registration.** Every registration writes under two leases granted for
//!   it alone, a fresh instance lease and a fresh alive lease, even when the
//!   instance is known: no write ever takes over another write's lease, so
//!   revoking a write's own leases can only ever delete that write. (Taking
//!   over the known instance lease lost an acknowledged registration: node A's
//!   write was applied but its answer lost while A was paused, a client's retry
//!   on node B re-registered the instance under A's lease, and A, reading B's
//!   write back, fenced its own by revoking that lease.) A lease grant that
//!   fails is harmless (nothing was written yet): 503 at once. When the write itself may
//!   have happened, the node reads the instance key back for up to [`SETTLE`]:
//!   if it holds this write (its alive lease is the fresh one) the registration
//!   is answered as a success. If not, the node revokes the fresh leases, which
//!   *fences* the write: etcd refuses a put on a revoked lease, so the lost
//!   write can never be applied later (had it been applied between the read and
//!   the revocation, the revocation deletes what it wrote). Only then is it
//!   answered 503. So a registration answered with an error does not exist
//!   afterwards, with one exception: when etcd stays unreachable for the whole
//!   [`SETTLE`], neither the read nor the revocation gets through, and the node
//!   answers 503 `write_outcome_unknown`. If that write was applied, nobody
//!   renews its fresh lease, so the instance turns `unhealthy` after twice the
//!   heartbeat interval and is gone after the TTL (unless its owner, retrying
//!   with the same id, registers it for real).
//! - **Deregistration** is idempotent: when its outcome is unknown the node
//!   sends the delete again until etcd confirms it, for up to [`SETTLE`]. Past
//!   that, or as soon as no endpoint takes it (the cluster is gone), it
//!   answers 503 and the delete may still be applied later, which is what its
//!   caller wanted anyway (and repeats).
//! - A write etcd confirmed is answered as a success even when this node's
//!   watch does not deliver it in time (it is durable); the node then reads
//!   everything again.

use super::{Envelope, EtcdStore, alive_key, svc_key};
use crate::catalog::Record;
use crate::store::StoreError;
use chora_api::manifest::{Instance, Status};
use chora_etcd::{Error, Op};
use std::time::{Duration, SystemTime};

/// How long a node tries to learn the outcome of a write etcd did not confirm.
pub const SETTLE: Duration = Duration::from_secs(3);

/// How [`settle`] treats a try that no endpoint took.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WhenUnreachable {
    /// Try again: the outcome must be found out (a registration's read-back).
    Retry,
    /// Stop: answering an error is harmless (a delete, which its caller
    /// repeats), and the cluster is gone.
    GiveUp,
}

/// Runs a call that is safe to repeat until etcd answers it (a result, or a
/// definite refusal), for up to [`SETTLE`], backing off from 50 ms to 500 ms
/// between tries.
async fn settle<T, F, Fut>(unreachable: WhenUnreachable, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut delay = Duration::from_millis(50);
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e @ Error::Refused { .. })) => return Err(e),
            Ok(Err(e @ Error::Unavailable(_))) if unreachable == WhenUnreachable::GiveUp => {
                return Err(e);
            }
            Ok(Err(e)) if tokio::time::Instant::now() + delay >= deadline => return Err(e),
            Ok(Err(_)) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(_) => return Err(Error::Unknown(format!("no answer within {SETTLE:?}"))),
        }
    }
}

/// What a node learnt of a registration etcd did not confirm.
enum Outcome {
    /// It was applied, at this revision.
    Happened(u64),
    /// It was not, and never will be (its fresh leases are revoked).
    Fenced,
    /// etcd did not answer long enough to tell.
    Unknown,
}

impl EtcdStore {
    /// A lease. (A grant whose answer was lost leaves an unused lease behind;
    /// it expires.)
    pub(super) async fn grant(&self, ttl: i64) -> Result<i64, StoreError> {
        self.client
            .grant(ttl)
            .await
            .map_err(|e| self.unavailable(&e))
    }

    /// Writes both keys of an instance. [`Error::may_have_happened`] says
    /// whether an error leaves the outcome unknown.
    pub(super) async fn put_both(&self, env: &Envelope) -> Result<u64, Error> {
        let r = &env.record;
        let value = serde_json::to_vec(env).expect("envelopes serialize");
        let ops = [
            Op::Put {
                key: svc_key(&r.name, &r.id),
                value,
                lease: env.lease,
            },
            Op::Put {
                key: alive_key(&r.name, &r.id),
                value: b"1".to_vec(),
                lease: env.alive_lease,
            },
        ];
        let resp = self.client.txn(&[], &ops, &[]).await?;
        Ok(resp.header.revision as u64)
    }

    /// Learns the outcome of a registration etcd did not confirm: reads the
    /// instance back; when it does not hold this write, revokes the write's
    /// fresh leases so that it can never be applied. Keeps trying for
    /// [`SETTLE`] while etcd does not answer.
    async fn settle_put(&self, env: &Envelope, fresh: &[i64]) -> Outcome {
        let key = svc_key(&env.record.name, &env.record.id);
        let Ok(resp) = settle(WhenUnreachable::Retry, || self.client.range(&key, false)).await
        else {
            return Outcome::Unknown;
        };
        let ours = resp.kvs.first().and_then(|kv| {
            let stored = serde_json::from_slice::<Envelope>(&kv.value).ok()?;
            (stored.alive_lease == env.alive_lease).then_some(kv.mod_revision as u64)
        });
        if let Some(rev) = ours {
            tracing::info!(instance = %env.record.id, "the registration did happen");
            return Outcome::Happened(rev);
        }
        for &lease in fresh {
            // Already gone (`Ok(false)`): it can hold nothing either.
            if settle(WhenUnreachable::Retry, || self.client.revoke(lease))
                .await
                .is_err()
            {
                return Outcome::Unknown;
            }
        }
        Outcome::Fenced
    }

    /// A registration (see the module doc).
    pub(super) async fn put_instance(
        &self,
        mut record: Record,
    ) -> Result<(Instance, bool), StoreError> {
        let known = self.envelope(&record.name, &record.id);
        let created = known.is_none();
        // Both leases are this write's alone: they fence it should its
        // outcome be unknown (see the module doc). Both at once: one round
        // trip to etcd, not two.
        let (lease, alive_lease) = tokio::join!(self.grant(self.ttl), self.grant(self.alive_ttl));
        let (lease, alive_lease) = (lease?, alive_lease?);
        if let Some(env) = &known {
            record.registered_at_ms = env.record.registered_at_ms;
        }
        let env = Envelope {
            record: record.clone(),
            lease,
            alive_lease,
            reported: Status::Up,
        };
        let rev = match self.put_both(&env).await {
            Ok(rev) => rev,
            Err(e) if !e.may_have_happened() => return Err(self.unavailable(&e)),
            Err(e) => {
                tracing::warn!(
                    instance = %record.id,
                    error = %e,
                    "etcd did not confirm a registration; finding out whether it happened"
                );
                match self.settle_put(&env, &[lease, alive_lease]).await {
                    Outcome::Happened(rev) => rev,
                    Outcome::Fenced => return Err(self.unavailable(&e)),
                    Outcome::Unknown => {
                        tracing::warn!(
                            instance = %record.id,
                            "the outcome of a registration is unknown; if it happened, its leases expire it"
                        );
                        return Err(StoreError::Unknown(format!(
                            "etcd at {} unreachable: {e}",
                            self.endpoints
                        )));
                    }
                }
            }
        };
        if let Some(old) = known {
            // Replaced by the fresh ones; they expire with nothing on them.
            self.forget(&[old.lease, old.alive_lease]);
        }
        self.applied(rev).await;
        Ok((record.into_instance(Status::Up, SystemTime::now()), created))
    }

    /// A deregistration (see the module doc).
    pub(super) async fn delete_instance(&self, name: &str, id: &str) -> Result<(), StoreError> {
        let ops = [
            Op::Delete {
                key: svc_key(name, id),
            },
            Op::Delete {
                key: alive_key(name, id),
            },
        ];
        let known = self.envelope(name, id);
        if let Some(env) = &known {
            // No heartbeat answered from memory once the delete is sent.
            self.forget(&[env.lease, env.alive_lease]);
        }
        let send = || self.client.txn(&[], &ops, &[]);
        let resp = match send().await {
            Ok(resp) => resp,
            Err(e) if !e.may_have_happened() => return Err(self.unavailable(&e)),
            // The delete is idempotent: sending it again until etcd
            // confirms it is how to find out (see the module doc).
            Err(e) => settle(WhenUnreachable::GiveUp, send)
                .await
                .map_err(|_| self.unavailable(&e))?,
        };
        if let Some(env) = known {
            let _ = tokio::join!(
                self.client.revoke(env.lease),
                self.client.revoke(env.alive_lease)
            );
            self.applied(resp.header.revision as u64).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Liveness;
    use crate::store::Store;
    use chora_api::manifest::Registration;
    use std::time::Instant;

    fn record(id: &str) -> Record {
        let reg = Registration {
            name: "svc".into(),
            version: "1".into(),
            interfaces: Default::default(),
            metadata: None,
            id: None,
        };
        Record::new(reg, id.into(), SystemTime::now())
    }

    async fn fresh(store: &EtcdStore, id: &str) -> Envelope {
        Envelope {
            record: record(id),
            lease: store.grant(store.ttl).await.unwrap(),
            alive_lease: store.grant(store.alive_ttl).await.unwrap(),
            reported: Status::Up,
        }
    }

    async fn stored(store: &EtcdStore, id: &str) -> Option<Envelope> {
        let resp = store
            .client
            .range(&svc_key("svc", id), false)
            .await
            .unwrap();
        let kv = resp.kvs.first()?;
        Some(serde_json::from_slice(&kv.value).unwrap())
    }

    /// Waits (up to 10 s) until the store's staleness is as `want` says.
    async fn until_stale(store: &EtcdStore, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.stale().is_some() != want {
            assert!(Instant::now() < deadline, "stale never turned {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_write_etcd_did_not_confirm_is_found_out_or_fenced_and_an_outage_makes_reads_stale() {
        if !chora_testkit::etcd_available("a_write_etcd_did_not_confirm") {
            return;
        }
        let mut cluster = chora_testkit::EtcdCluster::start(1);
        let liveness = Liveness {
            heartbeat_interval: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
        };
        let store = EtcdStore::open(&cluster.urls(), liveness).await.unwrap();
        assert_eq!(store.stale(), None);

        // Applied, its answer lost: found out, at the revision it was written.
        let a = fresh(&store, "a").await;
        let rev = store.put_both(&a).await.unwrap();
        match store.settle_put(&a, &[a.lease, a.alive_lease]).await {
            Outcome::Happened(r) => assert_eq!(r, rev),
            _ => panic!("a write that happened was not found"),
        }

        // Not applied: fenced. The same write arriving late is refused, so an
        // error answer stays true.
        let b = fresh(&store, "b").await;
        assert!(matches!(
            store.settle_put(&b, &[b.lease, b.alive_lease]).await,
            Outcome::Fenced
        ));
        let late = store.put_both(&b).await.unwrap_err();
        assert!(late.to_string().contains("lease not found"), "{late}");
        assert!(!late.may_have_happened());
        assert!(stored(&store, "b").await.is_none());

        // A re-registration of a live instance that did not happen: its own
        // fresh leases are fenced; the instance stays as it was.
        let a2 = fresh(&store, "a").await;
        assert!(matches!(
            store.settle_put(&a2, &[a2.lease, a2.alive_lease]).await,
            Outcome::Fenced
        ));
        assert!(store.put_both(&a2).await.is_err());
        assert_eq!(
            stored(&store, "a").await.unwrap().alive_lease,
            a.alive_lease
        );

        // A write applied but unconfirmed on this node, then the client's
        // retry acknowledged by another node (which knows the instance from
        // its watch): fencing the first write deletes nothing of the second.
        let other = EtcdStore::open(&cluster.urls(), liveness).await.unwrap();
        let f = fresh(&store, "f").await;
        store.put_both(&f).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while other.envelope("svc", "f").is_none() {
            assert!(Instant::now() < deadline, "the other node never saw f");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let retry = record("f");
        let (_, created) = other.register(retry).await.unwrap();
        assert!(!created, "the other node knew f");
        assert!(matches!(
            store.settle_put(&f, &[f.lease, f.alive_lease]).await,
            Outcome::Fenced
        ));
        let kept = stored(&store, "f")
            .await
            .expect("the acknowledged retry was deleted");
        assert_ne!(kept.lease, f.lease);
        assert!(
            other
                .keep_alive(&[kept.lease, kept.alive_lease])
                .await
                .unwrap()[0]
        );

        // etcd gone for the whole settle window: the outcome is unknown, and
        // the node says so after trying for SETTLE, not longer.
        let c = fresh(&store, "c").await;
        cluster.members[0].kill();
        let t = Instant::now();
        assert!(matches!(
            store.settle_put(&c, &[c.lease, c.alive_lease]).await,
            Outcome::Unknown
        ));
        let took = t.elapsed();
        assert!(took >= SETTLE - Duration::from_millis(500), "{took:?}");
        assert!(took < SETTLE + Duration::from_secs(2), "{took:?}");

        // Writes answer an error that names etcd and why, at once (nothing
        // took them: they did not happen); reads are stale.
        let t = Instant::now();
        let e = store.register(record("d")).await.unwrap_err();
        let took = t.elapsed();
        let url = cluster.members[0].url();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("etcd at {url} unreachable: ")),
            "{e}"
        );
        println!("a registration during the outage: {e} (in {took:?})");
        assert!(took < Duration::from_secs(1), "{took:?}");
        let t = Instant::now();
        let e = store.deregister("svc", "a").await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        until_stale(&store, true).await;
        let stale = store.stale().unwrap();
        assert!(
            stale
                .reason
                .starts_with(&format!("etcd at {url} unreachable"))
        );

        // etcd returns: the node follows it again by itself.
        cluster.members[0].start(false);
        until_stale(&store, false).await;
        let (inst, created) = store.register(record("e")).await.unwrap();
        assert!(created);
        assert!(store.catalog().contains("svc", &inst.id));
        // The fenced write never appeared.
        assert!(stored(&store, "b").await.is_none());
    }
}
