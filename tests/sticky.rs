//! Sticky sessions through the proxy, in process, with the memory store: a cookie keeps a
//! client on its backend while cookieless requests follow the strategy; when the pinned backend
//! goes down or away the client moves and its cookie is reissued; a cookie Fulcrum did not
//! issue, whatever its bytes, is ignored; `/health` and `/metrics` show the store.

mod common;

use std::time::Duration;

use common::*;
use fulcrum::Strategy;

const COOKIE: &str = "LB_SESSION_ID";

/// The `name=value` part of a `Set-Cookie` answer, and the whole header.
fn issued(r: &Resp) -> Option<(String, String)> {
    let header = r.header("set-cookie")?.to_string();
    let pair = header.split(';').next()?.trim().to_string();
    Some((pair, header))
}

fn with_cookie(lb: &fulcrum::server::RunningLoadBalancer, cookie: &str) -> Resp {
    request(lb.listen_addr(), "GET", "/", &[("Cookie", cookie)], None).unwrap()
}

/// Round robin with sticky sessions (health checks a minute apart: the test's own doing decides).
fn sticky_config(b: &[fulcrum::demo::DemoBackend]) -> fulcrum::LoadBalancerConfig {
    let pairs: Vec<_> = b.iter().map(|x| (x, 1)).collect();
    let mut cfg = config(Strategy::RoundRobin, &pairs);
    cfg.enable_sticky_sessions = true;
    cfg
}

#[test]
fn a_cookie_keeps_the_client_on_its_backend_while_others_rotate() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let lb = start(sticky_config(&b));

    let first = get(lb.listen_addr(), "/");
    let (cookie, header) = issued(&first).expect("a new client gets a cookie");
    assert!(cookie.starts_with(&format!("{COOKIE}=")), "{header}");
    for part in ["Path=/", "Max-Age=7200", "HttpOnly", "SameSite=Lax"] {
        assert!(header.contains(part), "{part} missing: {header}");
    }
    assert!(
        !header.contains("Secure"),
        "plain HTTP: no Secure: {header}"
    );
    let home = served_by(&first);

    for _ in 0..20 {
        let r = with_cookie(&lb, &format!("other=1; {cookie}"));
        assert_eq!(served_by(&r), home);
        // the same session, its Max-Age restarted: the browser's copy slides like the store's
        let (again, header) = issued(&r).expect("a hit refreshes the cookie");
        assert_eq!(again, cookie);
        assert!(header.contains("Max-Age=7200"), "{header}");
    }
    // cookieless requests keep following round robin
    let seen = counts(&sequence(lb.listen_addr(), 6));
    assert_eq!(seen.len(), 3, "{seen:?}");

    let health: serde_json::Value =
        serde_json::from_str(&get(lb.admin_addr(), "/health").body).unwrap();
    let sessions = &health["sessions"];
    assert_eq!(sessions["store"], "memory");
    assert_eq!(sessions["hits"], 20);
    assert!(
        sessions["active_sessions"].as_u64().unwrap() >= 7,
        "{sessions}"
    );
    let metrics = get(lb.admin_addr(), "/metrics").body;
    let hits = "fulcrum_session_requests_total{result=\"hit\",store=\"memory\"} 20";
    assert!(metrics.contains(hits), "{metrics}");
    assert!(metrics.contains("fulcrum_sessions_active{store=\"memory\"}"));
}

#[test]
fn when_the_pinned_backend_goes_down_or_away_the_client_moves_and_is_repinned() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let mut cfg = sticky_config(&b);
    cfg.health_check_interval = Duration::from_millis(300);
    cfg.health_check_timeout = Some(Duration::from_millis(300));
    cfg.unhealthy_threshold = 1;
    let lb = start(cfg);
    let first = get(lb.listen_addr(), "/");
    let (cookie, _) = issued(&first).unwrap();
    let home = served_by(&first);
    let home_backend = b.iter().find(|x| x.id() == home).unwrap();

    // down: its health check fails, the next request goes elsewhere with a reissued cookie
    home_backend.set_healthy(false);
    assert!(wait_until(Duration::from_secs(5), || health_of(&lb, &home)
        == "unhealthy"));
    let moved = with_cookie(&lb, &cookie);
    assert_eq!(moved.status, 200);
    let second_home = served_by(&moved);
    assert_ne!(second_home, home);
    let (reissued, _) = issued(&moved).expect("the cookie is reissued on failover");
    for _ in 0..10 {
        assert_eq!(served_by(&with_cookie(&lb, &reissued)), second_home);
    }
    // the old backend coming back does not pull the client back
    home_backend.set_healthy(true);
    assert!(wait_until(Duration::from_secs(5), || health_of(&lb, &home)
        == "healthy"));
    assert_eq!(served_by(&with_cookie(&lb, &reissued)), second_home);

    // away: removed through the API
    lb.remove_server(&second_home, Duration::from_secs(1))
        .unwrap();
    let moved = with_cookie(&lb, &reissued);
    assert_eq!(moved.status, 200);
    let third_home = served_by(&moved);
    assert_ne!(third_home, second_home);
    let (again, _) = issued(&moved).expect("reissued after removal");
    assert_eq!(served_by(&with_cookie(&lb, &again)), third_home);

    let health: serde_json::Value =
        serde_json::from_str(&get(lb.admin_addr(), "/health").body).unwrap();
    assert_eq!(health["sessions"]["repins"], 2, "{}", health["sessions"]);
}

