//! In-place config reload of the built binary: SIGHUP, or `POST /api/reload` on the admin
//! listener, re-reads the `-c` file, validates it like `fulcrum -t`, and applies what can change
//! without new sockets (backends by id, strategy, ...); keys that need new sockets (`port`, ...)
//! are reported as needing an upgrade and otherwise ignored; an invalid file changes nothing.
//!
//! Each test starts its own `fulcrum -c FILE` on fixed free ports, its output going to a log
//! file, rewrites FILE and reloads, and checks the effect from outside: who serves requests,
//! `/api/backends`, the reload answer, `/metrics` and the log.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::instance::{strings, Instance};
use common::load::{total, Load, PhaseStats};
use common::process::free_port;
use common::*;
use fulcrum::demo::DemoBackend;
use serde_json::Value;

/// The admin token of every test config that has one.
const TOKEN: &str = "reload-test-token-0123456789";
/// Load clients opening a new connection per request.
const FRESH_CLIENTS: usize = 2;
/// Load clients on kept-alive connections.
const KEPT_CLIENTS: usize = 2;

/// The config file: fixed ports, 1 s health checks, the admin token when `token`, `extra` lines
/// at the top level and `backends` with their weights.
fn yaml(
    port: u16,
    admin: u16,
    token: bool,
    extra: &str,
    backends: &[(&DemoBackend, u32)],
) -> String {
    let mut y = format!(
        "port: {port}\nbind_address: 127.0.0.1\nadmin_address: 127.0.0.1:{admin}\n\
         logging_enabled: false\nshutdown_timeout: 5s\nhealth_check_interval: 1s\n\
         pingora:\n  threads: 2\n{extra}"
    );
    if token {
        y.push_str(&format!("admin_token: {TOKEN}\n"));
    }
    y.push_str("backends:\n");
    for (b, w) in backends {
        y.push_str(&format!(
            "  - {{id: {}, url: \"{}\", weight: {w}}}\n",
            b.id(),
            b.url()
        ));
    }
    y
}

