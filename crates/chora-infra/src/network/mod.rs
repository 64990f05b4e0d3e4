//! Mesh network providers behind one trait: `wireguard`, `tailscale`, `none`.
//!
//! A provider has two steps per host. `install` puts the software and the
//! host's identity in place (a WireGuard key pair made on the host; a running
//! tailscaled) and returns what the other hosts need to know of it (a public
//! key). `join` is run once every host's `install` is over, with the hosts that
//! got through it: the host joins the mesh with them, and returns its mesh
//! address. A host that failed earlier is left out of the others' mesh; the
//! next run adds it.

pub mod tailscale;
pub mod wireguard;

use crate::inventory::{Inventory, NetworkSpec};
use crate::ssh::Remote;
use crate::steps::{Facts, StepResult};
use futures_util::future::BoxFuture;
use std::time::Duration;

/// One host as the others see it in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Where peers reach it (the inventory address).
    pub endpoint: String,
    /// Its address inside the mesh, when known before joining (WireGuard).
    pub mesh_ip: Option<String>,
    /// What `install` returned (WireGuard: the public key).
    pub public_key: Option<String>,
}

/// What every step of a provider gets.
pub struct Ctx<'a> {
    pub remote: &'a Remote,
    pub facts: &'a Facts,
    pub lock_timeout: Duration,
    pub dry: bool,
}

pub trait Provider: Send + Sync {
    /// The provider's name, also the name of its install step.
    fn name(&self) -> &'static str;

    /// The mesh's network interface on a host (the swarm's ports answer on it
    /// only).
    fn interface(&self) -> &'static str;

    /// The systemd unit that brings the mesh up at boot (Docker starts after
    /// it, so that the swarm can listen on the mesh address).
    fn unit(&self) -> &'static str;

    /// Software and identity on the host; returns its public key, if any.
    fn install<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, StepResult<Option<String>>>;

    /// Joins the mesh with `peers` (every other host that got through
    /// `install`); returns the host's mesh address.
    fn join<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        me: &'a Member,
        peers: &'a [Member],
    ) -> BoxFuture<'a, StepResult<Option<String>>>;
}

/// The provider the inventory asks for, `None` for `provider: none`.
pub fn provider(inv: &Inventory) -> Option<Box<dyn Provider>> {
    match &inv.network {
        NetworkSpec::None => None,
        NetworkSpec::WireGuard {
            prefix,
            listen_port,
            ..
        } => Some(Box::new(wireguard::WireGuard {
            prefix: *prefix,
            listen_port: *listen_port,
        })),
        NetworkSpec::Tailscale {
            auth_key_file,
            tags,
        } => Some(Box::new(tailscale::Tailscale {
            auth_key_file: auth_key_file.clone(),
            tags: tags.clone(),
        })),
    }
}
