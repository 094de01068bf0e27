//! The semantic checks, key by key: each bad value gives one error naming its key.
use crate::config::testutil::{assert_one_error_contains, errors_of};
use crate::config::LoadBalancerConfig;

#[test]
fn validation_errors_name_the_key() {
    let two = |a: &str, b: &str| {
        format!("backends:\n  - {{id: web1, url: \"{a}\"}}\n  - {{id: web2, url: \"{b}\"}}\n")
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("pingora:\n  thread: 2\n".into(), vec!["pingora.thread: unknown key; did you mean threads?"]),
        ("pingora:\n  bogus: 2\n".into(), vec!["pingora.bogus: unknown key; expected one of", "pid_file"]),
        (
            "pingora:\n  grace_period_seconds: 1\n".into(),
            vec!["pingora.grace_period_seconds:", "shutdown_timeout"],
        ),
        (
            "pingora:\n  graceful_shutdown_timeout_seconds: 1\n".into(),
            vec!["pingora.graceful_shutdown_timeout_seconds:", "shutdown_timeout"],
        ),
        ("pingora:\n  max_retries: 1\n".into(), vec!["pingora.max_retries:", "top-level max_retries"]),
        (
            "pingora:\n  upstream_keepalive_pool_size: 1\n".into(),
            vec!["pingora.upstream_keepalive_pool_size:", "max_idle_conns"],
        ),
        ("pingora:\n  threads: many\n".into(), vec!["pingora.threads: invalid type: string"]),
        ("pingora:\n  threads: 0\n".into(), vec!["pingora.threads: must be at least 1"]),
        ("pingora:\n  pid_file: run/f.pid\n".into(), vec!["pingora.pid_file: must be an absolute path"]),
        (
            "pingora:\n  upgrade_sock: f.sock\n".into(),
            vec!["pingora.upgrade_sock: must be an absolute path"],
        ),
        (
            "pingora:\n  client_bind_to_ipv4: [\"::1\"]\n".into(),
            vec!["pingora.client_bind_to_ipv4[0]: not an IPv4 address"],
        ),
        (
            "pingora:\n  max_blocking_threads: 0\n".into(),
            vec!["pingora.max_blocking_threads: must be greater than zero"],
        ),
        ("health_check_path: health\n".into(), vec!["health_check_path: must start with '/'"]),
        ("health_check_path: /a b\n".into(), vec!["health_check_path: must not contain spaces"]),
        ("health_check_interval: 0s\n".into(), vec!["health_check_interval: must be greater than 0s"]),
        ("request_timeout: 0ms\n".into(), vec!["request_timeout: must be greater than 0s"]),
        (
            "circuit_breaker: {timeout: 0s}\n".into(),
            vec!["circuit_breaker.timeout: must be greater than 0s"],
        ),
        (
            "health_check_interval: 5s\nhealth_check_timeout: 10s\n".into(),
            vec!["health_check_timeout: 10s", "health_check_interval (5s)"],
        ),
        ("healthy_threshold: 0\n".into(), vec!["healthy_threshold: must be at least 1"]),
        ("unhealthy_threshold: 0\n".into(), vec!["unhealthy_threshold: must be at least 1"]),
        (
            "circuit_breaker: {failure_threshold: 0}\n".into(),
            vec!["circuit_breaker.failure_threshold: must be at least 1"],
        ),
        ("max_retries: 11\n".into(), vec!["max_retries: must be at most 10, got 11"]),
        ("session_cookie_name: \"a b\"\n".into(), vec!["session_cookie_name: \"a b\" is not a valid cookie name"]),
        ("session_cookie_name: \"\"\n".into(), vec!["session_cookie_name:"]),
        (
            "enable_ssl: true\n".into(),
            vec!["enable_ssl: true needs a certificate: set ssl_cert_file and ssl_key_file, tls_certificates, or acme"],
        ),
        (
            "enable_ssl: true\nssl_cert_file: /etc/c.pem\n".into(),
            vec!["ssl_key_file: missing: ssl_cert_file needs its private key"],
        ),
        (
            "enable_ssl: true\nssl_key_file: /etc/k.pem\n".into(),
            vec!["ssl_cert_file: missing: ssl_key_file needs its certificate chain"],
        ),
        (
            "tls_certificates: [{cert_file: /c, key_file: /k}]\n".into(),
            vec!["tls_certificates: set, but enable_ssl is false"],
        ),
        (
            "redirect_http_to_https: true\n".into(),
            vec!["redirect_http_to_https: set, but enable_ssl is false"],
        ),
        (
            "enable_ssl: true\nssl_cert_file: /c\nssl_key_file: /k\ntls_listen_port: 8080\n".into(),
            vec!["tls_listen_port: 8080 is also port"],
        ),
        (
            "enable_ssl: true\nssl_cert_file: /c\nssl_key_file: /k\ntls_listen_port: 9090\n".into(),
            vec!["tls_listen_port: 9090 is the admin listener's port"],
        ),
        (
            "enable_sticky_sessions: true\nsession_store: cookie\n".into(),
            vec!["session_store: cookie needs session_secret or session_secret_file"],
        ),
        (
            "session_store: memcached\n".into(),
            vec!["session_store: \"memcached\": expected memory, cookie or redis://HOST:PORT/DB"],
        ),
        (
            // never echo what may be a password
            "session_store: \"rediss://:hunter2@cache:6380/0\"\n".into(),
            vec!["session_store: rediss://...: expected memory, cookie or redis://"],
        ),
        ("max_sessions: 0\n".into(), vec!["max_sessions: must be at least 1"]),
        (
            "session_secret: short\n".into(),
            vec!["session_secret: must be at least 32 characters"],
        ),
        (
            "max_idle_conns_per_host: 5\n".into(),
            vec!["max_idle_conns_per_host: not supported: Pingora keeps idle upstream connections in one LRU shared by all backends; size it with max_idle_conns"],
        ),
        ("admin_address: 0.0.0.0:8080\n".into(), vec!["admin_address: 0.0.0.0:8080 uses the traffic listener's port"]),
        (
            "port: 9090\n".into(),
            vec!["port: 9090 is the admin listener's port (admin_address defaults to 127.0.0.1:9090)"],
        ),
        (
            "backends:\n  - {id: web1, url: \"http://127.0.0.1:1\"}\n  - {id: web1, url: \"http://127.0.0.1:2\"}\n"
                .into(),
            vec!["backends[1] (id \"web1\"): id: duplicates backends[0]"],
        ),
        (
            "backends:\n  - {id: web1, url: \"http://127.0.0.1:1\"}\n  - {id: web2, url: \"http://127.0.0.1:2\", weight: 0}\n"
                .into(),
            vec!["backends[1] (id \"web2\"): weight: must be between 1 and 1000, got 0"],
        ),
        (two("http://127.0.0.1:1", "127.0.0.1:2"), vec!["backends[1] (id \"web2\"): url: ", "not a URL"]),
        (
            "backends:\n  - {id: \"a b\", url: \"http://127.0.0.1:1\"}\n".into(),
            vec!["backends[0] (id \"a b\"): id:"],
        ),
    ];
    for (yaml, parts) in cases {
        let errors = errors_of(LoadBalancerConfig::from_yaml_str(&yaml));
        assert_one_error_contains(&yaml, &errors, &parts);
    }
}

