//! The dashboard's HTML, rendered on the server: the whole page for `GET /ui`
//! (readable without JavaScript), and the same row, bootstrap and chart
//! fragments that the event stream carries, so the page's script only swaps
//! them in.
//!
//! - **One renderer.** The feed and the charts' task send what this file
//!   draws; the script draws nothing itself, so a row looks the same whether
//!   it came with the page, a snapshot or an update.
//! - **Everything shown is escaped** ([`esc`]): names, versions, URLs and
//!   errors come from the Manifest and the state file, which anyone allowed to
//!   register may fill. Numbers are formatted here, never taken as text.
//! - **Charts are inline SVG** of a fixed size (one `path` each, at most
//!   `SPARK_COLUMNS` points: the span cut in columns of their highest value),
//!   so a row's update stays small whatever the number of samples, and the page
//!   needs no script or style from elsewhere (its CSP allows neither).

use super::model::{BootstrapView, CHART_SPAN, Chart, Meta, Model, Row, sse};
use std::fmt::Write;

/// `&`, `<`, `>`, `"` and `'` escaped for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The age of an RFC 3339 time, as text (`-` when there is none).
fn age(t: Option<&str>) -> String {
    t.and_then(chora_api::parse_rfc3339)
        .map(|t| {
            let d = std::time::SystemTime::now()
                .duration_since(t)
                .unwrap_or_default();
            chora_text::duration::age(d)
        })
        .unwrap_or_else(|| "-".into())
}

/// A cell whose text the script keeps current from `data-since`.
fn since_cell(class: &str, t: Option<&str>) -> String {
    match t {
        Some(t) => format!(
            "<td class=\"{class}\" data-since=\"{}\">{}</td>",
            esc(t),
            age(Some(t))
        ),
        None => format!("<td class=\"{class}\">-</td>"),
    }
}

