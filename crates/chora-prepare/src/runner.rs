//! The runner: orders handlers by priority, asks each whether it is needed,
//! runs the needed ones with retries inside the phase's deadline, and reports.

use crate::handlers::{self, DirectoriesHandler};
use crate::pool::{IO_WORKERS, for_each_index, lock};
use crate::{Change, ChangeKind, Context, Error, Handler, Need};
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use std::collections::BTreeSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs handlers in priority order (lower first; ties in the order added).
///
/// Defaults: fail fast, 3 attempts for retryable failures (50 ms, then 100 ms
/// between them), a 30 s timeout for the whole phase, not a dry run.
pub struct Runner {
    ctx: Context,
    handlers: Vec<Box<dyn Handler>>,
    /// Per handler: `None` for an application's own (run alone), else the
    /// databases a built-in handler writes (it may run beside others).
    claims: Vec<Option<Vec<PathBuf>>>,
    fail_fast: bool,
    attempts: u32,
    timeout: Duration,
    retry_delay: Duration,
    dry_run: bool,
}

impl Runner {
    /// A runner with the built-in handlers: the standard directories
    /// (`data/`, `logs/`, `cache/`, `temp/`), then, per module of the context,
    /// its directories, databases, files, templates and downloads.
    pub fn new(ctx: Context) -> Runner {
        let mut handlers: Vec<Box<dyn Handler>> = vec![Box::new(DirectoriesHandler::standard())];
        let mut claims = vec![Some(Vec::new())];
        for m in ctx.modules() {
            for (h, c) in handlers::for_module(m) {
                handlers.push(h);
                claims.push(Some(c));
            }
        }
        Runner {
            handlers,
            claims,
            ..Runner::empty(ctx)
        }
    }

    /// A runner with no handler at all; add them with [`Runner::with_handler`].
    pub fn empty(ctx: Context) -> Runner {
        Runner {
            ctx,
            handlers: Vec::new(),
            claims: Vec::new(),
            fail_fast: true,
            attempts: 3,
            timeout: Duration::from_secs(30),
            retry_delay: Duration::from_millis(50),
            dry_run: false,
        }
    }

    /// Adds a handler; it runs at its priority among the others.
    pub fn with_handler(mut self, handler: Box<dyn Handler>) -> Runner {
        self.handlers.push(handler);
        self.claims.push(None);
        self
    }

    /// Stop at the first failure (default), or carry on with the other handlers.
    pub fn fail_fast(mut self, yes: bool) -> Runner {
        self.fail_fast = yes;
        self
    }

    /// How many times a handler is tried when it fails with a retryable error
    /// (default 3; at least 1).
    pub fn attempts(mut self, n: u32) -> Runner {
        self.attempts = n.max(1);
        self
    }

    /// The first wait between attempts; it doubles each time (default 50 ms).
    pub fn retry_delay(mut self, d: Duration) -> Runner {
        self.retry_delay = d;
        self
    }

    /// The bound on the whole phase (default 30 s). Handlers see the deadline in
    /// [`Context::remaining`]; once it has passed no further handler starts.
    /// The bound is cooperative: the built-in handlers wait no longer than the
    /// time left (downloads, SQLite locks), a custom handler that ignores it is
    /// not interrupted.
    pub fn timeout(mut self, d: Duration) -> Runner {
        self.timeout = d;
        self
    }

    /// Only ask the handlers what they would do; change nothing.
    pub fn dry_run(mut self, yes: bool) -> Runner {
        self.dry_run = yes;
        self
    }

