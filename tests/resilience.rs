//! Circuit breakers, retries, capacity, timeouts and rate limiting, through a real Fulcrum to
//! real backends and real slow peers on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fulcrum::config::RateLimitConfig;
use fulcrum::Strategy;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn breaker_stops_traffic_probes_after_timeout_and_closes_on_recovery() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.max_retries = 0;
    cfg.circuit_breaker.failure_threshold = 3;
    cfg.circuit_breaker.recovery_threshold = 2;
    cfg.circuit_breaker.timeout = ms(400);
    cfg.circuit_breaker.half_open_max_calls = 1;
    let lb = start(cfg);
    let addr = lb.listen_addr();
    let breaker = lb.backends().get("b").unwrap().breaker.load_full().unwrap();

    b[1].set_status(500);
    let statuses: Vec<u16> = (0..30).map(|_| get(addr, "/").status).collect();
    assert_eq!(
        b[1].hits(),
        3,
        "b must stop getting traffic after 3 failures"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 3);
    assert_eq!(breaker.trips(), 1);

    // after the timeout: one probe, still failing, open again (no new trip)
    std::thread::sleep(ms(450));
    for _ in 0..10 {
        get(addr, "/");
    }
    assert_eq!(b[1].hits(), 4, "exactly one half-open probe");
    assert_eq!(breaker.trips(), 1);

    // recovered: probes succeed, the breaker closes, b gets its share again
    b[1].set_status(0);
    std::thread::sleep(ms(450));
    let seq = sequence(addr, 40);
    let on_b = seq.iter().filter(|id| *id == "b").count();
    assert!(
        on_b >= 15,
        "b closed again should get about half, got {on_b}"
    );
    assert_eq!(breaker.state(), fulcrum::breaker::BreakerState::Closed);
    assert_eq!(breaker.trips(), 1);
}

#[test]
fn all_breakers_open_fails_fast_with_503() {
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.max_retries = 0;
    cfg.circuit_breaker.failure_threshold = 2;
    cfg.circuit_breaker.timeout = Duration::from_secs(60);
    let lb = start(cfg);
    b[0].set_status(503);
    for _ in 0..2 {
        assert_eq!(get(lb.listen_addr(), "/").status, 503);
    }
    let hits = b[0].hits();
    let r = get(lb.listen_addr(), "/");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("circuit breaker is open"), "{r:?}");
    assert_eq!(b[0].hits(), hits, "fail fast: the backend saw nothing");
}

#[test]
fn one_refusing_backend_of_three_costs_no_request() {
    let mut b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let lb = start(config(
        Strategy::RoundRobin,
        &[(&b[0], 1), (&b[1], 1), (&b[2], 1)],
    ));
    b.pop().unwrap().stop(); // c now refuses connections; the next health check is a minute away
    let failed = (0..300)
        .filter(|_| get(lb.listen_addr(), "/").status != 200)
        .count();
    assert_eq!(failed, 0);
    let c = lb.backends().get("c").unwrap();
    assert_eq!(c.breaker_trips(), 1, "c's breaker opened");
}

#[test]
fn gateway_errors_to_idempotent_requests_are_retried_elsewhere() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.circuit_breaker_enabled = false;
    cfg.retry_backoff = Duration::ZERO;
    cfg.retry_budget_percent = 100; // five retries within a second: more than the budget's floor
    let lb = start(cfg);
    b[1].set_status(503);
    for _ in 0..10 {
        let r = get(lb.listen_addr(), "/");
        assert_eq!((r.status, served_by(&r).as_str()), (200, "a"));
    }
    // a POST is not replayed: whoever got it answers
    let posts: Vec<u16> = (0..10)
        .map(|_| {
            request(
                lb.listen_addr(),
                "POST",
                "/",
                &[("Content-Length", "0")],
                None,
            )
            .unwrap()
            .status
        })
        .collect();
    assert!(posts.contains(&503), "{posts:?}");
}

