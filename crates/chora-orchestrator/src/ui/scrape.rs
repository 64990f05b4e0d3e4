//! The dashboard's own sampling of the services' `/metrics`, for when no
//! Prometheus is configured: it reads the two families every chora service
//! exports (`chora_service::HttpMetrics`: `<prefix>_http_requests_total` and
//! `<prefix>_http_request_duration_seconds`, whatever the prefix), plus the
//! gateway's proxied requests (`gateway_requests_total`,
//! `gateway_request_duration_seconds`: they do not pass its router), and turns
//! the counters of successive samples into a request rate and a p99 latency,
//! as Prometheus' `rate(…[1m])` and `histogram_quantile(0.99, …)` do.
//!
//! Requests to `/metrics` and `/health` are left out: they are the observers
//! (this sampler, Prometheus, health checks), not the service's traffic.
//!
//! Only the lines of those two families are parsed (the text format's
//! `name{labels} value` lines; comments and every other family skipped): a
//! general exposition parser would be a dependency for a few dozen lines.
//! Memory is bounded: per URL, the last sample and the intervals of the last
//! [`RATE_WINDOW`]; URLs no row names any more are forgotten.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a rate and a quantile are computed over (Prometheus' `[1m]`).
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Endpoints that are not traffic: whoever watches the service asks them.
pub const NOT_TRAFFIC: [&str; 4] = ["/metrics", "/v1/metrics", "/health", "/v1/health"];

/// The request counters: any name with this suffix…
pub const REQUESTS: &str = "_http_requests_total";
/// …and the latency histograms' buckets, with this one.
pub const BUCKETS: &str = "_http_request_duration_seconds_bucket";
/// The gateway's proxied requests, counted apart from its own routes.
pub const GATEWAY_REQUESTS: &str = "gateway_requests_total";
pub const GATEWAY_BUCKETS: &str = "gateway_request_duration_seconds_bucket";

/// One scrape: the request counter and the latency buckets (cumulative, by
/// upper bound, the `+Inf` one last), summed over endpoints and methods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    pub requests: f64,
    pub buckets: Vec<(f64, f64)>,
}

/// Reads the two families from a text exposition (Prometheus or OpenMetrics).
pub fn parse(text: &str) -> Sample {
    let mut requests = 0.0;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let is_requests = name.ends_with(REQUESTS) || name == GATEWAY_REQUESTS;
        if !is_requests && !name.ends_with(BUCKETS) && name != GATEWAY_BUCKETS {
            continue;
        }
        let Some((labels, rest)) = labels(&line[name_end..]) else {
            continue;
        };
        let Some(value) = rest.split_whitespace().next().and_then(number) else {
            continue;
        };
        if labels
            .iter()
            .any(|(k, v)| *k == "endpoint" && NOT_TRAFFIC.contains(&v.as_str()))
        {
            continue;
        }
        if is_requests {
            requests += value;
        } else if let Some(le) = labels.iter().find(|(k, _)| *k == "le") {
            let Some(le) = number(&le.1) else { continue };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(b) => b.1 += value,
                None => buckets.push((le, value)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Sample { requests, buckets }
}

/// A sample value or a bound: a float, `+Inf`, `-Inf` or `NaN`.
fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// `{k="v",…} rest` → the labels (values unescaped) and `rest`; no braces →
/// no labels.
fn labels(s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let Some(mut s) = s.strip_prefix('{') else {
        return Some((Vec::new(), s));
    };
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((out, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        let mut chars = s[eq + 1..].trim_start().strip_prefix('"')?.char_indices();
        let start = s.len() - chars.as_str().len();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break start + i + 1,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key, value));
        s = &s[end..];
    }
}

/// The `q` quantile of cumulative buckets (sorted, `+Inf` last), as Prometheus'
/// `histogram_quantile` computes it: linear within the bucket the rank falls
/// in; the highest finite bound when it falls in `+Inf`'s. `None` without
/// observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last_le, total) = buckets.last()?;
    if last_le != f64::INFINITY || total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = q * total;
    // Counts made of deltas may dip after a reset: make them monotonic.
    let mut cum = 0.0_f64;
    let mut prev = (0.0, 0.0);
    for (i, &(le, count)) in buckets.iter().enumerate() {
        cum = cum.max(count);
        if cum >= rank {
            if i == buckets.len() - 1 {
                return Some(buckets[i - 1].0);
            }
            if i == 0 && le <= 0.0 {
                return Some(le);
            }
            let (lower, below) = prev;
            if cum == below {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / (cum - below));
        }
        prev = (le, cum);
    }
    None
}

/// What one URL added between two samples.
struct Interval {
    at: Instant,
    secs: f64,
    requests: f64,
    buckets: Vec<(f64, f64)>,
}

#[derive(Default)]
struct UrlState {
    last: Option<(Instant, Sample)>,
    window: VecDeque<Interval>,
}

/// Successive samples of many URLs.
#[derive(Default)]
pub struct Sampler {
    urls: HashMap<String, UrlState>,
}

