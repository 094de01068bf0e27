//! Tests of the `LB_*` overrides: the derived key table, each kind of value, errors naming the
//! variable, and `rate_limit` turned on and off.

use std::time::Duration;

use super::*;
use crate::balance::{HashKey, Strategy};
use crate::client::Cidr;
use crate::config::testutil::{
    assert_one_error_contains, errors_of, every_key_config, scalar_keys,
};

fn load(yaml: &str, vars: &[(&str, &str)]) -> Result<LoadBalancerConfig, ConfigError> {
    LoadBalancerConfig::from_yaml_str_with_env(yaml, vars.iter().copied())
}

#[test]
fn every_scalar_key_has_a_variable_named_after_it() {
    let keys: Vec<String> = scalar_keys(&every_key_config()).into_keys().collect();
    let mut table: Vec<String> = env_keys().iter().map(|k| k.key.clone()).collect();
    table.sort();
    assert_eq!(table, keys);
    for k in env_keys() {
        assert_eq!(
            k.var,
            format!("LB_{}", k.key.to_uppercase().replace('.', "_"))
        );
    }
    assert!(env_keys().iter().any(|k| k.var == "LB_RATE_LIMIT_BURST"));
}

#[test]
fn each_variable_writes_the_key_it_names() {
    // key=value, one per key (values hold no spaces).
    let samples = "strategy=least_connections hash_key=cookie:sid port=9999 \
        bind_address=127.0.0.1 admin_address=0.0.0.0:9191 admin_token=0123456789abcdef \
        admin_token_file=/run/token health_check_interval=10s health_check_timeout=1s \
        health_check_path=/ready healthy_threshold=5 unhealthy_threshold=6 max_retries=7 \
        retry_backoff=250ms retry_backoff_max=10s retry_budget_percent=50 \
        enable_sticky_sessions=TRUE session_cookie_name=SID session_timeout=1h session_store=cookie \
        session_store_prefix=x: max_sessions=10 session_secret=0123456789abcdef0123456789abcdef \
        session_secret_file=/run/keys enable_ssl=yes \
        ssl_cert_file=/etc/cert.pem ssl_key_file=/etc/key.pem tls_listen_port=9443 \
        redirect_http_to_https=true h2c=on request_timeout=1m websocket_idle_timeout=2h \
        acme.directory_url=https://ca.example/dir acme.email=ops@example.com \
        acme.domains=a.example,b.example acme.storage_dir=/srv/acme acme.ca_file=/etc/ca.pem \
        connect_timeout=1s client_header_timeout=3s client_idle_timeout=5m \
        max_request_header_size=65536 underscores_in_headers=true max_idle_conns=64 \
        max_idle_conns_per_host=8 \
        circuit_breaker_enabled=off circuit_breaker.failure_threshold=9 \
        circuit_breaker.recovery_threshold=8 circuit_breaker.timeout=2m \
        circuit_breaker.half_open_max_calls=4 circuit_breaker.failure_status_codes=502,429 \
        rate_limit.requests_per_second=7 rate_limit.burst=9 trusted_proxies=10.0.0.0/8,::1 \
        metrics_enabled=false logging_enabled=off access_log=/var/log/access.log \
        graceful_shutdown=No shutdown_timeout=1m30s";
    let samples: Vec<(&str, &str)> = samples
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(samples.len(), env_keys().len());
    let defaults = scalar_keys(&every_key_config());
    for k in env_keys() {
        let Some((_, sample)) = samples.iter().find(|(key, _)| *key == k.key) else {
            panic!("no sample for {}", k.key);
        };
        let mut config = every_key_config();
        config
            .apply_env([(k.var.as_str(), *sample)])
            .unwrap_or_else(|e| panic!("{}={sample}: {e}", k.var));
        let changed: Vec<String> = scalar_keys(&config)
            .into_iter()
            .filter(|(key, v)| defaults.get(key) != Some(v))
            .map(|(key, _)| key)
            .collect();
        assert_eq!(changed, vec![k.key.clone()], "{}={sample}", k.var);
    }
}

