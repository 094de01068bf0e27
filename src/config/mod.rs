//! Configuration: the [`LoadBalancerConfig`] that the YAML file deserialises into and that
//! library users build in code.
//!
//! This module owns the file format and its meaning: every key's type and default, duration
//! syntax (`100ms`, `1m30s`, [`parse_duration`], by humantime), the `LB_*` environment overrides
//! (derived from the serialised keys, so YAML keys and variable names cannot drift), the semantic checks of
//! [`LoadBalancerConfig::validate`], and the translation of Fulcrum's settings into Pingora's
//! `ServerConf` ([`LoadBalancerConfig::server_conf`]).
//!
//! Errors are a [`ConfigError`] listing every problem found, each message starting with the key
//! it is about (`port: ...`, `backends[1] (id "web2"): weight: ...`, `pingora.pid_file: ...`) and
//! naming the environment variable when the value came from one (`LB_PORT: ...`). Unknown keys
//! are errors everywhere (`deny_unknown_fields`), so a typo never falls back to a default.
//!
//! This module does no I/O except reading the file in [`LoadBalancerConfig::from_file`], the
//! one-time name resolution of backend URLs done by [`BackendServer::validate`], and, in
//! [`LoadBalancerConfig::validate`], reading `admin_token_file` and checking that the directory
//! of `access_log` exists (the log file itself is not created).
//!
//! Layout: this file holds the top-level struct, its defaults and loading; `duration` the
//! duration syntax, `env` the `LB_*` overrides, `validate` the semantic checks, `pingora` the
//! `pingora:` section and `ServerConf`, `sections` the nested sections (`circuit_breaker:`,
//! `rate_limit:`), `acme` the `acme:` section, `token` the admin token ([`Secret`], [`LoadBalancerConfig::admin_token`]),
//! `error` [`ConfigError`] and `de` the serde helpers.

mod acme;
mod de;
mod duration;
mod env;
mod error;
mod pingora;
mod sections;
#[cfg(test)]
mod testutil;
mod token;
mod validate;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::acme::{AcmeConfig, LETS_ENCRYPT};
pub use self::duration::{format_duration, parse_duration, serde_duration, InvalidDuration};
pub use self::env::process_env;
pub use self::error::ConfigError;
pub use self::pingora::{
    PingoraConfig, DEFAULT_PID_FILE, DEFAULT_UPGRADE_SOCK, MAX_RUNTIME_SHUTDOWN_SECS,
};
pub use self::sections::{CircuitBreakerConfig, RateLimitConfig, TlsCertificate};
pub use self::token::{Secret, MIN_ADMIN_TOKEN_LEN, MIN_SESSION_SECRET_LEN};

use self::de::{cidr_list_serde, deserialize_port, hash_key_serde, null_as_default};
use self::error::describe_yaml_error;
use crate::backend::BackendServer;
use crate::balance::{HashKey, Strategy};
use crate::client::Cidr;

/// Largest accepted `max_retries`.
pub const MAX_RETRIES_LIMIT: u32 = 10;

/// Accepted `max_request_header_size`, in bytes: 1 KiB to 1 MiB.
pub const REQUEST_HEADER_SIZE_RANGE: RangeInclusive<usize> = 1024..=1024 * 1024;

