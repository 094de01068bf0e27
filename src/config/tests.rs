//! Tests of loading as a whole: defaults, a full file, the example file and the README's
//! configuration reference, reading from a file, `access_log` (checked, never created), and
//! defaults that follow the key they depend on (`health_check_timeout`, `retry_backoff_max`).

use std::collections::BTreeMap;
use std::str::FromStr;

use super::testutil::{assert_one_error_contains, errors_of, every_key_config, scalar_keys};
use super::*;

#[test]
fn empty_documents_give_the_defaults() {
    for yaml in [
        "",
        "{}",
        "# only a comment\n",
        "---\n",
        "~",
        "pingora:\nbackends:\n",
    ] {
        assert_eq!(
            LoadBalancerConfig::from_yaml_str(yaml),
            Ok(LoadBalancerConfig::default()),
            "{yaml:?}"
        );
    }
}

const FULL: &str = r#"
strategy: weighted_round_robin
hash_key: "header:X-User-Id"
port: 8443
bind_address: "::"
admin_address: "[::1]:9191"
admin_token: "0123456789abcdef-full"
admin_token_file: null
health_check_interval: 15s
health_check_timeout: 3s
health_check_path: /api/health?deep=1
healthy_threshold: 4
unhealthy_threshold: 5
max_retries: 5
retry_backoff: 200ms
retry_backoff_max: 5s
retry_budget_percent: 10
enable_sticky_sessions: false
session_cookie_name: MY_SESSION
session_timeout: 1h
session_store: memory
session_store_prefix: "app:s:"
max_sessions: 5000
session_secret: null
session_secret_file: null
enable_ssl: false
ssl_cert_file: null
ssl_key_file: null
tls_listen_port: 9443
tls_certificates: []
redirect_http_to_https: false
h2c: true
request_timeout: 1m
websocket_idle_timeout: 20m
connect_timeout: 2s
client_header_timeout: 5s
client_idle_timeout: 2m
max_request_header_size: 16384
underscores_in_headers: true
max_idle_conns: 200
max_idle_conns_per_host: 0
circuit_breaker_enabled: false
circuit_breaker:
  failure_threshold: 10
  recovery_threshold: 5
  timeout: 1m
  half_open_max_calls: 2
  failure_status_codes: [502, 503]
rate_limit:
  requests_per_second: 100
  burst: 250
trusted_proxies: [10.0.0.0/8, "::1"]
metrics_enabled: false
logging_enabled: false
access_log: fulcrum-access.log
graceful_shutdown: false
shutdown_timeout: 10s
pingora:
  threads: 2
  daemon: true
backends:
  - id: api-primary
    url: http://127.0.0.1:8001
    weight: 5
    capacity: 1000
    tags: {role: primary, zone: us-west-1a}
  - id: api-secondary
    url: http://127.0.0.1:8002
"#;

