//! The retry budget: a share of recent requests plus a small steady floor, lock-free.
//!
//! Two allowances, each spent with one atomic read-modify-write that checks and takes in the
//! same step, so two concurrent retries can never both pass on the last one:
//!
//! - **Share**: retries taken from it within the last [`RetryBudget::WINDOW`] stay below
//!   `percent` % of the requests counted in that window. Requests and share retries are counted
//!   per second in ten slots, each slot one `AtomicU64` holding its second and its count, so a
//!   slot moves on to a new second in the same step that counts into it. `spent` sums the share
//!   retries still in a slot; a retry takes from the share by incrementing `spent` only while it
//!   is below the allowance (`fetch_update`), and a slot's retries leave `spent` when the slot
//!   is emptied or reused (by the one thread whose swap removed them).
//! - **Floor**: when the share is spent, [`RetryBudget::MIN_RETRIES_PER_SEC`] retries per
//!   second pass whatever the traffic, at most one second's worth at once (a token bucket kept
//!   as one "theoretical arrival time", GCRA): a burst cannot spend a whole window's floor.
//!
//! Time is a [`Duration`] since any fixed epoch, given by the caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seconds the share looks back over, one slot each.
const WINDOW_SECS: u32 = 10;
/// Floor retries that may pass at once: one second's worth.
const FLOOR_BURST: u64 = RetryBudget::MIN_RETRIES_PER_SEC;
/// Time between floor retries, rounded down so the floor is at least its rate.
const FLOOR_INTERVAL_NS: u64 = 1_000_000_000 / RetryBudget::MIN_RETRIES_PER_SEC;

/// A slot's word: the second it counts (high half) and its count (low half).
fn pack(second: u32, count: u32) -> u64 {
    u64::from(second) << 32 | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// Whether a slot counting `slot_second` still counts at `second` (a slot a concurrent caller
/// already moved to a slightly later second does).
fn in_window(slot_second: u32, second: u32) -> bool {
    second.saturating_sub(slot_second) < WINDOW_SECS
}

/// Counts one at `second` in `slot`, first emptying it if it holds an older second; returns
/// the count that was dropped so.
fn bump(slot: &AtomicU64, second: u32) -> u32 {
    let mut dropped = 0;
    let _always = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
        let (held, count) = unpack(word);
        if held >= second {
            dropped = 0;
            Some(pack(held, count.saturating_add(1)))
        } else {
            dropped = count;
            Some(pack(second, 1))
        }
    });
    dropped
}

/// A retry budget: a share of the last ten seconds' requests, plus a floor rate.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    /// Requests per second, one slot per second of the window.
    requests: [AtomicU64; WINDOW_SECS as usize],
    /// Retries taken from the share per second, one slot per second of the window.
    retries: [AtomicU64; WINDOW_SECS as usize],
    /// Share retries still counted in `retries` (plus those about to be).
    spent: AtomicU64,
    /// The floor's theoretical arrival time, in nanoseconds since the epoch: the next floor
    /// retry passes once `now + (FLOOR_BURST - 1) × interval` reaches it.
    floor_due: AtomicU64,
}

impl RetryBudget {
    /// Retries allowed per second whatever the traffic (at most this many at once). Ten, as
    /// Finagle's default: enough that a backend dying under light traffic costs no request
    /// while its breaker collects `failure_threshold` (default 5) failures, each retried.
    pub const MIN_RETRIES_PER_SEC: u64 = 10;

    /// How far back the share counts requests.
    pub const WINDOW: Duration = Duration::from_secs(WINDOW_SECS as u64);

    /// A budget of `percent` % of requests.
    pub fn new(percent: u32) -> Self {
        Self {
            percent: u64::from(percent),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
            spent: AtomicU64::new(0),
            floor_due: AtomicU64::new(0),
        }
    }

    fn second(at: Duration) -> u32 {
        u32::try_from(at.as_secs()).unwrap_or(u32::MAX)
    }

    fn slot(second: u32) -> usize {
        (second % WINDOW_SECS) as usize
    }

    /// Counts one client request at `at` (time since any fixed epoch).
    pub fn record_request(&self, at: Duration) {
        let second = Self::second(at);
        let _older = bump(&self.requests[Self::slot(second)], second);
    }

    /// Requests counted in the window ending at `at`, and retries taken from their share.
    pub fn window(&self, at: Duration) -> (u64, u64) {
        let second = Self::second(at);
        let sum = |slots: &[AtomicU64]| {
            slots
                .iter()
                .map(|s| unpack(s.load(Ordering::Acquire)))
                .filter(|(held, _)| in_window(*held, second))
                .map(|(_, count)| u64::from(count))
                .sum::<u64>()
        };
        (sum(&self.requests), sum(&self.retries))
    }

    /// Takes one retry from the budget at `at`; false when it is spent.
    pub fn try_retry(&self, at: Duration) -> bool {
        self.try_share(Self::second(at)) || self.try_floor(at)
    }

