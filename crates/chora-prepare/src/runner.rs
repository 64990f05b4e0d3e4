//! The runner: orders handlers by priority, asks each whether it is needed,
//! runs the needed ones with retries inside the phase's deadline, and returns
//! the [`Report`] (`report.rs`).
//!
//! Invariants:
//!
//! - Handlers run in priority order; ties keep the order they were added in.
//!   Only built-in handlers of one priority that write different databases run
//!   side by side (a batch); an application's own handlers run alone.
//! - `should_run` is asked of every handler once up front, in parallel; only
//!   the leading run of answers "nothing to do" is trusted, since no handler
//!   ran before those. The rest are asked again in turn.
//! - A failure stops every handler not yet started (fail fast, the default) and
//!   they are reported `not_run` with the reason; handlers already started in
//!   the batch finish. Past the deadline no handler runs: the one due fails as
//!   timed out and those after it are not run.
//! - Only retryable errors are retried, with a doubling delay, and never past
//!   the deadline. A panic in a handler is a permanent failure of that handler,
//!   never of the runner.
//! - Every directory that got a new entry is fsynced once, before `run`
//!   returns.

use crate::handlers::{self, DirectoriesHandler};
use crate::pool::{IO_WORKERS, for_each_index, lock};
use crate::report::{Entry, Report, Status, step_name};
use crate::{Context, Error, Handler, Need};
use std::collections::BTreeSet;
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
