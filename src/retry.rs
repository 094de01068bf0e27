//! Retry timing and the retry budget.
//!
//! [`Backoff`]: before retry number `n` (1 for the first retry) wait a uniformly random time in
//! `[0, min(retry_backoff × 2^(n-1), retry_backoff_max)]` ("full jitter"), so clients that failed
//! together do not retry together.
//!
//! [`RetryBudget`]: retries may add at most `retry_budget_percent` % to the requests of the last
//! ten seconds, with a floor of [`RetryBudget::MIN_RETRIES_PER_SEC`] retries per second so a
//! quiet service can still retry. When the budget is spent a failed request fails instead of
//! retrying: a backend outage then costs at most that share of extra load. Both take the time
//! and randomness from the caller, so they are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;

/// Whether a failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Yes (one retry was taken from the budget).
    Retry,
    /// No: the request used its `max_retries`.
    AttemptsUsed,
    /// No: the retry budget is spent.
    BudgetSpent,
}

/// When and how often a failed request is retried (`max_retries`, backoff, budget).
#[derive(Debug)]
pub struct RetryPolicy {
    max_retries: u32,
    backoff: Backoff,
    budget: RetryBudget,
    epoch: Instant,
    rng: SplitMix64,
}

impl RetryPolicy {
    /// A policy allowing `max_retries` retries per request within `budget_percent` % of traffic.
    pub fn new(max_retries: u32, backoff: Backoff, budget_percent: u32, seed: u64) -> Self {
        Self {
            max_retries,
            backoff,
            budget: RetryBudget::new(budget_percent),
            epoch: Instant::now(),
            rng: SplitMix64::new(seed),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Counts a client request (the budget is a share of these).
    pub fn record_request(&self, now: Instant) {
        self.budget.record_request(self.second(now));
    }

    /// Whether a request that has made `attempts` attempts may make another, taking it from the
    /// budget if so.
    pub fn decide(&self, attempts: u32, now: Instant) -> RetryDecision {
        if attempts > self.max_retries {
            RetryDecision::AttemptsUsed
        } else if self.budget.try_retry(self.second(now)) {
            RetryDecision::Retry
        } else {
            RetryDecision::BudgetSpent
        }
    }

    /// The wait before retry number `retry` (1-based), jittered.
    pub fn delay(&self, retry: u32) -> Duration {
        self.backoff.delay(retry, self.rng.next_u64())
    }
}

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff starting at `base`, never above `max`. Refuses `max < base`.
    pub fn new(base: Duration, max: Duration) -> Result<Self, String> {
        if max < base {
            return Err(format!(
                "retry_backoff_max ({max:?}) is smaller than retry_backoff ({base:?})"
            ));
        }
        Ok(Self { base, max })
    }

    /// The longest wait before retry `retry` (1-based): `base × 2^(retry-1)`, capped.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `retry`, given a uniformly random `random` u64.
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos() as u64;
        if ceiling == 0 {
            return Duration::ZERO;
        }
        // scale into [0, ceiling] without modulo bias worth caring about
        Duration::from_nanos(((random as u128 * (ceiling as u128 + 1)) >> 64) as u64)
    }
}

/// Number of one-second buckets the budget looks back over.
const WINDOW_SECS: u64 = 10;

#[derive(Debug, Default)]
struct Bucket {
    /// The second (since the budget's epoch) this bucket counts; `u64::MAX` when unused.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A sliding ten-second budget of retries, lock-free.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl RetryBudget {
    /// Retries allowed per second whatever the traffic.
    pub const MIN_RETRIES_PER_SEC: u64 = 3;