#[test]
fn full_yaml_parses_to_the_expected_struct() {
    let mut pingora = PingoraConfig::default();
    pingora.set("threads", 2).set("daemon", true);
    let tags: BTreeMap<String, String> = [("role", "primary"), ("zone", "us-west-1a")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut primary = BackendServer::new("api-primary", "http://127.0.0.1:8001").with_weight(5);
    primary.capacity = 1000;
    primary.tags = tags;
    let want = LoadBalancerConfig {
        strategy: Strategy::WeightedRoundRobin,
        hash_key: HashKey::from_str("header:X-User-Id").unwrap(),
        port: 8443,
        bind_address: "::".parse().unwrap(),
        admin_address: "[::1]:9191".parse().unwrap(),
        admin_token: Some("0123456789abcdef-full".into()),
        admin_token_file: None,
        health_check_interval: Duration::from_secs(15),
        health_check_timeout: Some(Duration::from_secs(3)),
        health_check_path: "/api/health?deep=1".into(),
        healthy_threshold: 4,
        unhealthy_threshold: 5,
        max_retries: 5,
        retry_backoff: Duration::from_millis(200),
        retry_backoff_max: Some(Duration::from_secs(5)),
        retry_budget_percent: 10,
        enable_sticky_sessions: false,
        session_cookie_name: "MY_SESSION".into(),
        session_timeout: Duration::from_secs(3600),
        session_store: "memory".into(),
        session_store_prefix: "app:s:".into(),
        max_sessions: 5000,
        session_secret: None,
        session_secret_file: None,
        enable_ssl: false,
        ssl_cert_file: None,
        ssl_key_file: None,
        tls_listen_port: 9443,
        tls_certificates: Vec::new(),
        redirect_http_to_https: false,
        h2c: true,
        acme: None,
        request_timeout: Duration::from_secs(60),
        websocket_idle_timeout: Duration::from_secs(1200),
        connect_timeout: Duration::from_secs(2),
        client_header_timeout: Duration::from_secs(5),
        client_idle_timeout: Duration::from_secs(120),
        max_request_header_size: 16384,
        underscores_in_headers: true,
        max_idle_conns: 200,
        max_idle_conns_per_host: 0,
        circuit_breaker_enabled: false,
        circuit_breaker: CircuitBreakerConfig {
            failure_threshold: 10,
            recovery_threshold: 5,
            timeout: Duration::from_secs(60),
            half_open_max_calls: 2,
            failure_status_codes: vec![502, 503],
        },
        rate_limit: Some(RateLimitConfig {
            requests_per_second: 100,
            burst: 250,
        }),
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        metrics_enabled: false,
        logging_enabled: false,
        access_log: Some("fulcrum-access.log".into()),
        graceful_shutdown: false,
        shutdown_timeout: Duration::from_secs(10),
        pingora,
        backends: vec![
            primary,
            BackendServer::new("api-secondary", "http://127.0.0.1:8002"),
        ],
    };
    assert_eq!(LoadBalancerConfig::from_yaml_str(FULL), Ok(want.clone()));
    // Serialising gives YAML that reads back to the same config.
    let yaml = serde_yaml::to_string(&want).unwrap();
    assert_eq!(LoadBalancerConfig::from_yaml_str(&yaml), Ok(want));
}

const EXAMPLE: &str = include_str!("../../conf/fulcrum.yaml");
const REFERENCE: &str = include_str!("../../README.md");

#[test]
fn example_file_is_the_defaults_plus_three_backends() {
    let mut c = LoadBalancerConfig::from_yaml_str(EXAMPLE).unwrap();
    let ids: Vec<(&str, &str, u32)> = c
        .backends
        .iter()
        .map(|b| (b.id.as_str(), b.url.as_str(), b.weight))
        .collect();
    assert_eq!(
        ids,
        [
            ("web1", "http://127.0.0.1:8001", 3),
            ("web2", "http://127.0.0.1:8002", 2),
            ("web3", "http://127.0.0.1:8003", 1)
        ]
    );
    assert!(c.backends.iter().all(|b| !b.tags.is_empty()));
    c.backends.clear();
    assert_eq!(c, LoadBalancerConfig::default());
}

#[test]
fn example_and_reference_show_every_key() {
    let mut keys: Vec<String> = scalar_keys(&every_key_config()).into_keys().collect();
    keys.extend(
        [
            "pingora",
            "backends",
            "rate_limit",
            "tls_certificates",
            "acme",
        ]
        .map(String::from),
    );
    keys.extend(["threads", "pid_file", "upgrade_sock", "daemon"].map(|k| format!("pingora.{k}")));
    for key in &keys {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            EXAMPLE.lines().any(|l| l
                .trim_start()
                .trim_start_matches('#')
                .trim_start()
                .starts_with(&format!("{leaf}:"))),
            "conf/fulcrum.yaml does not show {key}"
        );
        assert!(
            REFERENCE.contains(&format!("| `{key}` |")),
            "README.md (configuration reference) has no row for {key}"
        );
    }
}

#[test]
fn example_rate_limit_block_loads_when_uncommented() {
    let block: String = EXAMPLE
        .lines()
        .skip_while(|l| !l.starts_with("# rate_limit:"))
        .take_while(|l| l.starts_with("# rate_limit:") || l.starts_with("#   "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    assert!(
        block.lines().count() >= 3,
        "no rate_limit example: {block:?}"
    );
    let c = LoadBalancerConfig::from_yaml_str(&block).unwrap();
    assert_eq!(
        c.rate_limit,
        Some(RateLimitConfig {
            requests_per_second: 100,
            burst: 200
        })
    );
}

#[test]
fn from_file_names_the_path() {
    let missing = Path::new("/nonexistent/fulcrum.yaml");
    let e = LoadBalancerConfig::from_file(missing).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/fulcrum.yaml"), "{e}");

    let path =
        std::env::temp_dir().join(format!("fulcrum-config-test-{}.yaml", std::process::id()));
    std::fs::write(&path, "max_retries: 11\n").unwrap();
    let e = LoadBalancerConfig::from_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(e.path(), Some(path.as_path()));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: max_retries: must be at most 10, got 11",
            path.display()
        )
    );
}