/// A backend that reads one request, counts it, then resets the connection.
fn resetting_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            stream.set_read_timeout(Some(ms(500))).ok();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let head_done = got.windows(4).any(|w| w == b"\r\n\r\n");
                if head_done && (got.starts_with(b"GET") || got.ends_with(b"payload")) {
                    break;
                }
            }
            if got.starts_with(b"GET /health") {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            if got.starts_with(b"POST") {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let sock = socket2::SockRef::from(&stream);
            sock.set_linger(Some(Duration::ZERO)).ok(); // close with RST
        }
    });
    (addr, seen)
}

#[test]
fn a_post_that_reached_a_backend_is_not_replayed() {
    let (addr, seen) = resetting_backend();
    let good = backends(&[("good", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&good[0], 1)]);
    cfg.backends.insert(
        0,
        fulcrum::BackendServer::new("resetter", format!("http://{addr}")),
    );
    cfg.circuit_breaker_enabled = false;
    let lb = start(cfg);
    let statuses: Vec<u16> = (0..4).map(|_| raw_post(lb.listen_addr())).collect();
    let posts_at_resetter = seen.load(Ordering::SeqCst);
    let posts_at_good = good[0].hits();
    assert!(
        posts_at_resetter >= 1,
        "the resetter got no POST: {statuses:?}"
    );
    let failed = statuses.iter().filter(|s| **s == 502).count() as u64;
    assert_eq!(
        failed, posts_at_resetter,
        "every POST that reached the resetter failed instead of being replayed: {statuses:?}"
    );
    assert!(posts_at_good >= 1);
}

fn raw_post(addr: SocketAddr) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nConnection: close\r\n\r\npayload",
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn capacity_caps_concurrency_and_full_backends_answer_503_retry_after() {
    let b = backends(&[("slow", 300)]);
    let mut server = b[0].server(1);
    server.capacity = 2;
    let mut cfg = config(Strategy::RoundRobin, &[]);
    cfg.backends.push(server);
    let lb = start(cfg);
    let addr = lb.listen_addr();
    let handles: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || get(addr, "/")))
        .collect();
    let responses: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let full: Vec<&Resp> = responses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(b[0].max_concurrent(), 2, "capacity 2 exceeded");
    assert!(ok >= 2, "{ok} ok");
    assert_eq!(ok + full.len(), 10);
    assert!(!full.is_empty());
    for r in full {
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
        assert!(r.body.contains("capacity"), "{r:?}");
    }
}

/// A listener whose accept queue is full, so further connects hang (SYNs are dropped).
fn black_hole() -> (socket2::Socket, Vec<TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, ms(200)) {
            fillers.push(s);
        }
    }
    (sock, fillers)
}

#[test]
fn connect_timeout_bounds_a_backend_that_does_not_accept() {
    let (hole, _fillers) = black_hole();
    let addr = hole.local_addr().unwrap().as_socket().unwrap();
    let mut cfg = config(Strategy::RoundRobin, &[]);
    cfg.backends.push(fulcrum::BackendServer::new(
        "hole",
        format!("http://{addr}"),
    ));
    cfg.connect_timeout = ms(300);
    cfg.health_check_timeout = Some(Duration::from_secs(5)); // stays "unknown", so it is tried
    cfg.max_retries = 0;
    let lb = fulcrum::LoadBalancer::new(cfg).unwrap().start().unwrap();
    let t = Instant::now();
    let r = get(lb.listen_addr(), "/");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(took >= ms(250) && took < ms(2500), "took {took:?}");
}

