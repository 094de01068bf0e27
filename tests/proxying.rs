//! Health-check ejection and readmission, failover, error statuses and forwarded headers,
//! through a real Fulcrum to real backends on loopback.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;
use fulcrum::Strategy;

#[test]
fn unhealthy_backend_is_ejected_and_readmitted() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1), (&b[2], 1)]);
    cfg.health_check_interval = Duration::from_millis(100);
    cfg.health_check_timeout = Some(Duration::from_millis(100));
    cfg.healthy_threshold = 2;
    cfg.unhealthy_threshold = 2;
    let lb = start(cfg);
    assert!(wait_until(Duration::from_secs(5), || health_of(&lb, "b") == "healthy"));
    assert_eq!(health(&lb).0, 200);

    b[1].set_healthy(false);
    assert!(wait_until(Duration::from_secs(5), || health_of(&lb, "b")
        == "unhealthy"));
    let hits = b[1].hits();
    let seq = sequence(lb.listen_addr(), 30);
    assert_eq!(b[1].hits(), hits, "an unhealthy backend got traffic");
    assert_eq!(counts(&seq).len(), 2, "{seq:?}");

    b[1].set_healthy(true);
    assert!(wait_until(Duration::from_secs(5), || health_of(&lb, "b") == "healthy"));
    let seq = sequence(lb.listen_addr(), 30);
    assert_eq!(counts(&seq).get("b"), Some(&10), "{seq:?}");
}

#[test]
fn health_report_follows_the_backends() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.health_check_interval = Duration::from_millis(100);
    cfg.health_check_timeout = Some(Duration::from_millis(100));
    cfg.unhealthy_threshold = 1;
    let lb = start(cfg);
    assert!(wait_until(Duration::from_secs(5), || health(&lb).0 == 200));
    let (code, json) = health(&lb);
    assert_eq!((code, json["status"].as_str()), (200, Some("healthy")));
    assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    let servers = json["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["url"], b[0].url());
    assert_eq!(servers[0]["active_connections"], 0);

    for backend in &b {
        backend.set_healthy(false);
    }
    assert!(wait_until(Duration::from_secs(5), || health(&lb).0 == 503));
    assert_eq!(health(&lb).1["status"], "unhealthy");
    // no admitted backend: 503 with a short body, and the backends see nothing
    let hits: u64 = b.iter().map(|x| x.hits()).sum();
    let r = get(lb.listen_addr(), "/");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("no healthy backend"), "{r:?}");
    assert!(r.body.len() < 200);
    assert_eq!(b.iter().map(|x| x.hits()).sum::<u64>(), hits);
}

#[test]
fn a_backend_is_unknown_until_its_first_check() {
    // Accepts connections but never answers: the first health check cannot finish for 3 s.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.health_check_timeout = Some(Duration::from_secs(3));
    cfg.backends.push(fulcrum::BackendServer::new(
        "silent",
        format!("http://{}", silent.local_addr().unwrap()),
    ));
    let lb = fulcrum::LoadBalancer::new(cfg).unwrap().start().unwrap();
    assert!(wait_until(Duration::from_secs(2), || health_of(&lb, "a") == "healthy"));
    assert_eq!(health_of(&lb, "silent"), "unknown");
    assert!(wait_until(Duration::from_secs(6), || health_of(
        &lb, "silent"
    ) == "unhealthy"));
}

#[test]
fn connection_failures_fail_over_to_another_backend() {
    let mut b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1), (&b[2], 1)]);
    cfg.circuit_breaker_enabled = false; // every third request keeps trying c: failover alone
    cfg.retry_budget_percent = 100; // one retry per request, more than the budget's floor
    cfg.retry_backoff = Duration::ZERO;
    let lb = start(cfg);
    assert_eq!(health_of(&lb, "c"), "healthy");
    // c dies between two health checks (the next is a minute away): connects are refused.
    b.pop().unwrap().stop();
    let seq = sequence(lb.listen_addr(), 90);
    let c = counts(&seq);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c.values().sum::<usize>(), 90);
    let failures = lb.backends().get("c").unwrap().stats.failures();
    assert!(failures >= 20, "c was not tried: {failures} failures");
}

#[test]
fn backend_failure_after_retries_is_a_502() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.max_retries = 1;
    cfg.retry_backoff = Duration::ZERO;
    let lb = start(cfg);
    drop(b);
    let r = get(lb.listen_addr(), "/");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.len() < 200);
    let attempts: u64 = ["a", "b"]
        .iter()
        .map(|id| lb.backends().get(id).unwrap().stats.failures())
        .sum();
    assert_eq!(attempts, 2, "one attempt plus max_retries = 1 retry");
}

fn header_lines(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn backend_header(body: &str, name: &str) -> Option<String> {
    header_lines(body)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[test]
fn forwarded_headers_reach_the_backend() {
    let b = backends(&[("a", 0)]);
    let lb = start(config(Strategy::RoundRobin, &[(&b[0], 1)]));
    let addr = lb.listen_addr();

    let r = request(addr, "GET", "/debug/headers", &[], None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        backend_header(&r.body, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        backend_header(&r.body, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        backend_header(&r.body, "x-forwarded-host"),
        Some(addr.to_string())
    );
    let id = backend_header(&r.body, "x-request-id").expect("request id");
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(
        r.header("x-request-id"),
        Some(id.as_str()),
        "echoed to the client"
    );

    let r = request(
        addr,
        "GET",
        "/debug/headers",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Request-Id", "client-id-1"),
            ("X-Forwarded-Proto", "https"),
        ],
        Some("127.0.0.9".parse().unwrap()),
    )
    .unwrap();
    assert_eq!(
        backend_header(&r.body, "x-forwarded-for").as_deref(),
        Some("127.0.0.9"),
        "an untrusted client's own X-Forwarded-For is dropped"
    );
    assert_eq!(
        backend_header(&r.body, "x-request-id").as_deref(),
        Some("client-id-1")
    );
    assert_eq!(
        backend_header(&r.body, "x-forwarded-proto").as_deref(),
        Some("http"),
        "a client cannot claim https"
    );
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));

    let a = backend_header(&get(addr, "/debug/headers").body, "x-request-id");
    let b2 = backend_header(&get(addr, "/debug/headers").body, "x-request-id");
    assert_ne!(a, b2, "generated ids are unique");
}