#[test]
fn access_log_needs_an_existing_directory_and_is_not_created() {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("fulcrum-access-test-{}.log", std::process::id()));
    let c = LoadBalancerConfig::from_yaml_str(&format!("access_log: {}\n", path.display()));
    assert_eq!(c.map(|c| c.access_log), Ok(Some(path.clone())));
    assert!(!path.exists(), "validation created {}", path.display());
    // A bare file name is in the working directory.
    LoadBalancerConfig::from_yaml_str("access_log: access.log\n").unwrap();

    let missing = dir.join("fulcrum-no-such-dir").join("access.log");
    let cases = [
        (
            format!("access_log: {}\n", missing.display()),
            format!(
                "access_log: directory {} does not exist (for {})",
                missing.parent().unwrap().display(),
                missing.display()
            ),
        ),
        (
            format!("access_log: {}\n", dir.display()),
            format!("access_log: {} is a directory", dir.display()),
        ),
        (
            "access_log: /var/log/\n".into(),
            "access_log: /var/log/ is a directory".into(),
        ),
        (
            "access_log: \"\"\n".into(),
            "access_log: must not be empty".into(),
        ),
    ];
    for (yaml, want) in cases {
        let errors = errors_of(LoadBalancerConfig::from_yaml_str(&yaml));
        assert_one_error_contains(&yaml, &errors, &[&want]);
    }

    // LB_ACCESS_LOG sets it, names itself in errors, and empty means stdout.
    let load = |yaml: &str, value: &str| {
        LoadBalancerConfig::from_yaml_str_with_env(yaml, [("LB_ACCESS_LOG", value)])
    };
    let shown = path.display().to_string();
    assert_eq!(
        load("", &shown).map(|c| c.access_log),
        Ok(Some(path.clone()))
    );
    let yaml = format!("access_log: {shown}\n");
    assert_eq!(load(&yaml, "").map(|c| c.access_log), Ok(None));
    let errors = errors_of(load("", &missing.display().to_string()));
    assert_one_error_contains(
        "env",
        &errors,
        &["access_log (from LB_ACCESS_LOG): directory"],
    );
}

/// Defect 5: a key whose default depends on another follows it when the user sets only the
/// other one; a value the user set himself is still checked against it.
#[test]
fn dependent_defaults_follow_the_key_the_user_set() {
    let (ms, s) = (Duration::from_millis, Duration::from_secs);
    // (file, effective health_check_timeout, effective retry_backoff_max)
    let cases = [
        ("", s(5), s(2)),
        ("health_check_interval: 1s\n", s(1), s(2)),
        ("health_check_interval: 100ms\n", ms(100), s(2)),
        ("health_check_interval: 1m\n", s(5), s(2)),
        ("retry_backoff: 3s\n", s(5), s(3)),
        (
            "retry_backoff: 1m\nhealth_check_interval: 2s\n",
            s(2),
            s(60),
        ),
        (
            "health_check_interval: 1s\nhealth_check_timeout: 1s\n",
            s(1),
            s(2),
        ),
        ("retry_backoff: 0s\nretry_backoff_max: 0s\n", s(5), s(0)),
    ];
    for (yaml, timeout, backoff_max) in cases {
        match LoadBalancerConfig::from_yaml_str(yaml) {
            Ok(c) => assert_eq!(
                (
                    c.effective_health_check_timeout(),
                    c.effective_retry_backoff_max()
                ),
                (timeout, backoff_max),
                "{yaml:?}"
            ),
            Err(e) => panic!("{yaml:?}: {e}"),
        }
    }
    // A library user building the config in code gets the same.
    let in_code = LoadBalancerConfig {
        health_check_interval: s(1),
        retry_backoff: s(3),
        ..LoadBalancerConfig::default()
    };
    in_code.validate().unwrap();
    assert_eq!(in_code.effective_health_check_timeout(), s(1));
    assert_eq!(in_code.effective_retry_backoff_max(), s(3));
    let cases: [(&str, &[&str]); 2] = [
        (
            "health_check_interval: 1s\nhealth_check_timeout: 5s\n",
            &["health_check_timeout: 5s is longer than health_check_interval (1s)"],
        ),
        (
            "retry_backoff: 3s\nretry_backoff_max: 2s\n",
            &["retry_backoff_max: 2s is smaller than retry_backoff (3s)"],
        ),
    ];
    for (yaml, parts) in cases {
        let errors = errors_of(LoadBalancerConfig::from_yaml_str(yaml));
        assert_one_error_contains(yaml, &errors, parts);
    }
    // A variable counts as set by the user.
    let env = [("LB_HEALTH_CHECK_TIMEOUT", "5s")];
    let errors = errors_of(LoadBalancerConfig::from_yaml_str_with_env(
        "health_check_interval: 1s\n",
        env,
    ));
    assert_one_error_contains(
        "env",
        &errors,
        &["health_check_timeout (from LB_HEALTH_CHECK_TIMEOUT): 5s is longer"],
    );
    LoadBalancerConfig::from_yaml_str_with_env("", [("LB_HEALTH_CHECK_INTERVAL", "1s")]).unwrap();
}
