//! Configuration: the [`LoadBalancerConfig`] that the YAML file deserialises into and that
//! library users build in code.
//!
//! This module owns the file format and its meaning: every key's type and default, duration
//! syntax (`100ms`, `1m30s`, [`parse_duration`]), the `LB_*` environment overrides (one table,
//! so YAML keys and variable names cannot drift), the semantic checks of
//! [`LoadBalancerConfig::validate`], and the translation of Fulcrum's settings into Pingora's
//! [`ServerConf`] ([`LoadBalancerConfig::server_conf`]).
//!
//! Errors are a [`ConfigError`] listing every problem found, each message starting with the key
//! it is about (`port: ...`, `backends[1] (id "web2"): weight: ...`, `pingora.pid_file: ...`) and
//! naming the environment variable when the value came from one (`LB_PORT: ...`). Unknown keys
//! are errors everywhere (`deny_unknown_fields`), so a typo never falls back to a default.
//!
//! This module does no I/O except reading the file in [`LoadBalancerConfig::from_file`] and the
//! one-time name resolution of backend URLs done by [`BackendServer::validate`].

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::backend::BackendServer;
use crate::balance::{HashKey, Strategy};

/// Largest accepted `max_retries`.
pub const MAX_RETRIES_LIMIT: u32 = 10;

/// Upper bound of Pingora's `graceful_shutdown_timeout_seconds` derived from `shutdown_timeout`
/// (Pingora's own default).
pub const MAX_RUNTIME_SHUTDOWN_SECS: u64 = 5;

/// Pingora pid file used when `pingora.pid_file` is not set (Pingora's own default,
/// `/tmp/pingora.pid`, would clash with other Pingora programs on the host).
pub const DEFAULT_PID_FILE: &str = "/tmp/fulcrum.pid";

/// Pingora upgrade socket used when `pingora.upgrade_sock` is not set.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/fulcrum_upgrade.sock";

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
    /// Base delay before a retry, doubled per attempt with jitter (default 100ms).
    #[serde(with = "serde_duration")]
    pub retry_backoff: Duration,
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
    /// Size of Pingora's upstream keep-alive pool, one LRU shared by all backends (default
    /// 1024; 0 keeps no idle connection).
    pub max_idle_conns: usize,
    /// Per-backend idle connection cap: only 0 (no cap) is accepted, because Pingora keeps idle
    /// upstream connections in one LRU shared by all backends.
    pub max_idle_conns_per_host: usize,
    /// Per-backend circuit breakers (default false; `true` is rejected until breakers land).
    pub circuit_breaker_enabled: bool,
    /// Circuit breaker settings, validated even while breakers are disabled.
    pub circuit_breaker: CircuitBreakerConfig,
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
            enable_sticky_sessions: false,
            session_cookie_name: "LB_SESSION_ID".to_string(),
            session_timeout: Duration::from_secs(2 * 3600),
            enable_ssl: false,
            ssl_cert_file: None,
            ssl_key_file: None,
            request_timeout: Duration::from_secs(30),
            max_idle_conns: 1024,
            max_idle_conns_per_host: 0,
            circuit_breaker_enabled: false,
            circuit_breaker: CircuitBreakerConfig::default(),
            metrics_enabled: true,
            logging_enabled: true,
            graceful_shutdown: true,
            shutdown_timeout: Duration::from_secs(30),
            pingora: PingoraConfig::default(),
            backends: Vec::new(),
        }
    }
}

/// Per-backend circuit breaker settings (`circuit_breaker:`), the seed's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker (default 5, >= 1).
    pub failure_threshold: u32,
    /// Successes in half-open state that close it again (default 3, >= 1).
    pub recovery_threshold: u32,
    /// Time an open breaker waits before going half-open (default 30s, > 0).
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Concurrent probe requests admitted while half-open (default 10, >= 1).
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_threshold: 3,
            timeout: Duration::from_secs(30),
            half_open_max_calls: 10,
        }
    }
}

/// Pingora [`ServerConf`] keys passed through unchanged (`pingora:` in the file).
///
/// Only keys `ServerConf` knows are accepted; the four that Fulcrum derives from its own
/// settings ([`Self::DERIVED_KEYS`]) are rejected with a pointer to the Fulcrum key. An absent
/// or empty section is an empty mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PingoraConfig(pub Mapping);

impl<'de> Deserialize<'de> for PingoraConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        null_as_default(deserializer).map(Self)
    }
}

impl PingoraConfig {
    /// `ServerConf` keys Fulcrum sets itself, each with the Fulcrum key to use instead.
    pub const DERIVED_KEYS: [(&'static str, &'static str); 4] = [
        (
            "grace_period_seconds",
            "shutdown_timeout (and graceful_shutdown)",
        ),
        (
            "graceful_shutdown_timeout_seconds",
            "shutdown_timeout (and graceful_shutdown)",
        ),
        ("max_retries", "the top-level max_retries"),
        ("upstream_keepalive_pool_size", "max_idle_conns"),
    ];