    fn try_share(&self, second: u32) -> bool {
        self.forget_old_retries(second);
        let (requests, _) = self.window(Duration::from_secs(u64::from(second)));
        let allowance = requests.saturating_mul(self.percent) / 100;
        let taken = self
            .spent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spent| {
                (spent < allowance).then_some(spent + 1)
            })
            .is_ok();
        if taken {
            let left = bump(&self.retries[Self::slot(second)], second);
            self.spent.fetch_sub(u64::from(left), Ordering::AcqRel);
        }
        taken
    }

    /// Empties the retry slots whose second has left the window, taking their retries out of
    /// `spent`.
    fn forget_old_retries(&self, second: u32) {
        for slot in &self.retries {
            let mut left = 0;
            let emptied = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (held, count) = unpack(word);
                left = count;
                (count > 0 && !in_window(held, second)).then_some(pack(held, 0))
            });
            if emptied.is_ok() {
                self.spent.fetch_sub(u64::from(left), Ordering::AcqRel);
            }
        }
    }

    fn try_floor(&self, at: Duration) -> bool {
        let now = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        let tolerance = (FLOOR_BURST - 1) * FLOOR_INTERVAL_NS;
        self.floor_due
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |due| {
                (due <= now.saturating_add(tolerance))
                    .then(|| due.max(now).saturating_add(FLOOR_INTERVAL_NS))
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::thread;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Tries `n` retries at `at`; how many passed.
    fn retries(budget: &RetryBudget, at: Duration, n: usize) -> usize {
        (0..n).filter(|_| budget.try_retry(at)).count()
    }

    #[test]
    fn floor_is_a_rate_not_a_window_allowance() {
        let budget = RetryBudget::new(0);
        // (time in ms, retries passing out of 50 tried then)
        let table = [
            (7_000, 10), // one second's worth at once, not the window's 100
            (7_050, 0),  // the next one is due a tenth of a second later
            (7_099, 0),
            (7_100, 1), // ...then one per interval
            (7_150, 0),
            (7_400, 3),   // due at 7 200, 7 300 and 7 400
            (30_000, 10), // after a quiet spell, again only one second's worth
            (31_000, 10),
        ];
        for (at, want) in table {
            assert_eq!(retries(&budget, ms(at), 50), want, "at {at} ms");
        }
        // from 0 to 1 s, trying every 10 ms: the burst, then the rate
        let budget = RetryBudget::new(0);
        let in_a_second: usize = (0..=100).map(|i| retries(&budget, ms(i * 10), 50)).sum();
        assert_eq!(in_a_second, 20, "10 at once + 10 over the second");
        assert_eq!(
            RetryBudget::MIN_RETRIES_PER_SEC,
            10,
            "the tables assume 10/s"
        );
    }

    #[test]
    fn share_of_recent_requests_then_the_floor() {
        let budget = RetryBudget::new(20);
        for _ in 0..1000 {
            budget.record_request(ms(50_000));
        }
        // (time in ms, requests recorded then, retries tried, passing, window after)
        let table = [
            (50_000, 0, 300, 210, (1000, 200)), // 20 % of 1000, then the floor's 10
            (50_050, 0, 50, 0, (1000, 200)),    // share spent, floor not due
            (51_000, 0, 50, 10, (1000, 200)),   // the floor again
            (59_000, 0, 50, 10, (1000, 200)),   // the share is still spent
            (60_000, 0, 50, 10, (0, 0)),        // second 50 left the window, with its 200 retries
            (60_000, 100, 50, 20, (100, 20)),   // a new share (the floor is not due)
            (69_000, 50, 5, 5, (150, 25)),      // 20 % of 150 = 30 allowed, 20 spent: all 5 pass
            // second 60 left: 20 % of 50 = 10 allowed, 5 spent; 5 more, then the floor's 10
            (70_000, 0, 20, 15, (50, 10)),
        ];
        for (at, requests, tried, want, window) in table {
            for _ in 0..requests {
                budget.record_request(ms(at));
            }
            assert_eq!(retries(&budget, ms(at), tried), want, "at {at} ms");
            assert_eq!(budget.window(ms(at)), window, "window at {at} ms");
        }
    }

    /// `threads` threads call `f` `each` times at once; how many calls returned true.
    fn hammer(threads: usize, each: usize, f: impl Fn() -> bool + Send + Sync + 'static) -> usize {
        let f = Arc::new(f);
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (f, start) = (f.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    (0..each).filter(|_| f()).count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    }

    #[test]
    fn concurrent_retries_never_take_more_than_the_budget() {
        // the old check-then-count admitted 201 of 200 here within 2000 rounds
        for round in 0..300 {
            let budget = Arc::new(RetryBudget::new(20));
            for _ in 0..1000 {
                budget.record_request(ms(5_000));
            }
            let shared = budget.clone();
            let passed = hammer(16, 50, move || shared.try_retry(ms(5_000)));
            assert_eq!(passed, 210, "round {round}: 200 from the share + 10 floor");
            assert_eq!(budget.window(ms(5_000)), (1000, 200));
        }
    }

    #[test]
    fn concurrent_retries_across_seconds_stay_within_the_budget() {
        let budget = Arc::new(RetryBudget::new(10));
        for _ in 0..1000 {
            budget.record_request(ms(0));
        }
        let shared = budget.clone();
        let clock = Arc::new(AtomicU64::new(0));
        // each call a few ms later than the last, across the window: seconds change under
        // concurrent callers
        let passed = hammer(8, 500, move || {
            let t = clock.fetch_add(2, Ordering::Relaxed);
            shared.try_retry(ms(t.min(9_999)))
        });
        let (requests, share) = budget.window(ms(9_999));
        assert_eq!((requests, share), (1000, 100), "the share, exactly");
        let floor = passed - 100;
        assert!(
            (1..=10 + 100).contains(&floor),
            "floor at most a burst plus 10/s over 10 s, got {floor}"
        );
    }
}