    /// The context handlers will see.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Runs the phase.
    ///
    /// Handlers run in priority order. Consecutive built-in handlers of one
    /// priority (the directories, databases, … of different modules) are
    /// independent of each other and run side by side on a few threads, unless
    /// two of them write the same database; an application's own handlers
    /// always run one at a time, in the order added.
    pub fn run(&mut self) -> Report {
        let start = Instant::now();
        let deadline = start + self.timeout;
        self.ctx.deadline = Some(deadline);
        self.ctx.dry_run = self.dry_run;
        let dir_syncs = Arc::new(Mutex::new(BTreeSet::new()));
        self.ctx.dir_syncs = Some(dir_syncs.clone());
        let mut order: Vec<usize> = (0..self.handlers.len()).collect();
        order.sort_by_key(|&i| self.handlers[i].priority()); // stable
        let prechecked = self.precheck(&order);
        let mut entries: Vec<Entry> = Vec::with_capacity(order.len());
        let mut stopped: Option<String> = None;
        let mut pos = 0;
        while pos < order.len() {
            let end = self.batch_end(&order, pos);
            let batch = &order[pos..end];
            if let Some(why) = &stopped {
                entries.extend(
                    batch
                        .iter()
                        .map(|&i| self.entry(i, Status::NotRun(why.clone()))),
                );
                pos = end;
                continue;
            }
            // Within a batch a failure (with fail fast) or the deadline stops
            // handlers from starting; those already started finish.
            let halt = AtomicBool::new(false);
            let slots: Vec<Mutex<Option<Entry>>> = batch.iter().map(|_| Mutex::new(None)).collect();
            let workers = if batch.len() > 1 { IO_WORKERS } else { 1 };
            for_each_index(batch.len(), workers, |k| {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let pre = prechecked.get(pos + k).cloned().flatten();
                let entry = self.run_one(batch[k], pre, deadline);
                let failed = matches!(entry.status, Status::Failed(_));
                if failed && (self.fail_fast || Instant::now() >= deadline) {
                    halt.store(true, Ordering::SeqCst);
                }
                *lock(&slots[k]) = Some(entry);
            });
            let done: Vec<Option<Entry>> = slots
                .into_iter()
                .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
                .collect();
            let first_failed = done
                .iter()
                .flatten()
                .find(|e| matches!(e.status, Status::Failed(_)));
            if let Some(e) = first_failed {
                if Instant::now() >= deadline {
                    stopped = Some("not run: the phase timed out".into());
                } else if self.fail_fast {
                    stopped = Some(format!(
                        "not run: {} failed",
                        step_name(&e.handler, e.module.as_deref())
                    ));
                }
            }
            for (k, e) in done.into_iter().enumerate() {
                entries.push(e.unwrap_or_else(|| {
                    let why = stopped.clone().unwrap_or_else(|| "not run".into());
                    self.entry(batch[k], Status::NotRun(why))
                }));
            }
            pos = end;
        }
        // One fsync per directory that got new files, all at once.
        let dirs: Vec<PathBuf> = std::mem::take(&mut *lock(&dir_syncs)).into_iter().collect();
        for_each_index(dirs.len(), IO_WORKERS, |k| {
            crate::fsutil::sync_dir(&dirs[k])
        });
        self.ctx.dir_syncs = None;
        let ok = !entries
            .iter()
            .any(|e| matches!(e.status, Status::Failed(_) | Status::NotRun(_)));
        Report {
            ok,
            dry_run: self.dry_run,
            duration: start.elapsed(),
            entries,
        }
    }

    /// Where the batch starting at `pos` ends: a run of built-in handlers of
    /// one priority whose databases are all different.
    fn batch_end(&self, order: &[usize], pos: usize) -> usize {
        let first = order[pos];
        let Some(claims) = &self.claims[first] else {
            return pos + 1;
        };
        let priority = self.handlers[first].priority();
        let mut seen: BTreeSet<&PathBuf> = claims.iter().collect();
        let mut end = pos + 1;
        while let Some(&i) = order.get(end) {
            let Some(claims) = &self.claims[i] else { break };
            if self.handlers[i].priority() != priority || claims.iter().any(|c| seen.contains(c)) {
                break;
            }
            seen.extend(claims);
            end += 1;
        }
        end
    }

    fn entry(&self, i: usize, status: Status) -> Entry {
        let h = &*self.handlers[i];
        Entry {
            handler: h.name().to_owned(),
            module: h.module().map(str::to_owned),
            priority: h.priority(),
            status,
            attempts: 0,
            duration: Duration::ZERO,
        }
    }