    /// Every key Pingora's `ServerConf` has, found by serialising `ServerConf::default()` (so
    /// a Pingora upgrade that adds keys needs no change here). Includes the derived keys.
    pub fn known_keys() -> &'static [String] {
        static KEYS: OnceLock<Vec<String>> = OnceLock::new();
        KEYS.get_or_init(|| match serde_yaml::to_value(ServerConf::default()) {
            Ok(Value::Mapping(m)) => m
                .keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
            // Not reachable with a derived Serialize; with no known keys every key is rejected.
            _ => Vec::new(),
        })
    }

    /// The value given for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Sets `key` (checked later, by [`LoadBalancerConfig::validate`] and
    /// [`LoadBalancerConfig::server_conf`]).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.0.insert(Value::String(key.to_string()), value.into());
        self
    }

    /// Checks every key and value; returns the section as a `ServerConf` when all are valid.
    fn check(&self, errors: &mut Vec<String>) -> Option<ServerConf> {
        let before = errors.len();
        let known = Self::known_keys();
        for (key, value) in &self.0 {
            let Some(key) = key.as_str() else {
                errors.push(format!("pingora: keys must be strings, got {key:?}"));
                continue;
            };
            if let Some((_, instead)) = Self::DERIVED_KEYS.iter().find(|(k, _)| *k == key) {
                errors.push(format!(
                    "pingora.{key}: set by Fulcrum from its own settings; set {instead} instead"
                ));
            } else if !known.iter().any(|k| k == key) {
                let valid: Vec<&str> = known
                    .iter()
                    .map(String::as_str)
                    .filter(|k| !Self::DERIVED_KEYS.iter().any(|(d, _)| d == k))
                    .collect();
                let hint = match valid.iter().find(|k| edit_distance(k, key) <= 2) {
                    Some(k) => format!("did you mean {k}?"),
                    None => format!("expected one of {}", valid.join(", ")),
                };
                errors.push(format!("pingora.{key}: unknown key; {hint}"));
            } else {
                let mut single = Mapping::new();
                single.insert(Value::String(key.to_string()), value.clone());
                if let Err(e) = serde_yaml::from_value::<ServerConf>(Value::Mapping(single)) {
                    errors.push(format!("pingora.{key}: {e}"));
                }
            }
        }
        if errors.len() > before {
            return None;
        }
        let conf = match serde_yaml::from_value::<ServerConf>(Value::Mapping(self.0.clone())) {
            Ok(conf) => conf,
            Err(e) => {
                errors.push(format!("pingora: {e}"));
                return None;
            }
        };
        let given = |key: &str| self.0.contains_key(key);
        if given("threads") && conf.threads == 0 {
            errors.push("pingora.threads: must be at least 1".to_string());
        }
        if given("listener_tasks_per_fd") && conf.listener_tasks_per_fd == 0 {
            errors.push("pingora.listener_tasks_per_fd: must be at least 1".to_string());
        }
        for (key, path) in [
            ("pid_file", &conf.pid_file),
            ("upgrade_sock", &conf.upgrade_sock),
        ] {
            if given(key) && !Path::new(path).is_absolute() {
                errors.push(format!(
                    "pingora.{key}: must be an absolute path, got {path:?}"
                ));
            }
        }
        // Pingora's connector parses these with `unwrap()`: catch bad ones here.
        for (i, ip) in conf.client_bind_to_ipv4.iter().enumerate() {
            if ip.parse::<Ipv4Addr>().is_err() {
                errors.push(format!(
                    "pingora.client_bind_to_ipv4[{i}]: not an IPv4 address: {ip:?}"
                ));
            }
        }
        for (i, ip) in conf.client_bind_to_ipv6.iter().enumerate() {
            if ip.parse::<Ipv6Addr>().is_err() {
                errors.push(format!(
                    "pingora.client_bind_to_ipv6[{i}]: not an IPv6 address: {ip:?}"
                ));
            }
        }
        if errors.len() > before {
            return None;
        }
        match conf.validate() {
            Ok(conf) => Some(conf),
            Err(e) => {
                // Pingora's messages start with the key: "max_blocking_threads must be ...".
                let text = match &e.context {
                    Some(c) => c.as_str().to_string(),
                    None => e.to_string().trim().to_string(),
                };
                let key = known.iter().find(|k| text.starts_with(&format!("{k} ")));
                errors.push(match key {
                    Some(k) => format!("pingora.{k}:{}", &text[k.len()..]),
                    None => format!("pingora: {text}"),
                });
                None
            }
        }
    }
}

/// Every configuration problem found, each message naming its key (and environment variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    messages: Vec<String>,
    path: Option<PathBuf>,
}

impl ConfigError {
    /// An error with one message.
    pub fn new(message: impl Into<String>) -> Self {
        Self::from_messages(vec![message.into()])
    }

    fn from_messages(messages: Vec<String>) -> Self {
        Self {
            messages,
            path: None,
        }
    }

    /// The problems, one per message, each starting with the key it is about.
    pub fn messages(&self) -> &[String] {
        &self.messages
    }

