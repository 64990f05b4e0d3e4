//! The proxied requests' metrics: `gateway_requests` (by service and status)
//! and `gateway_request_duration_seconds` (by service).
//!
//! A `Family` lookup builds its label set (a `String` per label set), hashes
//! it and takes the family's lock: two of them per request were three
//! allocations of the proxy path's eighteen. So each service's route keeps
//! its handles ([`ServiceStats`], carried over table rebuilds like its
//! round-robin start), made on its first request; a request then costs the
//! histogram's observation and a counter increment. Unknown services (and any
//! request without a route) go through the families as before.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::{OnceLock, RwLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// The two families, registered once with the gateway's metrics.
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabels, Histogram>,
}

impl Metrics {
    pub(crate) fn new(registry: &chora_service::HttpMetrics) -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Proxied requests by service and status",
            requests.clone(),
        );
        let latency = Family::<ServiceLabels, Histogram>::new_with_constructor(
            chora_service::metrics::latency_histogram,
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Proxied request latency (to response headers) by service",
            latency.clone(),
        );
        Metrics { requests, latency }
    }

    /// One request of `service` (a label only: no route keeps its handles).
    pub(crate) fn record(&self, service: &str, status: u16, secs: f64) {
        self.latency
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .observe(secs);
        self.counter(service, status).inc();
    }

    fn counter(&self, service: &str, status: u16) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                service: service.to_owned(),
                status,
            })
            .clone()
    }
}

/// One service's handles into [`Metrics`]: the same series, without a lookup.
#[derive(Default)]
pub struct ServiceStats {
    handles: OnceLock<Handles>,
}

struct Handles {
    latency: Histogram,
    /// The counters of the statuses seen so far (a handful).
    counters: RwLock<Vec<(u16, Counter)>>,
}

impl ServiceStats {
    /// One request of `service`, whose route holds `self`.
    pub(crate) fn record(&self, metrics: &Metrics, service: &str, status: u16, secs: f64) {
        let h = self.handles.get_or_init(|| Handles {
            latency: metrics
                .latency
                .get_or_create(&ServiceLabels {
                    service: service.to_owned(),
                })
                .clone(),
            counters: RwLock::default(),
        });
        h.latency.observe(secs);
        let found = {
            let counters = h.counters.read().unwrap_or_else(|e| e.into_inner());
            counters
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, c)| c.inc())
        };
        if found.is_none() {
            let c = metrics.counter(service, status);
            c.inc();
            let mut counters = h.counters.write().unwrap_or_else(|e| e.into_inner());
            if !counters.iter().any(|(s, _)| *s == status) {
                counters.push((status, c));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_same_series_as_the_families() {
        let registry = chora_service::HttpMetrics::new("gateway");
        let metrics = Metrics::new(&registry);
        let stats = ServiceStats::default();
        for status in [200, 200, 503, 200] {
            stats.record(&metrics, "analyzer", status, 0.001);
        }
        metrics.record("analyzer", 200, 0.001);
        let count = |status| metrics.counter("analyzer", status).get();
        assert_eq!((count(200), count(503)), (4, 1));
        let text = registry.render();
        assert!(
            text.contains("gateway_request_duration_seconds_count{service=\"analyzer\"} 5"),
            "{text}"
        );
    }
}