/// `POST /api/reload` with `Authorization: Bearer token`; the status and the JSON body.
fn reload(inst: &Instance, token: Option<&str>) -> (u16, Value) {
    let r = admin_call(inst.admin, "POST", "/api/reload", None, token);
    let body = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

/// The reload counters and gauge: (success, failure, last successful).
fn reload_metrics(inst: &Instance) -> (f64, f64, Option<f64>) {
    let reloads = "fulcrum_config_reloads_total";
    (
        // a labelled counter not yet incremented may be absent
        inst.metric(reloads, "outcome=\"success\"").unwrap_or(0.0),
        inst.metric(reloads, "outcome=\"failure\"").unwrap_or(0.0),
        inst.metric("fulcrum_config_last_reload_successful", ""),
    )
}

/// The words of a log line (runs of letters, digits and `_`).
fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// `n` sequential requests; asserts each is answered 200 by one of `allowed`.
fn sample_only(inst: &Instance, n: usize, allowed: &[&str], when: &str) {
    for _ in 0..n {
        let r = get(inst.addr, "/");
        let by = served_by(&r);
        assert!(
            allowed.contains(&by.as_str()),
            "{when}: served by {by}, expected one of {allowed:?}"
        );
    }
}

#[test]
fn reload_that_removes_a_backend_under_load_fails_no_request() {
    let started = Instant::now();
    let [a, b, c, d] =
        ["a", "b", "c", "d"].map(|id| DemoBackend::start(id, Duration::from_millis(2)).unwrap());
    let rr = "strategy: round_robin\n";
    let mut inst = Instance::start("reload-remove", |p, ap| {
        yaml(p, ap, true, rr, &[(&a, 1), (&b, 1), (&c, 1)])
    });
    assert_eq!(inst.ids(), ["a", "b", "c"]);
    let (port, admin_port) = (inst.port, inst.admin_port);

    // Phase 0: a, b and c all serve. Bounded by a time limit and a cap far above what ~10 s
    // of this load sends.
    let load = Load::start(
        inst.addr,
        FRESH_CLIENTS,
        KEPT_CLIENTS,
        500_000,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        a.hits() > 0 && b.hits() > 0 && c.hits() > 0,
        "round robin did not reach every backend: a {} b {} c {}",
        a.hits(),
        b.hits(),
        c.hits()
    );

    // Phase 1: SIGHUP with c gone and b's weight changed, until /api/backends shows it.
    inst.write(&yaml(port, admin_port, true, rr, &[(&a, 1), (&b, 3)]));
    load.next_phase();
    let hup_at = Instant::now();
    inst.child.signal("-HUP");
    // a process that does not handle SIGHUP is gone by now: assert_alive says so
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        wait_until(Duration::from_secs(10), || {
            inst.assert_alive("after SIGHUP");
            !inst.ids().contains(&"c".to_string())
        }),
        "c is still listed 10 s after SIGHUP\n{}",
        inst.log()
    );
    let applied = hup_at.elapsed();
    let c_at_removal = c.hits();
    assert_eq!(inst.ids(), ["a", "b"], "after SIGHUP");
    assert_eq!(inst.weight("b"), Some(3), "b's new weight after SIGHUP");
    assert_eq!(inst.weight("a"), Some(1), "a's weight after SIGHUP");
    // requests that were already on their way to c may still finish
    std::thread::sleep(Duration::from_millis(300));
    let c_settled = c.hits();
    assert!(
        c_settled - c_at_removal <= (FRESH_CLIENTS + KEPT_CLIENTS) as u64,
        "c served {} requests after it left /api/backends",
        c_settled - c_at_removal
    );

    // Phase 2: a and b alone carry the load; c sees nothing more.
    load.next_phase();
    let (a2, b2) = (a.hits(), b.hits());
    sample_only(&inst, 30, &["a", "b"], "after SIGHUP removed c");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.hits(),
        c_settled,
        "c still receives requests after SIGHUP"
    );
    assert!(a.hits() > a2 && b.hits() > b2, "a and b stopped serving");

    // Phase 3: POST /api/reload adds d.
    inst.write(&yaml(
        port,
        admin_port,
        true,
        rr,
        &[(&a, 1), (&b, 3), (&d, 1)],
    ));
    load.next_phase();
    let (status, body) = reload(&inst, Some(TOKEN));
    assert_eq!(status, 200, "POST /api/reload: {body}\n{}", inst.log());
    assert_eq!(body["status"], "reloaded", "{body}");
    assert_eq!(strings(&body["added"]), ["d"], "added: {body}");
    assert!(strings(&body["removed"]).is_empty(), "removed: {body}");
    assert!(strings(&body["updated"]).is_empty(), "updated: {body}");
    assert_eq!(body["drained"], true, "{body}");
    assert_eq!(inst.ids(), ["a", "b", "d"], "after POST /api/reload");
    assert!(
        wait_until(Duration::from_secs(5), || d.hits() > 0),
        "d, added by the reload, never served"
    );
    sample_only(&inst, 30, &["a", "b", "d"], "after the reload added d");
    std::thread::sleep(Duration::from_secs(1));
    let phases = load.stop();
    let sum = total(&phases);
    report(&phases, &sum, applied, started.elapsed());

    sum.assert_all_answered(&inst.log());
    for (n, p) in phases.iter().enumerate() {
        assert!(
            p.requests >= 20,
            "phase {n} saw only {p:?}: no load overlap"
        );
    }
    assert_eq!(c.hits(), c_settled, "c received requests after SIGHUP");
    let (success, failure, last) = reload_metrics(&inst);
    assert_eq!((success, failure), (2.0, 0.0), "reload counters");
    assert_eq!(last, Some(1.0), "fulcrum_config_last_reload_successful");
}

/// Prints the per-phase counts (shown with `--nocapture`, or with a failure).
fn report(phases: &[PhaseStats], sum: &PhaseStats, applied: Duration, elapsed: Duration) {
    const WHAT: [&str; 4] = [
        "a, b, c",
        "SIGHUP without c, b weight 3, until c left /api/backends",
        "a and b only",
        "POST /api/reload adding d",
    ];
    println!("reload test: {elapsed:?} in all; SIGHUP took effect after {applied:?}");
    for (n, p) in phases.iter().enumerate() {
        println!(
            "  phase {n} ({}): {} requests, {} ok, {} connections, reconnects {} kept-alive / {} fresh, {} failures",
            WHAT.get(n).unwrap_or(&"?"),
            p.requests,
            p.ok,
            p.connections,
            p.kept_reconnects,
            p.fresh_reconnects,
            p.failures.len()
        );
    }
    println!(
        "  total: {} requests, {} ok, {} failures",
        sum.requests,
        sum.ok,
        sum.failures.len()
    );
}

