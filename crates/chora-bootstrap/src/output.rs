//! Progress output (DESIGN.md §7): the seed's console layout with ⏳ / ✓ / ✗ and
//! durations, a spinner while waiting when stdout is a terminal, plain lines
//! otherwise, no colour with `NO_COLOR`; or, with `--format json`, one JSON
//! document on stdout and nothing else there.

use chora_text::duration::took as human;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: u8,
    pub name: String,
    pub status: &'static str,
    pub duration_seconds: f64,
    pub steps: Vec<StepReport>,
    pub services_started: Vec<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

/// Indents each line of `s` under a step's line (a log tail in an error).
pub fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The block a successful `chora bootstrap` ends with (the seed's "System
/// Status" and "Next steps").
pub fn closing_block(ctx: &crate::ctx::Ctx, state: &chora_api::bootstrap_state::State) -> String {
    let running = state.services_started.len();
    let healthy = state
        .services_started
        .iter()
        .filter(|n| state.services_healthy.contains(n))
        .count();
    let mut s = String::new();
    let _ = writeln!(s, "\nSystem Status:");
    let _ = writeln!(s, "  {running} services running");
    let _ = writeln!(s, "  {healthy} services healthy");
    let _ = writeln!(s, "  {} services unhealthy", running - healthy);
    let _ = writeln!(s, "\nNext steps:");
    let mut steps = vec!["View system status: chora bootstrap status".to_owned()];
    if let Some((https, ca)) = ctx.gateway_https() {
        let trust = ca
            .map(|c| format!(" (trust its CA: {})", c.display()))
            .unwrap_or_default();
        steps.push(format!("Access Gateway: {https}{trust}"));
    } else if let Some(g) = ctx.url_of("gateway") {
        steps.push(format!("Access Gateway: {g}"));
    }
    if let Some(o) = ctx.url_of("orchestrator") {
        steps.push(format!(
            "Access Orchestrator UI: {o}/ui (log in with: chora bootstrap ui)"
        ));
    }
    steps.push(format!(
        "View logs: tail -f {}/<service>.log",
        ctx.home.logs().display()
    ));
    for (i, step) in steps.iter().enumerate() {
        let _ = writeln!(s, "  {}. {step}", i + 1);
    }
    let _ = write!(s, "\n{}", "━".repeat(61));
    s
}

pub struct Reporter {
    json: bool,
    tty: bool,
    color: bool,
    pub phases: Vec<PhaseReport>,
    spinner: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    started: Instant,
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        Reporter {
            json,
            tty: tty && !json,
            color: tty && std::env::var_os("NO_COLOR").is_none(),
            phases: Vec::new(),
            spinner: None,
            started: Instant::now(),
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// A line of text output (nothing in JSON mode).
    pub fn line(&mut self, s: &str) {
        if self.json {
            return;
        }
        self.stop_spinner();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }

    pub fn header(&mut self, title: &str) {
        self.line(&format!("{title}\n{}", "━".repeat(61)));
    }

    pub fn phase(&mut self, n: u8, name: &str) {
        self.phases.push(PhaseReport {
            phase: n,
            name: name.to_owned(),
            status: "in_progress",
            duration_seconds: 0.0,
            steps: Vec::new(),
            services_started: Vec::new(),
            started: Some(Instant::now()),
        });
        self.line(&format!("\nPhase {n}: {name}"));
    }

    pub fn phase_done(&mut self, status: &'static str) {
        if let Some(p) = self.phases.last_mut() {
            p.status = status;
            p.duration_seconds = p.started.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        }
    }

    pub fn service_started(&mut self, name: &str) {
        if let Some(p) = self.phases.last_mut()
            && !p.services_started.iter().any(|s| s == name)
        {
            p.services_started.push(name.to_owned());
        }
    }

    /// `⏳ label...`: a spinner on a terminal, a plain line otherwise.
    pub fn begin(&mut self, label: &str) {
        if self.json {
            return;
        }
        self.stop_spinner();
        if self.tty {
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let label = label.to_owned();
            let h = std::thread::spawn(move || {
                const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
                let mut i = 0;
                while !s2.load(Ordering::Relaxed) {
                    print!("\r\x1b[2K  {} {label}...", FRAMES[i % FRAMES.len()]);
                    let _ = std::io::stdout().flush();
                    i += 1;
                    std::thread::sleep(Duration::from_millis(80));
                }
                print!("\r\x1b[2K");
                let _ = std::io::stdout().flush();
            });
            self.spinner = Some((stop, h));
        } else {
            println!("  ⏳ {label}...");
        }
    }

    fn stop_spinner(&mut self) {
        if let Some((stop, h)) = self.spinner.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }

    fn step(
        &mut self,
        mark: String,
        status: &'static str,
        name: &str,
        took: Option<Duration>,
        detail: Option<&str>,
    ) {
        if let Some(p) = self.phases.last_mut() {
            p.steps.push(StepReport {
                name: name.to_owned(),
                status,
                duration_ms: took.map(|d| d.as_millis() as u64),
                detail: detail.map(str::to_owned),
            });
        }
        let took = took.map(|d| format!(" ({})", human(d))).unwrap_or_default();
        let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
        self.line(&format!("  {mark} {name}{took}{detail}"));
    }

    pub fn ok(&mut self, name: &str, took: Option<Duration>) {
        let m = self.paint("32", "✓");
        self.step(m, "passed", name, took, None);
    }

    pub fn ok_with(&mut self, name: &str, took: Option<Duration>, detail: &str) {
        let m = self.paint("32", "✓");
        self.step(m, "passed", name, took, Some(detail));
    }

    pub fn warn(&mut self, name: &str, detail: &str) {
        let m = self.paint("33", "⚠");
        self.step(m, "warning", name, None, Some(detail));
    }

    pub fn fail(&mut self, name: &str, took: Option<Duration>, detail: &str) {
        let m = self.paint("31", "✗");
        self.step(m, "failed", name, took, Some(detail));
    }

    /// The closing line or JSON document.
    pub fn finish(
        &mut self,
        status: &str,
        services: serde_json::Value,
        failure: Option<&crate::failure::Failure>,
    ) {
        self.stop_spinner();
        let took = self.started.elapsed();
        if self.json {
            let mut doc = serde_json::json!({
                "status": status,
                "duration_seconds": (took.as_secs_f64() * 1000.0).round() / 1000.0,
                "phases": self.phases,
                "services": services,
            });
            if let Some(f) = failure {
                doc["error"] = serde_json::to_value(f).expect("failures serialize");
                doc["exit_code"] = f.exit.into();
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("serializes")
            );
            return;
        }
        match status {
            "completed" => {
                let m = self.paint("32", "✓");
                self.line(&format!(
                    "\n{m} Bootstrap completed successfully in {}",
                    human(took)
                ));
            }
            // Each said its own closing line already.
            "unchanged" | "changed" => {}
            _ => {
                let m = self.paint("31", "✗");
                self.line(&format!("\n{m} Bootstrap {status} after {}", human(took)));
            }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_spinner();
    }
}