    /// The file the configuration came from, when loaded with
    /// [`LoadBalancerConfig::from_file`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn with_path(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        match self.messages.as_slice() {
            [one] => f.write_str(one),
            many => {
                write!(f, "{} configuration errors:", many.len())?;
                for m in many {
                    write!(f, "\n  {m}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

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
            errors.extend(e.messages.into_iter().map(|m| {
                match applied
                    .iter()
                    .find(|o| m.starts_with(o.key) && m[o.key.len()..].starts_with(':'))
                {
                    Some(o) => format!("{} (from {}){}", o.key, o.env, &m[o.key.len()..]),
                    None => m,
                }
            }));
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
            if name.starts_with("LB_") && !ENV_OVERRIDES.iter().any(|o| o.env == name) {
                log::warn!("environment variable {name} is not a Fulcrum setting; ignored");
            }
        }
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Self::from_yaml_str_with_env(&yaml, &env).map_err(|e| e.with_path(path))
    }

    /// Applies `LB_*` overrides looked up with `env` (for configs built in code). Every valid
    /// value is applied; the invalid ones are reported together, naming variable and value.
    /// Does not validate: call [`Self::validate`] afterwards.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let (_, errors) = self.apply_env_collect(env);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::from_messages(errors))
        }
    }

    /// Runs every semantic check and reports all failures.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut err = |m: String| errors.push(m);
        let positive = [
            ("health_check_interval", self.health_check_interval),
            ("health_check_timeout", self.health_check_timeout),
            ("session_timeout", self.session_timeout),
            ("request_timeout", self.request_timeout),
            ("circuit_breaker.timeout", self.circuit_breaker.timeout),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                err(format!("{key}: must be greater than 0s"));
            }
        }
        if self.health_check_timeout > self.health_check_interval {
            err(format!(
                "health_check_timeout: {} is longer than health_check_interval ({}); a check \
                 must finish before the next one starts",
                format_duration(self.health_check_timeout),
                format_duration(self.health_check_interval)
            ));
        }
        if let Err(e) = check_health_path(&self.health_check_path) {
            err(format!("health_check_path: {e}"));
        }
        let at_least_one = [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
            (
                "circuit_breaker.failure_threshold",
                self.circuit_breaker.failure_threshold,
            ),
            (
                "circuit_breaker.recovery_threshold",
                self.circuit_breaker.recovery_threshold,
            ),
            (
                "circuit_breaker.half_open_max_calls",
                self.circuit_breaker.half_open_max_calls,
            ),
        ];
        for (key, n) in at_least_one {
            if n == 0 {
                err(format!("{key}: must be at least 1"));
            }
        }
        if self.max_retries > MAX_RETRIES_LIMIT {
            err(format!(
                "max_retries: must be at most {MAX_RETRIES_LIMIT}, got {}",
                self.max_retries
            ));
        }
        if !is_token(&self.session_cookie_name) {
            err(format!(
                "session_cookie_name: {:?} is not a valid cookie name (RFC 6265: letters, digits \
                 and !#$%&'*+-.^_`|~, not empty)",
                self.session_cookie_name
            ));
        }
        let later = |what: &str| format!("not supported yet ({what} in a later release)");
        if self.enable_sticky_sessions {
            err(format!(
                "enable_sticky_sessions: {}",
                later("sticky sessions land")
            ));
        }
        if self.enable_ssl {
            err(format!("enable_ssl: {}", later("TLS termination lands")));
        }
        for (key, file) in [
            ("ssl_cert_file", &self.ssl_cert_file),
            ("ssl_key_file", &self.ssl_key_file),
        ] {
            if file.is_some() {
                err(format!("{key}: {}", later("TLS termination lands")));
            }
        }
        if self.circuit_breaker_enabled {
            err(format!(
                "circuit_breaker_enabled: {}",
                later("circuit breakers land")
            ));
        }
        if self.max_idle_conns_per_host != 0 {
            err(
                "max_idle_conns_per_host: not supported: Pingora keeps idle upstream connections \
                 in one LRU shared by all backends; size it with max_idle_conns"
                    .to_string(),
            );
        }
        let (admin_ip, bind_ip) = (self.admin_address.ip(), self.bind_address);
        if self.port != 0
            && self.admin_address.port() == self.port
            && (admin_ip == bind_ip || admin_ip.is_unspecified() || bind_ip.is_unspecified())
        {
            err(format!(
                "admin_address: {} uses the traffic listener's port (port: {})",
                self.admin_address, self.port
            ));
        }
        self.pingora.check(&mut errors);
        self.check_backends(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::from_messages(errors))
        }
    }

    /// Pingora's [`ServerConf`]: the `pingora:` keys, plus what Fulcrum derives.
    ///
    /// - `threads`: as given, else [`std::thread::available_parallelism`].
    /// - `pid_file` / `upgrade_sock`: as given, else [`DEFAULT_PID_FILE`] /
    ///   [`DEFAULT_UPGRADE_SOCK`].
    /// - `grace_period_seconds`: `shutdown_timeout` rounded up to whole seconds, or 0 when
    ///   `graceful_shutdown` is false. Pingora sleeps this long after SIGTERM even when idle.
    /// - `graceful_shutdown_timeout_seconds` (the final runtime shutdown after the grace
    ///   period): the grace period capped at [`MAX_RUNTIME_SHUTDOWN_SECS`], or 0 when
    ///   `graceful_shutdown` is false. A stop thus takes at most `shutdown_timeout + 5s`.
    /// - `max_retries`: `max_retries + 1`. Pingora's cap counts attempts, so it never cuts
    ///   Fulcrum's own retry budget short.
    /// - `upstream_keepalive_pool_size`: `ceil(max_idle_conns / threads)`, so Pingora's global
    ///   pool (size × threads) holds `max_idle_conns` (rounded up to a multiple of `threads`).
    ///
    /// Only the `pingora:` section is checked here; call [`Self::validate`] for the rest.
    pub fn server_conf(&self) -> Result<ServerConf, ConfigError> {
        let mut errors = Vec::new();
        let Some(mut conf) = self.pingora.check(&mut errors) else {
            return Err(ConfigError::from_messages(errors));
        };
        if self.pingora.get("threads").is_none() {
            conf.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        if self.pingora.get("pid_file").is_none() {
            conf.pid_file = DEFAULT_PID_FILE.to_string();
        }
        if self.pingora.get("upgrade_sock").is_none() {
            conf.upgrade_sock = DEFAULT_UPGRADE_SOCK.to_string();
        }
        let grace = if self.graceful_shutdown {
            ceil_secs(self.shutdown_timeout)
        } else {
            0
        };
        conf.grace_period_seconds = Some(grace);
        conf.graceful_shutdown_timeout_seconds = Some(grace.min(MAX_RUNTIME_SHUTDOWN_SECS));
        conf.max_retries = self.max_retries as usize + 1;
        conf.upstream_keepalive_pool_size = self.max_idle_conns.div_ceil(conf.threads.max(1));
        Ok(conf)
    }

    fn parse(yaml: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str::<Option<Self>>(yaml)
            .map(Option::unwrap_or_default)
            .map_err(|e| ConfigError::new(describe_yaml_error(yaml, &e)))
    }

    /// Applies every override that is set; returns those applied and the errors.
    fn apply_env_collect(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Vec<&'static EnvOverride>, Vec<String>) {
        let (mut applied, mut errors) = (Vec::new(), Vec::new());
        for o in ENV_OVERRIDES {
            if let Some(value) = env(o.env) {
                match (o.apply)(self, &value) {
                    Ok(()) => applied.push(o),
                    Err(e) => errors.push(format!("{}: {e}", o.env)),
                }
            }
        }
        (applied, errors)
    }

    fn check_backends(&self, errors: &mut Vec<String>) {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, b) in self.backends.iter().enumerate() {
            let label = format!("backends[{i}] (id {:?})", b.id);
            match ids.get(b.id.as_str()) {
                Some(j) => errors.push(format!("{label}: id: duplicates backends[{j}]")),
                None => {
                    ids.insert(&b.id, i);
                }
            }
            match b.validate() {
                Err(e) => errors.push(format!("{label}: {e}")),
                Ok(addr) => match addrs.get(&addr) {
                    Some(&j) => errors.push(format!(
                        "{label}: url: {:?} is the same address ({addr}) as backends[{j}] (id {:?})",
                        b.url, self.backends[j].id
                    )),
                    None => {
                        addrs.insert(addr, i);
                    }
                },
            }
        }
    }
}

/// One `LB_*` environment override: the config key it sets, the variable, and the setter.
struct EnvOverride {
    key: &'static str,
    env: &'static str,
    apply: fn(&mut LoadBalancerConfig, &str) -> Result<(), String>,
}

macro_rules! env_override {
    ($key:literal, $env:literal, $($field:ident).+, $parse:expr) => {
        EnvOverride {
            key: $key,
            env: $env,
            apply: |c, v| {
                c.$($field).+ = ($parse)(v)?;
                Ok(())
            },
        }
    };
}

