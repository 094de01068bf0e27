//! Reload in place through the library (`RunningLoadBalancer::reload_config`), in process:
//! each group of settings a reload may change takes effect on a running load balancer, a
//! removed backend's request in flight finishes, and a refused reload changes nothing.
//! (`tests/reload.rs` drives the binary: SIGHUP, `POST /api/reload`, under load.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use fulcrum::config::{LoadBalancerConfig, RateLimitConfig, Secret};
use fulcrum::reload::ReloadError;
use fulcrum::Strategy;

const OLD_TOKEN: &str = "old-token-0123456789abcdef";
const NEW_TOKEN: &str = "new-token-0123456789abcdef";

fn metrics_json(lb: &fulcrum::server::RunningLoadBalancer) -> serde_json::Value {
    let r = get(lb.admin_addr(), "/metrics?format=json");
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn strategy_rate_limit_and_token_change_for_the_next_request() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.admin_token = Some(Secret::new(OLD_TOKEN));
    let lb = start(cfg.clone());
    let before = counts(&sequence(lb.listen_addr(), 4));
    assert_eq!(before.len(), 2, "round robin uses both: {before:?}");

    let mut next = cfg.clone();
    next.strategy = Strategy::ConsistentHashing;
    next.admin_token = Some(Secret::new(NEW_TOKEN));
    next.rate_limit = Some(RateLimitConfig {
        requests_per_second: 1,
        burst: 3,
    });
    let report = lb.reload_config(next.clone()).expect("valid");
    assert_eq!(
        report.changed,
        ["admin_token", "rate_limit", "strategy"],
        "{report:?}"
    );
    assert!(report.needs_upgrade.is_empty() && report.added.is_empty());

    // one client IP, one backend on the ring; the fourth request in the window is refused
    let statuses: Vec<u16> = (0..4).map(|_| get(lb.listen_addr(), "/").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(metrics_json(&lb)["strategy"], "consistent_hashing");
    let hits: Vec<u64> = b.iter().map(|x| x.hits()).collect();
    let after_reload = hits.iter().sum::<u64>() - 4;
    assert_eq!(after_reload, 3);
    assert!(
        hits.contains(&(2 + 3)),
        "the three requests reached one backend: {hits:?}"
    );

    let undrain = |token| {
        admin_call(
            lb.admin_addr(),
            "POST",
            "/api/backends/a/undrain",
            None,
            Some(token),
        )
    };
    assert_eq!(undrain(OLD_TOKEN).status, 401, "the old token is gone");
    assert_eq!(undrain(NEW_TOKEN).status, 200);

    // the same limit again: the clients' counts carry over, so the limit still holds
    let report = lb.reload_config(next).expect("valid");
    assert!(report.changed.is_empty(), "{report:?}");
    assert_eq!(get(lb.listen_addr(), "/").status, 429);
}

#[test]
fn a_new_health_interval_and_breaker_settings_apply_at_once() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.health_check_interval = Duration::from_secs(3600);
    let lb = start(cfg.clone());
    b[1].set_healthy(false);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        health_of(&lb, "b"),
        "healthy",
        "the next check is an hour away"
    );

    let mut next = cfg;
    next.health_check_interval = Duration::from_millis(100);
    next.health_check_timeout = Some(Duration::from_millis(80));
    next.circuit_breaker.failure_threshold = 9;
    let started = Instant::now();
    let report = lb.reload_config(next).expect("valid");
    assert_eq!(
        report.changed,
        [
            "circuit_breaker",
            "health_check_interval",
            "health_check_timeout"
        ],
        "{report:?}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || health_of(&lb, "b")
            == "unhealthy"),
        "the new interval did not take over"
    );
    println!("b found unhealthy {:?} after the reload", started.elapsed());
    let breaker = lb.backends().get("a").unwrap().breaker.load_full().unwrap();
    assert_eq!(breaker.settings().failure_threshold, 9);
}

#[test]
fn a_removed_backend_leaves_rotation_and_its_request_in_flight_finishes() {
    let b = backends(&[("a", 0), ("slow", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.request_timeout = Duration::from_secs(10);
    let lb = start(cfg.clone());
    b[1].set_latency(Duration::from_millis(1500));
    // round robin: one of two requests goes to "slow"; keep them in flight
    let addr = lb.listen_addr();
    let in_flight: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(addr, "/")))
        .collect();
    assert!(wait_until(Duration::from_secs(2), || lb
        .backends()
        .get("slow")
        .is_some_and(|s| s.stats.in_flight() == 1)));

    let mut next = cfg;
    next.backends.retain(|s| s.id != "slow");
    let started = Instant::now();
    let report = lb.reload_config(next).expect("valid");
    let waited = started.elapsed();
    assert_eq!(report.removed, ["slow"]);
    assert!(report.drained, "{report:?}");
    assert!(
        waited >= Duration::from_millis(800),
        "the reload reported before the request finished: {waited:?}"
    );
    for t in in_flight {
        assert_eq!(t.join().unwrap().status, 200);
    }
    assert!(lb.backends().get("slow").is_none());
    let hits = b[1].hits();
    let seq = sequence(lb.listen_addr(), 6);
    assert!(seq.iter().all(|id| id == "a"), "{seq:?}");
    assert_eq!(
        b[1].hits(),
        hits,
        "no new request reached the removed backend"
    );
}

#[test]
fn a_refused_reload_changes_nothing_and_is_counted() {
    let b = backends(&[("a", 0), ("b", 0), ("extra", 0)]);
    let cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    let lb = start(cfg.clone());
    // added at run time, at the address the next file gives a new backend
    lb.add_server(b[2].server(1)).unwrap();

    let mut clash = cfg.clone();
    clash.strategy = Strategy::Random;
    clash
        .backends
        .push(fulcrum::BackendServer::new("renamed", b[2].url()));
    let err = lb.reload_config(clash).unwrap_err();
    assert!(matches!(err, ReloadError::Backends(_)), "{err}");
    assert!(err.to_string().contains("extra"), "{err}");

    let mut invalid = cfg;
    invalid.max_retries = 99;
    let err = lb.reload_config(invalid).unwrap_err();
    assert!(err.messages()[0].starts_with("max_retries"), "{err}");

    assert_eq!(
        metrics_json(&lb)["strategy"],
        "round_robin",
        "nothing changed"
    );
    let text = get(lb.admin_addr(), "/metrics").body;
    assert!(
        text.contains("fulcrum_config_reloads_total{outcome=\"failure\"} 2"),
        "{text}"
    );
    assert!(text.contains("fulcrum_config_last_reload_successful 0"));
    assert_eq!(lb.backends().len(), 3);

    // and a load balancer without a file says so
    assert!(matches!(lb.reload(), Err(ReloadError::NoFile)));
}

#[test]
fn an_unchanged_config_is_a_no_op() {
    let b = backends(&[("a", 0)]);
    let cfg: LoadBalancerConfig = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    let lb = start(cfg.clone());
    let state = lb.backends().get("a").unwrap();
    let report = lb.reload_config(cfg).expect("valid");
    assert!(
        report.added.is_empty()
            && report.removed.is_empty()
            && report.updated.is_empty()
            && report.changed.is_empty()
            && report.needs_upgrade.is_empty()
            && report.drained,
        "{report:?}"
    );
    assert!(std::sync::Arc::ptr_eq(
        &state,
        &lb.backends().get("a").unwrap()
    ));
}