#[test]
fn request_timeout_bounds_a_backend_that_does_not_answer() {
    let b = backends(&[("sleepy", 3000)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.request_timeout = ms(400);
    cfg.max_retries = 0;
    let lb = start(cfg);
    let t = Instant::now();
    let r = get(lb.listen_addr(), "/");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(t.elapsed() < ms(2000), "took {:?}", t.elapsed());
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn slow_headers_idle_clients_and_huge_heads_are_cut_off() {
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.client_header_timeout = ms(600);
    cfg.client_idle_timeout = ms(1000);
    cfg.max_request_header_size = 2048;
    let lb = start(cfg);
    let addr = lb.listen_addr();

    // slowloris: one header line every 150 ms, never finishing
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let writer = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut w = writer;
        for i in 0..30 {
            std::thread::sleep(ms(150));
            if w.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
    });
    let answer = read_all(s);
    let took = t.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took >= ms(500) && took < ms(2500), "cut off after {took:?}");
    trickle.join().unwrap();
    assert_eq!(b[0].hits(), 0);

    // an idle connection is closed
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    assert_eq!(read_all(s), "");
    assert!(
        t.elapsed() >= ms(900) && t.elapsed() < ms(3000),
        "{:?}",
        t.elapsed()
    );

    // a head over max_request_header_size gets 431
    let big = "x".repeat(4000);
    let r = request(addr, "GET", "/", &[("X-Big", &big)], None).unwrap();
    assert_eq!(r.status, 431);

    // and a normal request still works, with keep-alive
    assert_eq!(served_by(&get(addr, "/")), "a");
}

#[test]
fn a_flooding_client_is_limited_and_others_are_not() {
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.rate_limit = Some(RateLimitConfig {
        requests_per_second: 2,
        burst: 10,
    });
    let lb = start(cfg);
    let addr = lb.listen_addr();
    let flooder = "127.0.0.2".parse().unwrap();
    let responses: Vec<Resp> = (0..30)
        .map(|_| request(addr, "GET", "/", &[], Some(flooder)).unwrap())
        .collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    assert!((10..=11).contains(&ok), "burst of 10 allowed, got {ok}");
    let limited: Vec<&Resp> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 30 - ok);
    let r = limited[0];
    assert_eq!(r.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().unwrap() >= 1));

    // another client is served
    let other = request(addr, "GET", "/", &[], Some("127.0.0.3".parse().unwrap())).unwrap();
    assert_eq!(other.status, 200);

    // spoofing X-Forwarded-For from an untrusted peer changes nothing
    let spoofer = "127.0.0.4".parse().unwrap();
    let spoofed_ok = (0..30)
        .filter(|i| {
            let fake = format!("10.0.0.{i}");
            request(
                addr,
                "GET",
                "/",
                &[("X-Forwarded-For", &fake)],
                Some(spoofer),
            )
            .unwrap()
            .status
                == 200
        })
        .count();
    assert!((10..=11).contains(&spoofed_ok), "spoofer got {spoofed_ok}");
}

#[test]
fn behind_a_trusted_proxy_clients_are_told_apart_by_forwarded_for() {
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.rate_limit = Some(RateLimitConfig {
        requests_per_second: 1,
        burst: 5,
    });
    cfg.trusted_proxies = vec!["127.0.0.5/32".parse().unwrap()];
    let lb = start(cfg);
    let proxy_ip = "127.0.0.5".parse().unwrap();
    let send = |client: &str| {
        request(
            lb.listen_addr(),
            "GET",
            "/",
            &[("X-Forwarded-For", client)],
            Some(proxy_ip),
        )
        .unwrap()
        .status
    };
    let first = (0..12).filter(|_| send("198.51.100.1") == 200).count();
    assert!((5..=6).contains(&first), "{first}");
    assert_eq!(
        send("198.51.100.2"),
        200,
        "a different client behind the proxy"
    );
}

/// Bounded concurrent load for `secs` while one of three backends is killed one second in.
/// Returns (requests, failures, trips). `FULCRUM_LOAD_SECS` lengthens it (the closing note's
/// figure uses 10).
#[test]
fn killing_a_backend_mid_load_fails_no_request() {
    let secs: u64 = std::env::var("FULCRUM_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut b = backends(&[("a", 1), ("b", 1), ("c", 1)]);
    let lb = start(config(
        Strategy::RoundRobin,
        &[(&b[0], 1), (&b[1], 1), (&b[2], 1)],
    ));
    let addr = lb.listen_addr();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while Instant::now() < deadline && n < 20_000 {
                    n += 1;
                    match request(addr, "GET", "/", &[], None) {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    b.pop().unwrap().stop();
    for c in clients {
        c.join().unwrap();
    }
    let trips = lb.backends().get("c").unwrap().breaker_trips();
    let (done, failed) = (done.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("load: {done} requests in {secs} s, {failed} failed, {trips} breaker trips");
    assert!(done > 100, "only {done} requests");
    assert_eq!(failed, 0);
    assert_eq!(trips, 1);
}