/// The one table of environment overrides: `LB_` + the key in upper case, `.` becoming `_`.
#[rustfmt::skip]
const ENV_OVERRIDES: &[EnvOverride] = &[
    env_override!("strategy",                           "LB_STRATEGY",                           strategy,                            env_strategy),
    env_override!("hash_key",                           "LB_HASH_KEY",                           hash_key,                            HashKey::from_str),
    env_override!("port",                               "LB_PORT",                               port,                                env_port),
    env_override!("bind_address",                       "LB_BIND_ADDRESS",                       bind_address,                        env_ip),
    env_override!("admin_address",                      "LB_ADMIN_ADDRESS",                      admin_address,                       env_socket_addr),
    env_override!("health_check_interval",              "LB_HEALTH_CHECK_INTERVAL",              health_check_interval,               env_duration),
    env_override!("health_check_timeout",               "LB_HEALTH_CHECK_TIMEOUT",               health_check_timeout,                env_duration),
    env_override!("health_check_path",                  "LB_HEALTH_CHECK_PATH",                  health_check_path,                   env_string),
    env_override!("healthy_threshold",                  "LB_HEALTHY_THRESHOLD",                  healthy_threshold,                   env_u32),
    env_override!("unhealthy_threshold",                "LB_UNHEALTHY_THRESHOLD",                unhealthy_threshold,                 env_u32),
    env_override!("max_retries",                        "LB_MAX_RETRIES",                        max_retries,                         env_u32),
    env_override!("retry_backoff",                      "LB_RETRY_BACKOFF",                      retry_backoff,                       env_duration),
    env_override!("enable_sticky_sessions",             "LB_ENABLE_STICKY_SESSIONS",             enable_sticky_sessions,              env_bool),
    env_override!("session_cookie_name",                "LB_SESSION_COOKIE_NAME",                session_cookie_name,                 env_string),
    env_override!("session_timeout",                    "LB_SESSION_TIMEOUT",                    session_timeout,                     env_duration),
    env_override!("enable_ssl",                         "LB_ENABLE_SSL",                         enable_ssl,                          env_bool),
    env_override!("ssl_cert_file",                      "LB_SSL_CERT_FILE",                      ssl_cert_file,                       env_path),
    env_override!("ssl_key_file",                       "LB_SSL_KEY_FILE",                       ssl_key_file,                        env_path),
    env_override!("request_timeout",                    "LB_REQUEST_TIMEOUT",                    request_timeout,                     env_duration),
    env_override!("max_idle_conns",                     "LB_MAX_IDLE_CONNS",                     max_idle_conns,                      env_usize),
    env_override!("max_idle_conns_per_host",            "LB_MAX_IDLE_CONNS_PER_HOST",            max_idle_conns_per_host,             env_usize),
    env_override!("circuit_breaker_enabled",            "LB_CIRCUIT_BREAKER_ENABLED",            circuit_breaker_enabled,             env_bool),
    env_override!("circuit_breaker.failure_threshold",  "LB_CIRCUIT_BREAKER_FAILURE_THRESHOLD",  circuit_breaker.failure_threshold,   env_u32),
    env_override!("circuit_breaker.recovery_threshold", "LB_CIRCUIT_BREAKER_RECOVERY_THRESHOLD", circuit_breaker.recovery_threshold,  env_u32),
    env_override!("circuit_breaker.timeout",            "LB_CIRCUIT_BREAKER_TIMEOUT",            circuit_breaker.timeout,             env_duration),
    env_override!("circuit_breaker.half_open_max_calls","LB_CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS",circuit_breaker.half_open_max_calls, env_u32),
    env_override!("metrics_enabled",                    "LB_METRICS_ENABLED",                    metrics_enabled,                     env_bool),
    env_override!("logging_enabled",                    "LB_LOGGING_ENABLED",                    logging_enabled,                     env_bool),
    env_override!("graceful_shutdown",                  "LB_GRACEFUL_SHUTDOWN",                  graceful_shutdown,                   env_bool),
    env_override!("shutdown_timeout",                   "LB_SHUTDOWN_TIMEOUT",                   shutdown_timeout,                    env_duration),
];

fn invalid(value: &str, expected: &str) -> String {
    format!("invalid value {value:?}: expected {expected}")
}

fn env_strategy(v: &str) -> Result<Strategy, String> {
    Strategy::from_str(v.trim()).map_err(|_| {
        let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
        invalid(v, &format!("one of {}", names.join(", ")))
    })
}

fn env_port(v: &str) -> Result<u16, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, "a port number 0-65535"))
}

fn env_ip(v: &str) -> Result<IpAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, "an IP address such as 0.0.0.0 or ::"))
}

fn env_socket_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, "an address with a port such as 127.0.0.1:9090"))
}

fn env_duration(v: &str) -> Result<Duration, String> {
    parse_duration(v.trim())
}

fn env_string(v: &str) -> Result<String, String> {
    Ok(v.to_string())
}

/// An empty value unsets the path.
fn env_path(v: &str) -> Result<Option<PathBuf>, String> {
    Ok((!v.is_empty()).then(|| PathBuf::from(v)))
}

fn env_u32(v: &str) -> Result<u32, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, &format!("a whole number 0-{}", u32::MAX)))
}

fn env_usize(v: &str) -> Result<usize, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, &format!("a whole number 0-{}", usize::MAX)))
}

fn env_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(v, "true or false (or 1/0, yes/no, on/off)")),
    }
}

/// Health-check paths are sent as the request target, so they must be an origin-form path.
fn check_health_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("must start with '/', got {path:?}"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain spaces or control characters: {path:?}"
        ));
    }
    http::uri::PathAndQuery::from_str(path)
        .map(|_| ())
        .map_err(|e| format!("not a valid request path {path:?}: {e}"))
}

