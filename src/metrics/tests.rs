//! Tests of [`Metrics`] as a whole: status classes, and what recorded requests look like in both
//! renderings.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::test_support::{backend, request, sample};
use super::*;
use crate::backend::{BackendServer, BackendSpec, BackendState, InFlightGuard};
use crate::balance::Strategy;
use crate::breaker::BreakerSettings;
use crate::health::Thresholds;

#[test]
fn statuses_map_to_code_classes() {
    let cases = [
        (0, "none"),
        (99, "none"),
        (100, "1xx"),
        (101, "1xx"),
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (399, "3xx"),
        (404, "4xx"),
        (429, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
        (599, "5xx"),
        (600, "none"),
        (999, "none"),
    ];
    for (status, want) in cases {
        assert_eq!(code_class(status), want, "{status}");
    }
}

#[test]
fn recorded_requests_show_in_both_formats() {
    let a = backend("a", 1);
    let mut b_server = BackendServer::new("b", "http://127.0.0.1:2");
    b_server.weight = 3;
    let settings = BreakerSettings {
        failure_threshold: 5,
        recovery_threshold: 1,
        timeout: Duration::from_secs(30),
        half_open_max_calls: 1,
    };
    let b = BackendState::new(BackendSpec::resolve(b_server).unwrap(), Some(settings));
    let m = Metrics::new(true, Strategy::RoundRobin);
    // (status, total ms, backend) → expected class per backend
    let table: &[(u16, u64, Option<&Arc<BackendState>>)] = &[
        (200, 10, Some(&a)),
        (200, 20, Some(&a)),
        (404, 30, Some(&a)),
        (503, 40, Some(&b)),
        (0, 50, Some(&b)),
        (302, 60, Some(&b)),
        (429, 70, None),
        (503, 80, None),
        (101, 90, Some(&a)),
    ];
    for &(status, ms, backend) in table {
        m.record_request(&request(status, ms, backend));
    }
    m.record_retry();
    m.record_retry();
    m.record_budget_exhausted();
    m.record_rate_limited();
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    let _in_flight = InFlightGuard::new(b.clone());
    b.stats.record_request();
    let t = Thresholds {
        healthy: 1,
        unhealthy: 1,
    };
    a.health.record(Ok(()), SystemTime::now(), t);
    b.set_draining(true);

    let backends = [a.clone(), b.clone()];
    let j = m.json_snapshot(&backends);
    assert_eq!(j["total_requests"], 9);
    assert_eq!(j["failed_requests"], 3, "two 5xx and one without response");
    assert_eq!(j["successful_requests"], 6);
    assert_eq!(j["average_response_time"], 50.0);
    assert_eq!(j["retries"], 2);
    assert_eq!(j["retry_budget_exhausted"], 1);
    assert_eq!(j["rate_limited_requests"], 1);
    assert_eq!(j["active_connections"], 1);
    assert_eq!(j["circuit_breaker_trips"], 0);
    assert_eq!(j["strategy"], "round_robin");
    assert_eq!(j["version"], VERSION);
    assert!(j["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert!(j["requests_per_second"].as_f64().unwrap() > 0.0);
    let sb = &j["servers"]["b"];
    assert_eq!(sb["url"], "http://127.0.0.1:2");
    assert_eq!(sb["weight"], 3);
    assert_eq!(sb["breaker"], "closed");
    assert_eq!(sb["draining"], true);
    assert_eq!(sb["active_connections"], 1);
    assert_eq!(sb["requests"], 1);
    assert_eq!(sb["availability"], 1.0);
    assert_eq!(sb["response_time"], Value::Null);
    assert_eq!(j["servers"]["a"]["breaker"], "disabled");
    assert_eq!(j["servers"]["a"]["health"], "healthy");
    assert_eq!(sb["health"], "unknown");

    let text = m.prometheus_text(&backends, &[], None);
    let want = [
        (
            "fulcrum_requests_total{backend=\"a\",code_class=\"2xx\"}",
            2.0,
        ),
        (
            "fulcrum_requests_total{backend=\"a\",code_class=\"4xx\"}",
            1.0,
        ),
        (
            "fulcrum_requests_total{backend=\"a\",code_class=\"1xx\"}",
            1.0,
        ),
        (
            "fulcrum_requests_total{backend=\"a\",code_class=\"5xx\"}",
            0.0,
        ),
        (
            "fulcrum_requests_total{backend=\"b\",code_class=\"5xx\"}",
            1.0,
        ),
        (
            "fulcrum_requests_total{backend=\"b\",code_class=\"none\"}",
            1.0,
        ),
        (
            "fulcrum_requests_total{backend=\"b\",code_class=\"3xx\"}",
            1.0,
        ),
        (
            "fulcrum_requests_total{backend=\"none\",code_class=\"4xx\"}",
            1.0,
        ),
        (
            "fulcrum_requests_total{backend=\"none\",code_class=\"5xx\"}",
            1.0,
        ),
        ("fulcrum_request_duration_seconds_count", 9.0),
        ("fulcrum_request_duration_seconds_bucket{le=\"0.01\"}", 1.0),
        ("fulcrum_request_duration_seconds_bucket{le=\"0.05\"}", 5.0),
        (
            "fulcrum_upstream_duration_seconds_count{backend=\"a\"}",
            4.0,
        ),
        (
            "fulcrum_upstream_duration_seconds_count{backend=\"b\"}",
            3.0,
        ),
        (
            "fulcrum_upstream_duration_seconds_bucket{backend=\"a\",le=\"0.005\"}",
            1.0,
        ),
        ("fulcrum_backend_in_flight{backend=\"b\"}", 1.0),
        ("fulcrum_backend_in_flight{backend=\"a\"}", 0.0),
        (
            "fulcrum_backend_health{backend=\"a\",state=\"healthy\"}",
            1.0,
        ),
        (
            "fulcrum_backend_health{backend=\"a\",state=\"unknown\"}",
            0.0,
        ),
        (
            "fulcrum_backend_health{backend=\"b\",state=\"unknown\"}",
            1.0,
        ),
        ("fulcrum_backend_up{backend=\"a\"}", 1.0),
        ("fulcrum_backend_up{backend=\"b\"}", 0.0),
        ("fulcrum_backend_weight{backend=\"b\"}", 3.0),
        ("fulcrum_backend_draining{backend=\"b\"}", 1.0),
        ("fulcrum_backend_draining{backend=\"a\"}", 0.0),
        ("fulcrum_backend_attempts_total{backend=\"b\"}", 1.0),
        (
            "fulcrum_circuit_breaker_state{backend=\"b\",state=\"closed\"}",
            1.0,
        ),
        (
            "fulcrum_circuit_breaker_state{backend=\"b\",state=\"open\"}",
            0.0,
        ),
        ("fulcrum_circuit_breaker_trips_total{backend=\"b\"}", 0.0),
        ("fulcrum_retries_total", 2.0),
        ("fulcrum_retry_budget_exhausted_total", 1.0),
        ("fulcrum_rate_limited_requests_total", 1.0),
        ("fulcrum_client_connections", 1.0),
    ];
    for (series, value) in want {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(!text.contains("fulcrum_requests_total{backend=\"none\",code_class=\"2xx\"}"));
    assert!(
        !text.contains("fulcrum_circuit_breaker_state{backend=\"a\""),
        "a has no breaker"
    );
    let sum: f64 = text
        .lines()
        .filter(|l| l.starts_with("fulcrum_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sum, 9.0, "requests_total sums to the JSON total");
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }
}

#[test]
fn disabled_metrics_record_nothing() {
    let a = backend("a", 1);
    let m = Metrics::new(false, Strategy::RoundRobin);
    m.record_request(&request(200, 5, Some(&a)));
    m.record_request(&request(503, 5, None));
    m.record_retry();
    m.record_budget_exhausted();
    m.record_rate_limited();
    m.connection_opened();
    let j = m.json_snapshot(std::slice::from_ref(&a));
    for key in [
        "total_requests",
        "failed_requests",
        "retries",
        "retry_budget_exhausted",
        "rate_limited_requests",
        "active_connections",
    ] {
        assert_eq!(j[key], 0, "{key}");
    }
    assert_eq!(j["requests_per_second"], 0.0);
    assert_eq!(j["average_response_time"], 0.0);
    assert_eq!(a.stats.finished_by_class(), [0; 6]);
    let text = m.prometheus_text(&[a], &[], None);
    assert_eq!(
        sample(&text, "fulcrum_request_duration_seconds_count"),
        Some(0.0)
    );
    assert!(!text.contains("backend=\"none\""));
}

#[test]
fn a_removed_backend_disappears() {
    let (a, b) = (backend("a", 1), backend("b", 2));
    let m = Metrics::new(true, Strategy::RoundRobin);
    m.record_request(&request(200, 1, Some(&b)));
    let both = m.prometheus_text(&[a.clone(), b.clone()], &[], None);
    assert!(both.contains("backend=\"b\""));
    let only_a = m.prometheus_text(std::slice::from_ref(&a), &[], None);
    assert!(only_a.contains("backend=\"a\""));
    assert!(!only_a.contains("backend=\"b\""), "{only_a}");
    let j = m.json_snapshot(&[a]);
    assert!(j["servers"].get("b").is_none());
    assert_eq!(j["total_requests"], 1, "process totals keep its requests");
    let none = m.prometheus_text(&[], &[], None);
    assert!(!none.contains("backend="), "{none}");
}

#[test]
fn each_certificate_served_has_its_expiry() {
    let m = Metrics::new(true, Strategy::RoundRobin);
    let none = m.prometheus_text(&[], &[], None);
    assert!(!none.contains("fulcrum_tls_certificate_expiry"), "{none}");
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let certs = [
        crate::tls::CertInfo {
            source: "/etc/tls/a.pem".into(),
            cert_file: "/etc/tls/a.pem".into(),
            names: vec!["a.example".into(), "*.a.example".into()],
            not_after: at(1_900_000_000),
        },
        crate::tls::CertInfo {
            source: "acme:b.example".into(),
            cert_file: "/var/lib/fulcrum/acme/b.example.pem".into(),
            names: vec!["b.example".into()],
            not_after: at(1_800_000_000),
        },
    ];
    let text = m.prometheus_text(&[], &certs, None);
    let name = "fulcrum_tls_certificate_expiry_timestamp_seconds";
    assert_eq!(
        sample(
            &text,
            &format!("{name}{{cert=\"/etc/tls/a.pem\",names=\"a.example,*.a.example\"}}")
        ),
        Some(1.9e9),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("{name}{{cert=\"acme:b.example\",names=\"b.example\"}}")
        ),
        Some(1.8e9),
        "{text}"
    );
}