/// `health_check_timeout` when not set, unless `health_check_interval` is shorter.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `retry_backoff_max` when not set, unless `retry_backoff` is longer.
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

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
    /// Bearer token required by the mutating admin API calls (`/api/backends` POST, PUT, PATCH,
    /// DELETE); at least [`MIN_ADMIN_TOKEN_LEN`] characters, visible ASCII only. Default none:
    /// with neither this nor `admin_token_file` set, those calls are refused with 403. `Debug`
    /// shows it as `"<redacted>"`. Read the effective token with [`Self::admin_token`].
    pub admin_token: Option<Secret>,
    /// File holding the admin token instead (systemd credentials, Kubernetes secrets);
    /// trailing newlines are trimmed. Default none; not together with `admin_token`.
    pub admin_token_file: Option<PathBuf>,
    /// Time between two active health checks of a backend (default 30s, > 0).
    #[serde(with = "serde_duration")]
    pub health_check_interval: Duration,
    /// Time a health check may take before it counts as failed (> 0, at most
    /// `health_check_interval`). Default `None`: [`DEFAULT_HEALTH_CHECK_TIMEOUT`], or the
    /// interval when that is shorter; read it with [`Self::effective_health_check_timeout`].
    #[serde(with = "serde_duration::option")]
    pub health_check_timeout: Option<Duration>,
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
    /// Cap on the backoff ceiling (at least `retry_backoff`). Default `None`:
    /// [`DEFAULT_RETRY_BACKOFF_MAX`], or `retry_backoff` when that is longer; read it with
    /// [`Self::effective_retry_backoff_max`].
    #[serde(with = "serde_duration::option")]
    pub retry_backoff_max: Option<Duration>,
    /// Retries may add at most this percentage to the recent request rate, with a floor of 3
    /// retries per second (default 20, 0-100).
    pub retry_budget_percent: u32,
    /// Session affinity by cookie (default false).
    pub enable_sticky_sessions: bool,
    /// Name of the session cookie (default `LB_SESSION_ID`; an RFC 6265 token).
    pub session_cookie_name: String,
    /// Idle time after which a session expires (default 2h, > 0); each request extends it.
    #[serde(with = "serde_duration")]
    pub session_timeout: Duration,
    /// Where sessions live: `memory` (default), `cookie` (signed, stateless) or
    /// `redis://HOST:PORT/DB`.
    pub session_store: String,
    /// Prefix of the Redis keys (default `fulcrum:session:`).
    pub session_store_prefix: String,
    /// Most sessions the memory store keeps; a full store evicts the oldest (default 100000).
    pub max_sessions: usize,
    /// HMAC key of the `cookie` store (at least 32 characters); all instances share it.
    pub session_secret: Option<Secret>,
    /// File holding the `cookie` store's keys, one per line: the first signs, every one is
    /// accepted (key rotation). Instead of `session_secret`.
    pub session_secret_file: Option<PathBuf>,
    /// TLS termination on `tls_listen_port`, beside plain HTTP on `port` (default false).
    pub enable_ssl: bool,
    /// PEM certificate chain of the default certificate (default none). With `ssl_key_file`
    /// it is the first certificate, served when no other matches the client's SNI.
    pub ssl_cert_file: Option<PathBuf>,
    /// PEM private key of `ssl_cert_file` (default none).
    pub ssl_key_file: Option<PathBuf>,
    /// Port of the TLS listener on `bind_address` (default 8443).
    pub tls_listen_port: u16,
    /// More certificates, chosen by the client's SNI against each certificate's own names
    /// (after `ssl_cert_file`, in order; the first one is the default). Default none.
    #[serde(deserialize_with = "null_as_default")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Answer plain HTTP with `308 Permanent Redirect` to the same URL on https (default false;
    /// needs `enable_ssl`).
    pub redirect_http_to_https: bool,
    /// Accept cleartext HTTP/2 with prior knowledge (h2c) on `port`, beside HTTP/1.1
    /// (default false). HTTP/2 over TLS is negotiated by ALPN whenever TLS is on.
    pub h2c: bool,
    /// Certificates obtained and renewed automatically over ACME (default `None`: off; needs
    /// `enable_ssl`). They are served beside `ssl_cert_file` and `tls_certificates`, which
    /// may then be left out.
    pub acme: Option<AcmeConfig>,
    /// Timeout of each read from and write to a backend, per attempt (default 30s, > 0).
    #[serde(with = "serde_duration")]
    pub request_timeout: Duration,
    /// Timeout of each read from and write to either side of a WebSocket, in place of
    /// `request_timeout` once a request asks for `Upgrade: websocket` (default 1h, > 0): a
    /// WebSocket whose client or backend sends nothing for this long is closed.
    #[serde(with = "serde_duration")]
    pub websocket_idle_timeout: Duration,
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
    /// Forward request header fields whose names contain `_` (default false: they are dropped,
    /// as nginx does, because a backend may read `Content_Length` as `Content-Length`).
    pub underscores_in_headers: bool,
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
    /// One JSON access-log line per request, to `access_log` or stdout (default true).
    pub logging_enabled: bool,
    /// File the access log is appended to when `logging_enabled` (default none: stdout). Its
    /// directory must exist; the file is created when first written.
    pub access_log: Option<PathBuf>,
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
            admin_token: None,
            admin_token_file: None,
            health_check_interval: Duration::from_secs(30),
            health_check_timeout: None,
            health_check_path: "/health".to_string(),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            max_retries: 3,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: None,
            retry_budget_percent: 20,
            enable_sticky_sessions: false,
            session_cookie_name: "LB_SESSION_ID".to_string(),
            session_timeout: Duration::from_secs(2 * 3600),
            session_store: "memory".to_string(),
            session_store_prefix: "fulcrum:session:".to_string(),
            max_sessions: 100_000,
            session_secret: None,
            session_secret_file: None,
            enable_ssl: false,
            ssl_cert_file: None,
            ssl_key_file: None,
            tls_listen_port: 8443,
            tls_certificates: Vec::new(),
            redirect_http_to_https: false,
            h2c: false,
            acme: None,
            request_timeout: Duration::from_secs(30),
            websocket_idle_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            client_header_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            max_request_header_size: 32 * 1024,
            underscores_in_headers: false,
            max_idle_conns: 1024,
            max_idle_conns_per_host: 0,
            circuit_breaker_enabled: true,
            circuit_breaker: CircuitBreakerConfig::default(),
            rate_limit: None,
            trusted_proxies: Vec::new(),
            metrics_enabled: true,
            logging_enabled: true,
            access_log: None,
            graceful_shutdown: true,
            shutdown_timeout: Duration::from_secs(30),
            pingora: PingoraConfig::default(),
            backends: Vec::new(),
        }
    }
}

