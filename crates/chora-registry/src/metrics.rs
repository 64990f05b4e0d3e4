//! Prometheus metrics of DESIGN.md §5: requests by endpoint, method and status,
//! request latency, and instances by status.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub registered: Family<StatusLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "manifest_http_requests",
            "HTTP requests by endpoint, method and status",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.00005, 2.0, 16))
        });
        registry.register(
            "manifest_http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        let registered = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "manifest_services_registered",
            "Registered instances by status",
            registered.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            registered,
        }
    }

    /// The text exposition, after setting the gauges to `(up, unhealthy)`.
    pub fn render(&self, (up, unhealthy): (usize, usize)) -> String {
        self.registered
            .get_or_create(&StatusLabels { status: "up" })
            .set(up as i64);
        self.registered
            .get_or_create(&StatusLabels {
                status: "unhealthy",
            })
            .set(unhealthy as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
