//! WebSocket through Fulcrum: the upgrade is proxied to an HTTP/1.1 backend and the stream stays
//! open both ways; `websocket_idle_timeout` (not `request_timeout`, not `client_idle_timeout`)
//! bounds its silence; it counts in its backend's in-flight while open; a refused upgrade
//! passes through as it is; nothing is retried after the `101`.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ws::*;
use common::*;
use fulcrum::config::LoadBalancerConfig;
use fulcrum::server::RunningLoadBalancer;
use fulcrum::Strategy;
use tungstenite::{Message, WebSocket};

/// The test config (`common::config`) in front of `backends`.
fn ws_config(backends: &[&WsBackend]) -> LoadBalancerConfig {
    LoadBalancerConfig {
        backends: backends.iter().map(|b| b.server(1)).collect(),
        ..config(Strategy::RoundRobin, &[])
    }
}

/// [`ws_config`] for `backend` with `websocket_idle_timeout: 1s`.
fn idle_1s(backend: &WsBackend) -> LoadBalancerConfig {
    LoadBalancerConfig {
        websocket_idle_timeout: Duration::from_secs(1),
        ..ws_config(&[backend])
    }
}

/// `active_connections` of backend `id` in `/health`.
fn in_flight(lb: &RunningLoadBalancer, id: &str) -> u64 {
    health_entry(lb, id)["active_connections"]
        .as_u64()
        .expect("active_connections")
}

/// A WebSocket backend `ws` and Fulcrum in front of it with `config(backend)`.
fn serve(
    config: impl FnOnce(&WsBackend) -> LoadBalancerConfig,
) -> (WsBackend, RunningLoadBalancer) {
    let b = WsBackend::start("ws");
    let lb = start(config(&b));
    (b, lb)
}

/// Closes `ws` from the client side and waits until the close went through and backend `ws`
/// has nothing in flight.
fn close_and_release(mut ws: WebSocket<TcpStream>, lb: &RunningLoadBalancer) {
    ws.close(None).unwrap();
    let (closed, rest) = wait_closed(&mut ws, Duration::from_secs(5));
    assert!(closed && rest.is_empty(), "the close handshake: {rest:?}");
    assert!(
        wait_until(Duration::from_secs(5), || in_flight(lb, "ws") == 0),
        "in flight after the close: {}",
        in_flight(lb, "ws")
    );
}

#[test]
fn echo_goes_through_and_the_websocket_counts_in_flight_while_open() {
    let (_b, lb) = serve(|b| ws_config(&[b]));
    let mut ws = ws_connect(lb.listen_addr(), "/chat");
    assert_eq!(echo(&mut ws, "hello"), "hello");
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    assert_eq!(in_flight(&lb, "ws"), 1, "an open WebSocket is in flight");
    close_and_release(ws, &lb);
}

#[test]
fn a_websockets_lifetime_is_not_its_latency() {
    let (_b, lb) = serve(|b| ws_config(&[b]));
    let mut ws = ws_connect(lb.listen_addr(), "/chat");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(echo(&mut ws, "bye"), "bye");
    close_and_release(ws, &lb);
    let r = get(lb.admin_addr(), "/metrics?format=json");
    let m: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (&m["total_requests"], &m["failed_requests"]),
        (&1.into(), &0.into()),
        "{m}"
    );
    let ms = m["average_response_time"].as_f64().unwrap();
    assert!(
        ms < 1000.0,
        "a 1.5 s WebSocket took {ms} ms in the latency metrics"
    );
}

#[test]
fn the_handshake_reaches_the_backend_intact() {
    let (b, lb) = serve(|b| ws_config(&[b]));
    let mut ws = ws_connect(lb.listen_addr(), "/chat?room=1");
    assert_eq!(echo(&mut ws, "x"), "x");
    let heads = b.upgrade_heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    for field in [
        "get /chat?room=1 http/1.1\r\n",
        "\r\nupgrade: websocket\r\n",
        "\r\nconnection: upgrade\r\n",
        "\r\nsec-websocket-version: 13\r\n",
        "\r\nsec-websocket-protocol: chat\r\n",
        "\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n",
        "\r\nsec-websocket-key: ",
        "\r\nx-forwarded-for: 127.0.0.1\r\n",
    ] {
        assert!(head.contains(field), "{field:?} missing from {head}");
    }
}

