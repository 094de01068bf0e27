//! Retry timing and the retry budget.
//!
//! [`Backoff`]: before retry number `n` (1 for the first retry) wait a uniformly random time in
//! `[0, min(retry_backoff × 2^(n-1), retry_backoff_max)]` ("full jitter"), so clients that failed
//! together do not retry together.
//!
//! [`RetryBudget`] (`budget.rs`): retries may add at most `retry_budget_percent` % to the
//! requests of the last ten seconds, plus a floor of [`RetryBudget::MIN_RETRIES_PER_SEC`]
//! retries per second (at most one second's worth at once) so a quiet service can still retry.
//! When the budget is spent a failed request fails instead of retrying: a backend outage then
//! costs at most that share of extra load. Both take the time and randomness from the caller,
//! so they are tested without sleeping.

mod budget;

use std::time::{Duration, Instant};

pub use self::budget::RetryBudget;
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

/// What a [`RetryPolicy`] is built from (`max_retries`, `retry_backoff`, `retry_backoff_max`,
/// `retry_budget_percent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Wait before each retry.
    pub backoff: Backoff,
    /// Retries as a share of recent requests.
    pub budget_percent: u32,
}

/// When and how often a failed request is retried (`max_retries`, backoff, budget).
#[derive(Debug)]
pub struct RetryPolicy {
    settings: RetrySettings,
    budget: RetryBudget,
    epoch: Instant,
    rng: SplitMix64,
}

impl RetryPolicy {
    /// A policy allowing `max_retries` retries per request within `budget_percent` % of traffic.
    pub fn new(settings: RetrySettings, seed: u64) -> Self {
        Self {
            settings,
            budget: RetryBudget::new(settings.budget_percent),
            epoch: Instant::now(),
            rng: SplitMix64::new(seed),
        }
    }

    /// What the policy was built from.
    pub fn settings(&self) -> RetrySettings {
        self.settings
    }

    /// `now` as time since the policy was made (the budget's clock).
    fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// Counts a client request (the budget is a share of these).
    pub fn record_request(&self, now: Instant) {
        self.budget.record_request(self.elapsed(now));
    }

    /// Whether a request that has made `attempts` attempts has a retry left under
    /// `max_retries` (the budget aside). Checking it costs nothing.
    pub fn attempts_left(&self, attempts: u32) -> bool {
        attempts <= self.settings.max_retries
    }

    /// Whether a request that has made `attempts` attempts may make another, taking it from the
    /// budget if so.
    pub fn decide(&self, attempts: u32, now: Instant) -> RetryDecision {
        if !self.attempts_left(attempts) {
            RetryDecision::AttemptsUsed
        } else if self.budget.try_retry(self.elapsed(now)) {
            RetryDecision::Retry
        } else {
            RetryDecision::BudgetSpent
        }
    }

    /// The wait before retry number `retry` (1-based), jittered.
    pub fn delay(&self, retry: u32) -> Duration {
        self.settings.backoff.delay(retry, self.rng.next_u64())
    }
}

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff starting at `base`, never above `max` (a `max` below `base` is raised to it;
    /// the configuration refuses that case before, naming the keys).
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::new(ms(100), ms(2000));
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
        assert_eq!(
            Backoff::new(ms(100), ms(50)).ceiling(5),
            ms(100),
            "max raised to base"
        );
        assert_eq!(Backoff::new(ms(0), ms(0)).delay(3, 12345), Duration::ZERO);
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
        let b = Backoff::new(ms(100), ms(2000));
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
        let backoff = Backoff::new(ms(10), ms(100));
        let policy = RetryPolicy::new(
            RetrySettings {
                max_retries: 2,
                backoff,
                budget_percent: 0,
            },
            7,
        );
        let now = Instant::now();
        assert_eq!(policy.decide(1, now), Retry);
        assert_eq!(policy.decide(2, now), Retry);
        assert_eq!(
            policy.decide(3, now),
            AttemptsUsed,
            "max_retries = 2: attempts 2 and 3"
        );
        // 0 % budget: only the floor, one second's worth (3) at once
        let decisions: Vec<_> = (0..100).map(|_| policy.decide(1, now)).collect();
        let spent = decisions.iter().filter(|d| **d == Retry).count() as u64;
        assert_eq!(spent + 2, RetryBudget::MIN_RETRIES_PER_SEC);
        assert!(decisions[spent as usize..]
            .iter()
            .all(|d| *d == BudgetSpent));
        assert!(policy.delay(1) <= ms(10));
        assert!(policy.delay(9) <= ms(100));
    }

    #[test]
    fn concurrent_decisions_never_exceed_the_budget() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Barrier};
        let backoff = Backoff::new(ms(10), ms(100));
        for round in 0..50 {
            let policy = Arc::new(RetryPolicy::new(
                RetrySettings {
                    max_retries: 3,
                    backoff,
                    budget_percent: 20,
                },
                round,
            ));
            let now = Instant::now();
            for _ in 0..1000 {
                policy.record_request(now);
            }
            let (start, retries) = (Arc::new(Barrier::new(16)), Arc::new(AtomicUsize::new(0)));
            let threads: Vec<_> = (0..16)
                .map(|_| {
                    let (policy, start, retries) = (policy.clone(), start.clone(), retries.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        for _ in 0..50 {
                            if policy.decide(1, now) == RetryDecision::Retry {
                                retries.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            let floor = RetryBudget::MIN_RETRIES_PER_SEC as usize;
            assert_eq!(
                retries.load(Ordering::Relaxed),
                200 + floor,
                "round {round}"
            );
        }
    }
}