#[test]
fn an_invalid_file_is_refused_and_the_old_config_keeps_serving() {
    let [a, b, c] = ["a", "b", "c"].map(|id| DemoBackend::start(id, Duration::ZERO).unwrap());
    let rr = "strategy: round_robin\n";
    let mut inst = Instance::start("reload-invalid", |p, ap| {
        yaml(p, ap, true, rr, &[(&a, 1), (&b, 1)])
    });
    let (port, admin_port) = (inst.port, inst.admin_port);
    assert_eq!(
        reload_metrics(&inst),
        (0.0, 0.0, Some(1.0)),
        "before any reload"
    );
    // the new backend set (b out, c in) would be visible if any of the file were applied
    let new_backends = [(&a, 1), (&c, 1)];
    let invalid = format!("{rr}max_retries: 99\nhealthy_threshold: 0\n");
    inst.write(&yaml(port, admin_port, true, &invalid, &new_backends));

    inst.child.signal("-HUP");
    // a process that does not handle SIGHUP is gone by now: assert_alive says so
    std::thread::sleep(Duration::from_millis(50));
    let named = |log: &str, key: &str| {
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&format!("{key}:")))
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            inst.assert_alive("after SIGHUP with an invalid file");
            let log = inst.log();
            named(&log, "max_retries") && named(&log, "healthy_threshold")
        }),
        "no error line naming max_retries and one naming healthy_threshold after SIGHUP\n{}",
        inst.log()
    );
    let log = inst.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("max_retries:") && l.contains("healthy_threshold:")),
        "the two problems are not on lines of their own\n{log}"
    );
    inst.assert_alive("after SIGHUP with an invalid file");
    sample_only(&inst, 10, &["a", "b"], "after a refused SIGHUP");
    assert_eq!(inst.ids(), ["a", "b"], "after a refused SIGHUP");
    assert_eq!(c.hits(), 0, "c, only in the refused file, got requests");

    let (status, body) = reload(&inst, Some(TOKEN));
    assert_eq!(status, 422, "POST /api/reload of an invalid file: {body}");
    assert!(body["error"].is_string(), "no error message: {body}");
    let errors = strings(&body["errors"]);
    for key in ["max_retries:", "healthy_threshold:"] {
        assert!(
            errors.iter().any(|e| e.contains(key)),
            "errors do not name {key}: {body}"
        );
    }
    assert_eq!(inst.ids(), ["a", "b"], "after a refused POST /api/reload");
    assert_eq!(
        reload_metrics(&inst),
        (0.0, 2.0, Some(0.0)),
        "after two refused reloads"
    );

    // an unknown key is refused too, named
    let unknown = format!("{rr}strategyy: random\n");
    inst.write(&yaml(port, admin_port, true, &unknown, &new_backends));
    let (status, body) = reload(&inst, Some(TOKEN));
    assert_eq!(status, 422, "POST /api/reload with an unknown key: {body}");
    assert!(
        strings(&body["errors"])
            .iter()
            .any(|e| e.contains("strategyy")),
        "errors do not name strategyy: {body}"
    );
    assert_eq!(inst.ids(), ["a", "b"], "after an unknown key");
    sample_only(&inst, 10, &["a", "b"], "after an unknown key");

    // fixed: the same backend change now applies
    inst.write(&yaml(port, admin_port, true, rr, &new_backends));
    let (status, body) = reload(&inst, Some(TOKEN));
    assert_eq!(status, 200, "POST /api/reload of the fixed file: {body}");
    assert_eq!(strings(&body["added"]), ["c"], "{body}");
    assert_eq!(strings(&body["removed"]), ["b"], "{body}");
    assert_eq!(inst.ids(), ["a", "c"], "after the fixed reload");
    assert!(
        wait_until(Duration::from_secs(5), || {
            get(inst.addr, "/");
            c.hits() > 0
        }),
        "c never served after the fixed reload"
    );
    sample_only(&inst, 10, &["a", "c"], "after the fixed reload");
    assert_eq!(
        reload_metrics(&inst),
        (1.0, 3.0, Some(1.0)),
        "after the fixed reload"
    );
    inst.assert_alive("at the end");
}

