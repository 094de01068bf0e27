//! Replaying a request after its bytes went up: a backend that reads the whole request and then
//! resets the connection without answering. An idempotent request (GET, PUT) whose body fits in
//! pingora's retry buffer (64 KiB, `BODY_BUF_LIMIT` in pingora-core's HTTP/1 code) is sent again,
//! body and all, to another backend and the client gets its answer; a larger body cannot be
//! replayed and a POST must never be, so those get a 502 and no second backend sees them.
//!
//! Round robin alternates between the resetting backend and the answering one, so each test
//! sends requests with distinct paths until at least two of them went to the resetting backend
//! first, and checks every request by what each backend recorded for its path.

mod common;

use std::time::Duration;

use common::*;
use fulcrum::config::LoadBalancerConfig;
use fulcrum::Strategy;

/// pingora's retry buffer for a request body (pingora-core `BODY_BUF_LIMIT`).
const RETRY_BUFFER: usize = 64 * 1024;

/// Requests sent at most per test; two of them must hit the resetting backend first.
const MAX_REQUESTS: usize = 10;

fn setup() -> (RawBackend, RawBackend, LoadBalancerConfig) {
    let reset = RawBackend::start("reset", RawMode::Reset);
    let ok = RawBackend::start("ok", RawMode::Answer);
    let mut cfg = config(Strategy::RoundRobin, &[]);
    cfg.backends = vec![reset.server(1), ok.server(1)];
    // the resetting backend must stay selectable: no breaker, health checks that pass
    cfg.circuit_breaker_enabled = false;
    cfg.max_retries = 2;
    cfg.retry_backoff = Duration::from_millis(1);
    cfg.retry_budget_percent = 100;
    (reset, ok, cfg)
}

/// A body whose bytes differ by request, so a replay can be compared byte for byte.
fn body_for(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect()
}

/// Sends `method` with a `len`-byte body (path `/<method>-<len>-<i>`) until two requests went to
/// the resetting backend first, and calls `check(response, body, seen_by_reset, seen_by_ok)` for
/// each of those. Returns how many went to the resetting backend first.
fn drive(
    method: &str,
    len: usize,
    reset: &RawBackend,
    ok: &RawBackend,
    addr: std::net::SocketAddr,
    check: impl Fn(&Resp, &[u8], &[Seen], &[Seen]),
) -> usize {
    let mut reset_first = 0;
    for i in 0..MAX_REQUESTS {
        let path = format!("/{}-{len}-{i}", method.to_ascii_lowercase());
        let body = body_for(i, len);
        let mut conn = KeptAlive::connect(addr);
        let r = conn
            .send(method, &path, &[("Connection", "close")], &body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (by_reset, by_ok) = (reset.seen_at(&path), ok.seen_at(&path));
        if !by_reset.is_empty() {
            reset_first += 1;
            check(&r, &body, &by_reset, &by_ok);
        } else {
            // it went to the answering backend first: a plain success
            assert_eq!(r.status, 200, "{method} {path}: {r:?}");
            assert_eq!(by_ok.len(), 1, "{method} {path}");
        }
        if reset_first == 2 {
            break;
        }
    }
    reset_first
}

#[test]
fn an_idempotent_request_is_replayed_on_another_backend_after_a_reset() {
    let (reset, ok, cfg) = setup();
    let lb = start(cfg);
    for (method, len) in [("GET", 0), ("PUT", 1000), ("PUT", RETRY_BUFFER - 1024)] {
        let n = drive(
            method,
            len,
            &reset,
            &ok,
            lb.listen_addr(),
            |r, body, by_reset, by_ok| {
                assert_eq!(by_reset.len(), 1, "{method}: the resetting backend once");
                assert_eq!(
                    by_reset[0].body, body,
                    "{method}: it read the whole request"
                );
                assert_eq!(r.status, 200, "{method} {len} B: replayed, answered: {r:?}");
                assert_eq!(r.body, "Response from ok");
                assert_eq!(by_ok.len(), 1, "{method}: replayed exactly once");
                assert_eq!(by_ok[0].method, method);
                assert!(
                    by_ok[0].body == body,
                    "{method}: the replay carries the same body"
                );
            },
        );
        assert_eq!(
            n, 2,
            "{method}: two requests went to the resetting backend first"
        );
    }
    let reset_state = lb.backends().get("reset").unwrap();
    assert!(
        reset_state.stats.failures() >= 6,
        "each reset counts as a failure of that backend: {}",
        reset_state.stats.failures()
    );
    assert_eq!(lb.backends().get("ok").unwrap().stats.failures(), 0);
}

#[test]
fn a_body_larger_than_the_retry_buffer_is_not_replayed() {
    let (reset, ok, cfg) = setup();
    let lb = start(cfg);
    let len = RETRY_BUFFER + 16 * 1024;
    let n = drive(
        "PUT",
        len,
        &reset,
        &ok,
        lb.listen_addr(),
        |r, body, by_reset, by_ok| {
            assert_eq!(by_reset.len(), 1);
            assert_eq!(by_reset[0].body.len(), body.len(), "the whole body went up");
            assert_eq!(r.status, 502, "{} B cannot be replayed: {r:?}", body.len());
            assert!(by_ok.is_empty(), "the second backend never saw it");
        },
    );
    assert_eq!(n, 2, "two requests went to the resetting backend first");
}

#[test]
fn a_post_is_never_replayed() {
    let (reset, ok, cfg) = setup();
    let lb = start(cfg);
    for len in [0, 1000] {
        let n = drive(
            "POST",
            len,
            &reset,
            &ok,
            lb.listen_addr(),
            |r, body, by_reset, by_ok| {
                assert_eq!(by_reset.len(), 1);
                assert_eq!(by_reset[0].body, body);
                assert_eq!(r.status, 502, "POST with {len} B: {r:?}");
                assert!(by_ok.is_empty(), "exactly one backend saw the POST");
            },
        );
        assert_eq!(n, 2, "two POSTs went to the resetting backend first");
    }
    // every POST reached exactly one backend, once
    let (r, o) = (reset.seen(), ok.seen());
    let mut paths: Vec<_> = r.iter().chain(&o).map(|s| s.path.clone()).collect();
    let total = paths.len();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), total, "a POST seen twice: {r:?} {o:?}");
}
