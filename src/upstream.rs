//! One attempt at a backend: choosing it and accounting for how it went.
//!
//! [`choose`] asks the strategy for candidates and admits the first one that is not unhealthy,
//! not already tried by this request, under its `capacity` (reserved atomically) and admitted by
//! its circuit breaker. The resulting [`Attempt`] holds the in-flight count and the breaker
//! permit; [`Attempt::settle`] reports the response status to the breaker, [`Attempt::fail`]
//! reports a failure and releases the backend for a retry elsewhere.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use pingora_load_balancing::{Backend, LoadBalancer as Pool};

use crate::backend::{state_of, BackendState, InFlightGuard};
use crate::balance::{max_iterations, Balancer};
use crate::breaker::{BreakerPermit, BreakerState};

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

    /// When the backend was chosen.
    pub fn started(&self) -> Instant {
        self.started
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

fn log_breaker(state: &BackendState, change: Option<BreakerState>) {
    match change {
        Some(BreakerState::Open) => {
            log::warn!("backend {}: circuit breaker opened", state.id())
        }
        Some(s) => log::info!("backend {}: circuit breaker {}", state.id(), s.as_str()),
        None => {}
    }
}

/// Picks a backend for one attempt. `tried` are the backends this request already failed on:
/// they are avoided while any other backend can take the request.
pub fn choose(
    pool: &Pool<Balancer>,
    backends: usize,
    key: &[u8],
    tried: &[Arc<BackendState>],
    now: Instant,
) -> Result<Attempt, Refusal> {
    let steps = max_iterations(backends);
    let full = Cell::new(false);
    let open = Cell::new(false);
    let chosen: RefCell<Option<Attempt>> = RefCell::new(None);
    let admit = |b: &Backend, allow_tried: bool| -> bool {
        let Some(state) = state_of(b) else {
            return false;
        };
        if !state.health.status().admits()
            || state.is_draining()
            || (!allow_tried && tried.iter().any(|t| Arc::ptr_eq(t, state)))
        {
            return false;
        }
        // The breaker first: a refused candidate must not count as a request to its backend.
        let permit = match &state.breaker {
            None => None,
            Some(breaker) => match breaker.try_acquire(now) {
                Some(p) => Some(p),
                None => {
                    open.set(true);
                    return false;
                }
            },
        };
        let Some(guard) = InFlightGuard::try_new(state) else {
            full.set(true);
            return false; // the permit drops unreported: a half-open probe slot is released
        };
        *chosen.borrow_mut() = Some(Attempt {
            guard,
            permit,
            settled: false,
            started: now,
        });
        true
    };
    let found = pool.select_with(key, steps, |b, _| admit(b, false)).is_some()
        // every untried backend is out: a retry may go back to one that failed before
        || (!tried.is_empty() && pool.select_with(key, steps, |b, _| admit(b, true)).is_some());
    match chosen.into_inner() {
        Some(attempt) if found => Ok(attempt),
        _ if full.get() => Err(Refusal::AllFull),
        _ if open.get() => Err(Refusal::AllOpen),
        _ => Err(Refusal::NoBackend),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendServer, Registry};
    use crate::balance::{BalanceConfig, Strategy};
    use crate::breaker::BreakerSettings;
    use crate::health::Thresholds;
    use pingora_load_balancing::discovery::Static;
    use pingora_load_balancing::Backends;
    use std::time::{Duration, SystemTime};

    fn pool(reg: &Registry) -> Pool<Balancer> {
        pool_with(reg, Strategy::RoundRobin)
    }

    fn pool_with(reg: &Registry, strategy: Strategy) -> Pool<Balancer> {
        let set = reg.snapshot().iter().map(|s| s.to_backend()).collect();
        let cfg = BalanceConfig { strategy, seed: 1 };
        let pool = Pool::from_backends_with_config(Backends::new(Static::new(set)), Some(cfg));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(pool.update())
            .unwrap();
        pool
    }

    fn registry(breakers: bool, capacity: u64) -> Registry {
        let settings = BreakerSettings {
            failure_threshold: 1,
            recovery_threshold: 1,
            timeout: Duration::from_secs(60),
            half_open_max_calls: 1,
        };
        let reg = Registry::with_breakers(breakers.then_some(settings));
        for (id, port) in [("a", 1), ("b", 2)] {
            let mut s = BackendServer::new(id, format!("http://127.0.0.1:{port}"));
            s.capacity = capacity;
            reg.add(s).unwrap();
        }
        reg
    }

    #[test]
    fn avoids_tried_backends_while_others_remain() {
        // ip_hash proposes the same backend for the same key every time: only the tried list
        // can move the retry elsewhere
        let reg = registry(false, 0);
        let p = pool_with(&reg, Strategy::IpHash);
        let now = Instant::now();
        let key = [127, 0, 0, 9];
        let first = choose(&p, 2, &key, &[], now).unwrap();
        let again = choose(&p, 2, &key, &[], now).unwrap();
        assert!(
            Arc::ptr_eq(first.state(), again.state()),
            "same key, same backend"
        );
        let tried = vec![first.fail(now)];
        let second = choose(&p, 2, &key, &tried, now).unwrap();
        assert!(!Arc::ptr_eq(second.state(), &tried[0]));
        let both = vec![tried[0].clone(), second.fail(now)];
        // everything tried: go back to a tried backend rather than fail
        assert!(choose(&p, 2, &key, &both, now).is_ok());
    }

    #[test]
    fn refusals_say_why() {
        let now = Instant::now();
        // all at capacity
        let reg = registry(false, 1);
        let p = pool(&reg);
        let held: Vec<_> = (0..2)
            .map(|_| choose(&p, 2, b"", &[], now).unwrap())
            .collect();
        assert_eq!(choose(&p, 2, b"", &[], now).unwrap_err(), Refusal::AllFull);
        drop(held);
        assert!(choose(&p, 2, b"", &[], now).is_ok());

        // all breakers open
        let reg = registry(true, 0);
        let p = pool(&reg);
        for _ in 0..2 {
            choose(&p, 2, b"", &[], now).unwrap().fail(now);
        }
        assert_eq!(choose(&p, 2, b"", &[], now).unwrap_err(), Refusal::AllOpen);
        for b in reg.snapshot().iter() {
            assert_eq!(b.breaker.as_ref().unwrap().trips(), 1);
            assert_eq!(b.stats.failures(), 1);
        }

        // all unhealthy
        let reg = registry(false, 0);
        let p = pool(&reg);
        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        for b in reg.snapshot().iter() {
            b.health.record(Err("down".into()), SystemTime::now(), t);
        }
        assert_eq!(
            choose(&p, 2, b"", &[], now).unwrap_err(),
            Refusal::NoBackend
        );
    }

    #[test]
    fn settle_reports_status_to_the_breaker() {
        let reg = registry(true, 0);
        let p = pool(&reg);
        let now = Instant::now();
        let mut a = choose(&p, 2, b"", &[], now).unwrap();
        let state = a.state().clone();
        a.settle(false, now);
        assert_eq!(state.breaker.as_ref().unwrap().state(), BreakerState::Open);
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
    }
}
