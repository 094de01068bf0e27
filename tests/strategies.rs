//! Every strategy's defining property, through a real Fulcrum to real backends on loopback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use common::*;
use fulcrum::Strategy;

#[test]
fn round_robin_rotates_exactly() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let lb = start(config(
        Strategy::RoundRobin,
        &[(&b[0], 1), (&b[1], 5), (&b[2], 1)],
    ));
    let seq = sequence(lb.listen_addr(), 300);
    for i in 3..seq.len() {
        assert_eq!(
            seq[i],
            seq[i - 3],
            "rotation broken at {i}: {:?}",
            &seq[..i + 1]
        );
    }
    assert_eq!(
        seq[..3].iter().collect::<BTreeSet<_>>().len(),
        3,
        "{:?}",
        &seq[..3]
    );
    let c = counts(&seq);
    assert_eq!(
        c.values().copied().collect::<Vec<_>>(),
        vec![100, 100, 100],
        "{c:?}"
    );
}

#[test]
fn weighted_round_robin_is_exact_and_smooth() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let lb = start(config(
        Strategy::WeightedRoundRobin,
        &[(&b[0], 3), (&b[1], 2), (&b[2], 1)],
    ));
    let seq = sequence(lb.listen_addr(), 600);
    let c = counts(&seq);
    assert_eq!((c["a"], c["b"], c["c"]), (300, 200, 100), "{c:?}");
    // Exact in every period of sum(weights) = 6 picks, and the same smooth pattern each time.
    for (p, period) in seq.chunks(6).enumerate() {
        let pc = counts(period);
        assert_eq!(
            (pc["a"], pc["b"], pc["c"]),
            (3, 2, 1),
            "period {p}: {period:?}"
        );
        assert_eq!(period, &seq[..6], "period {p} differs from the first");
    }
    // nginx's smooth WRR for 3,2,1 never sends a backend more than two in a row.
    let longest_run = seq
        .windows(3)
        .filter(|w| w[0] == w[1] && w[1] == w[2])
        .count();
    assert_eq!(
        longest_run,
        0,
        "three in a row: not smooth: {:?}",
        &seq[..12]
    );
}

#[test]
fn random_is_roughly_uniform() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let lb = start(config(
        Strategy::Random,
        &[(&b[0], 1), (&b[1], 1), (&b[2], 1)],
    ));
    let seq = sequence(lb.listen_addr(), 600);
    let c = counts(&seq);
    assert_eq!(c.len(), 3, "{c:?}");
    for (id, n) in &c {
        // expected 200, standard deviation ~11.5: ±60 is over 5 sigma
        assert!((140..=260).contains(n), "{id} got {n} of 600: {c:?}");
    }
    // and not a rotation in disguise
    let rotations = (3..seq.len()).filter(|&i| seq[i] == seq[i - 3]).count();
    assert!(rotations < 400, "looks like round robin: {rotations}");
}

/// Share of requests the slow backend got when 8 clients hammer two fast backends and one
/// slow one.
fn slow_share(strategy: Strategy) -> f64 {
    let b = backends(&[("fast1", 2), ("fast2", 2), ("slow", 150)]);
    let lb = start(config(strategy, &[(&b[0], 1), (&b[1], 1), (&b[2], 1)]));
    let seq = concurrent(lb.listen_addr(), 8, 600);
    assert!(seq.len() >= 300, "only {} requests done", seq.len());
    let c = counts(&seq);
    *c.get("slow").unwrap_or(&0) as f64 / seq.len() as f64
}

#[test]
fn load_aware_strategies_avoid_a_slow_backend() {
    let baseline = slow_share(Strategy::RoundRobin);
    assert!(
        baseline > 0.30,
        "round robin must send 1/3 to slow, got {baseline}"
    );
    for strategy in [
        Strategy::LeastConnections,
        Strategy::LeastResponseTime,
        Strategy::PowerOfTwoChoices,
    ] {
        let share = slow_share(strategy);
        assert!(
            share < 0.12,
            "{strategy}: slow backend got {share:.3} of the traffic"
        );
    }
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, (i / 200) as u8, (i % 200 + 2) as u8))
}

/// Who serves each of `n` client addresses (one request each).
fn mapping(lb: &fulcrum::server::RunningLoadBalancer, n: u32) -> BTreeMap<u32, String> {
    (0..n)
        .map(|i| (i, served_by(&get_from(lb.listen_addr(), client(i)))))
        .collect()
}

