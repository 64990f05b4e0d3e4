//! The dashboard's charts from a Prometheus (`--prometheus-url`): range queries
//! (`/api/v1/query_range`) over the series that the registry's discovery
//! (`GET /v1/prometheus/targets`) labels with `service` and `instance`.
//!
//! Two queries answer every row at once, whatever the number of services:
//! `sum by (service) (rate(…_http_requests_total[1m]))` and
//! `histogram_quantile(0.99, sum by (service, le) (rate(…_bucket[1m])))`, on the
//! families chora services export (`chora_service::HttpMetrics`), matched by
//! their suffix so any prefix counts (and the gateway's proxied requests, as
//! [`super::scrape`] reads them), without the observers' endpoints (`/metrics`,
//! `/health`). A replica's unit (`manifest-2`) is one instance of
//! its service: the same two queries `by (service, instance)` answer those,
//! asked only when such rows exist. The first fetch covers the whole span
//! ([`CHART_SPAN`]); later ones only the steps since, so a refresh costs
//! Prometheus a few evaluations per series, not 180.

use super::model::{CHART_SPAN, Point};
use super::rows::Target;
use super::scrape::{BUCKETS, GATEWAY_BUCKETS, GATEWAY_REQUESTS, NOT_TRAFFIC, REQUESTS};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The first fetch of a big system (every series, 15 minutes) may take a while.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A Prometheus and how far its answers have been fetched.
pub struct Prometheus {
    base: String,
    http: reqwest::Client,
    step: u64,
    /// The last step fetched (unix seconds), and the rows it was fetched for.
    done: Option<(u64, Vec<String>)>,
}

/// One series of a `query_range` answer: its labels and `[t, "value"]` pairs.
#[derive(serde::Deserialize)]
struct Series {
    metric: HashMap<String, String>,
    values: Vec<(f64, String)>,
}

#[derive(serde::Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct Data {
    result: Vec<Series>,
}

/// Values by (service, instance) and then time (unix seconds).
type Values = HashMap<(String, Option<String>), BTreeMap<u64, f64>>;

fn selector(suffix: &str, gateway: &str) -> String {
    format!(
        "{{__name__=~\".+{suffix}|{gateway}\",endpoint!~\"{}\"}}",
        NOT_TRAFFIC.join("|")
    )
}

/// The rate and p99 queries, grouped by `by` (`service` or `service, instance`).
pub fn queries(by: &str) -> (String, String) {
    (
        format!(
            "sum by ({by}) (rate({}[1m]))",
            selector(REQUESTS, GATEWAY_REQUESTS)
        ),
        format!(
            "histogram_quantile(0.99, sum by ({by}, le) (rate({}[1m])))",
            selector(BUCKETS, GATEWAY_BUCKETS)
        ),
    )
}

impl Prometheus {
    pub fn new(base: &str, http: reqwest::Client, step: Duration) -> Prometheus {
        Prometheus {
            base: base.trim_end_matches('/').to_owned(),
            http,
            step: step.as_secs().max(1),
            done: None,
        }
    }

    /// The points of every target row since the last fetch (all of the span
    /// when the rows changed), at `now` (unix seconds).
    pub async fn fetch(
        &mut self,
        targets: &BTreeMap<String, Target>,
        now: u64,
    ) -> Result<BTreeMap<String, Vec<Point>>, String> {
        if targets.is_empty() {
            return Ok(BTreeMap::new());
        }
        // The newest whole step, a second back so that its scrapes are in.
        let end = (now.saturating_sub(1) / self.step) * self.step;
        let rows: Vec<String> = targets.keys().cloned().collect();
        let start = match &self.done {
            Some((last, seen)) if *seen == rows => last + self.step,
            _ => end.saturating_sub(CHART_SPAN.as_secs()),
        };
        if start > end {
            return Ok(BTreeMap::new());
        }
        let mut rate = Values::new();
        let mut p99 = Values::new();
        let mut groupings = vec!["service"];
        if targets.values().any(|t| t.instance.is_some()) {
            groupings.push("service, instance");
        }
        for by in groupings {
            let (q_rate, q_p99) = queries(by);
            rate.extend(self.range(&q_rate, start, end).await?);
            p99.extend(self.range(&q_p99, start, end).await?);
        }
        self.done = Some((end, rows));
        let mut out = BTreeMap::new();
        for (name, t) in targets {
            let key = (t.service.clone(), t.instance.clone());
            let (r, q) = (rate.get(&key), p99.get(&key));
            let points = (start..=end)
                .step_by(self.step as usize)
                .map(|at| Point {
                    at_ms: at * 1000,
                    rate: r.and_then(|m| m.get(&at).copied()),
                    p99: q.and_then(|m| m.get(&at).copied()),
                })
                .collect();
            out.insert(name.clone(), points);
        }
        Ok(out)
    }

    async fn range(&self, query: &str, start: u64, end: u64) -> Result<Values, String> {
        let url = format!("{}/api/v1/query_range", self.base);
        // What errors say: no user or password a URL may carry.
        let shown = redact(&url);
        let answer: Answer = self
            .http
            .get(&url)
            .timeout(QUERY_TIMEOUT)
            .query(&[
                ("query", query),
                ("start", &start.to_string()),
                ("end", &end.to_string()),
                ("step", &self.step.to_string()),
            ])
            .send()
            .await
            .map_err(|e| format!("{shown}: {}", e.without_url()))?
            .json()
            .await
            .map_err(|e| format!("{shown}: {}", e.without_url()))?;
        if answer.status != "success" {
            return Err(format!(
                "{shown}: {}",
                answer.error.unwrap_or_else(|| answer.status.clone())
            ));
        }
        Ok(values(answer.data.map(|d| d.result).unwrap_or_default()))
    }
}

/// `scheme://host…` without the `user:password@` a URL may carry.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// The finite values of each series, by its `service` and `instance` labels.
fn values(result: Vec<Series>) -> Values {
    let mut out = Values::new();
    for s in result {
        let Some(service) = s.metric.get("service") else {
            continue;
        };
        let key = (service.clone(), s.metric.get("instance").cloned());
        let m: &mut BTreeMap<u64, f64> = out.entry(key).or_default();
        for (t, v) in s.values {
            if let Ok(v) = v.parse::<f64>()
                && v.is_finite()
            {
                m.insert(t as u64, v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_service_and_instance_and_nan_is_no_value() {
        let result: Vec<Series> = serde_json::from_value(serde_json::json!([
            {"metric": {"service": "analyzer"}, "values": [[100, "2.5"], [105, "NaN"]]},
            {"metric": {"service": "manifest", "instance": "manifest-1-a"}, "values": [[100, "1"]]},
            {"metric": {}, "values": [[100, "9"]]},
        ]))
        .unwrap();
        let v = values(result);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[&("analyzer".to_string(), None)],
            BTreeMap::from([(100, 2.5)])
        );
        assert_eq!(
            v[&("manifest".to_string(), Some("manifest-1-a".to_string()))][&100],
            1.0
        );
        let (rate, p99) = queries("service");
        assert_eq!(
            rate,
            "sum by (service) (rate({__name__=~\".+_http_requests_total|gateway_requests_total\",\
             endpoint!~\"/metrics|/v1/metrics|/health|/v1/health\"}[1m]))"
        );
        assert!(p99.starts_with("histogram_quantile(0.99, sum by (service, le) (rate("));
        assert_eq!(
            redact("http://u:secret@prom:9090/api/v1/query_range"),
            "http://prom:9090/api/v1/query_range"
        );
    }
}