/// RFC 6265 cookie-name = RFC 7230 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// serde_yaml reports unknown and duplicate top-level keys without the key in front and
/// sometimes without a position: lead with the key, like every other message, and find the
/// line when serde_yaml gives none.
fn describe_yaml_error(yaml: &str, e: &serde_yaml::Error) -> String {
    let mut msg = e.to_string();
    let mut at = String::new();
    if let Some(loc) = e.location() {
        at = format!(" at line {} column {}", loc.line(), loc.column());
        msg.truncate(msg.strip_suffix(at.as_str()).map_or(msg.len(), str::len));
    }
    for (prefix, what, nth) in [
        ("unknown field `", "unknown key", 0),
        ("duplicate field `", "duplicate key", 1),
    ] {
        let Some(rest) = msg.strip_prefix(prefix) else {
            continue;
        };
        let Some((key, tail)) = rest.split_once('`') else {
            continue;
        };
        // serde_yaml places a duplicate at the start of the mapping: search for it first.
        let found = || {
            top_level_key_lines(yaml, key)
                .nth(nth)
                .map(|n| format!(" at line {n}"))
        };
        let line = match (nth, at.is_empty()) {
            (0, false) => at,
            _ => found().unwrap_or(at),
        };
        let tail = tail.trim_start_matches(',').trim_start();
        return if tail.is_empty() {
            format!("{key}: {what}{line}")
        } else {
            format!("{key}: {what}{line}; {tail}")
        };
    }
    msg + &at
}

/// 1-based numbers of the lines where `key` starts a block-style top-level entry.
fn top_level_key_lines<'a>(yaml: &'a str, key: &'a str) -> impl Iterator<Item = usize> + 'a {
    yaml.lines().enumerate().filter_map(move |(i, line)| {
        let rest = [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
            .into_iter()
            .find_map(|k| line.strip_prefix(k.as_str()).map(str::to_string))?;
        rest.trim_start().starts_with(':').then_some(i + 1)
    })
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn deserialize_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct PortVisitor;
    impl Visitor<'_> for PortVisitor {
        type Value = u16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number 0-65535")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| {
                E::custom(format!("invalid value {v}: expected a port number 0-65535"))
            })
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| {
                E::custom(format!("invalid value {v}: expected a port number 0-65535"))
            })
        }
    }
    d.deserialize_any(PortVisitor)
}

/// `hash_key` as its string form (`client_ip`, `header:X-User-Id`, ...).
mod hash_key_serde {
    use super::*;

    pub fn serialize<S: serde::Serializer>(key: &HashKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashKey, D::Error> {
        // Errors raised inside the visitor get serde_yaml's key path and position.
        struct HashKeyVisitor;
        impl Visitor<'_> for HashKeyVisitor {
            type Value = HashKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client_ip, path, header:NAME or cookie:NAME")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HashKey, E> {
                HashKey::from_str(v).map_err(E::custom)
            }
        }
        d.deserialize_str(HashKeyVisitor)
    }
}

/// Serde support for [`Duration`] fields written as Go-style strings (`100ms`, `1m30s`): use
/// `#[serde(with = "fulcrum::config::serde_duration")]`. Bare numbers are rejected with a hint
/// to add a unit; durations serialise with [`format_duration`].
pub mod serde_duration {
    use super::*;

    /// Writes `d` as [`format_duration`] does.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads a duration string with [`parse_duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl DurationVisitor {
        fn bare<E: de::Error>(v: impl fmt::Display) -> E {
            E::custom(format!(
                "invalid duration {v}: add a unit, e.g. \"{v}s\" (units: ns, us, ms, s, m, h)"
            ))
        }
    }

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration with a unit, such as \"100ms\", \"30s\" or \"1m30s\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(Self::bare(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(Self::bare(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(Self::bare(v))
        }
    }
}

/// Parses a Go `time.ParseDuration` string: one or more `<number><unit>` pairs, numbers may
/// have a fraction, units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`: `100ms`, `1m30s`,
/// `1.5h`. A leading `+` is allowed. Negative durations and bare numbers (even `0`) are
/// errors. Fraction digits beyond nanosecond precision are truncated.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("invalid duration {s:?}: {why}");
    const UNITS: &str = "ns, us, ms, s, m, h";
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(bad(format!("expected a number with a unit ({UNITS})")));
    }
    if rest.starts_with('-') {
        return Err(bad("must not be negative".into()));
    }
    if rest.bytes().any(|b| b.is_ascii_digit())
        && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err(bad(format!(
            "add a unit, e.g. \"{rest}s\" (units: {UNITS})"
        )));
    }
    let mut total: u128 = 0;
    let too_large = || bad("too large".into());
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => a.split_at(a.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad(format!("expected a number at {rest:?}")));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => {
                return Err(bad(format!(
                    "missing unit after {:?} ({UNITS})",
                    &rest[..rest.len() - after.len()]
                )))
            }
            u => return Err(bad(format!("unknown unit {u:?}; expected one of {UNITS}"))),
        };
        let mut whole: u128 = 0;
        for b in int.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(b - b'0')))
                .ok_or_else(too_large)?;
        }
        // 18 fraction digits fit a u64; a nanosecond is at most the 12th digit of an hour.
        let frac = &frac[..frac.len().min(18)];
        let frac_num: u128 = frac.bytes().fold(0, |n, b| n * 10 + u128::from(b - b'0'));
        let frac_nanos = frac_num * scale / 10u128.pow(frac.len() as u32);
        total = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(too_large)?;
        rest = after;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| too_large())
}

