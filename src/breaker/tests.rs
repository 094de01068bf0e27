//! The breaker's transitions, table by table on the pure machine, then the shared breaker:
//! which paths write, and that concurrent requests cannot break its limits.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

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
fn a_reconfigured_breaker_keeps_its_state_and_uses_the_new_thresholds() {
    let t0 = Instant::now();
    let b = Arc::new(CircuitBreaker::new(S));
    b.try_acquire(t0).unwrap().failure(t0);
    b.try_acquire(t0).unwrap().failure(t0);
    // two failures of three: one more trips with the old settings; lower the threshold to 2
    // and the streak already reached it, so the next failure trips
    let tighter = BreakerSettings {
        failure_threshold: 2,
        timeout: Duration::from_secs(60),
        ..S
    };
    let b = Arc::new(b.reconfigured(tighter));
    assert_eq!((b.state(), b.settings()), (Closed, tighter));
    b.try_acquire(t0).unwrap().failure(t0);
    assert_eq!((b.state(), b.trips()), (Open, 1));
    // an open breaker stays open through a reconfiguration, deadline and trip count kept
    let looser = BreakerSettings {
        failure_threshold: 10,
        ..tighter
    };
    let b = Arc::new(b.reconfigured(looser));
    assert_eq!((b.state(), b.trips()), (Open, 1));
    assert!(b.try_acquire(t0 + Duration::from_secs(59)).is_none());
    assert!(b.try_acquire(t0 + Duration::from_secs(60)).is_some());
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

#[test]
fn refusals_take_no_lock_and_write_nothing() {
    let b = Arc::new(CircuitBreaker::new(S));
    let t0 = Instant::now();
    for _ in 0..3 {
        b.try_acquire(t0).unwrap().failure(t0);
    }
    let writes = || b.writes.load(Ordering::Relaxed);
    let before = writes();
    for s in 0..10 {
        assert!(
            b.try_acquire(t0 + Duration::from_secs(s)).is_none(),
            "open at {s}s"
        );
    }
    assert_eq!(writes(), before, "open refusals");
    let later = t0 + S.timeout;
    let _probes = [b.try_acquire(later).unwrap(), b.try_acquire(later).unwrap()];
    let before = writes();
    for _ in 0..10 {
        assert!(
            b.try_acquire(later).is_none(),
            "half-open, probe slots full"
        );
    }
    assert_eq!(writes(), before, "half-open refusals");
}

#[test]
fn closed_fast_path_writes_nothing() {
    let b = Arc::new(CircuitBreaker::new(S));
    let now = Instant::now();
    for _ in 0..10 {
        b.try_acquire(now).unwrap().success(now);
        drop(b.try_acquire(now).unwrap());
    }
    assert_eq!(b.writes.load(Ordering::Relaxed), 0);
}

/// Runs `f(thread)` on `n` threads started together; returns their results.
fn together<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, start) = (f.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                f(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn concurrent_failures_trip_once() {
    let b = Arc::new(CircuitBreaker::new(S));
    let t0 = Instant::now();
    let shared = b.clone();
    let changes = together(8, move |_| {
        let mut opened = 0;
        for _ in 0..2_000 {
            if let Some(p) = shared.try_acquire(t0) {
                opened += usize::from(p.failure(t0) == Some(Open));
            }
        }
        opened
    });
    assert_eq!(changes.iter().sum::<usize>(), 1, "one permit saw the trip");
    assert_eq!((b.state(), b.trips()), (Open, 1));
}

#[test]
fn concurrent_probes_never_exceed_half_open_max_calls() {
    let settings = BreakerSettings {
        half_open_max_calls: 5,
        recovery_threshold: 1_000_000,
        ..S
    };
    let b = Arc::new(CircuitBreaker::new(settings));
    let t0 = Instant::now();
    for _ in 0..3 {
        b.try_acquire(t0).unwrap().failure(t0);
    }
    let later = t0 + S.timeout;
    let in_flight = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let (shared, flight, peak, count) =
        (b.clone(), in_flight.clone(), most.clone(), admitted.clone());
    together(8, move |i| {
        for n in 0..5_000 {
            let Some(p) = shared.try_acquire(later) else {
                continue;
            };
            let now = flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            count.fetch_add(1, Ordering::Relaxed);
            flight.fetch_sub(1, Ordering::SeqCst);
            // release the slot (client gone) or report a success; both free it
            if (i + n) % 2 == 0 {
                drop(p);
            } else {
                p.success(later);
            }
        }
    });
    let peak = most.load(Ordering::SeqCst);
    assert!(
        (1..=5).contains(&peak),
        "at most 5 probes at once, saw {peak}"
    );
    assert!(admitted.load(Ordering::Relaxed) > 5, "slots were reused");
    assert_eq!(b.state(), HalfOpen);
    // every slot came back: exactly five more probes fit
    let probes: Vec<_> = (0..5)
        .map(|_| b.try_acquire(later).expect("free slot"))
        .collect();
    assert!(b.try_acquire(later).is_none());
    drop(probes);
}

#[test]
fn concurrent_half_open_admits_exactly_max_calls_until_released() {
    let b = Arc::new(CircuitBreaker::new(S));
    let t0 = Instant::now();
    for _ in 0..3 {
        b.try_acquire(t0).unwrap().failure(t0);
    }
    let later = t0 + S.timeout;
    let shared = b.clone();
    let held = together(8, move |_| {
        (0..100)
            .filter_map(|_| shared.try_acquire(later))
            .collect::<Vec<_>>()
    });
    let held: Vec<_> = held.into_iter().flatten().collect();
    assert_eq!(held.len(), S.half_open_max_calls as usize);
    drop(held);
    assert!(b.try_acquire(later).is_some(), "released slots admit again");
}
