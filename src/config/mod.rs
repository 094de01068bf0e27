//! Configuration: the [`LoadBalancerConfig`] that the YAML file deserialises into and that
//! library users build in code.
//!
//! This module owns the file format and its meaning: every key's type and default, duration
//! syntax (`100ms`, `1m30s`, [`parse_duration`]), the `LB_*` environment overrides (one table,
//! so YAML keys and variable names cannot drift), the semantic checks of
//! [`LoadBalancerConfig::validate`], and the translation of Fulcrum's settings into Pingora's
//! `ServerConf` ([`LoadBalancerConfig::server_conf`]).
//!
//! Errors are a [`ConfigError`] listing every problem found, each message starting with the key
//! it is about (`port: ...`, `backends[1] (id "web2"): weight: ...`, `pingora.pid_file: ...`) and
//! naming the environment variable when the value came from one (`LB_PORT: ...`). Unknown keys
//! are errors everywhere (`deny_unknown_fields`), so a typo never falls back to a default.
//!
//! This module does no I/O except reading the file in [`LoadBalancerConfig::from_file`] and the
//! one-time name resolution of backend URLs done by [`BackendServer::validate`].
//!
//! Layout: this file holds the top-level struct, its defaults and loading; `duration` the
//! duration syntax, `env` the `LB_*` table, `validate` the semantic checks, `pingora` the
//! `pingora:` section and `ServerConf`, `sections` the nested sections (`circuit_breaker:`,
//! `rate_limit:`), `error` [`ConfigError`] and `de` the serde helpers.

mod de;
mod duration;
mod env;
mod env_values;
mod error;
mod pingora;
mod sections;
#[cfg(test)]
mod testutil;
mod validate;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::duration::{format_duration, parse_duration, serde_duration};
pub use self::error::ConfigError;
pub use self::pingora::{
    PingoraConfig, DEFAULT_PID_FILE, DEFAULT_UPGRADE_SOCK, MAX_RUNTIME_SHUTDOWN_SECS,
};
pub use self::sections::{CircuitBreakerConfig, RateLimitConfig};

use self::de::{cidr_list_serde, deserialize_port, hash_key_serde, null_as_default};
use self::error::describe_yaml_error;
use crate::backend::BackendServer;
use crate::balance::{HashKey, Strategy};
use crate::ratelimit::Cidr;

/// Largest accepted `max_retries`.
pub const MAX_RETRIES_LIMIT: u32 = 10;

/// Accepted `max_request_header_size`, in bytes: 1 KiB to 1 MiB.
pub const REQUEST_HEADER_SIZE_RANGE: RangeInclusive<usize> = 1024..=1024 * 1024;

