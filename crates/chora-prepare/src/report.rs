//! What a prepare phase did, handler by handler: the [`Report`] the runner
//! returns, its text form (what `chora prepare` prints) and its JSON form
//! (`--format json`: `{ok, dry_run, duration_ms, summary, created, repaired,
//! planned, skipped, failed, not_run, handlers}`, every item naming its handler
//! and module).
//!
//! A report is `ok` only when no handler failed and none was left unrun; the
//! counts of the text and of the JSON summary come from the same entries.

use crate::{Change, ChangeKind, Error};
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use std::fmt;
use std::time::Duration;

/// What the phase did, handler by handler.
#[derive(Debug, Clone)]
pub struct Report {
    /// No handler failed and none was left unrun.
    pub ok: bool,
    pub dry_run: bool,
    pub duration: Duration,
    /// In the order the handlers ran.
    pub entries: Vec<Entry>,
}

/// One handler's part of the report.
#[derive(Debug, Clone)]
pub struct Entry {
    pub handler: String,
    pub module: Option<String>,
    pub priority: i32,
    pub status: Status,
    /// How many times it was tried (0: not at all).
    pub attempts: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub enum Status {
    /// It ran and made these changes.
    Done(Vec<Change>),
    /// It was not needed, for this reason.
    Skipped(String),
    /// Dry run: it would make these changes.
    Planned(Vec<Change>),
    Failed(Error),
    /// It never started, for this reason (an earlier failure, the timeout).
    NotRun(String),
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Status::Done(_) => "done",
            Status::Skipped(_) => "skipped",
            Status::Planned(_) => "planned",
            Status::Failed(_) => "failed",
            Status::NotRun(_) => "not_run",
        }
    }
}

impl Report {
    /// Every change made (or, in a dry run, planned), with its handler's entry.
    pub fn changes(&self) -> impl Iterator<Item = (&Entry, &Change)> {
        self.entries.iter().flat_map(|e| {
            let list: &[Change] = match &e.status {
                Status::Done(c) | Status::Planned(c) => c,
                _ => &[],
            };
            list.iter().map(move |c| (e, c))
        })
    }

    pub fn failures(&self) -> impl Iterator<Item = &Error> {
        self.entries.iter().filter_map(|e| match &e.status {
            Status::Failed(err) => Some(err),
            _ => None,
        })
    }

    /// The first failure, for a one-line message and an exit code.
    pub fn first_failure(&self) -> Option<&Error> {
        self.failures().next()
    }

    /// Nothing was (or would be) changed and nothing failed.
    pub fn nothing_to_do(&self) -> bool {
        self.ok && self.changes().next().is_none()
    }

    fn count(&self, kind: ChangeKind) -> usize {
        self.changes().filter(|(_, c)| c.kind == kind).count()
    }

    /// The text report; `verbose` also lists what was skipped and why.
    pub fn render(&self, verbose: bool) -> String {
        let mut out = String::new();
        let ms = self.duration.as_secs_f64() * 1000.0;
        for e in &self.entries {
            let step = step_name(&e.handler, e.module.as_deref());
            match &e.status {
                Status::Done(changes) | Status::Planned(changes) => {
                    let (mark, verb) = if self.dry_run {
                        ("•", ["would create", "would repair"])
                    } else {
                        ("✓", ["created", "repaired"])
                    };
                    for c in changes {
                        let verb = match c.kind {
                            ChangeKind::Create => verb[0],
                            ChangeKind::Repair => verb[1],
                        };
                        out.push_str(&format!("{mark} {step}: {verb} {}", c.target));
                        if !c.detail.is_empty() {
                            out.push_str(&format!(" ({})", c.detail));
                        }
                        out.push('\n');
                    }
                    if changes.is_empty() {
                        let line = if self.dry_run {
                            format!("• {step}: would run\n")
                        } else {
                            format!("✓ {step}: done\n")
                        };
                        out.push_str(&line);
                    }
                }
                Status::Skipped(why) => {
                    if verbose {
                        out.push_str(&format!("· {step}: nothing to do ({why})\n"));
                    }
                }
                Status::Failed(err) => {
                    out.push_str(&format!("✗ {step}: {}\n", err.message));
                    if let Some(loc) = &err.location {
                        out.push_str(&format!("    at {loc}\n"));
                    }
                    if let Some(a) = &err.action {
                        out.push_str(&format!("    → {a}\n"));
                    }
                }
                Status::NotRun(why) => {
                    if verbose {
                        out.push_str(&format!("- {step}: {why}\n"));
                    }
                }
            }
        }
        let checked = self.entries.len();
        let skipped = self
            .entries
            .iter()
            .filter(|e| matches!(e.status, Status::Skipped(_)))
            .count();
        let (created, repaired) = (
            self.count(ChangeKind::Create),
            self.count(ChangeKind::Repair),
        );
        if !self.ok {
            let failed = self.failures().count();
            let not_run = self
                .entries
                .iter()
                .filter(|e| matches!(e.status, Status::NotRun(_)))
                .count();
            out.push_str(&format!(
                "✗ prepare failed: {failed} failed, {not_run} not run, {created} created, {repaired} repaired ({ms:.1} ms)\n"
            ));
        } else if self.nothing_to_do() {
            out.push_str(&format!(
                "✓ nothing to do: {checked} checks, everything in place ({ms:.1} ms)\n"
            ));
        } else if self.dry_run {
            out.push_str(&format!(
                "dry run: would create {created} and repair {repaired}; {skipped} checks already in place; nothing was changed ({ms:.1} ms)\n"
            ));
        } else {
            out.push_str(&format!(
                "✓ prepared: {created} created, {repaired} repaired, {skipped} checks already in place ({ms:.1} ms)\n"
            ));
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    handler: &'a str,
    module: Option<&'a str>,
    target: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
}

#[derive(Serialize)]
struct PlannedJson<'a> {
    handler: &'a str,
    module: Option<&'a str>,
    kind: ChangeKind,
    target: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
}

#[derive(Serialize)]
struct ReasonJson<'a> {
    handler: &'a str,
    module: Option<&'a str>,
    reason: &'a str,
}

