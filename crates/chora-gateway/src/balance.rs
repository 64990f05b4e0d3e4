//! Which `up` instance of a service a request goes to: the one with the fewest
//! requests outstanding (sent, response head not come yet), ties taken
//! round-robin, and instances that lately let a request time out or refused a
//! connection skipped for [`EJECTION`] while another one is not ejected.
//!
//! Round-robin alone sends every n-th request to an instance that hangs (its
//! host paused: the kernel still accepts connections, nothing answers), each
//! such request waiting the whole upstream timeout, until the registry notices.
//! Envoy (least request, outlier detection), nginx (`least_conn`,
//! `max_fails`/`fail_timeout`) and HAProxy (`leastconn`, `observe`) route away
//! sooner; so does this: under load the hung instance collects outstanding
//! requests and stops being the least loaded, and its first timeout ejects it.
//! Ejection is never a reason to refuse: with every instance ejected, the
//! choice is made among all of them.
//!
//! An upstream's [`Load`] is kept in the route table and carried over when the
//! table is rebuilt (`table.rs`, by the upstream's URL), so that a rebuild
//! forgets neither an ejection nor the requests in flight. On the request path
//! it costs atomic operations only: no lock, no allocation, no clock read (the
//! caller passes the time it already took).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long an upstream is skipped after a request to it timed out or could not
/// connect. Long enough to spare most requests the wait while the registry's
/// health checks catch up (seconds), short enough that an instance that was
/// only slow for a moment soon gets its share again (it takes one request to
/// find out).
pub const EJECTION: Duration = Duration::from_secs(10);

/// One upstream's balancing state, shared by every request to it.
///
/// Aligned to a cache line of its own: its counter changes on every request,
/// and another upstream's counter on the same line would make cores contend for
/// nothing.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Load {
    /// Requests sent whose response head has not come yet.
    outstanding: AtomicU32,
    /// Skipped until this time ([`millis`]); 0 when not ejected.
    ejected_until: AtomicU64,
}

impl Load {
    /// Counts a request as outstanding until the returned guard is dropped:
    /// when the response head comes, the send fails, or the request is given up
    /// (timeout, client gone).
    pub fn begin(&self) -> Outstanding<'_> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(self)
    }

    /// Skips this upstream for [`EJECTION`] from `now` ([`millis`]). True when it
    /// was not ejected before (the caller logs only then).
    pub fn eject(&self, now: u64) -> bool {
        let until = now + EJECTION.as_millis() as u64;
        let before = self.ejected_until.swap(until, Ordering::Relaxed);
        before <= now
    }

    /// The upstream answered: it is not ejected any more. A load, and a store
    /// only when there is something to clear, so that the common case does not
    /// write to the shared line.
    pub fn answered(&self) {
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// Requests outstanding now.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }
}

/// A request counted in [`Load::begin`]; dropping it ends the count.
#[must_use = "the request stops counting as outstanding when this is dropped"]
pub struct Outstanding<'a>(&'a Load);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `at` in milliseconds since a process-wide start (the first call). The
/// ejection times are kept in these units so that one `AtomicU64` holds one.
pub fn millis(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
}

