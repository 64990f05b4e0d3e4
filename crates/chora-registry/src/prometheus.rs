//! `GET /v1/prometheus/targets` (DESIGN.md §16): the registry's `up` instances in
//! Prometheus' HTTP service discovery format, so that a Prometheus finds every
//! service with nothing but
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: chora
//!     http_sd_configs: [{url: "http://127.0.0.1:8500/v1/prometheus/targets"}]
//! ```
//!
//! This goes past Consul: Consul serves no discovery document of its own, and
//! Prometheus reaches it only through its Consul-specific discovery
//! (`consul_sd_configs`) talking to a Consul agent's catalog API. Here any
//! Prometheus (or anything else that reads HTTP SD: Grafana Alloy, vmagent)
//! reads the registry itself, nothing in between.
//!
//! One target group per `up` instance, in the registry's order (name, then id):
//! `{"targets": ["host:port"], "labels": {...}}`, `host:port` taken from its
//! `REST` interface (the scheme's default port when the URL names none;
//! `__scheme__: https` for an `https://` one). Labels: `service` (its name),
//! `instance` (its id, which replaces Prometheus' default `host:port` instance
//! label), `version`, and `environment` when its metadata has one. An instance
//! without a usable `REST` interface is left out: there is nothing to scrape.
//! An unhealthy or expired instance is not listed, so Prometheus drops its
//! target at its next refresh. The route is a read like the others: blocking
//! reads (`?index=N&wait=D`) and `X-Chora-Index` work here too.

use chora_api::manifest::Instance;
use serde::Serialize;
use std::collections::BTreeMap;

/// One target group of Prometheus' HTTP SD format.
#[derive(Debug, Serialize, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<&'static str, String>,
}

/// The target groups of `instances` (the registry's `up` instances).
pub fn target_groups(instances: &[Instance]) -> Vec<TargetGroup> {
    instances
        .iter()
        .filter_map(|i| {
            let (https, address) = address_of(i.rest_url()?)?;
            let mut labels = BTreeMap::from([
                ("service", i.name.clone()),
                ("instance", i.id.clone()),
                ("version", i.version.clone()),
            ]);
            if let Some(env) = i.metadata.environment.as_ref().filter(|e| !e.is_empty()) {
                labels.insert("environment", env.clone());
            }
            if https {
                labels.insert("__scheme__", "https".into());
            }
            Some(TargetGroup {
                targets: vec![address],
                labels,
            })
        })
        .collect()
}

/// `http(s)://[user@]host[:port][/…]` → (is https, `host:port`).
fn address_of(url: &str) -> Option<(bool, String)> {
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return None;
    }
    // A port is what follows the last `:` outside an IPv6 literal's brackets.
    let has_port = match host_port.rfind(':') {
        Some(colon) => host_port.rfind(']').is_none_or(|b| colon > b),
        None => false,
    };
    if has_port {
        let port = &host_port[host_port.rfind(':')? + 1..];
        if port.is_empty() || port.parse::<u16>().is_err() {
            return None;
        }
        Some((https, host_port.to_owned()))
    } else {
        Some((
            https,
            format!("{host_port}:{}", if https { 443 } else { 80 }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, rest: Option<&str>, env: Option<&str>) -> Instance {
        let mut interfaces = serde_json::Map::new();
        if let Some(r) = rest {
            interfaces.insert("REST".into(), r.into());
        }
        serde_json::from_value(serde_json::json!({
            "name": name, "id": format!("{name}-1"), "version": "1.2.3",
            "interfaces": interfaces,
            "metadata": env.map_or(serde_json::json!({}), |e| serde_json::json!({"environment": e})),
            "status": "up", "last_heartbeat": "2026-01-01T00:00:00Z",
            "registered_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn each_instance_is_a_group_with_its_rest_address_and_labels() {
        let groups = target_groups(&[
            instance("analyzer", Some("http://127.0.0.1:8800"), Some("dev")),
            instance("grpc-only", None, None),
            instance("web", Some("https://web.example/base/"), None),
            instance("v6", Some("http://user@[::1]:9000/x"), None),
            instance("odd", Some("ftp://x:1"), None),
        ]);
        let json = serde_json::to_value(&groups).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["127.0.0.1:8800"], "labels": {"service": "analyzer",
                  "instance": "analyzer-1", "version": "1.2.3", "environment": "dev"}},
                {"targets": ["web.example:443"], "labels": {"service": "web",
                  "instance": "web-1", "version": "1.2.3", "__scheme__": "https"}},
                {"targets": ["[::1]:9000"], "labels": {"service": "v6",
                  "instance": "v6-1", "version": "1.2.3"}},
            ])
        );
        assert_eq!(
            address_of("http://[::1]/"),
            Some((false, "[::1]:80".into()))
        );
        assert_eq!(address_of("http://h:notaport/"), None);
    }
}