impl Sampler {
    /// Records `url`'s sample taken at `now` (`None`: it did not answer).
    pub fn observe(&mut self, url: &str, now: Instant, sample: Option<Sample>) {
        let st = self.urls.entry(url.to_owned()).or_default();
        while st
            .window
            .front()
            .is_some_and(|i| now.duration_since(i.at) > RATE_WINDOW)
        {
            st.window.pop_front();
        }
        let Some(sample) = sample else {
            return;
        };
        if let Some((then, old)) = &st.last {
            let reset = sample.requests < old.requests
                || sample
                    .buckets
                    .iter()
                    .any(|(le, c)| old.buckets.iter().any(|(ole, oc)| ole == le && c < oc));
            let before = |le: f64| {
                old.buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |b| b.1)
            };
            st.window.push_back(Interval {
                at: now,
                secs: now.duration_since(*then).as_secs_f64(),
                requests: if reset {
                    sample.requests
                } else {
                    sample.requests - old.requests
                },
                buckets: sample
                    .buckets
                    .iter()
                    .map(|&(le, c)| (le, if reset { c } else { c - before(le) }))
                    .collect(),
            });
        }
        st.last = Some((now, sample));
    }

    /// The request rate (per second) and p99 (seconds) of the URLs that
    /// answered at `now`, over the last [`RATE_WINDOW`]; `None` when none of
    /// them answered then or none has two samples yet.
    pub fn point(&self, urls: &[String], now: Instant) -> Option<(f64, Option<f64>)> {
        let mut rate = 0.0;
        let mut any = false;
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for u in urls {
            let Some(st) = self.urls.get(u) else { continue };
            let fresh = st.last.as_ref().is_some_and(|(t, _)| *t == now);
            let secs: f64 = st.window.iter().map(|i| i.secs).sum();
            if !fresh || secs <= 0.0 {
                continue;
            }
            any = true;
            rate += st.window.iter().map(|i| i.requests).sum::<f64>() / secs;
            for i in &st.window {
                for &(le, c) in &i.buckets {
                    match buckets.iter_mut().find(|(b, _)| *b == le) {
                        Some(b) => b.1 += c,
                        None => buckets.push((le, c)),
                    }
                }
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        any.then(|| (rate, quantile(0.99, &buckets)))
    }

    /// Forgets every URL not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<&str>) {
        self.urls.retain(|u, _| keep.contains(u.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP analyzer_http_requests HTTP requests by endpoint, method and status
# TYPE analyzer_http_requests counter
analyzer_http_requests_total{endpoint="/analyze",method="POST",status="200"} 90
analyzer_http_requests_total{endpoint="/analyze",method="POST",status="400"} 10
analyzer_http_requests_total{endpoint="/metrics",method="GET",status="200"} 500
analyzer_http_requests_total{endpoint="/health",method="GET",status="200"} 70
# TYPE analyzer_http_request_duration_seconds histogram
analyzer_http_request_duration_seconds_sum{endpoint="/analyze",method="POST"} 0.5
analyzer_http_request_duration_seconds_count{endpoint="/analyze",method="POST"} 100
analyzer_http_request_duration_seconds_bucket{endpoint="/analyze",method="POST",le="0.001"} 50
analyzer_http_request_duration_seconds_bucket{endpoint="/analyze",method="POST",le="0.01"} 98
analyzer_http_request_duration_seconds_bucket{endpoint="/analyze",method="POST",le="+Inf"} 100
analyzer_http_request_duration_seconds_bucket{endpoint="/metrics",method="GET",le="0.001"} 500
analyzer_http_request_duration_seconds_bucket{endpoint="/metrics",method="GET",le="0.01"} 500
analyzer_http_request_duration_seconds_bucket{endpoint="/metrics",method="GET",le="+Inf"} 500
gateway_request_count{service="x",status="200"} 7
odd_http_requests_total{endpoint="a \"quoted\" } brace",method="GET",status="200"} 1
# EOF
"#;

    #[test]
    fn traffic_families_are_summed_and_observers_left_out() {
        let s = parse(TEXT);
        assert_eq!(s.requests, 101.0);
        assert_eq!(
            s.buckets,
            [(0.001, 50.0), (0.01, 98.0), (f64::INFINITY, 100.0)]
        );
    }

    #[test]
    fn the_quantile_is_prometheus_histogram_quantile() {
        let b = [(0.001, 50.0), (0.01, 98.0), (f64::INFINITY, 100.0)];
        // Rank 50 is the first bucket's top.
        assert_eq!(quantile(0.5, &b), Some(0.001));
        // Rank 75: 25 of the 48 in (0.001, 0.01].
        let q = quantile(0.75, &b).unwrap();
        assert!((q - (0.001 + 0.009 * 25.0 / 48.0)).abs() < 1e-12, "{q}");
        // Rank 99 falls in +Inf's bucket: the highest finite bound.
        assert_eq!(quantile(0.99, &b), Some(0.01));
        assert_eq!(quantile(0.99, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn rates_come_from_successive_samples_and_survive_a_restart() {
        let sample = |requests: f64, fast: f64, all: f64| Sample {
            requests,
            buckets: vec![(0.001, fast), (f64::INFINITY, all)],
        };
        let mut s = Sampler::default();
        let urls = vec!["http://a".to_string()];
        let t0 = Instant::now();
        s.observe("http://a", t0, Some(sample(100.0, 100.0, 100.0)));
        assert_eq!(s.point(&urls, t0), None, "one sample is no rate");
        let t1 = t0 + Duration::from_secs(5);
        s.observe("http://a", t1, Some(sample(150.0, 100.0, 150.0)));
        let (rate, p99) = s.point(&urls, t1).unwrap();
        assert_eq!(rate, 10.0);
        assert_eq!(
            p99,
            Some(0.001),
            "all 50 new ones were slow: the top finite bound"
        );
        // Restarted: the counter starts again from zero.
        let t2 = t1 + Duration::from_secs(5);
        s.observe("http://a", t2, Some(sample(20.0, 20.0, 20.0)));
        assert_eq!(s.point(&urls, t2).unwrap().0, 7.0);
        // Not answering: no point, and after the window nothing is left.
        let t3 = t2 + Duration::from_secs(5);
        s.observe("http://a", t3, None);
        assert_eq!(s.point(&urls, t3), None);
        s.retain(&BTreeSet::new());
        assert!(s.urls.is_empty());
    }
}