#[test]
fn collects_every_validation_error() {
    let yaml = "max_retries: 11\nenable_ssl: true\nhealthy_threshold: 0\npingora: {bogus: 1, pid_file: x}\n";
    let errors = errors_of(LoadBalancerConfig::from_yaml_str(yaml));
    for key in [
        "max_retries:",
        "enable_ssl:",
        "healthy_threshold:",
        "pingora.bogus:",
    ] {
        assert_one_error_contains(yaml, &errors, &[key]);
    }
    // The section's type errors are reported before its semantic checks run.
    assert_eq!(errors.len(), 4, "{errors:#?}");
}

#[test]
fn accepts_edge_values() {
    let yaml = "port: 0\nadmin_address: 127.0.0.1:0\nmax_retries: 10\nmax_idle_conns: 0\n\
                health_check_timeout: 30s\nshutdown_timeout: 0s\nretry_backoff: 0s\n\
                pingora: {version: 1, pid_file: /run/f.pid, client_bind_to_ipv6: [\"::1\"]}\n";
    LoadBalancerConfig::from_yaml_str(yaml).unwrap();
}

#[test]
fn accepts_edge_values_of_the_resilience_keys() {
    let cases = [
        "retry_backoff: 0s\nretry_backoff_max: 0s\n",
        "retry_backoff: 2s\nretry_backoff_max: 2s\n",
        "retry_budget_percent: 0\n",
        "retry_budget_percent: 100\n",
        "max_request_header_size: 1024\n",
        "max_request_header_size: 1048576\n",
        "circuit_breaker_enabled: true\ncircuit_breaker: {failure_status_codes: [100, 599]}\n",
        "circuit_breaker: {failure_status_codes: []}\n",
        "rate_limit: {requests_per_second: 1, burst: 1}\n",
        "trusted_proxies: [0.0.0.0/0, \"::/0\"]\n",
        "connect_timeout: 1ns\nclient_header_timeout: 1ms\nclient_idle_timeout: 1h\n",
    ];
    for yaml in cases {
        if let Err(e) = LoadBalancerConfig::from_yaml_str(yaml) {
            panic!("{yaml:?}: {e}");
        }
    }
}

