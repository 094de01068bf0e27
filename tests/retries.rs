//! Retry policy through a real Fulcrum to real backends: where a retry goes, what the client
//! gets when no retry is possible, and what a retried status costs a backend.

mod common;

use std::time::Duration;

use common::*;
use fulcrum::breaker::BreakerState;
use fulcrum::Strategy;

/// Two backends that both answer 503, which is not a failure status: every request tries each
/// backend once (never going back to the one that just failed), the client gets the last
/// backend's own 503, and no backend is blamed.
#[test]
fn a_gateway_error_with_nowhere_left_to_retry_is_passed_through_unblamed() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.circuit_breaker.failure_status_codes = vec![500];
    cfg.circuit_breaker.failure_threshold = 1;
    cfg.max_retries = 2;
    cfg.retry_backoff = Duration::from_millis(1);
    cfg.retry_budget_percent = 100;
    let lb = start(cfg);
    b[0].set_status(503);
    b[1].set_status(503);
    for i in 0..6 {
        let r = get(lb.listen_addr(), "/");
        assert_eq!(r.status, 503, "request {i}: the backend's own answer");
        assert!(
            matches!(r.header("x-backend-id"), Some("a" | "b")),
            "request {i}: a backend wrote it, not Fulcrum: {r:?}"
        );
    }
    assert_eq!(
        (b[0].hits(), b[1].hits()),
        (6, 6),
        "each request tries each backend once"
    );
    for id in ["a", "b"] {
        let state = lb.backends().get(id).unwrap();
        let breaker = state.breaker.load_full().unwrap();
        assert_eq!(breaker.state(), BreakerState::Closed, "{id}");
        assert_eq!(breaker.trips(), 0, "{id}");
        assert_eq!(
            state.stats.failures(),
            0,
            "{id}: 503 is not a failure status"
        );
    }
}

/// With one backend, it is the last one left: a retry goes back to it after the backoff, up to
/// `max_retries`, and its final answer reaches the client. (The wait itself is full jitter,
/// `[0, ceiling]`, checked in the retry module's tests.)
#[test]
fn the_only_backend_is_retried_after_the_backoff() {
    let b = backends(&[("solo", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.circuit_breaker_enabled = false;
    cfg.max_retries = 2;
    cfg.retry_backoff = Duration::from_millis(40);
    cfg.retry_budget_percent = 100;
    let lb = start(cfg);
    b[0].set_status(503);
    let r = get(lb.listen_addr(), "/");
    assert_eq!((r.status, r.header("x-backend-id")), (503, Some("solo")));
    assert_eq!(b[0].hits(), 3, "the first attempt and two retries");
}

/// A retry that is not taken (here `max_retries: 0`) must not move the rotation on: round robin
/// still alternates between a backend that answers 503 and one that answers 200.
#[test]
fn a_retry_not_taken_leaves_the_rotation_alone() {
    let b = backends(&[("ok", 0), ("busy", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.circuit_breaker_enabled = false;
    cfg.max_retries = 0;
    let lb = start(cfg);
    b[1].set_status(503);
    let statuses: Vec<u16> = (0..20).map(|_| get(lb.listen_addr(), "/").status).collect();
    assert_eq!(
        (b[0].hits(), b[1].hits()),
        (10, 10),
        "strict alternation: {statuses:?}"
    );
}