/// Everything Fulcrum can be configured with: the YAML file's top level.
///
/// Missing keys take their [`Default`]; unknown keys are rejected. Build one from YAML with
/// [`Self::from_file`] / [`Self::from_yaml_str`], or in code from `Default::default()` and
/// then call [`Self::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// Load-balancing strategy (default `round_robin`).
    pub strategy: Strategy,
    /// What `consistent_hashing` hashes: `client_ip` (default), `path`, `header:NAME` or
    /// `cookie:NAME`. Ignored by the other strategies.
    #[serde(with = "hash_key_serde")]
    pub hash_key: HashKey,
    /// Traffic port (default 8080); 0 picks a free port (tests).
    #[serde(deserialize_with = "deserialize_port")]
    pub port: u16,
    /// Address the traffic listener binds to (default `0.0.0.0`).
    pub bind_address: IpAddr,
    /// Address of the admin listener: health, metrics, API (default `127.0.0.1:9090`; port 0
    /// picks a free port).
    pub admin_address: SocketAddr,
    /// Time between two active health checks of a backend (default 30s, > 0).
    #[serde(with = "serde_duration")]
    pub health_check_interval: Duration,
    /// Time a health check may take before it counts as failed (default 5s, > 0, at most
    /// `health_check_interval`).
    #[serde(with = "serde_duration")]
    pub health_check_timeout: Duration,
    /// Path requested by HTTP health checks (default `/health`).
    pub health_check_path: String,
    /// Consecutive passing checks that make an unhealthy backend healthy (default 2, >= 1).
    pub healthy_threshold: u32,
    /// Consecutive failing checks that make a healthy backend unhealthy (default 3, >= 1).
    pub unhealthy_threshold: u32,
    /// Retries on another backend after a failed attempt (default 3, at most
    /// [`MAX_RETRIES_LIMIT`]).
    pub max_retries: u32,
    /// Backoff before retries: the first retry waits up to `retry_backoff`, doubling per
    /// retry, full jitter (a uniformly random wait up to that ceiling), capped by
    /// `retry_backoff_max` (default 100ms).
    #[serde(with = "serde_duration")]
    pub retry_backoff: Duration,
    /// Cap on the backoff ceiling (default 2s, at least `retry_backoff`).
    #[serde(with = "serde_duration")]
    pub retry_backoff_max: Duration,
    /// Retries may add at most this percentage to the recent request rate, with a floor of 3
    /// retries per second (default 20, 0-100).
    pub retry_budget_percent: u32,
    /// Session affinity by cookie (default false; `true` is rejected until sticky sessions land).
    pub enable_sticky_sessions: bool,
    /// Name of the session cookie (default `LB_SESSION_ID`; an RFC 6265 token).
    pub session_cookie_name: String,
    /// Idle time after which a session expires (default 2h, > 0).
    #[serde(with = "serde_duration")]
    pub session_timeout: Duration,
    /// TLS termination (default false; `true` is rejected until TLS lands).
    pub enable_ssl: bool,
    /// PEM certificate chain for TLS (default none; rejected until TLS lands).
    pub ssl_cert_file: Option<PathBuf>,
    /// PEM private key for TLS (default none; rejected until TLS lands).
    pub ssl_key_file: Option<PathBuf>,
    /// Limit on one proxied request (default 30s, > 0).
    #[serde(with = "serde_duration")]
    pub request_timeout: Duration,
    /// Limit on the TCP connect to a backend, per attempt (default 5s, > 0).
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Time a client has to send its complete request head (default 10s, > 0).
    #[serde(with = "serde_duration")]
    pub client_header_timeout: Duration,
    /// Keep-alive idle time allowed between a client's requests (default 60s, > 0).
    #[serde(with = "serde_duration")]
    pub client_idle_timeout: Duration,
    /// Largest request head accepted, in bytes; a larger one gets 431 (default 32768, within
    /// [`REQUEST_HEADER_SIZE_RANGE`]).
    pub max_request_header_size: usize,
    /// Size of Pingora's upstream keep-alive pool, one LRU shared by all backends (default
    /// 1024; 0 keeps no idle connection).
    pub max_idle_conns: usize,
    /// Per-backend idle connection cap: only 0 (no cap) is accepted, because Pingora keeps idle
    /// upstream connections in one LRU shared by all backends.
    pub max_idle_conns_per_host: usize,
    /// Per-backend circuit breakers (default true).
    pub circuit_breaker_enabled: bool,
    /// Circuit breaker settings, validated even while breakers are disabled.
    pub circuit_breaker: CircuitBreakerConfig,
    /// Per-client-IP rate limiting (default `None`: off).
    pub rate_limit: Option<RateLimitConfig>,
    /// Proxies whose `X-Forwarded-For` is believed when finding the client's IP (default
    /// none: the client is the TCP peer). Written as strings: `10.0.0.0/8`, `::1`.
    #[serde(with = "cidr_list_serde")]
    pub trusted_proxies: Vec<Cidr>,
    /// Prometheus/JSON metrics on the admin listener (default true).
    pub metrics_enabled: bool,
    /// One access-log line per request (default true).
    pub logging_enabled: bool,
    /// Drain in-flight requests on SIGTERM / upgrade (default true); false stops at once.
    pub graceful_shutdown: bool,
    /// Grace period for in-flight requests on SIGTERM / upgrade (default 30s).
    #[serde(with = "serde_duration")]
    pub shutdown_timeout: Duration,
    /// Pingora `ServerConf` keys passed through (`threads`, `pid_file`, `daemon`, ...).
    pub pingora: PingoraConfig,
    /// Backends to start with (default none; more can be added at run time). An empty
    /// `backends:` (every entry commented out) is an empty list.
    #[serde(deserialize_with = "null_as_default")]
    pub backends: Vec<BackendServer>,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            hash_key: HashKey::ClientIp,
            port: 8080,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            admin_address: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            health_check_interval: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(5),
            health_check_path: "/health".to_string(),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            max_retries: 3,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(2),
            retry_budget_percent: 20,
            enable_sticky_sessions: false,
            session_cookie_name: "LB_SESSION_ID".to_string(),
            session_timeout: Duration::from_secs(2 * 3600),
            enable_ssl: false,
            ssl_cert_file: None,
            ssl_key_file: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            client_header_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            max_request_header_size: 32 * 1024,
            max_idle_conns: 1024,
            max_idle_conns_per_host: 0,
            circuit_breaker_enabled: true,
            circuit_breaker: CircuitBreakerConfig::default(),
            rate_limit: None,
            trusted_proxies: Vec::new(),
            metrics_enabled: true,
            logging_enabled: true,
            graceful_shutdown: true,
            shutdown_timeout: Duration::from_secs(30),
            pingora: PingoraConfig::default(),
            backends: Vec::new(),
        }
    }
}

