//! A few scoped threads for independent work: checks, manifest parsing,
//! file creation and fsyncs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads for work that mostly waits on the disk (fsyncs, file creation).
pub(crate) const IO_WORKERS: usize = 8;

/// Calls `f(0..n)` on up to `workers` threads (the caller's among them).
pub(crate) fn for_each_index(n: usize, workers: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= n {
                break;
            }
            f(k);
        }
    };
    let workers = workers.min(n);
    if workers <= 1 {
        return work();
    }
    std::thread::scope(|s| {
        for _ in 1..workers {
            s.spawn(work);
        }
        work();
    });
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `f` over `items` on up to `workers` threads; results in the items' order.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let out: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    for_each_index(items.len(), workers, |k| {
        *lock(&out[k]) = Some(f(&items[k]))
    });
    out.into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every index is visited")
        })
        .collect()
}

/// Threads for CPU work: one per core, at most 8, and one per 8 items.
pub(crate) fn cpu_workers(items: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(8)
        .min(items / 8 + 1)
}