#[derive(Serialize)]
struct FailedJson<'a> {
    handler: &'a str,
    module: Option<&'a str>,
    message: &'a str,
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a crate::Location>,
    retryable: bool,
}

#[derive(Serialize)]
struct HandlerJson<'a> {
    handler: &'a str,
    module: Option<&'a str>,
    priority: i32,
    status: &'a str,
    attempts: u32,
    duration_ms: f64,
}

#[derive(Serialize)]
struct Summary {
    handlers: usize,
    done: usize,
    skipped: usize,
    planned: usize,
    failed: usize,
    not_run: usize,
    created: usize,
    repaired: usize,
}

/// `{ok, dry_run, duration_ms, summary, created, repaired, planned, skipped,
/// failed, not_run, handlers}`; every item names its handler and module.
impl Serialize for Report {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut created = Vec::new();
        let mut repaired = Vec::new();
        let mut planned = Vec::new();
        let mut skipped = Vec::new();
        let mut failed = Vec::new();
        let mut not_run = Vec::new();
        let mut handlers = Vec::new();
        let mut summary = Summary {
            handlers: self.entries.len(),
            done: 0,
            skipped: 0,
            planned: 0,
            failed: 0,
            not_run: 0,
            created: self.count(ChangeKind::Create),
            repaired: self.count(ChangeKind::Repair),
        };
        for e in &self.entries {
            let handler = e.handler.as_str();
            let module = e.module.as_deref();
            match &e.status {
                Status::Done(changes) => {
                    summary.done += 1;
                    for c in changes {
                        let item = ChangeJson {
                            handler,
                            module,
                            target: &c.target,
                            detail: &c.detail,
                        };
                        match c.kind {
                            ChangeKind::Create => created.push(item),
                            ChangeKind::Repair => repaired.push(item),
                        }
                    }
                }
                Status::Planned(changes) => {
                    summary.planned += 1;
                    planned.extend(changes.iter().map(|c| PlannedJson {
                        handler,
                        module,
                        kind: c.kind,
                        target: &c.target,
                        detail: &c.detail,
                    }));
                }
                Status::Skipped(reason) => {
                    summary.skipped += 1;
                    skipped.push(ReasonJson {
                        handler,
                        module,
                        reason,
                    });
                }
                Status::Failed(err) => {
                    summary.failed += 1;
                    failed.push(FailedJson {
                        handler,
                        module,
                        message: &err.message,
                        action: err.action.as_deref(),
                        location: err.location.as_deref(),
                        retryable: err.retryable,
                    });
                }
                Status::NotRun(reason) => {
                    summary.not_run += 1;
                    not_run.push(ReasonJson {
                        handler,
                        module,
                        reason,
                    });
                }
            }
            handlers.push(HandlerJson {
                handler,
                module,
                priority: e.priority,
                status: e.status.label(),
                attempts: e.attempts,
                duration_ms: ms(e.duration),
            });
        }
        let mut st = s.serialize_struct("Report", 11)?;
        st.serialize_field("ok", &self.ok)?;
        st.serialize_field("dry_run", &self.dry_run)?;
        st.serialize_field("duration_ms", &ms(self.duration))?;
        st.serialize_field("summary", &summary)?;
        st.serialize_field("created", &created)?;
        st.serialize_field("repaired", &repaired)?;
        st.serialize_field("planned", &planned)?;
        st.serialize_field("skipped", &skipped)?;
        st.serialize_field("failed", &failed)?;
        st.serialize_field("not_run", &not_run)?;
        st.serialize_field("handlers", &handlers)?;
        st.end()
    }
}

/// `databases [billing]`: a handler and its module, as reports name a step.
pub(crate) fn step_name(handler: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("{handler} [{m}]"),
        None => handler.to_owned(),
    }
}
