//! Request counters and latency histograms by route template, for any service.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// `<prefix>_http_requests_total{endpoint,method,status}` and
/// `<prefix>_http_request_duration_seconds{endpoint,method}`, plus whatever else the
/// service registers in [`HttpMetrics::registry`].
pub struct HttpMetrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
}

/// Latency buckets from 50 µs to about 1.6 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl HttpMetrics {
    pub fn new(prefix: &str) -> Arc<HttpMetrics> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            format!("{prefix}_http_requests"),
            "HTTP requests by endpoint, method and status",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            format!("{prefix}_http_request_duration_seconds"),
            "HTTP request latency",
            latency.clone(),
        );
        Arc::new(HttpMetrics {
            registry: Mutex::new(registry),
            requests,
            latency,
        })
    }

    /// Registers another metric beside the HTTP ones.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().unwrap_or_else(|e| e.into_inner()),
        )
        .expect("writing to a String cannot fail");
        out
    }

    /// An axum response carrying [`HttpMetrics::render`].
    pub fn response(&self) -> Response {
        use axum::response::IntoResponse;
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            self.render(),
        )
            .into_response()
    }
}

/// Middleware: counts and times every request by its route template (not its raw
/// path, which would make one series per instance or object). Install with
/// `axum::middleware::from_fn_with_state(metrics, track)`.
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    m.latency
        .get_or_create(&EndpointLabels {
            endpoint: endpoint.clone(),
            method: method.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            endpoint,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