#[test]
fn strategy_changes_live_and_socket_changes_wait_for_an_upgrade() {
    let [a, b, e] = ["a", "b", "e"].map(|id| DemoBackend::start(id, Duration::ZERO).unwrap());
    let inst = Instance::start("reload-strategy", |p, ap| {
        yaml(p, ap, true, "strategy: round_robin\n", &[(&a, 1), (&b, 1)])
    });
    assert_eq!(inst.strategy(), "round_robin");
    // a backend added through the API, in neither the old nor the new file, stays
    let body = format!(r#"{{"id": "e", "url": "{}"}}"#, e.url());
    let r = admin_call(
        inst.admin,
        "POST",
        "/api/backends",
        Some(&body),
        Some(TOKEN),
    );
    assert_eq!(r.status, 201, "POST /api/backends: {r:?}");

    let new_port = free_port();
    inst.write(&yaml(
        new_port,
        inst.admin_port,
        true,
        "strategy: least_connections\n",
        &[(&a, 1), (&b, 1)],
    ));
    let logged_before = std::fs::metadata(&inst.log).map_or(0, |m| m.len() as usize);
    let (status, body) = reload(&inst, Some(TOKEN));
    assert_eq!(status, 200, "POST /api/reload: {body}\n{}", inst.log());
    let (changed, needs_upgrade) = (strings(&body["changed"]), strings(&body["needs_upgrade"]));
    assert!(changed.contains(&"strategy".into()), "changed: {body}");
    assert!(!changed.contains(&"port".into()), "changed: {body}");
    assert!(
        needs_upgrade.contains(&"port".into()),
        "needs_upgrade: {body}"
    );
    assert!(
        !needs_upgrade.contains(&"strategy".into()),
        "needs_upgrade: {body}"
    );
    assert!(strings(&body["removed"]).is_empty(), "removed: {body}");
    assert_eq!(inst.strategy(), "least_connections", "JSON metrics");
    assert_eq!(inst.ids(), ["a", "b", "e"], "the API-added backend");

    assert_eq!(get(inst.addr, "/").status, 200, "the old port after reload");
    let new_addr: SocketAddr = format!("127.0.0.1:{new_port}").parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&new_addr, Duration::from_millis(500)).is_err(),
        "the new port {new_port} listens without an upgrade"
    );
    let log = std::fs::read_to_string(&inst.log).unwrap_or_default();
    let since = log.get(logged_before..).unwrap_or_default();
    assert!(
        since
            .lines()
            .any(|l| words(l).any(|w| w == "port") && l.to_ascii_lowercase().contains("upgrade")),
        "no log line since the reload says port needs an upgrade\n{}",
        inst.log()
    );
}

#[test]
fn reload_needs_the_token() {
    let a = DemoBackend::start("a", Duration::ZERO).unwrap();
    let with_token = Instance::start("reload-token", |p, ap| {
        yaml(p, ap, true, "strategy: round_robin\n", &[(&a, 1)])
    });
    with_token.write(&yaml(
        with_token.port,
        with_token.admin_port,
        true,
        "strategy: random\n",
        &[(&a, 1)],
    ));
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, body) = reload(&with_token, token);
        assert_eq!(status, 401, "POST /api/reload with token {token:?}: {body}");
    }
    assert_eq!(
        with_token.strategy(),
        "round_robin",
        "an unauthorized reload"
    );
    assert_eq!(reload_metrics(&with_token).0, 0.0);
    // the right token: the endpoint is there, the refusals were about the token
    let (status, body) = reload(&with_token, Some(TOKEN));
    assert_eq!(status, 200, "POST /api/reload with the token: {body}");
    assert_eq!(with_token.strategy(), "random");

    let without = Instance::start("reload-no-token", |p, ap| {
        yaml(p, ap, false, "strategy: round_robin\n", &[(&a, 1)])
    });
    without.write(&yaml(
        without.port,
        without.admin_port,
        false,
        "strategy: random\n",
        &[(&a, 1)],
    ));
    for token in [None, Some(TOKEN)] {
        let (status, body) = reload(&without, token);
        assert_eq!(status, 403, "no admin_token, token {token:?}: {body}");
    }
    assert_eq!(without.strategy(), "round_robin", "a refused reload");
}
