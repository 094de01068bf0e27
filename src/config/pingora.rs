//! The `pingora:` section ([`PingoraConfig`], Pingora `ServerConf` keys passed through) and
//! [`LoadBalancerConfig::server_conf`], which turns it plus Fulcrum's own settings into the
//! [`ServerConf`] Pingora runs with.
//!
//! Pass-through keys are checked one by one (unknown keys get a "did you mean"), and the four
//! keys Fulcrum derives itself are refused with a pointer to the Fulcrum key to set instead.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml::{Mapping, Value};

use super::de::null_as_default;
use super::{ConfigError, LoadBalancerConfig};

/// Upper bound of Pingora's `graceful_shutdown_timeout_seconds` derived from `shutdown_timeout`
/// (Pingora's own default).
pub const MAX_RUNTIME_SHUTDOWN_SECS: u64 = 5;

/// Pingora pid file used when `pingora.pid_file` is not set (Pingora's own default,
/// `/tmp/pingora.pid`, would clash with other Pingora programs on the host).
pub const DEFAULT_PID_FILE: &str = "/tmp/fulcrum.pid";

/// Pingora upgrade socket used when `pingora.upgrade_sock` is not set.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/fulcrum_upgrade.sock";

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
    pub(super) fn check(&self, errors: &mut Vec<String>) -> Option<ServerConf> {
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
                let hint = match valid.iter().find(|k| strsim::levenshtein(k, key) <= 2) {
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

impl LoadBalancerConfig {
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
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_duration;
    use crate::config::testutil::assert_one_error_contains;

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
}