    /// One handler: its pre-checked answer, or `should_run` then `run`, with
    /// retries.
    fn run_one(&self, i: usize, prechecked: Option<String>, deadline: Instant) -> Entry {
        let h = &*self.handlers[i];
        let mut entry = self.entry(i, Status::NotRun(String::new()));
        let began = Instant::now();
        if began >= deadline {
            entry.status = Status::Failed(
                self.fill(
                    h,
                    Error::new(format!(
                        "the prepare phase timed out after {:?} before this step could run",
                        self.timeout
                    ))
                    .action("Find the slow step in the report, or allow more time")
                    .permanent(),
                ),
            );
            return entry;
        }
        if let Some(why) = prechecked {
            entry.status = Status::Skipped(why);
            entry.attempts = 1;
            entry.duration = began.elapsed();
            return entry;
        }
        let mut delay = self.retry_delay;
        loop {
            entry.attempts += 1;
            match self.attempt(h) {
                Ok(status) => {
                    entry.status = status;
                    break;
                }
                Err(e) => {
                    let e = self.fill(h, e);
                    let wake = Instant::now() + delay;
                    if e.retryable && entry.attempts < self.attempts && wake < deadline {
                        tracing::warn!(handler = %entry.handler, module = ?entry.module,
                            attempt = entry.attempts, error = %e, "prepare step failed; trying again");
                        std::thread::sleep(delay);
                        delay *= 2;
                        continue;
                    }
                    tracing::error!(handler = %entry.handler, module = ?entry.module, error = %e,
                        "prepare step failed");
                    entry.status = Status::Failed(e);
                    break;
                }
            }
        }
        entry.duration = began.elapsed();
        entry
    }

    /// Asks every handler `should_run` at once, on a few threads, and keeps
    /// the answers of the leading run of handlers (in priority order) that need
    /// nothing: no handler runs before them, so asking them in turn would give
    /// the same answers. The rest are asked again in turn, after the handlers
    /// before them have run. A warm run (nothing to do) is then one parallel
    /// pass.
    fn precheck(&self, order: &[usize]) -> Vec<Option<String>> {
        let answers: Vec<Mutex<Option<String>>> = order.iter().map(|_| Mutex::new(None)).collect();
        for_each_index(order.len(), crate::pool::cpu_workers(order.len()), |pos| {
            let h = &*self.handlers[order[pos]];
            let answer = catch_unwind(AssertUnwindSafe(|| h.should_run(&self.ctx)));
            if let Ok(Ok(Need::Skip(why))) = answer {
                *lock(&answers[pos]) = Some(why);
            }
        });
        let mut out: Vec<Option<String>> = answers
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
        if let Some(first_needed) = out.iter().position(Option::is_none) {
            out.truncate(first_needed);
        }
        out
    }

    fn attempt(&self, h: &dyn Handler) -> Result<Status, Error> {
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<Status, Error> {
            match h.should_run(&self.ctx)? {
                Need::Skip(why) => Ok(Status::Skipped(why)),
                Need::Run(planned) if self.dry_run => Ok(Status::Planned(planned)),
                Need::Run(_) => {
                    let outcome = h.run(&self.ctx)?;
                    tracing::info!(handler = h.name(), module = ?h.module(),
                        changes = outcome.changes.len(), "prepare step done");
                    Ok(Status::Done(outcome.changes))
                }
            }
        }));
        result.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Error::new(format!("the handler panicked: {what}")).permanent())
        })
    }

    fn fill(&self, h: &dyn Handler, mut e: Error) -> Error {
        if e.handler.is_none() {
            e.handler = Some(h.name().to_owned());
        }
        if e.module.is_none() {
            e.module = h.module().map(str::to_owned);
        }
        if e.action.is_none() {
            e.action = Some("Fix the cause above and run `chora prepare` again".into());
        }
        e
    }
}

fn step_name(handler: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("{handler} [{m}]"),
        None => handler.to_owned(),
    }
}

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
