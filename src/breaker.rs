//! Per-backend circuit breakers.
//!
//! [`BreakerMachine`] is the pure state machine: every method takes the current time, so tests
//! drive it transition by transition without sleeping. [`CircuitBreaker`] wraps it for
//! concurrent use: the common case (closed, no failure streak) is one atomic load per request;
//! only state changes and half-open probes take the short internal lock, never across an await.
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

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Breaker settings (`circuit_breaker:` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Consecutive half-open successes that close it again.
    pub recovery_threshold: u32,
    /// How long it stays open before letting probes through.
    pub timeout: Duration,
    /// Most probes in flight at once while half-open.
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

    fn to_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// What admitted a request: results are only counted in the state that admitted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Generation of the state that admitted the request.
    generation: u64,
    /// Whether the request holds a half-open probe slot.
    probe: bool,
}

/// The pure breaker state machine.
#[derive(Debug, Clone)]
pub struct BreakerMachine {
    settings: BreakerSettings,
    state: BreakerState,
    /// Bumped on every state change.
    generation: u64,
    /// Consecutive failures (closed) or successes (half-open).
    streak: u32,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    trips: u64,
}

impl BreakerMachine {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            generation: 0,
            streak: 0,
            opened_at: None,
            probes_in_flight: 0,
            trips: 0,
        }
    }

    /// The state at `now` (an open breaker whose timeout has passed is half-open).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        self.state
    }

    /// Closed→open transitions so far.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Half-open probes in flight.
    pub fn probes_in_flight(&self) -> u32 {
        self.probes_in_flight
    }

    fn advance(&mut self, now: Instant) {
        if self.state == BreakerState::Open
            && self
                .opened_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.settings.timeout)
        {
            self.enter(BreakerState::HalfOpen, now);
        }
    }

    fn enter(&mut self, state: BreakerState, now: Instant) {
        if state == BreakerState::Open {
            self.opened_at = Some(now);
            if self.state == BreakerState::Closed {
                self.trips += 1;
            }
        }
        self.state = state;
        self.generation += 1;
        self.streak = 0;
        self.probes_in_flight = 0;
    }

    /// Asks to send one request at `now`; `None` means refused.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Ticket> {
        self.advance(now);
        match self.state {
            BreakerState::Closed => Some(Ticket {
                generation: self.generation,
                probe: false,
            }),
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                if self.probes_in_flight >= self.settings.half_open_max_calls {
                    return None;
                }
                self.probes_in_flight += 1;
                Some(Ticket {
                    generation: self.generation,
                    probe: true,
                })
            }
        }
    }

    /// Reports the outcome of a request admitted with `ticket` (`None` = no outcome, e.g. the
    /// client went away: only the probe slot is released). Returns the new state if it changed.
    pub fn record(
        &mut self,
        ticket: Ticket,
        success: Option<bool>,
        now: Instant,
    ) -> Option<BreakerState> {
        if ticket.generation != self.generation {
            return None; // admitted in an earlier state: stale
        }
        if ticket.probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
        let success = success?;
        let before = self.state;
        match (self.state, success) {
            (BreakerState::Closed, true) => self.streak = 0,
            (BreakerState::Closed, false) => {
                self.streak += 1;
                if self.streak >= self.settings.failure_threshold {
                    self.enter(BreakerState::Open, now);
                }
            }
            (BreakerState::HalfOpen, true) => {
                self.streak += 1;
                if self.streak >= self.settings.recovery_threshold {
                    self.enter(BreakerState::Closed, now);
                }
            }
            (BreakerState::HalfOpen, false) => self.enter(BreakerState::Open, now),
            (BreakerState::Open, _) => {}
        }
        (self.state != before).then_some(self.state)
    }
}

/// A [`BreakerMachine`] shared by concurrent requests.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// Mirror of the machine's state (and of whether a failure streak is pending) for the
    /// lock-free fast path.
    hint: AtomicU8,
    /// Mirror of the machine's generation, so requests admitted on the fast path carry it.
    generation: AtomicU64,
    trips: AtomicU64,
    machine: Mutex<BreakerMachine>,
}