#[test]
fn a_websocket_goes_through_the_tls_listener() {
    let scratch = common::process::Scratch::new("wss");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (scratch.path("cert.pem"), scratch.path("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (b, lb) = serve(|b| LoadBalancerConfig {
        enable_ssl: true,
        ssl_cert_file: Some(cert_file),
        ssl_key_file: Some(key_file),
        tls_listen_port: 0,
        ..ws_config(&[b])
    });
    let tunnel = tls_tunnel(lb.tls_addr().expect("TLS listener"), cert.der().clone());
    let mut ws = ws_connect(tunnel, "/secure");
    assert_eq!(echo(&mut ws, "over tls"), "over tls");
    assert_eq!(in_flight(&lb, "ws"), 1);
    let heads = b.upgrade_heads();
    assert!(
        heads[0].contains("\r\nx-forwarded-proto: https\r\n"),
        "{heads:?}"
    );
    close_and_release(ws, &lb);
}

#[test]
fn a_refused_upgrade_is_passed_through_as_it_is() {
    let (b, lb) = serve(|b| ws_config(&[b]));
    let r = request(
        lb.listen_addr(),
        "GET",
        "/deny",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("x-why"), Some("denied"));
    assert_eq!(r.body, "no websocket here\n");
    assert_eq!(b.upgrade_heads().len(), 1, "asked once");
    assert_eq!(b.upgraded(), 0);
    assert!(wait_until(Duration::from_secs(5), || in_flight(&lb, "ws") == 0));
}

#[test]
fn a_websocket_is_never_retried_after_the_switch() {
    let (a, b) = (WsBackend::start("a"), WsBackend::start("b"));
    let mut config = ws_config(&[&a, &b]);
    config.circuit_breaker.failure_threshold = 1;
    let lb = start(config);
    let mut ws = ws_connect(lb.listen_addr(), "/drop");
    let (closed, _) = wait_closed(&mut ws, Duration::from_secs(5));
    assert!(closed, "the backend's reset reached the client");
    assert_eq!(
        a.upgrade_heads().len() + b.upgrade_heads().len(),
        1,
        "the upgrade was sent once"
    );
    assert!(wait_until(Duration::from_secs(5), || in_flight(&lb, "a")
        + in_flight(&lb, "b")
        == 0));
    // what happens inside a WebSocket is not a verdict on the backend: a breaker that opens
    // at the first failure stays closed
    for s in lb.backends().snapshot().iter() {
        assert_eq!(
            (s.stats.failures(), s.breaker_state()),
            (0, "closed"),
            "{}",
            s.id()
        );
    }
}

#[test]
fn a_websocket_the_backend_closes_is_released() {
    let (b, lb) = serve(|b| ws_config(&[b]));
    let mut ws = ws_connect(lb.listen_addr(), "/bye");
    assert_eq!(echo(&mut ws, "last"), "last");
    let (closed, _) = wait_closed(&mut ws, Duration::from_secs(5));
    assert!(closed, "the backend's close reached the client");
    assert!(
        wait_until(Duration::from_secs(5), || in_flight(&lb, "ws") == 0),
        "in flight after the backend closed: {}",
        in_flight(&lb, "ws")
    );
    assert!(wait_until(Duration::from_secs(5), || b.open() == 0));
}

#[test]
fn many_messages_both_ways_arrive_intact_and_in_order() {
    const N: usize = 2000;
    let (_b, lb) = serve(|b| ws_config(&[b]));
    let ws = ws_connect(lb.listen_addr(), "/chat");
    // one thread writes while another reads the echoes, so both directions are busy at once
    let stream = ws.get_ref().try_clone().unwrap();
    let mut writer =
        tungstenite::WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None);
    let mut reader = ws;
    let payload = |i: usize| -> Vec<u8> {
        let len = [1, 125, 126, 1000, 65535, 65536, 200_000][i % 7];
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    };
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            writer.send(Message::binary(payload(i))).expect("send");
        }
        writer
    });
    let started = Instant::now();
    for i in 0..N {
        let got = reader.read().expect("echo");
        assert_eq!(got, Message::binary(payload(i)), "message {i}");
    }
    let mut writer = sender.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    writer.close(None).unwrap();
    let (closed, rest) = wait_closed(&mut reader, Duration::from_secs(5));
    assert!(closed && rest.is_empty(), "{rest:?}");
}

