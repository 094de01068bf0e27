//! The admin listener: `/ready`, the runtime API (`/api/backends`) and the access log, against
//! a real Fulcrum and real backends.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use fulcrum::Strategy;

const TOKEN: &str = "test-token-0123456789";

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

#[test]
fn mutations_need_a_configured_token() {
    let b = backends(&[("a", 0)]);
    let lb = start(config(Strategy::RoundRobin, &[(&b[0], 1)]));
    let admin = lb.admin_addr();
    assert_eq!(
        admin_call(admin, "GET", "/api/backends", None, None).status,
        200
    );
    let r = admin_call(admin, "POST", "/api/backends/a/drain", None, Some(TOKEN));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("admin_token"), "{r:?}");
    assert_eq!(admin_call(admin, "GET", "/ready", None, None).status, 200);
}

#[test]
fn backends_change_at_run_time() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 400), ("d", 0)]);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1), (&b[1], 1), (&b[2], 1)]);
    cfg.admin_token = Some(TOKEN.into());
    let lb = start(cfg);
    let (admin, proxy) = (lb.admin_addr(), lb.listen_addr());

    // auth
    let r = admin_call(admin, "POST", "/api/backends/a/drain", None, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        admin_call(
            admin,
            "POST",
            "/api/backends/a/drain",
            None,
            Some("wrong-token-0000000")
        )
        .status,
        401
    );

    // list
    let list = json(&admin_call(admin, "GET", "/api/backends", None, None));
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);

    // bad input names the field; duplicates conflict
    let cases = [
        (
            r#"{"id":"x","url":"http://127.0.0.1:1","wieght":2}"#,
            400,
            "wieght",
        ),
        (
            r#"{"id":"x","url":"http://127.0.0.1:1","weight":0}"#,
            400,
            "weight",
        ),
        (r#"{"id":"x"}"#, 400, "url"),
        (r#"{"id":"x","url":"ftp://a"}"#, 400, "url"),
        ("{oops", 400, "JSON"),
        (
            &format!(r#"{{"id":"a","url":"{}"}}"#, b[3].url()),
            409,
            "already exists",
        ),
    ];
    for (body, code, word) in cases {
        let r = admin_call(admin, "POST", "/api/backends", Some(body), Some(TOKEN));
        assert_eq!(r.status, code, "{body}: {r:?}");
        assert!(r.body.contains(word), "{body}: {r:?}");
    }

    // add d: it takes traffic at once and shows in /health
    let body = format!(
        r#"{{"id":"d","url":"{}","weight":1,"tags":{{"zone":"z1"}}}}"#,
        b[3].url()
    );
    let r = admin_call(admin, "POST", "/api/backends", Some(&body), Some(TOKEN));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(json(&r)["tags"]["zone"], "z1");
    let seq = sequence(proxy, 8);
    assert!(seq.contains(&"d".to_string()), "{seq:?}");
    assert!(health(&lb).1["servers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == "d"));

    // drain b: no new requests; undrain: back
    assert_eq!(
        admin_call(admin, "POST", "/api/backends/b/drain", None, Some(TOKEN)).status,
        200
    );
    let hits = b[1].hits();
    sequence(proxy, 12);
    assert_eq!(b[1].hits(), hits, "a draining backend got a request");
    assert_eq!(health(&lb).1["servers"][1]["draining"], true);
    assert_eq!(
        admin_call(admin, "POST", "/api/backends/b/undrain", None, Some(TOKEN)).status,
        200
    );
    sequence(proxy, 12);
    assert!(b[1].hits() > hits);

    // weight: visible in the list and in /health
    let r = admin_call(
        admin,
        "PATCH",
        "/api/backends/a",
        Some(r#"{"weight":7}"#),
        Some(TOKEN),
    );
    assert_eq!(
        (r.status, json(&r)["weight"].as_u64()),
        (200, Some(7)),
        "{r:?}"
    );
    assert_eq!(
        admin_call(
            admin,
            "PATCH",
            "/api/backends/a",
            Some(r#"{"weight":0}"#),
            Some(TOKEN)
        )
        .status,
        400
    );
    assert_eq!(
        admin_call(
            admin,
            "PATCH",
            "/api/backends/a",
            Some(r#"{"wait":2}"#),
            Some(TOKEN)
        )
        .status,
        400
    );
    assert_eq!(health(&lb).1["servers"][0]["weight"], 7);

    // remove c while a slow request is in flight on it: the request finishes, then c is gone
    let in_flight = std::thread::spawn(move || {
        // round robin over a, b, c, d: one of four requests lands on c
        (0..4).map(|_| get(proxy, "/")).collect::<Vec<_>>()
    });
    assert!(wait_until(Duration::from_secs(5), || lb
        .backends()
        .get("c")
        .unwrap()
        .stats
        .in_flight()
        > 0));
    let t = Instant::now();
    let r = admin_call(admin, "DELETE", "/api/backends/c", None, Some(TOKEN));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json(&r)["drained"], true);
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "removal did not wait for the request"
    );
    let answers = in_flight.join().unwrap();
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    let hits = b[2].hits();
    let seq = sequence(proxy, 9);
    assert!(!seq.contains(&"c".to_string()), "{seq:?}");
    assert_eq!(b[2].hits(), hits);
    assert!(!health(&lb).1["servers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == "c"));
    assert_eq!(
        admin_call(admin, "DELETE", "/api/backends/c", None, Some(TOKEN)).status,
        404
    );
}

#[test]
fn access_log_writes_one_json_line_per_request() {
    let b = backends(&[("a", 0)]);
    let path = std::env::temp_dir().join(format!("fulcrum-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut cfg = config(Strategy::RoundRobin, &[(&b[0], 1)]);
    cfg.logging_enabled = true;
    cfg.access_log = Some(path.clone());
    let lb = start(cfg);
    for i in 0..5 {
        let r = request(
            lb.listen_addr(),
            "GET",
            &format!("/p{i}?q=1"),
            &[("X-Request-Id", &format!("rid-{i}"))],
            None,
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }
    let mut lines = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        lines = std::fs::File::open(&path)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default();
        lines.len() >= 5
    }));
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["path"], format!("/p{i}?q=1"));
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], 200);
        assert_eq!(v["backend"], "a");
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["request_id"], format!("rid-{i}"));
        assert!(v["bytes"].as_u64().unwrap() > 0);
        assert!(v["total_ms"].as_f64().unwrap() >= v["upstream_ms"].as_f64().unwrap());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
    drop(lb);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_weight_change_reaches_selection() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let mut cfg = config(Strategy::WeightedRoundRobin, &[(&b[0], 1), (&b[1], 1)]);
    cfg.admin_token = Some(TOKEN.into());
    let lb = start(cfg);
    let c = counts(&sequence(lb.listen_addr(), 8));
    assert_eq!((c["a"], c["b"]), (4, 4));
    let r = admin_call(
        lb.admin_addr(),
        "PATCH",
        "/api/backends/a",
        Some(r#"{"weight":3}"#),
        Some(TOKEN),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let c = counts(&sequence(lb.listen_addr(), 8));
    assert_eq!((c["a"], c["b"]), (6, 2), "weights 3:1 over two periods");
}

#[test]
fn open_client_connections_are_counted() {
    let b = backends(&[("a", 0)]);
    let lb = start(config(Strategy::RoundRobin, &[(&b[0], 1)]));
    let open = || {
        let r = get(lb.admin_addr(), "/metrics?format=json");
        json(&r)["active_connections"].as_u64().unwrap()
    };
    assert_eq!(open(), 0);
    let mut conns: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(lb.listen_addr()).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = s.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || open() == 3),
        "three kept-alive connections"
    );
    conns.truncate(1);
    assert!(
        wait_until(Duration::from_secs(5), || open() == 1),
        "two closed"
    );
}