#[test]
fn cookies_fulcrum_did_not_issue_are_ignored_whatever_their_bytes() {
    let b = backends(&[("a", 0), ("b", 0)]);
    let lb = start(sticky_config(&b));
    let forged = [
        format!("{COOKIE}=00000000000000000000000000000000"),
        format!("{COOKIE}=a"),
        format!("{COOKIE}=web1"),
        format!("{COOKIE}={}", "f".repeat(600)),
        format!("{COOKIE}=\"quoted\""),
        format!("{COOKIE}=%00%ff"),
        format!("{COOKIE}="),
        COOKIE.to_string(),
    ];
    for cookie in &forged {
        let r = with_cookie(&lb, cookie);
        assert_eq!(r.status, 200, "{cookie}: {r:?}");
        let (fresh, _) = issued(&r).unwrap_or_else(|| panic!("{cookie}: no new cookie"));
        assert_ne!(&fresh, cookie);
        assert_eq!(
            served_by(&with_cookie(&lb, &fresh)),
            served_by(&r),
            "the new cookie sticks"
        );
    }
}

#[test]
fn the_cookie_is_secure_on_the_tls_listener() {
    if !tools_present(missing_program("curl", "apt-get install curl")) {
        return;
    }
    let dir = common::process::Scratch::new("sticky-tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path("k.pem"), key.serialize_pem()).unwrap();
    let b = backends(&[("a", 0)]);
    let mut cfg = sticky_config(&b);
    cfg.enable_ssl = true;
    cfg.ssl_cert_file = Some(dir.path("c.pem"));
    cfg.ssl_key_file = Some(dir.path("k.pem"));
    cfg.tls_listen_port = 0;
    let lb = start(cfg);
    let url = format!("https://{}/", lb.tls_addr().unwrap());
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-D",
            "-",
            &url,
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let set_cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie: {head}"));
    assert!(set_cookie.contains("; secure"), "{set_cookie}");
    // and plain HTTP on the same instance still gets no Secure
    let (_, header) = issued(&get(lb.listen_addr(), "/")).unwrap();
    assert!(!header.contains("Secure"), "{header}");
}

#[test]
fn two_instances_agree_through_the_signed_cookie() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let secret = "an-hmac-key-shared-by-every-instance-0123";
    let signed = |secret: &str| {
        let mut cfg = sticky_config(&b);
        cfg.session_store = "cookie".into();
        cfg.session_secret = Some(fulcrum::config::Secret::new(secret));
        start(cfg)
    };
    let (one, two) = (signed(secret), signed(secret));
    let first = get(one.listen_addr(), "/");
    let (cookie, header) = issued(&first).unwrap();
    assert!(cookie.starts_with(&format!("{COOKIE}=v1.")), "{header}");
    let home = served_by(&first);
    for lb in [&one, &two, &one, &two, &two] {
        let r = with_cookie(lb, &cookie);
        assert_eq!(served_by(&r), home, "both instances follow the cookie");
        assert!(issued(&r).is_some(), "a hit re-signs the expiry");
    }
    // an instance with another key does not believe it: balanced, and a cookie of its own
    let stranger = signed("another-key-that-no-one-else-knows-0123456");
    let r = with_cookie(&stranger, &cookie);
    assert_eq!(r.status, 200);
    let (mine, _) = issued(&r).unwrap();
    assert_ne!(mine, cookie);
    let health: serde_json::Value =
        serde_json::from_str(&get(stranger.admin_addr(), "/health").body).unwrap();
    assert_eq!(health["sessions"]["store"], "cookie");
    assert_eq!(health["sessions"]["misses"], 1);
}

#[test]
fn ip_hash_still_decides_for_clients_without_a_session() {
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let mut cfg = sticky_config(&b);
    cfg.strategy = Strategy::IpHash;
    let lb = start(cfg);
    // cookieless: each source address keeps its backend by hash, session or not
    let sources: Vec<std::net::IpAddr> = (2..12)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();
    let mut by_source = Vec::new();
    for ip in &sources {
        let first = served_by(&get_from(lb.listen_addr(), *ip));
        for _ in 0..3 {
            assert_eq!(served_by(&get_from(lb.listen_addr(), *ip)), first, "{ip}");
        }
        by_source.push(first);
    }
    by_source.sort();
    by_source.dedup();
    assert!(
        by_source.len() >= 2,
        "the hash spreads sources: {by_source:?}"
    );
    // a session moves with the client whatever its address
    let r = get_from(lb.listen_addr(), sources[0]);
    let (cookie, _) = issued(&r).unwrap();
    let home = served_by(&r);
    for ip in &sources {
        let r = request(
            lb.listen_addr(),
            "GET",
            "/",
            &[("Cookie", &cookie)],
            Some(*ip),
        )
        .unwrap();
        assert_eq!(served_by(&r), home, "from {ip}");
    }
}
