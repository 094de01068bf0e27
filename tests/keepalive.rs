//! Several requests on one kept-alive client connection: they are all answered, the connection
//! is closed after `client_idle_timeout` of silence between requests (and not before), and the
//! downstream guard (`client_header_timeout`, `max_request_header_size`) applies to every
//! request head on the connection, not only the first.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use fulcrum::Strategy;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Open client connections, from the metrics.
fn open_connections(admin: std::net::SocketAddr) -> u64 {
    let r = get(admin, "/metrics?format=json");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    v["active_connections"]
        .as_u64()
        .expect("active_connections")
}

#[test]
fn requests_follow_each_other_on_one_connection() {
    let b = backends(&[("a", 0)]);
    let lb = start(config(Strategy::RoundRobin, &[(&b[0], 1)]));
    let mut conn = KeptAlive::connect(lb.listen_addr());
    let body = vec![b'x'; 3000];
    let answers = [
        conn.send("GET", "/one", &[], b"").unwrap(),
        conn.send("POST", "/two", &[], &body).unwrap(),
        conn.send("PUT", "/three", &[], &body).unwrap(),
        conn.send("HEAD", "/four", &[], b"").unwrap(),
        conn.send("GET", "/five", &[], b"").unwrap(),
    ];
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.header("x-backend-id"), Some("a"), "request {i}: {r:?}");
        assert_ne!(r.header("connection"), Some("close"), "request {i}: {r:?}");
    }
    assert_eq!(answers[4].body, "Response from a");
    assert_eq!(b[0].hits(), 5, "every request reached the backend once");
    assert_eq!(
        open_connections(lb.admin_addr()),
        1,
        "all five on the one client connection"
    );
}

#[test]
fn the_idle_timeout_runs_between_requests() {
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    let idle = ms(600);
    cfg.client_idle_timeout = idle;
    let lb = start(cfg);
    let mut conn = KeptAlive::connect(lb.listen_addr());
    let started = Instant::now();
    // four requests, each sent 350 ms after the previous answer: together longer than the idle
    // timeout, but no gap reaches it
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(ms(350));
        }
        let r = conn.get(&format!("/r{i}"));
        assert_eq!(r.status, 200, "request {i} after a short pause: {r:?}");
    }
    assert!(
        started.elapsed() > idle,
        "the pauses add up past the timeout"
    );
    assert_eq!(b[0].hits(), 4);

    // then silence: Fulcrum closes the connection after the idle timeout, not before
    let closed = conn
        .wait_closed(Duration::from_secs(5))
        .expect("an idle kept-alive connection is closed");
    assert!(
        closed >= idle - ms(50) && closed < idle + ms(2000),
        "closed after {closed:?} of silence; client_idle_timeout is {idle:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || open_connections(lb.admin_addr())
            == 0),
        "the closed connection is no longer counted"
    );
}

#[test]
fn a_slow_second_request_head_is_cut_off() {
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.client_header_timeout = ms(400);
    cfg.client_idle_timeout = Duration::from_secs(10);
    let lb = start(cfg);
    let mut conn = KeptAlive::connect(lb.listen_addr());
    assert_eq!(conn.get("/first").status, 200);

    // the second head trickles in, one header line every 100 ms, and never ends
    let started = Instant::now();
    conn.stream()
        .write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let writer = conn.stream().try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut w = writer;
        for i in 0..40 {
            std::thread::sleep(ms(100));
            if w.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = conn.stream().read_to_end(&mut answer);
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "the reused connection's slow head: {answer:?}"
    );
    assert!(
        took >= ms(350) && took < ms(3000),
        "cut off after {took:?}; client_header_timeout is 400 ms"
    );
    trickle.join().unwrap();
    assert_eq!(b[0].hits(), 1, "the slow request never reached the backend");
}

#[test]
fn a_huge_second_request_head_is_refused() {
    let b = backends(&[("a", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.max_request_header_size = 2048;
    let lb = start(cfg);
    let mut conn = KeptAlive::connect(lb.listen_addr());
    assert_eq!(conn.get("/first").status, 200);
    let big = "x".repeat(4000);
    let r = conn
        .send("GET", "/second", &[("X-Big", &big)], b"")
        .unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    assert!(
        conn.wait_closed(Duration::from_secs(5)).is_some(),
        "the connection is closed after the 431"
    );
    assert_eq!(b[0].hits(), 1, "the huge request never reached the backend");
}
