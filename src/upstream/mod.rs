//! One attempt at a backend: choosing it, accounting for how it went, and whether to try again.
//!
//! [`choose`] asks the strategy for candidates and admits the first one that is routable (not
//! unhealthy, not draining), not already tried by this request, under its `capacity` (reserved
//! atomically) and admitted by its circuit breaker. A retry goes to another backend; it goes
//! back to one this request already tried only when that is the last routable backend left
//! (after the backoff, like any retry). The resulting [`Attempt`] holds the in-flight count and
//! the breaker permit; [`Attempt::settle`] reports the response status to the breaker,
//! [`Attempt::fail`] reports a failure and [`Attempt::release`] hands the backend back without a
//! verdict. [`verdict`] is the pure retry and failure policy.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use pingora_load_balancing::Backend;

use crate::backend::{state_of, BackendSet, BackendState, InFlightGuard};
use crate::balance::{max_iterations, Balancer};
use crate::breaker::{BreakerPermit, BreakerState};

mod verdict;
pub use verdict::{verdict, AttemptEnd, Verdict};

/// The latency sample a failed attempt adds to its backend's moving average.
pub const FAILURE_LATENCY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why no backend could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No backend is admitted (none configured, or all unhealthy).
    NoBackend,
    /// Admitted backends exist but every one is at its `capacity`.
    AllFull,
    /// Every otherwise usable backend's circuit breaker is open.
    AllOpen,
}

impl Refusal {
    /// The short explanation sent to the client.
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::NoBackend => "no healthy backend available",
            Refusal::AllFull => "every backend is at capacity",
            Refusal::AllOpen => "every backend's circuit breaker is open",
        }
    }
}

/// A request's current attempt at one backend.
#[derive(Debug)]
pub struct Attempt {
    guard: InFlightGuard,
    permit: Option<BreakerPermit>,
    /// Whether the outcome was already reported by [`Attempt::settle`].
    settled: bool,
    started: Instant,
}

impl Attempt {
    /// The backend.
    pub fn state(&self) -> &Arc<BackendState> {
        self.guard.state()
    }

    /// When the request was sent ([`Attempt::begin`]); until then, when the backend was chosen.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request goes out now: count it against the backend and start its clock. A retry's
    /// backend is chosen (and reserved) before its backoff; only this counts it as a request,
    /// so a retry refused or never taken costs the backend nothing.
    pub fn begin(&mut self, now: Instant) {
        self.started = now;
        self.state().stats.record_request();
    }

    /// The backend answered with response headers; `ok` says whether the status counts as a
    /// success for its breaker. The backend stays counted in flight until the request ends.
    pub fn settle(&mut self, ok: bool, now: Instant) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(permit) = self.permit.take() {
            let change = if ok {
                permit.success(now)
            } else {
                permit.failure(now)
            };
            log_breaker(self.state(), change);
        }
        if !ok {
            self.state().stats.record_failure();
        }
    }

    /// The attempt failed (connect error, timeout, reset, or a status being retried): count the
    /// failure, release the backend, and return it for the request's tried list. The failure
    /// also enters the backend's latency average as [`FAILURE_LATENCY`], so the load-aware
    /// strategies stop favouring a backend that fails fast.
    pub fn fail(mut self, now: Instant) -> Arc<BackendState> {
        let state = self.state().clone();
        if !self.settled {
            state.stats.record_failure();
            state.stats.record_latency(FAILURE_LATENCY);
            if let Some(permit) = self.permit.take() {
                log_breaker(&state, permit.failure(now));
            }
        }
        state
    }
}

impl Attempt {
    /// Hands the backend back for the request's tried list without a verdict beyond what
    /// [`Attempt::settle`] already reported (a status being retried; a stale pooled connection).
    /// An unreported breaker permit is released, not counted.
    pub fn release(self) -> Arc<BackendState> {
        self.state().clone()
    }
}

fn log_breaker(state: &BackendState, change: Option<BreakerState>) {
    match change {
        Some(BreakerState::Open) => {
            log::warn!("backend {}: circuit breaker opened", state.id())
        }
        Some(s) => log::info!("backend {}: circuit breaker {}", state.id(), s.as_str()),
        None => {}
    }
}

