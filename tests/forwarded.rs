//! Forwarded headers (`X-Forwarded-For/-Proto/-Host`, `X-Real-IP`, `Forwarded`) as a backend
//! receives them, through a real Fulcrum: a client's own are dropped unless it is a trusted
//! proxy.

mod capture;
mod common;

use std::io::Write;

use capture::*;
use common::*;
use fulcrum::Strategy;

const SPOOFED: &str = "X-Forwarded-For: 6.6.6.6\r\n\
    X-Forwarded-Proto: https\r\n\
    X-Forwarded-Host: evil.example\r\n\
    X-Real-IP: 6.6.6.6\r\n\
    Forwarded: for=6.6.6.6;proto=https\r\n";

/// Starts Fulcrum trusting `127.0.0.2` in front of a capture backend.
fn start_trusting_127_0_0_2(backend: &CaptureBackend) -> fulcrum::server::RunningLoadBalancer {
    let mut cfg = config(Strategy::RoundRobin, &[]);
    cfg.backends.push(backend.server());
    cfg.trusted_proxies = vec!["127.0.0.2".parse().unwrap()];
    start(cfg)
}

/// Sends a GET with `extra` header lines from `source` and returns what the backend got.
fn forward(
    lb: &fulcrum::server::RunningLoadBalancer,
    backend: &CaptureBackend,
    source: &str,
    extra: &str,
) -> String {
    let mut conn = connect(lb.listen_addr(), Some(source.parse().unwrap()));
    let req = format!("GET /x HTTP/1.1\r\nHost: shop.example\r\n{extra}Connection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut conn).status, 200);
    backend.only_request()
}

#[test]
fn an_untrusted_client_cannot_set_forwarded_headers() {
    let backend = CaptureBackend::start();
    let lb = start_trusting_127_0_0_2(&backend);
    let got = forward(&lb, &backend, "127.0.0.1", SPOOFED);
    let h = |name| headers_named(&got, name);
    assert_eq!(h("x-forwarded-for"), ["127.0.0.1"], "{got}");
    assert_eq!(h("x-forwarded-proto"), ["http"], "{got}");
    assert_eq!(h("x-forwarded-host"), ["shop.example"], "{got}");
    assert_eq!(h("x-real-ip"), ["127.0.0.1"], "{got}");
    assert!(h("forwarded").is_empty(), "{got}");
}

#[test]
fn a_trusted_proxy_s_forwarded_headers_are_kept_and_extended() {
    let backend = CaptureBackend::start();
    let lb = start_trusting_127_0_0_2(&backend);
    let got = forward(&lb, &backend, "127.0.0.2", SPOOFED);
    let h = |name| headers_named(&got, name);
    assert_eq!(h("x-forwarded-for"), ["6.6.6.6, 127.0.0.2"], "{got}");
    assert_eq!(h("x-forwarded-proto"), ["https"], "{got}");
    assert_eq!(h("x-forwarded-host"), ["evil.example"], "{got}");
    assert_eq!(
        h("x-real-ip"),
        ["6.6.6.6"],
        "the client the proxy vouches for: {got}"
    );
    assert_eq!(h("forwarded"), ["for=6.6.6.6;proto=https"], "{got}");
}

#[test]
fn a_trusted_proxy_that_sends_none_gets_ours() {
    let backend = CaptureBackend::start();
    let lb = start_trusting_127_0_0_2(&backend);
    let got = forward(&lb, &backend, "127.0.0.2", "");
    let h = |name| headers_named(&got, name);
    assert_eq!(h("x-forwarded-for"), ["127.0.0.2"], "{got}");
    assert_eq!(h("x-forwarded-proto"), ["http"], "{got}");
    assert_eq!(h("x-forwarded-host"), ["shop.example"], "{got}");
    assert_eq!(h("x-real-ip"), ["127.0.0.2"], "{got}");
}