    /// A budget of `percent` % of requests.
    pub fn new(percent: u32) -> Self {
        let buckets = std::array::from_fn(|_| Bucket {
            second: AtomicU64::new(u64::MAX),
            ..Bucket::default()
        });
        Self {
            percent: u64::from(percent),
            buckets,
        }
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % WINDOW_SECS) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // first to reach this second: recycle the bucket (a concurrent count may be lost,
            // which only errs by one request)
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts one client request at `second` (whole seconds since any fixed epoch).
    pub fn record_request(&self, second: u64) {
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests and retries counted in the window ending at `second`.
    pub fn window(&self, second: u64) -> (u64, u64) {
        let oldest = second.saturating_sub(WINDOW_SECS - 1);
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.second.load(Ordering::Acquire);
                s != u64::MAX && s >= oldest && s <= second
            })
            .fold((0, 0), |(q, r), b| {
                (
                    q + b.requests.load(Ordering::Relaxed),
                    r + b.retries.load(Ordering::Relaxed),
                )
            })
    }

    /// Takes one retry from the budget at `second`; false when it is spent.
    pub fn try_retry(&self, second: u64) -> bool {
        let (requests, retries) = self.window(second);
        let allowed = (requests * self.percent / 100).max(Self::MIN_RETRIES_PER_SEC * WINDOW_SECS);
        if retries >= allowed {
            return false;
        }
        self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::new(ms(100), ms(2000)).unwrap();
        let cases = [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1600),
            (6, 2000),
            (40, 2000),
        ];
        for (retry, want) in cases {
            assert_eq!(b.ceiling(retry), ms(want), "retry {retry}");
            assert_eq!(
                b.delay(retry, u64::MAX),
                ms(want),
                "top of the range, retry {retry}"
            );
            assert_eq!(b.delay(retry, 0), Duration::ZERO, "bottom of the range");
        }
        assert_eq!(b.delay(2, u64::MAX / 2), ms(100), "middle of [0, 200ms]");
        assert!(Backoff::new(ms(100), ms(50)).is_err());
        assert_eq!(
            Backoff::new(ms(0), ms(0)).unwrap().delay(3, 12345),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_jitter_covers_the_range() {
        // a deterministic "random" sequence (SplitMix64) instead of an RNG
        let mut state = 42u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let b = Backoff::new(ms(100), ms(2000)).unwrap();
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay(3, next())).collect();
        assert!(delays.iter().all(|d| *d <= ms(400)));
        let low = delays.iter().filter(|d| **d < ms(200)).count();
        assert!(
            (400..600).contains(&low),
            "half below the midpoint, got {low}"
        );
    }

    #[test]
    fn policy_caps_attempts_then_budget() {
        use RetryDecision::*;
        let backoff = Backoff::new(ms(10), ms(100)).unwrap();
        let policy = RetryPolicy::new(2, backoff, 0, 7);
        let now = Instant::now();
        assert_eq!(policy.decide(1, now), Retry);
        assert_eq!(policy.decide(2, now), Retry);
        assert_eq!(
            policy.decide(3, now),
            AttemptsUsed,
            "max_retries = 2: attempts 2 and 3"
        );
        // 0 % budget: only the floor of 3 retries/s over the 10 s window
        let decisions: Vec<_> = (0..100).map(|_| policy.decide(1, now)).collect();
        let spent = decisions.iter().filter(|d| **d == Retry).count() as u64;
        assert_eq!(spent + 2, RetryBudget::MIN_RETRIES_PER_SEC * WINDOW_SECS);
        assert!(decisions[spent as usize..]
            .iter()
            .all(|d| *d == BudgetSpent));
        assert!(policy.delay(1) <= ms(10));
        assert!(policy.delay(9) <= ms(100));
    }

    #[test]
    fn budget_floor_allows_a_few_retries_when_quiet() {
        let budget = RetryBudget::new(20);
        let floor = RetryBudget::MIN_RETRIES_PER_SEC * WINDOW_SECS;
        for i in 0..floor {
            assert!(budget.try_retry(100), "retry {i} within the floor");
        }
        assert!(!budget.try_retry(100), "floor spent");
    }

    #[test]
    fn budget_is_a_share_of_recent_requests() {
        let budget = RetryBudget::new(20);
        for _ in 0..1000 {
            budget.record_request(50);
        }
        let allowed = (0..1000).take_while(|_| budget.try_retry(50)).count();
        assert_eq!(allowed, 200, "20 % of 1000 requests");
        // still spent within the window...
        assert!(!budget.try_retry(59));
        // ...and the old traffic has left the window 10 s later: back to the floor
        assert!(budget.try_retry(60));
        assert_eq!(budget.window(60), (0, 1));
    }
}