/// Why a backend could not take an attempt.
enum Blocked {
    /// Unhealthy or draining.
    Unroutable,
    /// Its circuit breaker refused.
    Open,
    /// At capacity.
    Full,
}

/// An attempt at `state` if it can take one now: routable, its breaker admits, under capacity.
fn admit(state: &Arc<BackendState>, now: Instant) -> Result<Attempt, Blocked> {
    if !state.is_routable() {
        return Err(Blocked::Unroutable);
    }
    // The breaker first: a refused candidate must not count as a request to its backend.
    let permit = match &*state.breaker.load() {
        None => None,
        Some(breaker) => Some(breaker.try_acquire(now).ok_or(Blocked::Open)?),
    };
    // Without a slot the permit drops unreported: a half-open probe slot is released.
    let guard = InFlightGuard::try_new(state).ok_or(Blocked::Full)?;
    Ok(Attempt {
        guard,
        permit,
        settled: false,
        started: now,
    })
}

/// An attempt at the backend a client's session is pinned to, if it can take one now (the
/// same checks as any candidate); `None` sends the request to the strategy.
pub fn choose_pinned(state: &Arc<BackendState>, now: Instant) -> Option<Attempt> {
    admit(state, now).ok()
}

/// Picks a backend for one attempt. `tried` are the backends this request already failed on:
/// they are avoided; one is taken again only when it is the last routable backend left.
pub fn choose(
    set: &BackendSet<Balancer>,
    key: &[u8],
    tried: &[Arc<BackendState>],
    now: Instant,
) -> Result<Attempt, Refusal> {
    let steps = max_iterations(set.len());
    let full = Cell::new(false);
    let open = Cell::new(false);
    let chosen: RefCell<Option<Attempt>> = RefCell::new(None);
    let candidate = |b: &Backend, allow_tried: bool| -> bool {
        let Some(state) = state_of(b) else {
            return false;
        };
        if !allow_tried && tried.iter().any(|t| Arc::ptr_eq(t, state)) {
            return false;
        }
        match admit(state, now) {
            Ok(attempt) => {
                *chosen.borrow_mut() = Some(attempt);
                true
            }
            Err(Blocked::Open) => {
                open.set(true);
                false
            }
            Err(Blocked::Full) => {
                full.set(true);
                false
            }
            Err(Blocked::Unroutable) => false,
        }
    };
    let found = set
        .select_with(key, steps, |b, _| candidate(b, false))
        .is_some()
        || (!tried.is_empty()
            && last_one_left(set)
            && set
                .select_with(key, steps, |b, _| candidate(b, true))
                .is_some());
    match chosen.into_inner() {
        Some(attempt) if found => Ok(attempt),
        _ if full.get() => Err(Refusal::AllFull),
        _ if open.get() => Err(Refusal::AllOpen),
        _ => Err(Refusal::NoBackend),
    }
}