impl LoadBalancerConfig {
    /// Parses YAML and validates it; the environment is not consulted.
    ///
    /// An empty document (or one holding only comments) gives the defaults.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        let config = Self::parse(yaml)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML, applies `LB_*` overrides looked up with `env`, then validates. Errors from
    /// the environment and from validation are reported together; a validation error about a
    /// value that came from the environment names the variable.
    pub fn from_yaml_str_with_env(
        yaml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::parse(yaml)?;
        let (applied, mut errors) = config.apply_env_collect(env);
        if let Err(e) = config.validate() {
            errors.extend(
                e.into_messages()
                    .into_iter()
                    .map(|m| env::name_env_source(&applied, m)),
            );
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::from_messages(errors))
        }
    }

    /// Reads the file at `path` and loads it like [`Self::from_yaml_str_with_env`], with the
    /// process environment. Errors carry the path ([`ConfigError::path`]). `LB_*` variables
    /// that are not Fulcrum settings are logged as warnings.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
        })?;
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("LB_") && !env::is_override(&name) {
                log::warn!("environment variable {name} is not a Fulcrum setting; ignored");
            }
        }
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Self::from_yaml_str_with_env(&yaml, &env).map_err(|e| e.with_path(path))
    }

    fn parse(yaml: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str::<Option<Self>>(yaml)
            .map(Option::unwrap_or_default)
            .map_err(|e| ConfigError::new(describe_yaml_error(yaml, &e)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use super::testutil::{every_key_config, scalar_keys};
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
enable_ssl: false
ssl_cert_file: null
ssl_key_file: null
request_timeout: 1m
connect_timeout: 2s
client_header_timeout: 5s
client_idle_timeout: 2m
max_request_header_size: 16384
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
            health_check_interval: Duration::from_secs(15),
            health_check_timeout: Duration::from_secs(3),
            health_check_path: "/api/health?deep=1".into(),
            healthy_threshold: 4,
            unhealthy_threshold: 5,
            max_retries: 5,
            retry_backoff: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(5),
            retry_budget_percent: 10,
            enable_sticky_sessions: false,
            session_cookie_name: "MY_SESSION".into(),
            session_timeout: Duration::from_secs(3600),
            enable_ssl: false,
            ssl_cert_file: None,
            ssl_key_file: None,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            client_header_timeout: Duration::from_secs(5),
            client_idle_timeout: Duration::from_secs(120),
            max_request_header_size: 16384,
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
        keys.extend(["pingora", "backends", "rate_limit"].map(String::from));
        keys.extend(
            ["threads", "pid_file", "upgrade_sock", "daemon"].map(|k| format!("pingora.{k}")),
        );
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
}
