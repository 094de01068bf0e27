//! Per-backend circuit breakers, and [`StatusSet`], the statuses that count as their failures.
//!
//! A breaker's whole state (state, generation, failure or success streak, probes in flight,
//! reopen deadline) is one packed `u64`. The transitions are pure functions from word to word
//! (`machine.rs`): [`BreakerMachine`] applies them to a plain field, so tests drive it
//! transition by transition without sleeping, and [`CircuitBreaker`] applies them to an
//! `AtomicU64` with one compare-and-swap, so concurrent requests share it without a lock.
//! Admitting a request through a closed breaker, and refusing one (open before its deadline, or
//! half-open with every probe slot taken), is one atomic load and writes nothing; only a change
//! (a failure, a probe taken or released, a state change) is a compare-and-swap.
//!
//! | state | request asks to pass | success | failure |
//! |---|---|---|---|
//! | closed | admitted | failure streak reset | streak + 1; at `failure_threshold` → **open** (a trip) |
//! | open | refused until `timeout` has passed, then → half-open | – | – |
//! | half-open | admitted while fewer than `half_open_max_calls` probes are in flight | streak + 1; at `recovery_threshold` → closed | → open again (not a new trip) |
//!
//! A result reported for a request admitted in an earlier state (a slow request that started
//! before the breaker opened, or before it closed again) is ignored, so one burst of failures
//! trips once.

mod machine;
mod status;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::machine::{Admission, Rules, CLOSED};
pub use self::machine::{BreakerMachine, Ticket, MAX_HALF_OPEN_COUNT};
pub use self::status::StatusSet;

/// Breaker settings (`circuit_breaker:` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Consecutive half-open successes that close it again (1 to [`MAX_HALF_OPEN_COUNT`];
    /// values outside act as the nearest bound).
    pub recovery_threshold: u32,
    /// How long it stays open before letting probes through (to the millisecond).
    pub timeout: Duration,
    /// Most probes in flight at once while half-open (1 to [`MAX_HALF_OPEN_COUNT`]; values
    /// outside act as the nearest bound).
    pub half_open_max_calls: u32,
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused.
    Open,
    /// A few probe requests test the backend.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A breaker shared by concurrent requests: the [`BreakerMachine`] transitions applied to one
/// atomic word, lock-free.
#[derive(Debug)]
pub struct CircuitBreaker {
    rules: Rules,
    word: AtomicU64,
    trips: AtomicU64,
    /// Compare-and-swaps attempted on `word`, so tests can check which paths write.
    #[cfg(test)]
    writes: AtomicU64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            rules: Rules::new(settings, Instant::now()),
            word: AtomicU64::new(CLOSED),
            trips: AtomicU64::new(0),
            #[cfg(test)]
            writes: AtomicU64::new(0),
        }
    }

    /// A breaker with new `settings` that carries this one's state on: its state, streak,
    /// probes, reopen deadline and trip count (a reload changes thresholds without closing an
    /// open breaker). Permits of this breaker still report here, not to the new one.
    pub fn reconfigured(&self, settings: BreakerSettings) -> Self {
        Self {
            rules: self.rules.with_settings(settings),
            word: AtomicU64::new(self.word.load(Ordering::Acquire)),
            trips: AtomicU64::new(self.trips()),
            #[cfg(test)]
            writes: AtomicU64::new(0),
        }
    }

    /// The settings this breaker runs with (the probe counts clamped to what a word holds).
    pub fn settings(&self) -> BreakerSettings {
        self.rules.settings()
    }

    /// Replaces the word `current` with `next`; on a race, the word that won.
    fn swap(&self, current: u64, next: u64) -> Result<(), u64> {
        #[cfg(test)]
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.word
            .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    /// The state as last changed (an open breaker past its timeout shows as open until the
    /// next request asks).
    pub fn state(&self) -> BreakerState {
        machine::published_state(self.word.load(Ordering::Acquire))
    }

    /// Closed→open transitions so far.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Asks to send one request; the permit must be completed (or dropped) when it ends.
    pub fn try_acquire(self: &Arc<Self>, now: Instant) -> Option<BreakerPermit> {
        let mut word = self.word.load(Ordering::Acquire);
        let ticket = loop {
            match self.rules.acquire(word, now) {
                Admission::Refused => return None,
                Admission::Admitted { ticket, next: None } => break ticket,
                Admission::Admitted {
                    ticket,
                    next: Some(next),
                } => match self.swap(word, next) {
                    Ok(()) => break ticket,
                    Err(current) => word = current,
                },
            }
        };
        Some(BreakerPermit {
            breaker: self.clone(),
            ticket,
            done: false,
        })
    }

    fn complete(
        &self,
        ticket: Ticket,
        success: Option<bool>,
        now: Instant,
    ) -> Option<BreakerState> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            // stale, or nothing to count (a success while closed without a failure streak)
            let settled = self.rules.settle(word, ticket, success, now)?;
            match self.swap(word, settled.next) {
                Ok(()) => {
                    if settled.tripped {
                        self.trips.fetch_add(1, Ordering::Relaxed);
                    }
                    return settled.change;
                }
                Err(current) => word = current,
            }
        }
    }
}

/// Permission to send one request through a breaker. Report the result with
/// [`BreakerPermit::success`] or [`BreakerPermit::failure`]; dropping it unreported releases a
/// half-open probe slot without counting anything.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    ticket: Ticket,
    done: bool,
}

impl BreakerPermit {
    /// The request succeeded; returns the breaker's new state if this changed it.
    pub fn success(mut self, now: Instant) -> Option<BreakerState> {
        self.done = true;
        self.breaker.complete(self.ticket, Some(true), now)
    }

    /// The request failed (connect error, timeout or a failure status); returns the breaker's
    /// new state if this changed it.
    pub fn failure(mut self, now: Instant) -> Option<BreakerState> {
        self.done = true;
        self.breaker.complete(self.ticket, Some(false), now)
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.done {
            let _released = self.breaker.complete(self.ticket, None, Instant::now());
        }
    }
}