impl LoadBalancerConfig {
    /// The health-check timeout in force: `health_check_timeout` when set, else
    /// [`DEFAULT_HEALTH_CHECK_TIMEOUT`] or `health_check_interval` when that is shorter, so a
    /// user who shortens the interval need not learn about the timeout.
    pub fn effective_health_check_timeout(&self) -> Duration {
        self.health_check_timeout
            .unwrap_or(DEFAULT_HEALTH_CHECK_TIMEOUT.min(self.health_check_interval))
    }

    /// The backoff cap in force: `retry_backoff_max` when set, else
    /// [`DEFAULT_RETRY_BACKOFF_MAX`] or `retry_backoff` when that is longer.
    pub fn effective_retry_backoff_max(&self) -> Duration {
        self.retry_backoff_max
            .unwrap_or(DEFAULT_RETRY_BACKOFF_MAX.max(self.retry_backoff))
    }

    /// Parses YAML and validates it; the environment is not consulted.
    ///
    /// An empty document (or one holding only comments) gives the defaults.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        let config = Self::parse(yaml)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML, applies the `LB_*` variables among `vars` (name, value pairs; other names
    /// are ignored), then validates. Errors from the environment (bad values, `LB_` variables
    /// that name no key) and from validation are reported together; a validation error about a
    /// value that came from the environment names the variable.
    pub fn from_yaml_str_with_env<K: AsRef<str>, V: AsRef<str>>(
        yaml: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let (config, applied, mut errors) = env::overlay(&Self::parse(yaml)?, vars);
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
    /// process's `LB_*` variables ([`process_env`]). Errors carry the path
    /// ([`ConfigError::path`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::from_yaml_str_with_env(&yaml, process_env()).map_err(|e| e.with_path(path))
    }

    fn parse(yaml: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str::<Option<Self>>(yaml)
            .map(Option::unwrap_or_default)
            .map_err(|e| ConfigError::new(describe_yaml_error(yaml, &e)))
    }
}

#[cfg(test)]
mod tests;