#[test]
fn env_overrides_apply_and_beat_yaml() {
    let yaml = "port: 7000\nstrategy: random\nhealth_check_path: /yaml\nmetrics_enabled: true\n";
    let env = [
        ("LB_PORT", "7001"),
        ("LB_STRATEGY", "ip_hash"),
        ("LB_HEALTH_CHECK_PATH", "/env"),
        ("LB_METRICS_ENABLED", "false"),
        ("LB_RETRY_BACKOFF", "1.5s"),
        ("LB_CIRCUIT_BREAKER_TIMEOUT", "45s"),
        ("LB_SSL_CERT_FILE", ""),
        ("LB_HASH_KEY", "path"),
        ("UNRELATED", "x"),
    ];
    let c = load(yaml, &env).unwrap();
    assert_eq!(c.port, 7001);
    assert_eq!(c.strategy, Strategy::IpHash);
    assert_eq!(c.health_check_path, "/env");
    assert!(!c.metrics_enabled);
    assert_eq!(c.retry_backoff, Duration::from_millis(1500));
    assert_eq!(c.circuit_breaker.timeout, Duration::from_secs(45));
    assert_eq!(c.ssl_cert_file, None);
    assert_eq!(c.hash_key, HashKey::Path);
    // Without the environment the YAML values stand.
    assert_eq!(LoadBalancerConfig::from_yaml_str(yaml).unwrap().port, 7000);
    // Text keys take the text as it is, even when it looks like a number or YAML syntax.
    let c = load(
        "",
        &[
            ("LB_ADMIN_TOKEN", "*1234567890123456"),
            ("LB_HEALTH_CHECK_PATH", "/8"),
        ],
    )
    .unwrap();
    assert_eq!(c.admin_token(), Ok(Some("*1234567890123456".to_string())));
    assert_eq!(c.health_check_path, "/8");
}

