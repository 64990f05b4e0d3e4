//! The Prometheus chora runs (`monitoring.prometheus`, DESIGN.md §16): its
//! image (built from the local binary, as etcd's is), the config phase 0
//! writes for it (every service discovered through the Manifest's
//! `/v1/prometheus/targets`, scraped every `scrape_interval`), where each
//! part reaches it, and the validation check that it scrapes every service
//! `up`. The unit itself is made by parsing (`config/units.rs`).

use crate::config::{PROMETHEUS, RuntimeKind};
use crate::ctx::Ctx;
use crate::failure::StepError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The series of the observers' own endpoints (`/metrics`, `/health`) are not
/// kept: 40 of a chora service's 45 series, which the dashboard's charts leave
/// out too; Prometheus still records `up` for every target, which validation
/// reads. With them, Prometheus on 50 services held 58 MB (BENCHMARKS.md).
pub const OBSERVERS_DROPPED: &str = "    metric_relabel_configs:
      - source_labels: [endpoint]
        regex: /metrics|/v1/metrics|/health|/v1/health
        action: drop
";

/// `2.42.0-ds` from `prometheus --version` ("prometheus, version 2.42.0+ds
/// (branch: …)").
pub fn prometheus_version(binary: &Path) -> Option<String> {
    crate::images::version_of(binary, "prometheus, version ")
}

impl Ctx {
    /// Whether this system runs its own Prometheus.
    pub fn prometheus(&self) -> Option<&crate::config::ServiceSpec> {
        self.config.service(PROMETHEUS)
    }

    /// The image the Prometheus container runs; see `images.rs`.
    pub async fn ensure_prometheus_image(&self) -> Result<(String, String), StepError> {
        let m = self.config.monitoring.clone().unwrap_or_default();
        let want = crate::images::BinaryImage {
            what: "prometheus",
            configured: m.image.clone(),
            binary: m.binary_path(),
            version: prometheus_version,
            install: "apt-get install prometheus",
        };
        let (image, how) = self.ensure_binary_image(&want).await?;
        let _ = self.prometheus_image.set(image.clone());
        Ok((image, how))
    }

    /// Prometheus' URL as a service reaches it (from a container, by name on
    /// the project network when Prometheus is a container too).
    pub fn prometheus_url_for(&self, in_container: bool) -> Option<String> {
        let spec = self.prometheus()?;
        let docker = spec.runtime(self.config.default_runtime()) == RuntimeKind::Docker;
        Some(if in_container && docker {
            format!(
                "http://{PROMETHEUS}:{}",
                spec.container_port.unwrap_or(9090)
            )
        } else {
            spec.url()?
        })
    }

    /// Where phase 0 writes Prometheus' config.
    pub fn prometheus_config_path(&self) -> PathBuf {
        self.home.root.join("prometheus").join("prometheus.yml")
    }

    /// Writes Prometheus' config (see [`OBSERVERS_DROPPED`] for what it keeps): every `up` instance in the Manifest,
    /// discovered through `/v1/prometheus/targets` on every node (the same
    /// target from two nodes is one target to Prometheus) every second (a
    /// discovery answer costs the Manifest ~100 µs; at 5 s a new service
    /// waited 9.6 s for its first scrape, at 1 s 5.3 s), scraped every
    /// `scrape_interval`.
    pub fn write_prometheus_config(&self) -> Result<PathBuf, StepError> {
        let spec = self
            .prometheus()
            .ok_or_else(|| StepError::new("no Prometheus to configure"))?;
        let in_container = spec.runtime(self.config.default_runtime()) == RuntimeKind::Docker;
        let every = self
            .config
            .monitoring
            .as_ref()
            .map_or(5, |m| m.scrape_interval.max(1));
        let urls: Vec<String> = self
            .manifest_url_for(in_container)
            .split(',')
            .map(|u| {
                format!(
                    "          - url: {u}/v1/prometheus/targets\n            refresh_interval: 1s\n"
                )
            })
            .collect();
        let text = format!(
            "# Written by chora bootstrap (phase 0); edits are overwritten.\n\
             global:\n  scrape_interval: {every}s\n  scrape_timeout: {timeout}s\n  evaluation_interval: {every}s\n\
             scrape_configs:\n  - job_name: chora\n    metrics_path: /metrics\n    http_sd_configs:\n{}{OBSERVERS_DROPPED}",
            urls.concat(),
            timeout = every.saturating_sub(1).max(1),
        );
        let path = self.prometheus_config_path();
        chora_api::files::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| StepError::new(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Validation: Prometheus scrapes every registered service `up` (each
    /// has at least one active target of its name whose health is `up`).
    /// Waits for the next scrapes, up to `limit`.
    pub async fn check_scraped(&self, limit: Duration) -> Result<String, String> {
        let url = self
            .prometheus_url_for(false)
            .ok_or("no Prometheus in this system")?;
        let services: std::collections::BTreeSet<String> = self
            .config
            .registered_units()
            .iter()
            .map(|u| {
                self.spec(u)
                    .replica
                    .as_ref()
                    .map_or(u.clone(), |r| r.service.clone())
            })
            .collect();
        let deadline = Instant::now() + limit;
        loop {
            let missing: Vec<String> = match self
                .http
                .get(format!("{url}/api/v1/targets?state=active"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) => match r.json::<serde_json::Value>().await {
                    Ok(v) => {
                        let up: std::collections::BTreeSet<&str> = v["data"]["activeTargets"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|t| t["health"] == "up")
                            .filter_map(|t| t["labels"]["service"].as_str())
                            .collect();
                        services
                            .iter()
                            .filter(|s| !up.contains(s.as_str()))
                            .cloned()
                            .collect()
                    }
                    Err(e) => vec![format!("(its answer: {e})")],
                },
                Err(e) => vec![format!(
                    "(Prometheus at {url}: {})",
                    chora_api::root_cause(&e)
                )],
            };
            if missing.is_empty() {
                return Ok(format!(
                    "Prometheus scrapes all {} services up",
                    services.len()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("not scraped up: {}", missing.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