/// `hint` value: closed with no failure streak, so successes need no bookkeeping.
const CLEAN: u8 = 0;
/// `hint` value: closed, but failures are being counted.
const STREAK: u8 = 3;

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            hint: AtomicU8::new(CLEAN),
            generation: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            machine: Mutex::new(BreakerMachine::new(settings)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BreakerMachine> {
        match self.machine.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn publish(&self, m: &BreakerMachine) {
        let hint = match m.state {
            BreakerState::Closed if m.streak == 0 => CLEAN,
            BreakerState::Closed => STREAK,
            s => s.to_u8(),
        };
        self.generation.store(m.generation, Ordering::Release);
        self.hint.store(hint, Ordering::Release);
        self.trips.store(m.trips, Ordering::Relaxed);
    }

    /// The state as last published (an open breaker past its timeout shows as open until the
    /// next request asks).
    pub fn state(&self) -> BreakerState {
        match self.hint.load(Ordering::Relaxed) {
            STREAK => BreakerState::Closed,
            v => BreakerState::from_u8(v),
        }
    }

    /// Closed→open transitions so far.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Asks to send one request; the permit must be completed (or dropped) when it ends.
    pub fn try_acquire(self: &Arc<Self>, now: Instant) -> Option<BreakerPermit> {
        let ticket = match self.hint.load(Ordering::Acquire) {
            // Closed: admitted without the lock, tagged with the closed state's generation so a
            // result arriving after the breaker has moved on is ignored.
            CLEAN | STREAK => Ticket {
                generation: self.generation.load(Ordering::Acquire),
                probe: false,
            },
            _ => {
                let mut m = self.lock();
                let t = m.try_acquire(now)?;
                self.publish(&m);
                t
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
        if !ticket.probe && success != Some(false) && self.hint.load(Ordering::Acquire) == CLEAN {
            return None; // closed with no failure streak: a success changes nothing
        }
        let mut m = self.lock();
        let changed = m.record(ticket, success, now);
        self.publish(&m);
        changed
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

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::*;

    const S: BreakerSettings = BreakerSettings {
        failure_threshold: 3,
        recovery_threshold: 2,
        timeout: Duration::from_secs(10),
        half_open_max_calls: 2,
    };

    /// One step of a table: at time `t` seconds, do `op`, expect the state after it.
    enum Op {
        /// acquire, expect admitted?
        Acquire(bool),
        /// acquire then report success
        Ok,
        /// acquire then report failure
        Fail,
    }

    fn run(steps: &[(u64, Op, BreakerState)]) -> BreakerMachine {
        let t0 = Instant::now();
        let mut m = BreakerMachine::new(S);
        for (i, (t, op, want)) in steps.iter().enumerate() {
            let now = t0 + Duration::from_secs(*t);
            match op {
                Op::Acquire(admit) => {
                    assert_eq!(m.try_acquire(now).is_some(), *admit, "step {i}: admission")
                }
                Op::Ok | Op::Fail => {
                    let ticket = m.try_acquire(now).expect("admitted");
                    m.record(ticket, Some(matches!(op, Op::Ok)), now);
                }
            }
            assert_eq!(m.state(now), *want, "step {i}");
        }
        m
    }

    #[test]
    fn trips_after_consecutive_failures() {
        let m = run(&[
            (0, Op::Fail, Closed),
            (0, Op::Fail, Closed),
            (0, Op::Ok, Closed), // a success resets the streak
            (0, Op::Fail, Closed),
            (0, Op::Fail, Closed),
            (0, Op::Fail, Open),
            (1, Op::Acquire(false), Open),
            (9, Op::Acquire(false), Open),
        ]);
        assert_eq!(m.trips(), 1);
    }

    #[test]
    fn half_open_after_timeout_then_closes_after_recovery() {
        let m = run(&[
            (0, Op::Fail, Closed),
            (0, Op::Fail, Closed),
            (0, Op::Fail, Open),
            (10, Op::Ok, HalfOpen),
            (10, Op::Ok, Closed),
            (10, Op::Acquire(true), Closed),
        ]);
        assert_eq!(m.trips(), 1);
    }

    #[test]
    fn failure_while_half_open_reopens_without_a_new_trip() {
        let m = run(&[
            (0, Op::Fail, Closed),
            (0, Op::Fail, Closed),
            (0, Op::Fail, Open),
            (10, Op::Ok, HalfOpen),
            (10, Op::Fail, Open),
            (15, Op::Acquire(false), Open),
            (20, Op::Ok, HalfOpen),
            (20, Op::Ok, Closed),
            (21, Op::Fail, Closed),
            (21, Op::Fail, Closed),
            (21, Op::Fail, Open),
        ]);
        assert_eq!(m.trips(), 2, "closed→open twice; half-open→open is no trip");
    }

    #[test]
    fn half_open_admits_at_most_max_calls_probes() {
        let t0 = Instant::now();
        let mut m = BreakerMachine::new(S);
        for _ in 0..3 {
            let t = m.try_acquire(t0).unwrap();
            m.record(t, Some(false), t0);
        }
        let later = t0 + S.timeout;
        let p1 = m.try_acquire(later).expect("probe 1");
        let p2 = m.try_acquire(later).expect("probe 2");
        assert!(m.try_acquire(later).is_none(), "third concurrent probe");
        assert_eq!(m.probes_in_flight(), 2);
        // a probe that ends without a result frees its slot
        assert_eq!(m.record(p1, None, later), None);
        let p3 = m.try_acquire(later).expect("slot freed");
        assert_eq!(m.record(p2, Some(true), later), None);
        assert_eq!(m.record(p3, Some(true), later), Some(Closed));
    }

    #[test]
    fn stale_results_are_ignored() {
        let t0 = Instant::now();
        let mut m = BreakerMachine::new(S);
        let slow = m.try_acquire(t0).unwrap();
        for _ in 0..3 {
            let t = m.try_acquire(t0).unwrap();
            m.record(t, Some(false), t0);
        }
        assert_eq!(m.state(t0), Open);
        // the slow request admitted while closed fails late: no effect on the open breaker
        assert_eq!(m.record(slow, Some(false), t0), None);
        let later = t0 + S.timeout;
        let probe = m.try_acquire(later).unwrap();
        assert_eq!(m.record(slow, Some(true), later), None, "stale success");
        assert_eq!(m.state(later), HalfOpen);
        m.record(probe, Some(true), later);
        assert_eq!(m.trips(), 1);
    }

    #[test]
    fn shared_breaker_fast_path_and_permits() {
        let b = Arc::new(CircuitBreaker::new(S));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.try_acquire(t0).unwrap().failure(t0);
        }
        assert_eq!(b.state(), Closed);
        b.try_acquire(t0).unwrap().failure(t0);
        assert_eq!((b.state(), b.trips()), (Open, 1));
        assert!(b.try_acquire(t0).is_none());
        let later = t0 + S.timeout;
        let p1 = b.try_acquire(later).unwrap();
        let p2 = b.try_acquire(later).unwrap();
        assert!(b.try_acquire(later).is_none());
        assert_eq!(b.state(), HalfOpen);
        drop(p1); // client went away: slot released, nothing counted
        p2.success(later);
        b.try_acquire(later).unwrap().success(later);
        assert_eq!(b.state(), Closed);
        // clean closed breaker: success needs no lock and changes nothing
        b.try_acquire(later).unwrap().success(later);
        assert_eq!((b.state(), b.trips()), (Closed, 1));
    }

    #[test]
    fn shared_breaker_ignores_failures_of_requests_admitted_before_a_recovery() {
        let settings = BreakerSettings {
            failure_threshold: 1,
            ..S
        };
        let b = Arc::new(CircuitBreaker::new(settings));
        let t0 = Instant::now();
        let slow = b.try_acquire(t0).unwrap(); // admitted while closed (fast path)
        b.try_acquire(t0).unwrap().failure(t0);
        assert_eq!(b.state(), Open);
        let later = t0 + S.timeout;
        for _ in 0..2 {
            b.try_acquire(later).unwrap().success(later);
        }
        assert_eq!(b.state(), Closed, "recovered");
        // the request admitted before the trip fails late: it must not re-open the breaker
        assert_eq!(slow.failure(later), None);
        assert_eq!((b.state(), b.trips()), (Closed, 1));
    }
}