#[test]
fn unknown_variables_are_errors_naming_them() {
    let errors = errors_of(load(
        "",
        &[
            ("LB_PROT", "80"),
            ("LB_NOTHING_LIKE_IT", "1"),
            ("PORT", "1"),
        ],
    ));
    assert_one_error_contains(
        "typo",
        &errors,
        &["LB_PROT: not a Fulcrum setting; did you mean LB_PORT?"],
    );
    assert_one_error_contains(
        "other",
        &errors,
        &["LB_NOTHING_LIKE_IT: not a Fulcrum setting", "LB_PORT"],
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let errors = errors_of(load("", &[("LB_BACKENDS", "")]));
    assert_one_error_contains(
        "backends",
        &errors,
        &[
            "LB_BACKENDS:",
            "backends and tls_certificates cannot be set",
        ],
    );
}

#[test]
fn bad_values_name_the_variable_and_value() {
    let cases = [
        ("LB_PORT", "abc", "LB_PORT: invalid type: string \"abc\", expected a port number 0-65535"),
        ("LB_PORT", "65536", "LB_PORT: invalid value 65536: expected a port number 0-65535"),
        ("LB_STRATEGY", "fast", "LB_STRATEGY: unknown variant `fast`, expected one of `round_robin`"),
        ("LB_METRICS_ENABLED", "maybe", "LB_METRICS_ENABLED: invalid type: string \"maybe\", expected a boolean"),
        ("LB_SHUTDOWN_TIMEOUT", "30", "LB_SHUTDOWN_TIMEOUT: invalid duration \"30\": add a unit"),
        ("LB_CONNECT_TIMEOUT", "5", "LB_CONNECT_TIMEOUT: invalid duration \"5\": add a unit"),
        ("LB_MAX_RETRIES", "-1", "LB_MAX_RETRIES: invalid type: integer `-1`, expected u32"),
        ("LB_BIND_ADDRESS", "localhost", "LB_BIND_ADDRESS: invalid IP address syntax"),
        ("LB_ADMIN_ADDRESS", "127.0.0.1", "LB_ADMIN_ADDRESS: invalid socket address syntax"),
        ("LB_HASH_KEY", "header:", "LB_HASH_KEY: invalid hash key \"header:\""),
        ("LB_MAX_REQUEST_HEADER_SIZE", "32k", "LB_MAX_REQUEST_HEADER_SIZE: invalid type: string \"32k\""),
        ("LB_RATE_LIMIT_REQUESTS_PER_SECOND", "lots", "LB_RATE_LIMIT_REQUESTS_PER_SECOND: invalid type: string \"lots\""),
        (
            "LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES",
            "500,5xx",
            "LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES: circuit_breaker.failure_status_codes[1]: invalid type: string \"5xx\"",
        ),
        (
            "LB_TRUSTED_PROXIES",
            "10.0.0.0/8, proxy.local",
            "LB_TRUSTED_PROXIES: trusted_proxies[1]: \"proxy.local\" is not an IP address",
        ),
        ("LB_TRUSTED_PROXIES", "10.0.0.0/8,", "LB_TRUSTED_PROXIES: trusted_proxies[1]: \"\" is not an IP address"),
    ];
    for (var, value, want) in cases {
        let errors = errors_of(load("", &[(var, value)]));
        assert_one_error_contains(var, &errors, &[want]);
        assert!(
            !errors.iter().any(|e| e.contains(" at line ")),
            "{errors:?}"
        );
    }
    // All bad variables are reported, and the good ones still applied.
    let mut c = LoadBalancerConfig::default();
    let e = c
        .apply_env([
            ("LB_PORT", "x"),
            ("LB_MAX_RETRIES", "y"),
            ("LB_HEALTHY_THRESHOLD", "4"),
        ])
        .unwrap_err();
    assert_eq!(e.messages().len(), 2, "{e}");
    assert_eq!(c.healthy_threshold, 4);
}

#[test]
fn validation_errors_name_the_variable_that_set_the_value() {
    let env = [
        ("LB_HEALTH_CHECK_PATH", "ready"),
        ("LB_ENABLE_SSL", "true"),
        ("LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES", "500,700"),
        ("LB_RETRY_BUDGET_PERCENT", "150"),
        ("LB_RATE_LIMIT_REQUESTS_PER_SECOND", "10"),
        ("LB_RATE_LIMIT_BURST", "0"),
        ("LB_CONNECT_TIMEOUT", "0s"),
        ("LB_RETRY_BACKOFF_MAX", "10ms"),
    ];
    let errors = errors_of(load("max_retries: 11", &env));
    for want in [
        "health_check_path (from LB_HEALTH_CHECK_PATH): must start with '/'",
        "enable_ssl (from LB_ENABLE_SSL): true needs a certificate",
        "circuit_breaker.failure_status_codes[1] (from LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES): \
         must be an HTTP status code 100-599, got 700",
        "retry_budget_percent (from LB_RETRY_BUDGET_PERCENT): must be at most 100, got 150",
        "rate_limit.burst (from LB_RATE_LIMIT_BURST): must be at least 1",
        "connect_timeout (from LB_CONNECT_TIMEOUT): must be greater than 0s",
        "retry_backoff_max (from LB_RETRY_BACKOFF_MAX): 10ms is smaller than retry_backoff (100ms)",
        "max_retries: must be at most 10",
    ] {
        assert_one_error_contains(want, &errors, &[want]);
    }
    assert_eq!(errors.len(), 8, "{errors:#?}");
}

#[test]
fn env_sets_lists_and_resilience_keys() {
    let env = [
        ("LB_CONNECT_TIMEOUT", "750ms"),
        ("LB_RETRY_BACKOFF_MAX", "3s"),
        ("LB_CIRCUIT_BREAKER_ENABLED", "0"),
        ("LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES", " 500 ,503"),
        ("LB_MAX_REQUEST_HEADER_SIZE", "8192"),
        ("LB_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1 ,fd00::/8"),
    ];
    let c = load("", &env).unwrap();
    assert_eq!(c.connect_timeout, Duration::from_millis(750));
    assert_eq!(c.retry_backoff_max, Some(Duration::from_secs(3)));
    assert!(!c.circuit_breaker_enabled);
    assert_eq!(c.circuit_breaker.failure_status_codes, [500, 503]);
    assert_eq!(c.max_request_header_size, 8192);
    let nets: Vec<Cidr> = ["10.0.0.0/8", "192.168.1.1/32", "fd00::/8"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(c.trusted_proxies, nets);
    // An empty list variable empties the list from the file; an empty optional unsets it.
    let yaml = "trusted_proxies: [10.0.0.0/8]\ncircuit_breaker: {failure_status_codes: [500]}\n\
                retry_backoff_max: 5s\n";
    let env = [
        ("LB_TRUSTED_PROXIES", ""),
        ("LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES", " "),
        ("LB_RETRY_BACKOFF_MAX", ""),
    ];
    let c = load(yaml, &env).unwrap();
    assert!(c.trusted_proxies.is_empty());
    assert!(c.circuit_breaker.failure_status_codes.is_empty());
    assert_eq!(c.retry_backoff_max, None);
}

#[test]
fn env_rate_limit_turns_it_on_and_off() {
    let rps = "LB_RATE_LIMIT_REQUESTS_PER_SECOND";
    let burst = "LB_RATE_LIMIT_BURST";
    let on = "rate_limit: {requests_per_second: 10, burst: 40}";
    // (file, variables, expected (requests_per_second, burst))
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<(u32, u32)>);
    let cases: [Case; 7] = [
        // Off in the file: the rate turns it on, burst = rate unless given.
        ("", &[(rps, "50")], Some((50, 50))),
        ("", &[(rps, "50"), (burst, "80")], Some((50, 80))),
        ("", &[(burst, "80"), (rps, "50")], Some((50, 80))),
        // On in the file: each variable changes its own key only.
        (on, &[(rps, "50")], Some((50, 40))),
        (on, &[(burst, "5")], Some((10, 5))),
        // An empty rate turns it off.
        (on, &[(rps, "")], None),
        ("", &[], None),
    ];
    for (yaml, vars, want) in cases {
        let got = load(yaml, vars).map(|c| c.rate_limit.map(|r| (r.requests_per_second, r.burst)));
        assert_eq!(got, Ok(want), "{yaml:?} {vars:?}");
    }
    let errors = errors_of(load("", &[(burst, "5")]));
    assert_one_error_contains(
        "burst alone",
        &errors,
        &["LB_RATE_LIMIT_BURST: rate_limit: missing field `requests_per_second`"],
    );
}