#[test]
fn an_idle_websocket_outlives_request_timeout_and_client_idle_timeout() {
    let (_b, lb) = serve(|b| LoadBalancerConfig {
        request_timeout: Duration::from_secs(1),
        client_idle_timeout: Duration::from_secs(1),
        ..ws_config(&[b])
    });
    let mut ws = ws_connect(lb.listen_addr(), "/chat");
    assert_eq!(echo(&mut ws, "before"), "before");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(echo(&mut ws, "after"), "after");
    assert_eq!(in_flight(&lb, "ws"), 1);
}

#[test]
fn a_silent_websocket_is_closed_after_websocket_idle_timeout() {
    let (b, lb) = serve(idle_1s);
    let mut ws = ws_connect(lb.listen_addr(), "/chat");
    assert_eq!(echo(&mut ws, "hi"), "hi");
    let quiet = Instant::now();
    let (closed, _) = wait_closed(&mut ws, Duration::from_secs(10));
    let took = quiet.elapsed();
    assert!(closed, "still open after 10 s of silence");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?} of silence (websocket_idle_timeout 1 s)"
    );
    assert!(wait_until(Duration::from_secs(5), || in_flight(&lb, "ws") == 0));
    assert!(wait_until(Duration::from_secs(5), || b.open() == 0));
    let ws_backend = &lb.backends().snapshot()[0];
    assert_eq!(ws_backend.stats.failures(), 0, "an idle end is no failure");
}

#[test]
fn idle_means_silent_both_ways() {
    // The backend pushes every 200 ms and the client says nothing for 2.5 times the idle
    // timeout: traffic in either direction keeps the WebSocket open.
    let (_b, lb) = serve(idle_1s);
    let mut ws = ws_connect(lb.listen_addr(), "/push");
    let (closed, got) = wait_closed(&mut ws, Duration::from_millis(2500));
    assert!(!closed, "closed while the backend was talking");
    assert!(got.len() >= 5, "the pushes arrived: {got:?}");
    assert_eq!(echo(&mut ws, "still here"), "still here");
}

#[test]
fn a_client_that_stops_reading_is_cut_after_websocket_idle_timeout() {
    // The backend sends as fast as it can and the client reads nothing: once the buffers are
    // full, Fulcrum's writes to the client wait, and give up after websocket_idle_timeout.
    let (b, lb) = serve(idle_1s);
    let _ws = ws_connect(lb.listen_addr(), "/flood");
    assert!(wait_until(Duration::from_secs(5), || b.open() == 1));
    assert!(
        wait_until(Duration::from_secs(10), || b.open() == 0),
        "the backend is still held by a client that reads nothing"
    );
    assert!(wait_until(Duration::from_secs(5), || in_flight(&lb, "ws") == 0));
}

#[test]
fn a_reload_changes_the_idle_timeout_of_new_websockets() {
    let b = WsBackend::start("ws");
    let config = idle_1s(&b);
    let lb = start(config.clone());
    let mut old = ws_connect(lb.listen_addr(), "/chat");
    let report = lb
        .reload_config(LoadBalancerConfig {
            websocket_idle_timeout: Duration::from_secs(30),
            ..config
        })
        .expect("reload");
    assert_eq!(report.changed, vec!["websocket_idle_timeout".to_string()]);
    let mut new = ws_connect(lb.listen_addr(), "/chat");
    let (old_closed, _) = wait_closed(&mut old, Duration::from_secs(5));
    assert!(old_closed, "the WebSocket opened before keeps its 1 s");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(echo(&mut new, "still here"), "still here");
}

#[test]
fn a_quiet_websocket_outlives_pingoras_one_minute_client_read_limit() {
    // Pingora gives each read from a client 60 s by default; a WebSocket's client reads wait
    // websocket_idle_timeout instead. The only test here that takes a minute.
    let (_b, lb) = serve(|b| ws_config(&[b]));
    let mut ws = ws_connect(lb.listen_addr(), "/chat");
    let (closed, _) = wait_closed(&mut ws, Duration::from_secs(62));
    assert!(!closed, "a WebSocket quiet for a minute was closed");
    assert_eq!(echo(&mut ws, "a minute later"), "a minute later");
}
