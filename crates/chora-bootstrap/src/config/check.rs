//! Everything a config must satisfy before anything starts, each mistake
//! named by file, line and field (exit 7).

use super::{BUILTIN_TESTS, Config, ConfigError, ServiceSpec};
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

impl Config {
    pub(super) fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let err = |loc: serde_saphyr::Location, message: String| ConfigError {
            file: file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message,
            snippet: String::new(),
        };
        if self.version.trim().is_empty() {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: "`version` must not be empty".into(),
                snippet: String::new(),
            });
        }
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        for (name, s) in &self.services {
            let loc = s.referenced;
            let spec = &s.value;
            let at = |m: String| err(loc, format!("services.{name}: {m}"));
            if !chora_api::manifest::is_valid_name(name) {
                return Err(at("the name must match ^[a-z0-9][a-z0-9._-]{0,62}$".into()));
            }
            if name != "gateway"
                && (spec.tls.is_some() || spec.tls_port.is_some() || spec.http.is_some())
            {
                return Err(at(
                    "`tls`, `tls_port` and `http` are the gateway's (HTTPS at the edge)".into(),
                ));
            }
            if spec.tls.is_none() && (spec.tls_port.is_some() || spec.http.is_some()) {
                return Err(at(
                    "`tls_port` and `http` need `tls` (self-signed, {cert, key} or {acme: …})"
                        .into(),
                ));
            }
            if !(1..=3).contains(&spec.phase) {
                return Err(at(format!(
                    "`phase` is {} but must be 1, 2 or 3",
                    spec.phase
                )));
            }
            // `command` with `image` is the container's command, as in Compose.
            let ways = [
                spec.command.is_some() || spec.image.is_some(),
                spec.docker_compose.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if ways > 1 {
                return Err(at(
                    "give `command` (a process), `image` (a container, with an optional `command`) or `docker_compose`, not several".into(),
                ));
            }
            if spec
                .command
                .as_ref()
                .is_some_and(|c| c.first().is_none_or(|p| p.is_empty()))
            {
                return Err(at("`command` must name a program".into()));
            }
            match (spec.phase, spec.deploy_via) {
                (3, None) => {
                    return Err(at("phase 3 services are deployed through the orchestrator: add `deploy_via: orchestrator`".into()));
                }
                (1 | 2, Some(_)) => {
                    return Err(at("`deploy_via` is for phase 3 services only".into()));
                }
                _ => {}
            }
            if spec.phase == 3 && spec.docker_compose.is_some() {
                return Err(at(
                    "`docker_compose` is for phase 1-2 services (the orchestrator deploys `command` or `image`)".into(),
                ));
            }
            if spec.phase < 3 && ways == 0 {
                return Err(at(
                    "needs `command`, `image` or `docker_compose`: how to run it".into(),
                ));
            }
            if spec.phase == 3 && ways == 0 && !chora_api::CAPABILITIES.contains(&name.as_str()) {
                return Err(at(format!(
                    "`{name}` is not a built-in capability: give a `command` or `image`"
                )));
            }
            if spec.phase == 3 && spec.port.is_none() {
                return Err(at("phase 3 services need a `port`".into()));
            }
            if spec.port.is_none() && spec.health_endpoint.is_none() {
                return Err(at("needs a `port` or a `health_endpoint`".into()));
            }
            if let Some(h) = &spec.health_endpoint
                && !chora_runtime::check::is_checkable(h)
            {
                return Err(at(format!(
                    "`health_endpoint` `{h}` must be http(s)://… or tcp://HOST:PORT"
                )));
            }
            for v in &spec.volumes {
                // `${CHORA_HOME}` is an absolute path once expanded.
                if let Err(m) =
                    chora_runtime::Volume::parse(&v.value.replace("${CHORA_HOME}", "/home"))
                {
                    return Err(err(v.referenced, format!("services.{name}.volumes: {m}")));
                }
                if spec.image.is_none() && !(spec.phase == 3 && spec.command.is_none()) {
                    return Err(err(
                        v.referenced,
                        format!("services.{name}.volumes: only containers (`image:`) take volumes"),
                    ));
                }
            }
            if let Some(t) = spec.timeout
                && !(t.is_finite() && t > 0.0)
            {
                return Err(at("`timeout` must be a positive number of seconds".into()));
            }
            if let Some(p) = spec.port
                && let Some(other) = ports.insert(p, name)
            {
                return Err(at(format!("port {p} is also used by `{other}`")));
            }
            for d in &spec.dependencies {
                let Some(dep) = self.services.get(&d.value) else {
                    return Err(err(
                        d.referenced,
                        format!(
                            "services.{name}.dependencies: unknown service `{}`",
                            d.value
                        ),
                    ));
                };
                if dep.value.phase > spec.phase {
                    return Err(err(
                        d.referenced,
                        format!(
                            "services.{name}.dependencies: `{}` starts in phase {}, after `{name}` (phase {})",
                            d.value, dep.value.phase, spec.phase
                        ),
                    ));
                }
                if d.value == *name {
                    return Err(err(
                        d.referenced,
                        format!("services.{name}.dependencies: a service cannot depend on itself"),
                    ));
                }
            }
        }
        // Cycles: whatever `waves` cannot place.
        for phase in 1..=3 {
            let placed: usize = self.waves(phase).iter().map(Vec::len).sum();
            let members: Vec<(&String, &Spanned<ServiceSpec>)> = self
                .services
                .iter()
                .filter(|(_, s)| s.value.phase == phase)
                .collect();
            if placed < members.len() {
                let placed: BTreeSet<String> = self.waves(phase).into_iter().flatten().collect();
                let stuck: Vec<&str> = members
                    .iter()
                    .filter(|(n, _)| !placed.contains(*n))
                    .map(|(n, _)| n.as_str())
                    .collect();
                let first = self.services[stuck[0]].referenced;
                return Err(err(
                    first,
                    format!("services: dependency cycle among {}", stuck.join(", ")),
                ));
            }
        }
        if let Some(p) = &self.project
            && !chora_api::manifest::is_valid_name(p)
        {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: format!("project: `{p}` must match ^[a-z0-9][a-z0-9._-]{{0,62}}$"),
                snippet: String::new(),
            });
        }
        for required in ["manifest"] {
            if self.units_of(required).is_empty() {
                return Err(ConfigError {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "services: `{required}` is required (the registry everything else finds itself in)"
                    ),
                    snippet: String::new(),
                });
            }
        }
        if self.services.values().any(|s| s.value.phase == 3)
            && !self.services.contains_key("orchestrator")
        {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message: "services: phase 3 services need an `orchestrator` service to deploy them"
                    .into(),
                snippet: String::new(),
            });
        }
        for t in &self.validation.tests {
            if t.value.script.is_none() && !BUILTIN_TESTS.contains(&t.value.name.as_str()) {
                return Err(err(
                    t.referenced,
                    format!(
                        "validation.tests: `{}` is not a built-in test ({}) and has no `script`",
                        t.value.name,
                        BUILTIN_TESTS.join(", ")
                    ),
                ));
            }
        }
        let r = &self.retry;
        if !(r.initial_delay > 0.0 && r.max_delay >= r.initial_delay && r.backoff_factor >= 1.0) {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 1,
                column: 1,
                message:
                    "retry: need initial_delay > 0, max_delay >= initial_delay, backoff_factor >= 1"
                        .into(),
                snippet: String::new(),
            });
        }
        Ok(())
    }
}
