//! `${…}` in the config: what each placeholder becomes for this home, and the
//! argv and environment a service starts with. Secrets reach a service only
//! through its environment (`CHORA_API_KEY`, `${CHORA_CREDENTIALS_JSON}`),
//! never its argv.

use crate::config::{RuntimeKind, ServiceSpec};
use crate::ctx::Ctx;
use std::collections::BTreeMap;

impl Ctx {
    /// `${CHORA_HOME}`, `${CHORA_VERSION}`, `${ETCD_ENDPOINTS}` (the members
    /// chora runs, by name on the project network, or `etcd.endpoints`),
    /// `${ETCD_IMAGE}` and `${MANIFEST_URLS}` (every Manifest node, as a
    /// container on the project network reaches it) expanded.
    pub fn substitute(&self, s: &str) -> String {
        if !s.contains("${") {
            return s.to_owned();
        }
        let members = self.config.etcd_members();
        let etcd = if members.is_empty() {
            self.config
                .etcd
                .as_ref()
                .map(|e| e.endpoints.join(","))
                .unwrap_or_default()
        } else {
            let project = self.config.project();
            members
                .iter()
                .map(|m| format!("http://{project}-{m}:2379"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let etcd_image = self.etcd_image.get().cloned().unwrap_or_else(|| {
            self.config
                .etcd
                .as_ref()
                .map(|e| e.image.clone())
                .unwrap_or_default()
        });
        s.replace("${CHORA_HOME}", &self.home.root.display().to_string())
            .replace("${ETCD_ENDPOINTS}", &etcd)
            .replace("${ETCD_IMAGE}", &etcd_image)
            .replace(
                "${PROMETHEUS_IMAGE}",
                self.prometheus_image.get().map_or("", String::as_str),
            )
            .replace("${MANIFEST_URLS}", &self.manifest_url_for(true))
            .replace("${CHORA_VERSION}", env!("CARGO_PKG_VERSION"))
    }

    /// The argv of a service's command: `chora` is this binary (for a local
    /// process; in a container, the command is the image's arguments).
    pub fn argv(&self, spec: &ServiceSpec) -> Option<Vec<String>> {
        let local = spec.image.is_none();
        spec.command.as_ref().map(|c| {
            c.iter()
                .enumerate()
                .map(|(i, a)| {
                    if local && i == 0 && a == "chora" {
                        self.self_exe.display().to_string()
                    } else {
                        self.substitute(a)
                    }
                })
                .collect()
        })
    }

    /// The environment a service starts with: its `env`, its API key, and where
    /// to find the Manifest. Secrets travel here, never in argv: an `env`
    /// value may say `${CHORA_CREDENTIALS_JSON}` (the whole credentials
    /// document, for a Manifest or orchestrator in a container).
    pub fn env_for(&self, name: &str, spec: &ServiceSpec) -> BTreeMap<String, String> {
        let creds = self
            .credentials
            .as_ref()
            .map(|c| c.to_json())
            .unwrap_or_default();
        let mut env: BTreeMap<String, String> = spec
            .env
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    self.substitute(v)
                        .replace("${CHORA_CREDENTIALS_JSON}", &creds),
                )
            })
            .collect();
        if let Some(key) = self.credentials.as_ref().and_then(|c| c.api_key(name)) {
            env.insert("CHORA_API_KEY".into(), key.to_owned());
        }
        env.insert("CHORA_HOME".into(), self.home.root.display().to_string());
        env.insert("CHORA_PROJECT".into(), self.config.project().to_owned());
        let in_container = spec.runtime(self.config.default_runtime()) == RuntimeKind::Docker;
        if !in_container {
            env.entry("CHORA_DATA_DIR".into())
                .or_insert_with(|| self.home.data().display().to_string());
        }
        env.extend(self.tls_env(spec, in_container));
        // The orchestrator draws the dashboard's charts from Prometheus.
        if name == "orchestrator"
            && let Some(url) = self.prometheus_url_for(in_container)
        {
            env.entry("CHORA_PROMETHEUS_URL".into()).or_insert(url);
        }
        if spec.replica.as_ref().map_or(name, |r| r.service.as_str()) != "manifest" {
            env.entry("MANIFEST_URL".into())
                .or_insert_with(|| self.manifest_url_for(in_container));
        }
        env
    }

    /// The Manifest's URL as a service reaches it: from a container, by name on
    /// the project network when the Manifest is a container too.
    pub fn manifest_url_for(&self, in_container: bool) -> String {
        let units = self.config.units_of("manifest");
        let default = self.config.default_runtime();
        let by_name: Vec<String> = units
            .iter()
            .filter_map(|u| {
                let m = self.config.service(u)?;
                (m.runtime(default) == RuntimeKind::Docker).then(|| {
                    let port = m.container_port.or(m.port).unwrap_or(8500);
                    format!("http://{u}:{port}")
                })
            })
            .collect();
        if in_container && !by_name.is_empty() && by_name.len() == units.len() {
            by_name.join(",")
        } else {
            self.manifest_url()
        }
    }
}