#[test]
fn resilience_key_errors_name_the_key() {
    let cases: [(&str, &[&str]); 13] = [
        ("connect_timeout: 0s", &["connect_timeout: must be greater than 0s"]),
        ("client_header_timeout: 0s", &["client_header_timeout: must be greater than 0s"]),
        ("client_idle_timeout: 0ms", &["client_idle_timeout: must be greater than 0s"]),
        (
            "retry_backoff_max: 50ms",
            &["retry_backoff_max: 50ms is smaller than retry_backoff (100ms)"],
        ),
        ("retry_budget_percent: 101", &["retry_budget_percent: must be at most 100, got 101"]),
        (
            "max_request_header_size: 1023",
            &["max_request_header_size: must be between 1024 and 1048576 bytes, got 1023"],
        ),
        (
            "max_request_header_size: 1048577",
            &["max_request_header_size: must be between 1024 and 1048576 bytes, got 1048577"],
        ),
        (
            "circuit_breaker: {failure_status_codes: [500, 99, 600]}",
            &["circuit_breaker.failure_status_codes[1]: must be an HTTP status code 100-599, got 99"],
        ),
        (
            "circuit_breaker: {failure_status_codes: [500, 99, 600]}",
            &["circuit_breaker.failure_status_codes[2]: must be an HTTP status code 100-599, got 600"],
        ),
        (
            "rate_limit: {requests_per_second: 0, burst: 5}",
            &["rate_limit.requests_per_second: must be at least 1"],
        ),
        (
            "rate_limit: {requests_per_second: 5, burst: 0}",
            &["rate_limit.burst: must be at least 1"],
        ),
        (
            "trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]",
            &["trusted_proxies[1]: \"10.0.0.0/33\": prefix length must be 0 to 32", "line 1"],
        ),
        (
            "trusted_proxies:\n  - 127.0.0.1\n  - proxy.local\n",
            &["trusted_proxies[1]: \"proxy.local\" is not an IP address or CIDR network", "line 3"],
        ),
    ];
    for (yaml, parts) in cases {
        let errors = errors_of(LoadBalancerConfig::from_yaml_str(yaml));
        assert_one_error_contains(yaml, &errors, parts);
    }
    // Breakers are supported now.
    let c = LoadBalancerConfig::from_yaml_str("circuit_breaker_enabled: true").unwrap();
    assert!(c.circuit_breaker_enabled);
}

#[test]
fn a_store_url_with_a_password_is_never_echoed() {
    let yaml = "session_store: \"rediss://:hunter2@cache:6380/0\"\n";
    let errors = errors_of(LoadBalancerConfig::from_yaml_str(yaml));
    assert!(errors.iter().all(|e| !e.contains("hunter2")), "{errors:?}");
}