#[test]
fn hashing_strategies_pin_a_client_and_spread_clients() {
    for strategy in [Strategy::IpHash, Strategy::ConsistentHashing] {
        let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
        let lb = start(config(strategy, &[(&b[0], 1), (&b[1], 1), (&b[2], 1)]));
        for i in [0, 7, 42] {
            let first = served_by(&get_from(lb.listen_addr(), client(i)));
            for _ in 0..15 {
                let again = served_by(&get_from(lb.listen_addr(), client(i)));
                assert_eq!(again, first, "{strategy}: client {} moved", client(i));
            }
        }
        let m = mapping(&lb, 150);
        let c = counts(&m.values().cloned().collect::<Vec<_>>());
        assert_eq!(c.len(), 3, "{strategy}: {c:?}");
        for (id, n) in &c {
            assert!(
                *n >= 20,
                "{strategy}: {id} got only {n} of 150 clients: {c:?}"
            );
        }
    }
}

#[test]
fn ip_hash_moves_only_the_clients_of_a_failed_backend() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let mut cfg = config(Strategy::IpHash, &[(&b[0], 1), (&b[1], 1), (&b[2], 1)]);
    // two failed checks in a row to eject, with a generous timeout: a loaded test machine's slow
    // check must not take a healthy backend out
    cfg.health_check_interval = std::time::Duration::from_millis(500);
    cfg.health_check_timeout = Some(std::time::Duration::from_millis(500));
    cfg.unhealthy_threshold = 2;
    let lb = start(cfg);
    let before = mapping(&lb, 90);
    b[1].set_healthy(false);
    assert!(wait_until(std::time::Duration::from_secs(5), || health_of(
        &lb, "b"
    )
        == "unhealthy"));
    let after = mapping(&lb, 90);
    for (i, id) in &before {
        if id == "b" {
            assert_ne!(
                after[i], "b",
                "client {i} still sent to the unhealthy backend"
            );
        } else {
            assert_eq!(&after[i], id, "client {i} moved although its backend is up");
        }
    }
}

#[test]
fn consistent_hashing_moves_about_one_in_n_clients_when_a_backend_is_added() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0), ("d", 0), ("e", 0)]);
    let lb = start(config(
        Strategy::ConsistentHashing,
        &[(&b[0], 1), (&b[1], 1), (&b[2], 1), (&b[3], 1)],
    ));
    let before = mapping(&lb, 300);
    lb.add_server(b[4].server(1)).expect("add e");
    let after = mapping(&lb, 300);
    let moved: Vec<_> = before.keys().filter(|i| before[i] != after[i]).collect();
    for i in &moved {
        assert_eq!(after[i], "e", "client {i} moved between old backends");
    }
    let share = moved.len() as f64 / 300.0;
    // ideal 1/5 = 0.2
    assert!((0.08..=0.35).contains(&share), "moved share {share}");
}

#[test]
fn consistent_hashing_can_key_on_a_header_a_cookie_or_the_path() {
    use fulcrum::balance::HashKey;
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let keys = [
        (HashKey::Header("x-user".parse().unwrap()), "X-User"),
        (HashKey::Cookie("sid".into()), "Cookie"),
        (HashKey::Path, ""),
    ];
    for (hash_key, header) in keys {
        let mut cfg = config(
            Strategy::ConsistentHashing,
            &[(&b[0], 1), (&b[1], 1), (&b[2], 1)],
        );
        cfg.hash_key = hash_key.clone();
        let lb = start(cfg);
        let ask = |value: &str, client_no: u32| {
            let (path, headers): (String, Vec<(&str, String)>) = match header {
                "" => (format!("/{value}"), vec![]),
                "Cookie" => ("/".into(), vec![("Cookie", format!("a=1; sid={value}"))]),
                h => ("/".into(), vec![(h, value.to_string())]),
            };
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            served_by(
                &request(lb.listen_addr(), "GET", &path, &hs, Some(client(client_no))).unwrap(),
            )
        };
        // the key, not the client address, decides
        for value in ["alice", "bob", "carol"] {
            let first = ask(value, 0);
            for client in 1..6 {
                assert_eq!(
                    ask(value, client),
                    first,
                    "{hash_key}: {value} moved with the client"
                );
            }
        }
        // and different keys spread
        let spread: BTreeSet<String> = (0..40).map(|i| ask(&format!("user{i}"), 0)).collect();
        assert_eq!(spread.len(), 3, "{hash_key}: {spread:?}");
    }
}