/// One service's `<tr>`, with its chart. `csrf` is the session's token for the
/// buttons' forms (without it the script adds its own from the page).
pub fn row(r: &Row, chart: Option<&Chart>, csrf: Option<&str>) -> String {
    let mut h = String::with_capacity(900);
    let _ = write!(
        h,
        "<tr data-service=\"{n}\" data-status=\"{s}\" data-order=\"{o}:{n}\">\
         <td class=\"svc\"><span class=\"dot\"></span>{n}</td>\
         <td><span class=\"badge {s}\">{s}</span>{state}</td>\
         <td class=\"ver\">{v}</td><td class=\"url\">{u}</td>",
        n = esc(&r.name),
        s = r.status,
        o = r.phase.unwrap_or(9),
        state = match r.state {
            Some(st) if st != "running" => format!(" <span class=\"state\">{st}</span>"),
            _ => String::new(),
        },
        v = r.version.as_deref().map(esc).unwrap_or_else(|| "-".into()),
        u = r
            .url
            .as_deref()
            .map(|u| format!("<code>{}</code>", esc(u)))
            .unwrap_or_else(|| "-".into()),
    );
    h.push_str(&since_cell("hb", r.last_heartbeat.as_deref()));
    let unit = match (&r.pid, &r.container) {
        (Some(p), _) => format!("pid {p}"),
        (None, Some(c)) => esc(&c.chars().take(12).collect::<String>()),
        _ => "-".into(),
    };
    let _ = write!(
        h,
        "<td class=\"rt\">{}</td><td class=\"pid\">{unit}</td><td class=\"num\">{}</td>",
        esc(&r.runtime),
        r.restarts
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    h.push_str(&since_cell("up", r.started_at.as_deref()));
    let _ = write!(h, "<td class=\"traffic\">{}</td>", charts(chart));
    h.push_str("<td class=\"act\">");
    if r.state.is_some() {
        let token = esc(csrf.unwrap_or(""));
        let running = matches!(r.state, Some("running") | Some("restarting"));
        for (action, label, useless) in [
            ("stop", "Stop", !running),
            ("start", "Start", running),
            ("restart", "Restart", false),
        ] {
            let _ = write!(
                h,
                "<form method=\"post\" action=\"/ui/services/{n}/{action}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
                 <button type=\"submit\" data-action=\"{action}\"{d}>{label}</button></form>",
                n = esc(&r.name),
                d = if useless { " disabled" } else { "" },
            );
        }
    }
    let _ = write!(
        h,
        "<a class=\"logs\" href=\"/ui/logs/{n}\" data-logs=\"{n}\">Logs</a></td></tr>",
        n = esc(&r.name)
    );
    h
}

/// A chart's drawing: width and height in px (its viewBox too), and columns.
const SPARK_W: f64 = 72.0;
const SPARK_H: f64 = 16.0;
const SPARK_COLUMNS: usize = 36;

/// A row's two charts, one over the other: request rate and p99 latency over
/// the last 15 minutes, each an inline SVG (`data-chart="rate"` / `"p99"`) with
/// its newest value beside it. Empty charts when there is no data (yet).
pub fn charts(c: Option<&Chart>) -> String {
    let (source, title) = match c.map(|c| c.source) {
        Some("prometheus") => ("prometheus", "from Prometheus"),
        Some(_) => ("metrics", "sampled from the service's /metrics every 5 s"),
        None => ("none", "no data yet"),
    };
    format!(
        "<div class=\"charts\" data-source=\"{source}\" title=\"last 15 minutes, {title}\">{}{}</div>",
        spark(c, "rate", |p| p.rate, rate_text),
        spark(c, "p99", |p| p.p99, seconds_text),
    )
}

/// `0/s`, `0.25/s`, `3.4/s`, `120/s`, `1.5k/s`.
pub fn rate_text(v: f64) -> String {
    if v == 0.0 {
        "0/s".into()
    } else if v < 1.0 {
        format!("{v:.2}/s")
    } else if v < 10.0 {
        format!("{v:.1}/s")
    } else if v < 1000.0 {
        format!("{v:.0}/s")
    } else {
        format!("{:.1}k/s", v / 1000.0)
    }
}

/// `850µs`, `3.2ms`, `120ms`, `1.25s`.
pub fn seconds_text(v: f64) -> String {
    if v < 0.001 {
        format!("{:.0}µs", v * 1e6)
    } else if v < 0.1 {
        format!("{:.1}ms", v * 1e3)
    } else if v < 1.0 {
        format!("{:.0}ms", v * 1e3)
    } else {
        format!("{v:.2}s")
    }
}

/// One chart: the span (15 minutes, or since the first point while that is
/// shorter) cut in columns, each the highest value it holds (so a spike stays
/// visible), drawn as a filled line from 0 to the highest value; a column
/// whose points all lack a value breaks the line.
fn spark(
    c: Option<&Chart>,
    kind: &str,
    value: impl Fn(&super::model::Point) -> Option<f64>,
    text: fn(f64) -> String,
) -> String {
    let points = c.map(|c| &c.points);
    let end = points.and_then(|p| p.back()).map_or(0, |p| p.at_ms);
    let first = points.and_then(|p| p.front()).map_or(0, |p| p.at_ms);
    let start = first.max(end.saturating_sub(CHART_SPAN.as_millis() as u64));
    let span = end - start;
    // Per column: None = no point there; Some(None) = points without a value.
    let mut cols: Vec<Option<Option<f64>>> = vec![None; SPARK_COLUMNS];
    for p in points.into_iter().flatten().filter(|p| p.at_ms >= start) {
        let i = match span {
            0 => SPARK_COLUMNS - 1,
            _ => ((p.at_ms - start) * (SPARK_COLUMNS as u64 - 1) / span) as usize,
        };
        let col = &mut cols[i.min(SPARK_COLUMNS - 1)];
        *col = Some(match (col.flatten(), value(p)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        });
    }
    let max = cols
        .iter()
        .flatten()
        .flatten()
        .fold(0.0_f64, |a, &b| a.max(b));
    let last = points.and_then(|p| p.back()).and_then(&value);
    let n = points.map_or(0, |p| p.len());
    let (w, h) = (SPARK_W, SPARK_H);
    let y = |v: f64| {
        if max > 0.0 {
            (h - 1.0) - v / max * (h - 3.0)
        } else {
            h - 1.0
        }
    };
    let mut d = String::new();
    let mut run: Option<f64> = None; // the x where the current stretch began
    let mut prev_x = 0.0;
    for (i, col) in cols.iter().enumerate() {
        let x = (i as f64 + 0.5) * w / SPARK_COLUMNS as f64;
        match col {
            None => continue,
            Some(None) => {
                if run.take().is_some() {
                    let _ = write!(d, "L{prev_x:.1},{h}Z");
                }
            }
            Some(Some(v)) => {
                if run.is_none() {
                    let _ = write!(d, "M{x:.1},{h}");
                    run = Some(x);
                }
                let _ = write!(d, "L{x:.1},{:.1}", y(*v));
                prev_x = x;
            }
        }
    }
    if run.is_some() {
        let _ = write!(d, "L{prev_x:.1},{h}Z");
    }
    let shown = last.map(text).unwrap_or_else(|| "-".into());
    format!(
        "<span class=\"spark\"><svg data-chart=\"{kind}\" data-points=\"{n}\" data-max=\"{max}\" \
         data-last=\"{last}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         role=\"img\" aria-label=\"{kind}: {shown}, highest {top} in 15 minutes\">\
         <path class=\"base\" d=\"M0,{base}H{w}\"/><path class=\"line\" d=\"{d}\"/></svg>\
         <span class=\"v\">{shown}</span></span>",
        last = last.map(|v| v.to_string()).unwrap_or_default(),
        top = text(max),
        base = h - 0.5,
    )
}

/// The bootstrap panel's body.
pub fn bootstrap(b: Option<&BootstrapView>) -> String {
    let Some(b) = b else {
        return "<p class=\"muted\">No bootstrap state here (the orchestrator was started \
                without <code>--home</code>, or no bootstrap has run).</p>"
            .into();
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<p class=\"bs\"><span class=\"badge {s}\">{s}</span> <span class=\"muted\">{env} · \
         phase {p}</span></p><ol class=\"phases\">",
        s = esc(&b.status),
        env = esc(&b.environment),
        p = b.current_phase,
    );
    for p in &b.phases {
        let _ = write!(
            h,
            "<li class=\"{s}\"><span class=\"pn\">{n}</span><span class=\"pname\">{name}</span>\
             <span class=\"pdur\">{d}</span></li>",
            s = p.status,
            n = p.phase,
            name = p.name,
            d = p
                .duration_ms
                .map(|ms| chora_text::duration::span(std::time::Duration::from_millis(ms)))
                .unwrap_or_else(|| match p.status {
                    "pending" => "-".into(),
                    s => s.replace('_', " "),
                }),
        );
    }
    h.push_str("</ol>");
    if let Some(at) = &b.completed_at {
        let _ = write!(
            h,
            "<p class=\"muted small\">Completed {}, up <span data-since=\"{}\">{}</span></p>",
            esc(at),
            esc(b.started_at.as_deref().unwrap_or(at)),
            age(b.started_at.as_deref().or(Some(at)))
        );
    }
    if let Some(e) = &b.last_error {
        let _ = write!(
            h,
            "<div class=\"err\"><strong>Last error</strong><pre>{}</pre></div>",
            esc(e)
        );
    }
    h
}

/// The banner shown while the Manifest cannot be reached.
pub fn banner(m: &Meta) -> String {
    format!(
        "<div id=\"manifest-banner\" class=\"banner\"{}>The Manifest at <code>{}</code> is not \
         answering; showing what was last seen, retrying…</div>",
        if m.manifest_reachable { " hidden" } else { "" },
        esc(&m.manifest_url)
    )
}

/// The `snapshot` event: everything, with the number of the last update.
pub fn snapshot_event(m: &Model) -> String {
    let rows = m.ordered();
    let html: String = rows
        .iter()
        .map(|r| row(r, m.charts.get(&r.name), None))
        .collect();
    let doc = serde_json::json!({
        "seq": m.seq,
        "now": chora_api::rfc3339(std::time::SystemTime::now()),
        "rows": rows,
        "html": html,
        "meta": meta_json(&m.meta),
    });
    sse("snapshot", m.seq, &doc.to_string())
}

/// The `meta` event's data: the model's meta and the bootstrap panel's HTML.
pub fn meta_json(m: &Meta) -> serde_json::Value {
    serde_json::json!({ "meta": m, "html": bootstrap(m.bootstrap.as_ref()) })
}

/// The whole page.
pub fn page(m: &Model, csrf: &str, assets: &str) -> String {
    let rows: Vec<&Row> = m.ordered();
    let up = rows.iter().filter(|r| r.status == "up").count();
    let mut body = String::new();
    for r in &rows {
        body.push_str(&row(r, m.charts.get(&r.name), Some(csrf)));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"color-scheme\" content=\"light dark\">\
<meta name=\"csrf-token\" content=\"{csrf}\">\
<title>chora · dashboard</title>\
<link rel=\"icon\" href=\"data:,\">\
<link rel=\"stylesheet\" href=\"/ui/app.css?v={assets}\">\
<script src=\"/ui/app.js?v={assets}\" defer></script></head>\
<body><header class=\"top\"><div class=\"brand\"><span class=\"logo\">◆</span> chora \
<span class=\"sub\">dashboard</span></div>\
<div class=\"summary\" id=\"summary\">{up} of {total} up</div>\
<div class=\"conn\" id=\"conn\" data-state=\"static\">static page</div></header>\
<main>{banner}<section class=\"card\"><h2>Services</h2><div class=\"scroll\">\
<table id=\"services\"><thead><tr><th>Service</th><th>Status</th><th>Version</th><th>URL</th>\
<th title=\"time since the last heartbeat\">Heartbeat</th><th>Runtime</th><th>PID / container</th>\
<th>Restarts</th><th>Uptime</th>\
<th title=\"request rate (above) and p99 latency (below) over the last 15 minutes\">Traffic \
<span class=\"muted\">15 min</span></th><th></th></tr></thead><tbody>{body}</tbody></table></div>\
</section><div class=\"grid\"><section class=\"card\" id=\"bootstrap\"><h2>Bootstrap</h2>\
<div id=\"bootstrap-body\">{bs}</div></section>\
<section class=\"card\" id=\"logs\"><h2>Logs <span id=\"log-name\" class=\"muted\"></span>\
<button id=\"log-close\" type=\"button\" hidden>Close</button></h2>\
<pre id=\"log\" class=\"log\">Choose <b>Logs</b> on a service to follow its log here.</pre>\
</section></div></main>\
<footer class=\"muted small\">chora v{version} · live through server-sent events · \
<form method=\"post\" action=\"/ui/logout\" class=\"inline\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button class=\"link\">Log out</button>\
</form></footer></body></html>\n",
        total = rows.len(),
        banner = banner(&m.meta),
        bs = bootstrap(m.meta.bootstrap.as_ref()),
        version = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_escape_and_carry_the_data_attributes() {
        let r = Row {
            name: "a<b".into(),
            status: "unhealthy",
            version: Some("1.0\"".into()),
            url: None,
            last_heartbeat: None,
            runtime: "process".into(),
            pid: Some(7),
            container: None,
            restarts: Some(2),
            started_at: None,
            state: Some("restarting"),
            phase: Some(3),
            instances: 1,
        };
        let h = row(&r, None, Some("tok"));
        assert!(h.starts_with("<tr data-service=\"a&lt;b\" data-status=\"unhealthy\""));
        assert!(h.contains("1.0&quot;") && h.contains("pid 7") && h.contains("restarting"));
        assert_eq!(h.matches("value=\"tok\"").count(), 3);
        // No chart yet: two empty ones all the same.
        assert!(h.contains("data-chart=\"rate\" data-points=\"0\" data-max=\"0\""));
        assert!(h.contains("data-chart=\"p99\" data-points=\"0\""));
    }

    #[test]
    fn charts_draw_the_span_and_break_where_nothing_was_known() {
        use super::super::model::Point;
        let mut c = Chart::new("metrics");
        let t0 = 1_000_000_000_000;
        for i in 0..180u64 {
            let known = !(60..70).contains(&i);
            c.push(Point {
                at_ms: t0 + i * 5000,
                rate: known.then_some(i as f64),
                p99: known.then_some(0.002),
            });
        }
        let h = charts(Some(&c));
        assert!(h.contains("data-source=\"metrics\""), "{h}");
        assert!(
            h.contains(
                "data-chart=\"rate\" data-points=\"180\" data-max=\"179\" data-last=\"179\""
            ),
            "{h}"
        );
        assert!(h.contains("<span class=\"v\">179/s</span>"), "{h}");
        assert!(h.contains("<span class=\"v\">2.0ms</span>"), "{h}");
        let rate = h.split("data-chart=\"rate\"").nth(1).unwrap();
        let line = rate.split("class=\"line\" d=\"").nth(1).unwrap();
        let line = line.split('"').next().unwrap();
        // Two stretches (the unknown minute breaks it), each closed down to 0.
        assert_eq!(line.matches('M').count(), 2, "{line}");
        assert_eq!(line.matches('Z').count(), 2, "{line}");
        // The newest point is at the top (the highest), the oldest at the bottom.
        assert!(line.contains(",2.0LZ") || line.contains(",2.0L"), "{line}");
        // Older than the span: gone.
        c.push(Point {
            at_ms: t0 + 200 * 5000,
            rate: Some(1.0),
            p99: None,
        });
        assert!(c.points.front().unwrap().at_ms > t0 + 19 * 5000);
        assert_eq!(rate_text(0.25), "0.25/s");
        assert_eq!(seconds_text(0.00085), "850µs");
    }
}
