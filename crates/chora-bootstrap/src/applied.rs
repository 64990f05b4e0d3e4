//! What runs: the spec each unit of this home was last started with
//! (`applied-specs.json`, 0600: a config's `env` may hold what its author
//! typed there, so it is kept like the credentials, never in the state
//! file). `chora bootstrap` on a completed system compares the config with
//! it to find what changed (DESIGN.md §14), and starts a unit again with its
//! old spec when a change must be rolled back. Only the fields that decide
//! what runs are kept; a change of `dependencies` or `timeout` changes
//! nothing that runs.

use crate::config::{Register, RuntimeKind, ServiceSpec};
use crate::home::Home;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// One unit's spec as it was started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedSpec {
    pub phase: u8,
    pub runtime: RuntimeKind,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub docker_compose: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub container_port: Option<u16>,
    #[serde(default)]
    pub health_endpoint: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub version: Option<String>,
    pub register: Register,
    /// A phase 3 service's replicas on a fleet (other replicas are units of
    /// their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

impl AppliedSpec {
    pub fn of(spec: &ServiceSpec, default_runtime: RuntimeKind) -> AppliedSpec {
        AppliedSpec {
            phase: spec.phase,
            runtime: spec.runtime(default_runtime),
            command: spec.command.clone(),
            image: spec.image.clone(),
            docker_compose: spec.docker_compose.clone(),
            port: spec.port,
            container_port: spec.container_port,
            health_endpoint: spec.health_endpoint.clone(),
            env: spec.env.clone(),
            volumes: spec.volumes.iter().map(|v| v.value.clone()).collect(),
            version: spec.version.clone(),
            register: spec.registers(),
            replicas: spec.replicas.filter(|n| *n > 1),
        }
    }

    /// What differs from `new`, as a person reads it: `command`, `env FOO`,
    /// `port 8800 → 8801`… (values of `env` are never shown).
    pub fn changes(&self, new: &AppliedSpec) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, differs: bool| {
            if differs {
                out.push(name.to_owned());
            }
        };
        field("phase", self.phase != new.phase);
        field("runtime", self.runtime != new.runtime);
        field("command", self.command != new.command);
        field("image", self.image != new.image);
        field("docker_compose", self.docker_compose != new.docker_compose);
        field("container_port", self.container_port != new.container_port);
        field(
            "health_endpoint",
            self.health_endpoint != new.health_endpoint,
        );
        field("volumes", self.volumes != new.volumes);
        field("version", self.version != new.version);
        field("register", self.register != new.register);
        if self.replicas != new.replicas {
            let n = |r: Option<u32>| r.unwrap_or(1);
            out.push(format!(
                "replicas {} → {}",
                n(self.replicas),
                n(new.replicas)
            ));
        }
        if self.port != new.port {
            let p = |p: Option<u16>| p.map_or("none".into(), |p| p.to_string());
            out.push(format!("port {} → {}", p(self.port), p(new.port)));
        }
        let keys: std::collections::BTreeSet<&String> =
            self.env.keys().chain(new.env.keys()).collect();
        for k in keys {
            match (self.env.get(k), new.env.get(k)) {
                (Some(a), Some(b)) if a != b => out.push(format!("env {k}")),
                (None, Some(_)) => out.push(format!("env {k} added")),
                (Some(_), None) => out.push(format!("env {k} removed")),
                _ => {}
            }
        }
        out
    }

    /// `base` (the config's spec of the unit) as this applied spec had it:
    /// how a rolled-back unit starts again.
    pub fn restore(&self, base: &ServiceSpec) -> ServiceSpec {
        let spanned = |v: &String| {
            Spanned::new(
                v.clone(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            )
        };
        ServiceSpec {
            phase: self.phase,
            command: self.command.clone(),
            image: self.image.clone(),
            docker_compose: self.docker_compose.clone(),
            port: self.port,
            container_port: self.container_port,
            health_endpoint: self.health_endpoint.clone(),
            env: self.env.clone(),
            volumes: self.volumes.iter().map(spanned).collect(),
            version: self.version.clone(),
            register: Some(self.register),
            replicas: self.replicas,
            ..base.clone()
        }
    }
}

/// Every unit's applied spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub units: BTreeMap<String, AppliedSpec>,
}

impl Applied {
    /// The home's file; `None` when there is none (a system started by a
    /// chora before this file existed, or none at all). An unreadable file
    /// is treated as none: it is only ever a comparison's baseline.
    pub fn load(home: &Home) -> Option<Applied> {
        let text = std::fs::read_to_string(home.applied()).ok()?;
        match serde_json::from_str(&text) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(path = %home.applied().display(), error = %e, "ignoring an unreadable applied-specs file");
                None
            }
        }
    }

    /// Writes it (0600), keeping only the units `keep` says still run.
    pub fn save(&mut self, home: &Home, keep: impl Fn(&str) -> bool) -> std::io::Result<()> {
        self.units.retain(|k, _| keep(k));
        let text = serde_json::to_string_pretty(self).expect("applied specs serialize");
        chora_api::files::write_atomic(&home.applied(), text.as_bytes(), 0o600)
    }

    pub fn record(&mut self, unit: &str, spec: AppliedSpec) {
        self.units.insert(unit.to_owned(), spec);
    }
}