/// The index of the upstream to send to among `n` (> 0), whose states `load`
/// gives: the fewest outstanding requests among those not ejected at `now`,
/// ties going to the first from `start` on (round-robin when the caller
/// advances `start` per request); when all are ejected, the same among all.
/// The upstreams in `tried` (bit `i` for upstream `i`, the first 64) are
/// chosen only when every one was tried.
pub fn choose<'a>(
    n: usize,
    load: impl Fn(usize) -> &'a Load,
    start: usize,
    now: u64,
    tried: u64,
) -> usize {
    let mut best: Option<(usize, u32)> = None;
    let mut ejected: Option<(usize, u32)> = None;
    let mut i = start % n;
    for _ in 0..n {
        if i >= 64 || tried & (1 << i) == 0 {
            let l = load(i);
            let out = l.outstanding();
            let fresh = !l.ejected(now);
            let slot = if fresh { &mut best } else { &mut ejected };
            if slot.is_none_or(|(_, o)| out < o) {
                *slot = Some((i, out));
                // Nothing beats an idle upstream that is not ejected.
                if fresh && out == 0 {
                    break;
                }
            }
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
    best.or(ejected).map_or(start % n, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `choose` over `loads` at time 1000.
    fn pick(loads: &[Load], start: usize, tried: u64) -> usize {
        choose(loads.len(), |i| &loads[i], start, 1000, tried)
    }

    fn loads(outstanding: &[u32]) -> Vec<Load> {
        outstanding
            .iter()
            .map(|&o| {
                let l = Load::default();
                l.outstanding.store(o, Ordering::Relaxed);
                l
            })
            .collect()
    }

    #[test]
    fn the_fewest_outstanding_wins_and_ties_go_round_robin() {
        let l = loads(&[3, 1, 2]);
        for start in 0..6 {
            assert_eq!(pick(&l, start, 0), 1, "start {start}");
        }
        // Evenly loaded: the choice follows `start`, as round-robin does.
        let l = loads(&[2, 2, 2]);
        let picks: Vec<usize> = (0..6).map(|s| pick(&l, s, 0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // A tie among some: the first of them from `start` on.
        let l = loads(&[1, 0, 5, 0]);
        let picks: Vec<usize> = (0..4).map(|s| pick(&l, s, 0)).collect();
        assert_eq!(picks, [1, 1, 3, 3]);
        // `start` wraps.
        assert_eq!(pick(&loads(&[0, 0]), usize::MAX, 0), 1);
    }

    #[test]
    fn the_guard_counts_a_request_until_it_is_dropped() {
        let l = loads(&[0, 0]);
        let a = l[0].begin();
        assert_eq!(l[0].outstanding(), 1);
        assert_eq!(pick(&l, 0, 0), 1);
        let b = l[1].begin();
        let c = l[1].begin();
        assert_eq!(pick(&l, 1, 0), 0);
        drop((b, c));
        assert_eq!(l[1].outstanding(), 0);
        assert_eq!(pick(&l, 0, 0), 1);
        drop(a);
        assert_eq!(pick(&l, 0, 0), 0);
    }

    #[test]
    fn an_ejected_upstream_is_skipped_unless_all_are_ejected() {
        let l = loads(&[0, 4, 6]);
        assert!(l[0].eject(1000));
        assert!(!l[0].eject(1000), "already ejected");
        // The idle one is ejected: the least loaded of the others.
        for start in 0..3 {
            assert_eq!(pick(&l, start, 0), 1, "start {start}");
        }
        // Until the ejection ends.
        let at = |now| choose(3, |i| &l[i], 0, now, 0);
        assert_eq!(at(1000 + EJECTION.as_millis() as u64 - 1), 1);
        assert_eq!(at(1000 + EJECTION.as_millis() as u64), 0);
        // All ejected: the choice among all, as if none were.
        l[1].eject(1000);
        l[2].eject(1000);
        assert_eq!(pick(&l, 1, 0), 0);
        let even = loads(&[0, 0]);
        even[0].eject(1000);
        even[1].eject(1000);
        assert_eq!([pick(&even, 0, 0), pick(&even, 1, 0)], [0, 1]);
        // An answer clears the ejection.
        l[0].answered();
        l[1].answered();
        assert_eq!(pick(&l, 2, 0), 0);
        assert_eq!(pick(&loads(&[5, 5]), 0, 0), 0);
    }

    #[test]
    fn a_retry_skips_the_upstream_tried_and_prefers_one_not_ejected() {
        // The one tried refused and was ejected; so was the next in line: the
        // retry goes to the one that is not ejected, not to `first + 1`.
        let l = loads(&[0, 0, 0]);
        l[0].eject(1000);
        l[1].eject(1000);
        assert_eq!(pick(&l, 0, 0b1), 2);
        // All ejected: another one than the one tried.
        l[2].eject(1000);
        assert_eq!(pick(&l, 0, 0b1), 1);
        // Not ejected but tried: still skipped, every one tried so far.
        let l = loads(&[0, 3, 5]);
        assert_eq!(pick(&l, 0, 0b1), 1);
        assert_eq!(pick(&l, 0, 0b11), 2);
        // Every one tried: as if none was (the caller does not retry then).
        assert_eq!(pick(&l, 0, 0b111), 0);
        assert_eq!(pick(&loads(&[0]), 0, 0b1), 0);
    }
}
