//! The storage seam. A backend makes changes durable and then applies them to the
//! shared [`Catalog`], from which every read is served. The SQLite backend is the
//! first implementation; the etcd backend is the second.

use crate::catalog::{Catalog, Record};
use chora_api::manifest::{Instance, Status};
use futures_util::future::BoxFuture;
use std::time::SystemTime;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The instance is unknown (or expired).
    #[error("no instance {id} of service {name}")]
    NotFound { name: String, id: String },
    /// The storage cannot be reached or refused the write; nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The storage could not be reached to learn whether a write happened: it
    /// may have. Repeating it (the same id) is safe.
    #[error(
        "storage unavailable, the write may or may not have happened (repeat it with the same id): {0}"
    )]
    Unknown(String),
}

/// Why reads may be behind the storage (see [`Store::stale`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// When this node lost touch with its storage.
    pub since: SystemTime,
    /// What went wrong, for a person (`etcd at … unreachable: …`).
    pub reason: String,
}

/// A registry backend.
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `etcd`, as `/v1/health` reports it.
    fn kind(&self) -> &'static str;

    /// The read model this backend keeps up to date.
    fn catalog(&self) -> &Catalog;

    /// Durably stores a registration. Returns the instance and whether it is new.
    fn register(&self, record: Record) -> BoxFuture<'_, Result<(Instance, bool), StoreError>>;

    /// Records a heartbeat (it need not be durable).
    fn heartbeat<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
        status: Option<Status>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Durably removes an instance; succeeds when it was already gone.
    fn deregister<'a>(
        &'a self,
        name: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Checks that the storage answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// `Some` while this node has lost touch with its storage and its catalog
    /// may miss changes made through other nodes; reads still serve that
    /// catalog and say so (`X-Chora-Stale`). A backend that is the only writer
    /// of its catalog (SQLite) is never stale.
    fn stale(&self) -> Option<Stale> {
        None
    }
}

impl From<StoreError> for chora_service::ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => chora_service::ApiError::not_found(e.to_string()),
            StoreError::Unavailable(_) => {
                chora_service::ApiError::unavailable("storage_unavailable", e.to_string())
            }
            StoreError::Unknown(_) => {
                chora_service::ApiError::unavailable("write_outcome_unknown", e.to_string())
            }
        }
    }
}
