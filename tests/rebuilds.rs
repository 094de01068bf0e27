//! Backend state survives rebuilds of the backend set: under least_connections, requests held
//! in flight on one backend stay counted (by the set, by `/api/backends` and by selection)
//! while other backends are added and removed through the admin API and the library API, and
//! the count drops to 0 when they finish.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fulcrum::server::RunningLoadBalancer;
use fulcrum::Strategy;

const TOKEN: &str = "test-token-0123456789";

/// Requests held on backend `a`.
const HELD: u64 = 4;

/// `a`'s in-flight count as the set and as `/api/backends` report it.
fn in_flight_of_a(lb: &RunningLoadBalancer) -> (u64, u64) {
    let set = lb.backends().get("a").expect("a").stats.in_flight();
    let r = admin_call(lb.admin_addr(), "GET", "/api/backends", None, None);
    assert_eq!(r.status, 200, "{r:?}");
    let list: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let api = list
        .as_array()
        .expect("array")
        .iter()
        .find(|b| b["id"] == "a")
        .and_then(|b| b["active_connections"].as_u64())
        .expect("a in /api/backends");
    (set, api)
}

/// Two fresh requests: with `a` busy, least_connections sends them to `id`.
fn fresh_requests_go_to(proxy: SocketAddr, id: &str, when: &str) {
    for i in 0..2 {
        let r = get(proxy, &format!("/fresh-{id}-{i}"));
        assert_eq!(
            r.header("x-backend-id"),
            Some(id),
            "{when}: request {i} should avoid the busy backend: {r:?}"
        );
    }
}

#[test]
fn in_flight_counts_survive_adding_and_removing_backends() {
    let a = RawBackend::start("a", RawMode::Answer);
    let others: Vec<_> = ["b", "c", "d"]
        .iter()
        .map(|id| RawBackend::start(id, RawMode::Answer))
        .collect();
    let mut cfg = config(Strategy::LeastConnections, &[]);
    cfg.backends = vec![a.server(1)];
    cfg.admin_token = Some(TOKEN.into());
    let lb = start(cfg);
    let (proxy, admin) = (lb.listen_addr(), lb.admin_addr());

    a.hold();
    let held: Vec<_> = (0..HELD)
        .map(|i| std::thread::spawn(move || get(proxy, &format!("/held-{i}"))))
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || a.seen().len() as u64 == HELD),
        "the held requests reached a: {}",
        a.seen().len()
    );
    assert_eq!(in_flight_of_a(&lb), (HELD, HELD), "before any change");

    // two backends added and removed through the admin API, one through the library API
    for (n, other) in others.iter().enumerate() {
        let id = ["b", "c", "d"][n];
        let by_api = n < 2;
        if by_api {
            let body = format!(r#"{{"id":"{id}","url":"{}"}}"#, other.url());
            let r = admin_call(admin, "POST", "/api/backends", Some(&body), Some(TOKEN));
            assert_eq!(r.status, 201, "add {id}: {r:?}");
        } else {
            lb.add_server(other.server(1))
                .expect("add through the library");
        }
        assert_eq!(in_flight_of_a(&lb), (HELD, HELD), "after adding {id}");
        fresh_requests_go_to(proxy, id, &format!("with {id} added"));
        assert_eq!(in_flight_of_a(&lb), (HELD, HELD), "after requests to {id}");

        if by_api {
            let r = admin_call(
                admin,
                "DELETE",
                &format!("/api/backends/{id}"),
                None,
                Some(TOKEN),
            );
            assert_eq!(r.status, 200, "remove {id}: {r:?}");
        } else {
            lb.remove_server(id, Duration::from_secs(5))
                .expect("remove through the library");
        }
        assert!(lb.backends().get(id).is_none(), "{id} is gone");
        assert_eq!(in_flight_of_a(&lb), (HELD, HELD), "after removing {id}");
        assert_eq!(other.seen().len(), 2, "{id} served the two fresh requests");
    }
    assert_eq!(
        a.seen().len() as u64,
        HELD,
        "a got nothing but the held requests"
    );

    a.release();
    for (i, h) in held.into_iter().enumerate() {
        let r = h.join().expect("client thread");
        assert_eq!(
            r.header("x-backend-id"),
            Some("a"),
            "held request {i}: {r:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || in_flight_of_a(&lb) == (0, 0)),
        "a's count drops to 0 once its requests finish: {:?}",
        in_flight_of_a(&lb)
    );
    // and a takes traffic again, being the least loaded
    assert_eq!(get(proxy, "/after").header("x-backend-id"), Some("a"));
}
