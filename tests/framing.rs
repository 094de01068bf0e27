//! Request framing probes through a real Fulcrum: raw requests a second parser could read
//! differently, and the raw bytes a real backend receives for each. A refused request gets a
//! short body naming what is wrong, its connection is closed, and the backend sees nothing.

mod capture;
mod common;

use std::io::Write;

use capture::*;
use common::*;
use fulcrum::Strategy;

/// Fulcrum in front of one capture backend.
struct Probe {
    backend: CaptureBackend,
    lb: fulcrum::server::RunningLoadBalancer,
}

impl Probe {
    fn start() -> Self {
        let backend = CaptureBackend::start();
        let mut cfg = config(Strategy::RoundRobin, &[]);
        cfg.backends.push(backend.server());
        let lb = start(cfg);
        Self { backend, lb }
    }

    /// Sends `raw` and checks it is refused with `status`, a short body naming `names`, a
    /// closed connection and nothing at the backend.
    fn refused(&self, raw: &[u8], status: u16, names: &str) {
        let r = send_raw(self.lb.listen_addr(), raw);
        let shown = String::from_utf8_lossy(raw);
        assert_eq!(r.status, status, "{shown:?} got {r:?}");
        assert!(r.body.contains(names), "{shown:?}: body {:?}", r.body);
        assert!(r.body.len() < 200, "short body: {:?}", r.body);
        assert!(r.closed, "{shown:?}: connection left open");
        assert!(
            self.backend.requests().is_empty(),
            "{shown:?} reached the backend: {:?}",
            self.backend.requests()
        );
    }

    /// Sends `raw` (one request) and returns what the backend received for it.
    fn forwarded(&self, raw: &[u8]) -> String {
        let before = self.backend.requests().len();
        let r = send_raw(self.lb.listen_addr(), raw);
        assert_eq!(
            r.status,
            200,
            "{:?} got {r:?}",
            String::from_utf8_lossy(raw)
        );
        let all = self.backend.requests();
        assert_eq!(all.len(), before + 1, "{all:?}");
        String::from_utf8_lossy(&all[before]).into_owned()
    }
}

/// [`Probe::refused`] on a Fulcrum of its own.
fn assert_refused(raw: &[u8], status: u16, names: &str) {
    Probe::start().refused(raw, status, names);
}

/// [`Probe::forwarded`] on a Fulcrum of its own.
fn forwarded(raw: &[u8]) -> String {
    Probe::start().forwarded(raw)
}

#[test]
fn http11_without_host_is_400() {
    assert_refused(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "Host");
}

#[test]
fn two_host_headers_are_400() {
    assert_refused(
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        400,
        "Host",
    );
}

#[test]
fn http10_without_host_is_served() {
    let got = forwarded(b"GET /old HTTP/1.0\r\n\r\n");
    assert!(got.starts_with("GET /old HTTP/1.1\r\n"), "{got}");
}

#[test]
fn identical_content_lengths_reach_the_backend_as_one() {
    let probe = Probe::start();
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\nConnection: close\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 , 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    ] {
        let got = probe.forwarded(raw);
        assert_eq!(headers_named(&got, "content-length"), ["5"], "{got}");
        assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    }
}

#[test]
fn differing_content_lengths_are_400() {
    let probe = Probe::start();
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    ] {
        probe.refused(raw, 400, "Content-Length");
    }
}

#[test]
fn header_names_with_underscores_are_dropped() {
    let got = forwarded(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer_Encoding: chunked\r\n\
          Content_Length: 0\r\nX_Custom: 1\r\nX-Kept: yes\r\nConnection: close\r\n\r\nhello",
    );
    let head = got.split("\r\n\r\n").next().unwrap();
    assert!(!head.contains('_'), "{got}");
    assert_eq!(headers_named(&got, "x-kept"), ["yes"], "{got}");
    assert_eq!(headers_named(&got, "content-length"), ["5"], "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
}

#[test]
fn underscores_in_headers_keeps_them() {
    let backend = CaptureBackend::start();
    let mut cfg = config(Strategy::RoundRobin, &[]);
    cfg.backends.push(backend.server());
    cfg.underscores_in_headers = true;
    let lb = start(cfg);
    let r = send_raw(
        lb.listen_addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let got = backend.only_request();
    assert_eq!(headers_named(&got, "x_custom"), ["1"], "{got}");
}

#[test]
fn control_bytes_in_the_request_target_are_400() {
    let probe = Probe::start();
    for target in [
        &b"/a\x00b"[..],
        b"\x00/",
        b"/a\tb",
        b"/a\rb",
        b"/a\x01",
        b"/a\x1b[0m",
        b"/a\x7f",
    ] {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(target);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        probe.refused(&raw, 400, "request target");
    }
}

#[test]
fn transfer_codings_other_than_chunked_are_501() {
    let probe = Probe::start();
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: deflate,CHUNKED\r\n",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n");
        probe.refused(raw.as_bytes(), 501, "Transfer-Encoding");
    }
}

#[test]
fn chunked_not_last_or_twice_is_400() {
    let probe = Probe::start();
    for te in [
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\n",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n");
        probe.refused(raw.as_bytes(), 400, "Transfer-Encoding");
    }
    probe.refused(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
        "Transfer-Encoding",
    );
}

#[test]
fn chunked_bodies_are_forwarded_chunked() {
    let got = forwarded(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(
        headers_named(&got, "transfer-encoding"),
        ["chunked"],
        "{got}"
    );
    assert!(headers_named(&got, "content-length").is_empty(), "{got}");
    assert!(got.contains("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
}

#[test]
fn chunked_with_content_length_drops_the_length() {
    let got = forwarded(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(headers_named(&got, "content-length").is_empty(), "{got}");
    assert!(got.contains("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
}

#[test]
fn requests_on_a_kept_alive_connection_are_all_served() {
    let Probe { backend, lb } = Probe::start();
    let mut conn = connect(lb.listen_addr(), None);
    let requests: [&[u8]; 3] = [
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /three HTTP/1.1\r\nHost: a\r\nX_Drop: 1\r\n\r\n",
    ];
    for raw in requests {
        conn.write_all(raw).unwrap();
        let r = read_response(&mut conn);
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");
        assert!(!r.closed, "{r:?}");
    }
    let got: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("GET /one "), "{got:?}");
    assert!(
        got[1].starts_with("POST /two ") && got[1].ends_with("hello"),
        "{got:?}"
    );
    assert_eq!(headers_named(&got[1], "content-length"), ["5"], "{got:?}");
    assert!(
        got[2].starts_with("GET /three ") && !got[2].contains("X_Drop"),
        "{got:?}"
    );

    // a bad request after good ones is refused and closes the connection
    conn.write_all(b"GET /four HTTP/1.1\r\n\r\n").unwrap();
    let r = read_response(&mut conn);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(backend.requests().len(), 3);
}