/// Whether exactly one backend is routable: the only case where a retry goes back to a backend
/// the request already tried.
fn last_one_left(set: &BackendSet<Balancer>) -> bool {
    set.snapshot().iter().filter(|b| b.is_routable()).count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{block_on, BackendServer};
    use crate::balance::{BalanceConfig, Strategy};
    use crate::breaker::BreakerSettings;
    use crate::health::Thresholds;
    use std::time::{Duration, SystemTime};

    fn set_of(
        strategy: Strategy,
        breakers: bool,
        capacity: u64,
        ids: &[&str],
    ) -> BackendSet<Balancer> {
        let settings = BreakerSettings {
            failure_threshold: 1,
            recovery_threshold: 1,
            timeout: Duration::from_secs(60),
            half_open_max_calls: 1,
        };
        let cfg = BalanceConfig { strategy, seed: 1 };
        let set = BackendSet::new(cfg, None, breakers.then_some(settings));
        for (port, id) in (1..).zip(ids) {
            let mut s = BackendServer::new(*id, format!("http://127.0.0.1:{port}"));
            s.capacity = capacity;
            block_on(set.add_server(s)).unwrap().unwrap();
        }
        set
    }

    fn set(breakers: bool, capacity: u64) -> BackendSet<Balancer> {
        set_of(Strategy::RoundRobin, breakers, capacity, &["a", "b"])
    }

    #[test]
    fn retries_go_to_another_backend_and_never_back_while_others_exist() {
        // ip_hash proposes the same backend for the same key every time: only the tried list
        // can move the retry elsewhere
        let s = set_of(Strategy::IpHash, false, 0, &["a", "b"]);
        let now = Instant::now();
        let key = [127, 0, 0, 9];
        let first = choose(&s, &key, &[], now).unwrap();
        let again = choose(&s, &key, &[], now).unwrap();
        assert!(
            Arc::ptr_eq(first.state(), again.state()),
            "same key, same backend"
        );
        let tried = vec![first.fail(now)];
        let second = choose(&s, &key, &tried, now).unwrap();
        assert!(!Arc::ptr_eq(second.state(), &tried[0]));
        let both = vec![tried[0].clone(), second.fail(now)];
        // both tried and both still routable: no going back
        assert_eq!(
            choose(&s, &key, &both, now).unwrap_err(),
            Refusal::NoBackend
        );
    }

    #[test]
    fn the_last_backend_left_is_retried() {
        let now = Instant::now();
        let single = set_of(Strategy::RoundRobin, false, 0, &["only"]);
        let tried = vec![choose(&single, b"", &[], now).unwrap().fail(now)];
        let again = choose(&single, b"", &tried, now).unwrap();
        assert!(Arc::ptr_eq(again.state(), &tried[0]));

        // two backends, one unhealthy: the healthy one is the last one left
        let two = set(false, 0);
        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        two.get("b")
            .unwrap()
            .health
            .record(Err("down".into()), SystemTime::now(), t);
        let tried = vec![choose(&two, b"", &[], now).unwrap().fail(now)];
        assert_eq!(tried[0].id(), "a");
        assert_eq!(choose(&two, b"", &tried, now).unwrap().state().id(), "a");
    }

    #[test]
    fn refusals_say_why() {
        let now = Instant::now();
        // all at capacity
        let s = set(false, 1);
        let held: Vec<_> = (0..2).map(|_| choose(&s, b"", &[], now).unwrap()).collect();
        assert_eq!(choose(&s, b"", &[], now).unwrap_err(), Refusal::AllFull);
        drop(held);
        assert!(choose(&s, b"", &[], now).is_ok());

        // all breakers open
        let s = set(true, 0);
        for _ in 0..2 {
            choose(&s, b"", &[], now).unwrap().fail(now);
        }
        assert_eq!(choose(&s, b"", &[], now).unwrap_err(), Refusal::AllOpen);
        for b in s.snapshot().iter() {
            assert_eq!(b.breaker.load_full().unwrap().trips(), 1);
            assert_eq!(b.stats.failures(), 1);
        }

        // all unhealthy, or draining
        let s = set(false, 0);
        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        s.get("a")
            .unwrap()
            .health
            .record(Err("down".into()), SystemTime::now(), t);
        s.drain("b").unwrap();
        assert_eq!(choose(&s, b"", &[], now).unwrap_err(), Refusal::NoBackend);
    }

    #[test]
    fn settle_reports_status_to_the_breaker_and_release_counts_nothing() {
        let s = set(true, 0);
        let now = Instant::now();
        let mut a = choose(&s, b"", &[], now).unwrap();
        let state = a.state().clone();
        a.settle(false, now);
        assert_eq!(
            state.breaker.load_full().unwrap().state(),
            BreakerState::Open
        );
        assert_eq!(
            state.stats.in_flight(),
            1,
            "still in flight until the request ends"
        );
        let back = a.fail(now);
        assert_eq!(
            back.stats.failures(),
            1,
            "settled failure is not counted twice"
        );
        assert_eq!(back.stats.in_flight(), 0);

        // a status that is no failure, then released for a retry: no failure, no latency penalty
        let mut b = choose(&s, b"", &[], now).unwrap();
        assert_eq!(b.state().id(), "b");
        b.settle(true, now);
        let back = b.release();
        assert_eq!(back.stats.failures(), 0);
        assert_eq!(back.stats.latency_ewma(), None);
        assert_eq!(
            back.breaker.load_full().unwrap().state(),
            BreakerState::Closed
        );
    }
}