/// Formats a duration the way [`parse_duration`] reads it, largest units first and zero parts
/// left out: `2h`, `1m30s`, `100ms`, `1s500ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn errors_of(r: Result<LoadBalancerConfig, ConfigError>) -> Vec<String> {
        match r {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.messages().to_vec(),
        }
    }

    fn assert_one_error_contains(what: &str, errors: &[String], parts: &[&str]) {
        assert!(
            errors.iter().any(|e| parts.iter().all(|p| e.contains(p))),
            "{what}: no error contains all of {parts:?}; got {errors:#?}"
        );
    }

    #[test]
    fn parses_durations() {
        let ms = Duration::from_millis;
        let ok: &[(&str, Duration)] = &[
            ("100ms", ms(100)),
            ("30s", Duration::from_secs(30)),
            ("2h", Duration::from_secs(7200)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_secs(5400)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1.s", Duration::from_secs(1)),
            ("+5s", Duration::from_secs(5)),
            ("0s", Duration::ZERO),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("10μs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1.0000000019s", Duration::from_nanos(1_000_000_001)),
            ("1s1s", Duration::from_secs(2)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "expected a number with a unit"),
            ("30", "add a unit, e.g. \"30s\""),
            ("1.5", "add a unit"),
            ("0", "add a unit"),
            ("5x", "unknown unit \"x\""),
            ("-1s", "must not be negative"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("1s2", "missing unit after \"2\""),
            ("1 s", "unknown unit \" s\""),
            ("1d", "unknown unit \"d\""),
            ("99999999999999999999999999h", "too large"),
            ("6000000h", "too large"),
        ];
        for (s, want) in bad {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
            assert!(err.starts_with(&format!("invalid duration {s:?}")), "{err}");
        }
    }

    #[test]
    fn formats_durations_and_reads_them_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::new(3723, 4_005_006), "1h2m3s4ms5us6ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want), Ok(d));
        }
    }

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
enable_sticky_sessions: false
session_cookie_name: MY_SESSION
session_timeout: 1h
enable_ssl: false
ssl_cert_file: null
ssl_key_file: null
request_timeout: 1m
max_idle_conns: 200
max_idle_conns_per_host: 0
circuit_breaker_enabled: false
circuit_breaker:
  failure_threshold: 10
  recovery_threshold: 5
  timeout: 1m
  half_open_max_calls: 2
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
            enable_sticky_sessions: false,
            session_cookie_name: "MY_SESSION".into(),
            session_timeout: Duration::from_secs(3600),
            enable_ssl: false,
            ssl_cert_file: None,
            ssl_key_file: None,
            request_timeout: Duration::from_secs(60),
            max_idle_conns: 200,
            max_idle_conns_per_host: 0,
            circuit_breaker_enabled: false,
            circuit_breaker: CircuitBreakerConfig {
                failure_threshold: 10,
                recovery_threshold: 5,
                timeout: Duration::from_secs(60),
                half_open_max_calls: 2,
            },
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

    #[test]
    fn parse_errors_name_the_key_and_position() {
        let backends = "backends:\n  - {id: a, url: \"http://127.0.0.1:1\"}\n";
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                "port: 1\nbogus: 1\n".into(),
                vec!["bogus: unknown key at line 2", "strategy"],
            ),
            (
                "bogus: 1\n".into(),
                vec!["bogus: unknown key at line 1 column 1; expected one of `strategy`"],
            ),
            (
                "# c\n\"bogus\" : 1\n".into(),
                vec!["bogus: unknown key at line 2"],
            ),
            (
                "port: 1\nport: 2\n".into(),
                vec!["port: duplicate key at line 2"],
            ),
            (
                format!("{backends}  - id: b\n    url: \"http://127.0.0.1:2\"\n    wieght: 2\n"),
                vec!["backends[1]", "unknown field `wieght`", "line 5"],
            ),
            (
                "circuit_breaker:\n  timeout: 1s\n  treshold: 1\n".into(),
                vec!["circuit_breaker", "unknown field `treshold`", "line 3"],
            ),
            (
                "strategy: fastest\n".into(),
                vec![
                    "strategy: unknown variant `fastest`",
                    "round_robin",
                    "power_of_two_choices",
                ],
            ),
            (
                "health_check_interval: 30\n".into(),
                vec![
                    "health_check_interval: invalid duration 30: add a unit",
                    "line 1",
                ],
            ),
            (
                "retry_backoff: 5x\n".into(),
                vec!["retry_backoff: invalid duration \"5x\": unknown unit \"x\""],
            ),
            (
                "circuit_breaker:\n  timeout: -1s\n".into(),
                vec!["circuit_breaker.timeout: invalid duration \"-1s\": must not be negative"],
            ),
            (
                "port: 70000\n".into(),
                vec!["port: invalid value 70000: expected a port number 0-65535"],
            ),
            ("port: -1\n".into(), vec!["port: invalid value -1"]),
            ("port: \"80\"\n".into(), vec!["port: invalid type: string"]),
            (
                "bind_address: 1.2.3\n".into(),
                vec!["bind_address: invalid IP address syntax"],
            ),
            (
                "admin_address: 127.0.0.1\n".into(),
                vec!["admin_address: invalid socket address syntax"],
            ),
            (
                "hash_key: ip\n".into(),
                vec!["hash_key: invalid hash key \"ip\"", "client_ip"],
            ),
            (
                "pingora: [1]\n".into(),
                vec!["pingora: invalid type: sequence"],
            ),
            ("port: 1\nstrategy: \"open\n".into(), vec!["line 2"]),
        ];
        for (yaml, parts) in cases {
            let errors = errors_of(LoadBalancerConfig::from_yaml_str(&yaml));
            assert_one_error_contains(&yaml, &errors, &parts);
        }
    }

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
                vec!["enable_ssl: not supported yet (TLS termination lands in a later release)"],
            ),
            (
                "ssl_cert_file: /etc/c.pem\n".into(),
                vec!["ssl_cert_file: not supported yet (TLS termination lands in a later release)"],
            ),
            ("ssl_key_file: /etc/k.pem\n".into(), vec!["ssl_key_file: not supported yet"]),
            (
                "enable_sticky_sessions: true\n".into(),
                vec!["enable_sticky_sessions: not supported yet (sticky sessions land in a later release)"],
            ),
            (
                "circuit_breaker_enabled: true\n".into(),
                vec!["circuit_breaker_enabled: not supported yet (circuit breakers land in a later release)"],
            ),
            (
                "max_idle_conns_per_host: 5\n".into(),
                vec!["max_idle_conns_per_host: not supported: Pingora keeps idle upstream connections in one LRU shared by all backends; size it with max_idle_conns"],
            ),
            ("admin_address: 0.0.0.0:8080\n".into(), vec!["admin_address: 0.0.0.0:8080 uses the traffic listener's port"]),
            (
                "backends:\n  - {id: web1, url: \"http://127.0.0.1:1\"}\n  - {id: web1, url: \"http://127.0.0.1:2\"}\n"
                    .into(),
                vec!["backends[1] (id \"web1\"): id: duplicates backends[0]"],
            ),
            (
                two("http://127.0.0.1:8001", "http://127.0.0.1:8001/"),
                vec!["backends[1] (id \"web2\"): url:", "same address (127.0.0.1:8001) as backends[0] (id \"web1\")"],
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

    /// Top-level keys and `circuit_breaker.*` keys that hold a scalar.
    fn scalar_keys(config: &LoadBalancerConfig) -> BTreeMap<String, Value> {
        let Value::Mapping(top) = serde_yaml::to_value(config).unwrap() else {
            panic!("config does not serialise to a mapping");
        };
        let mut keys = BTreeMap::new();
        for (k, v) in top {
            let k = k.as_str().unwrap().to_string();
            match v {
                // Pass-through and list sections have no single-value override.
                _ if k == "pingora" || k == "backends" => {}
                Value::Mapping(inner) => {
                    for (ik, iv) in inner {
                        keys.insert(format!("{k}.{}", ik.as_str().unwrap()), iv);
                    }
                }
                v => {
                    keys.insert(k, v);
                }
            }
        }
        keys
    }

    #[test]
    fn every_scalar_key_has_an_env_override() {
        let keys = scalar_keys(&LoadBalancerConfig::default());
        let table: Vec<&str> = ENV_OVERRIDES.iter().map(|o| o.key).collect();
        let missing: Vec<&String> = keys
            .keys()
            .filter(|k| !table.contains(&k.as_str()))
            .collect();
        assert!(missing.is_empty(), "keys without LB_ override: {missing:?}");
        let stale: Vec<&&str> = table.iter().filter(|k| !keys.contains_key(**k)).collect();
        assert!(stale.is_empty(), "overrides for unknown keys: {stale:?}");
        for o in ENV_OVERRIDES {
            assert_eq!(
                o.env,
                format!("LB_{}", o.key.to_uppercase().replace('.', "_"))
            );
        }
    }

    #[test]
    fn each_env_setter_writes_the_key_it_names() {
        let samples: HashMap<&str, &str> = [
            ("strategy", "least_connections"),
            ("hash_key", "cookie:sid"),
            ("port", "9999"),
            ("bind_address", "127.0.0.1"),
            ("admin_address", "0.0.0.0:9191"),
            ("health_check_interval", "10s"),
            ("health_check_timeout", "1s"),
            ("health_check_path", "/ready"),
            ("healthy_threshold", "5"),
            ("unhealthy_threshold", "6"),
            ("max_retries", "7"),
            ("retry_backoff", "250ms"),
            ("enable_sticky_sessions", "TRUE"),
            ("session_cookie_name", "SID"),
            ("session_timeout", "1h"),
            ("enable_ssl", "yes"),
            ("ssl_cert_file", "/etc/cert.pem"),
            ("ssl_key_file", "/etc/key.pem"),
            ("request_timeout", "1m"),
            ("max_idle_conns", "64"),
            ("max_idle_conns_per_host", "8"),
            ("circuit_breaker_enabled", "1"),
            ("circuit_breaker.failure_threshold", "9"),
            ("circuit_breaker.recovery_threshold", "8"),
            ("circuit_breaker.timeout", "2m"),
            ("circuit_breaker.half_open_max_calls", "4"),
            ("metrics_enabled", "false"),
            ("logging_enabled", "off"),
            ("graceful_shutdown", "No"),
            ("shutdown_timeout", "1m30s"),
        ]
        .into_iter()
        .collect();
        let defaults = scalar_keys(&LoadBalancerConfig::default());
        for o in ENV_OVERRIDES {
            let sample = samples
                .get(o.key)
                .unwrap_or_else(|| panic!("no sample for {}", o.key));
            let mut config = LoadBalancerConfig::default();
            config
                .apply_env(&env_from(&[(o.env, sample)]))
                .unwrap_or_else(|e| panic!("{}={sample}: {e}", o.env));
            let changed: Vec<String> = scalar_keys(&config)
                .into_iter()
                .filter(|(k, v)| defaults.get(k) != Some(v))
                .map(|(k, _)| k)
                .collect();
            assert_eq!(changed, vec![o.key.to_string()], "{}={sample}", o.env);
        }
    }

    #[test]
    fn env_overrides_apply_and_beat_yaml() {
        let yaml =
            "port: 7000\nstrategy: random\nhealth_check_path: /yaml\nmetrics_enabled: true\n";
        let env = env_from(&[
            ("LB_PORT", "7001"),
            ("LB_STRATEGY", "ip_hash"),
            ("LB_HEALTH_CHECK_PATH", "/env"),
            ("LB_METRICS_ENABLED", "false"),
            ("LB_RETRY_BACKOFF", "1.5s"),
            ("LB_CIRCUIT_BREAKER_TIMEOUT", "45s"),
            ("LB_SSL_CERT_FILE", ""),
            ("LB_HASH_KEY", "path"),
            ("UNRELATED", "x"),
        ]);
        let c = LoadBalancerConfig::from_yaml_str_with_env(yaml, &env).unwrap();
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
    }

    #[test]
    fn bad_env_values_name_the_variable_and_value() {
        let cases = [
            (
                "LB_PORT",
                "abc",
                "LB_PORT: invalid value \"abc\": expected a port number 0-65535",
            ),
            ("LB_PORT", "65536", "LB_PORT: invalid value \"65536\""),
            (
                "LB_STRATEGY",
                "fast",
                "LB_STRATEGY: invalid value \"fast\": expected one of round_robin,",
            ),
            (
                "LB_METRICS_ENABLED",
                "maybe",
                "LB_METRICS_ENABLED: invalid value \"maybe\": expected true or false",
            ),
            (
                "LB_SHUTDOWN_TIMEOUT",
                "30",
                "LB_SHUTDOWN_TIMEOUT: invalid duration \"30\": add a unit",
            ),
            (
                "LB_MAX_RETRIES",
                "-1",
                "LB_MAX_RETRIES: invalid value \"-1\": expected a whole number",
            ),
            (
                "LB_BIND_ADDRESS",
                "localhost",
                "LB_BIND_ADDRESS: invalid value \"localhost\"",
            ),
            (
                "LB_ADMIN_ADDRESS",
                "127.0.0.1",
                "LB_ADMIN_ADDRESS: invalid value \"127.0.0.1\"",
            ),
            (
                "LB_HASH_KEY",
                "header:",
                "LB_HASH_KEY: invalid hash key \"header:\"",
            ),
        ];
        for (var, value, want) in cases {
            let errors = errors_of(LoadBalancerConfig::from_yaml_str_with_env(
                "",
                &env_from(&[(var, value)]),
            ));
            assert_one_error_contains(var, &errors, &[want]);
        }
        // All bad variables are reported, and the good ones still applied.
        let mut c = LoadBalancerConfig::default();
        let env = env_from(&[
            ("LB_PORT", "x"),
            ("LB_MAX_RETRIES", "y"),
            ("LB_HEALTHY_THRESHOLD", "4"),
        ]);
        let e = c.apply_env(&env).unwrap_err();
        assert_eq!(e.messages().len(), 2, "{e}");
        assert_eq!(c.healthy_threshold, 4);
    }

    #[test]
    fn validation_errors_name_the_variable_that_set_the_value() {
        let env = env_from(&[("LB_HEALTH_CHECK_PATH", "ready"), ("LB_ENABLE_SSL", "true")]);
        let errors = errors_of(LoadBalancerConfig::from_yaml_str_with_env(
            "max_retries: 11",
            &env,
        ));
        assert_one_error_contains(
            "path",
            &errors,
            &["health_check_path (from LB_HEALTH_CHECK_PATH): must start with '/'"],
        );
        assert_one_error_contains(
            "ssl",
            &errors,
            &["enable_ssl (from LB_ENABLE_SSL): not supported yet"],
        );
        assert_one_error_contains("yaml", &errors, &["max_retries: must be at most 10"]);
    }

    fn cpus() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    #[test]
    fn server_conf_derives_pingora_settings() {
        let c = LoadBalancerConfig::default();
        let conf = c.server_conf().unwrap();
        assert_eq!(conf.threads, cpus());
        assert_eq!(conf.grace_period_seconds, Some(30));
        assert_eq!(conf.graceful_shutdown_timeout_seconds, Some(5));
        assert_eq!(conf.max_retries, 4);
        assert_eq!(
            conf.upstream_keepalive_pool_size,
            1024usize.div_ceil(cpus())
        );
        assert_eq!(conf.pid_file, DEFAULT_PID_FILE);
        assert_eq!(conf.upgrade_sock, DEFAULT_UPGRADE_SOCK);

        let cases = [
            // (graceful, shutdown_timeout, max_retries, max_idle_conns, threads) => (grace, final, retries, pool)
            ((true, "2s", 0, 1000, 3), (2, 2, 1, 334)),
            ((true, "1500ms", 10, 0, 1), (2, 2, 11, 0)),
            ((true, "0s", 3, 8, 4), (0, 0, 4, 2)),
            ((true, "5m", 3, 1024, 16), (300, 5, 4, 64)),
            ((false, "5m", 3, 7, 2), (0, 0, 4, 4)),
        ];
        for ((graceful, timeout, retries, idle, threads), want) in cases {
            let mut c = LoadBalancerConfig {
                graceful_shutdown: graceful,
                shutdown_timeout: parse_duration(timeout).unwrap(),
                max_retries: retries,
                max_idle_conns: idle,
                ..Default::default()
            };
            c.pingora.set("threads", threads);
            let conf = c.server_conf().unwrap();
            let got = (
                conf.grace_period_seconds.unwrap(),
                conf.graceful_shutdown_timeout_seconds.unwrap(),
                conf.max_retries,
                conf.upstream_keepalive_pool_size,
            );
            assert_eq!(got, want, "{graceful} {timeout} {retries} {idle} {threads}");
            assert_eq!(conf.threads, threads);
        }
    }

    #[test]
    fn server_conf_passes_pingora_keys_through() {
        let yaml = "pingora:\n  threads: 3\n  pid_file: /run/f.pid\n  upgrade_sock: /run/f.sock\n  \
                    daemon: true\n  work_stealing: false\n  error_log: /var/log/f.log\n  user: nobody\n";
        let conf = LoadBalancerConfig::from_yaml_str(yaml)
            .unwrap()
            .server_conf()
            .unwrap();
        assert_eq!(conf.threads, 3);
        assert_eq!(conf.pid_file, "/run/f.pid");
        assert_eq!(conf.upgrade_sock, "/run/f.sock");
        assert!(conf.daemon);
        assert!(!conf.work_stealing);
        assert_eq!(conf.error_log.as_deref(), Some("/var/log/f.log"));
        assert_eq!(conf.user.as_deref(), Some("nobody"));
        // Keys not given keep Pingora's defaults.
        assert_eq!(
            conf.listener_tasks_per_fd,
            ServerConf::default().listener_tasks_per_fd
        );

        let mut bad = LoadBalancerConfig::default();
        bad.pingora
            .set("pid_file", "rel.pid")
            .set("grace_period_seconds", 0);
        let e = bad.server_conf().unwrap_err();
        assert_one_error_contains(
            "server_conf",
            e.messages(),
            &["pingora.grace_period_seconds"],
        );
    }

    #[test]
    fn pingora_known_keys_come_from_server_conf() {
        let keys = PingoraConfig::known_keys();
        for k in [
            "threads",
            "pid_file",
            "upgrade_sock",
            "daemon",
            "version",
            "work_stealing",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        for (k, _) in PingoraConfig::DERIVED_KEYS {
            assert!(
                keys.iter().any(|x| x == k),
                "derived key {k} is not a ServerConf key"
            );
        }
    }

    const EXAMPLE: &str = include_str!("../conf/fulcrum.yaml");
    const REFERENCE: &str = include_str!("../conf/README-config.md");

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
        let mut keys: Vec<String> = scalar_keys(&LoadBalancerConfig::default())
            .into_keys()
            .collect();
        keys.extend(["pingora".to_string(), "backends".to_string()]);
        keys.extend(
            ["threads", "pid_file", "upgrade_sock", "daemon"].map(|k| format!("pingora.{k}")),
        );
        for key in &keys {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                EXAMPLE.lines().any(|l| l
                    .trim_start()
                    .trim_start_matches("# ")
                    .starts_with(&format!("{leaf}:"))),
                "conf/fulcrum.yaml does not show {key}"
            );
            assert!(
                REFERENCE.contains(&format!("| `{key}` |")),
                "conf/README-config.md has no row for {key}"
            );
        }
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
    fn edit_distance_counts_edits() {
        let cases = [
            ("", "", 0),
            ("thread", "threads", 1),
            ("pid_fiel", "pid_file", 2),
            ("abc", "", 3),
            ("kitten", "sitting", 3),
        ];
        for (a, b, want) in cases {
            assert_eq!(edit_distance(a, b), want, "{a} {b}");
        }
    }

    #[test]
    fn error_display_lists_every_message() {
        let e = ConfigError::from_messages(vec!["a: x".into(), "b: y".into()]);
        assert_eq!(e.to_string(), "2 configuration errors:\n  a: x\n  b: y");
        assert_eq!(ConfigError::new("a: x").to_string(), "a: x");
    }
}
