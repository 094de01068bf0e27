//! `LB_*` environment overrides: [`ENV_OVERRIDES`], the one table mapping each config key to
//! its variable (`LB_` + the key in upper case, `.` becoming `_`) and its parser, so YAML keys
//! and variable names cannot drift; [`LoadBalancerConfig::apply_env`]; and naming the variable
//! in validation errors about values it set.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{parse_duration, ConfigError, LoadBalancerConfig};
use crate::balance::{HashKey, Strategy};

impl LoadBalancerConfig {
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

    /// Applies every override that is set; returns those applied and the errors.
    pub(super) fn apply_env_collect(
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
}

/// Rewrites a validation message about a key set from the environment to name the variable:
/// `port: ...` becomes `port (from LB_PORT): ...`, and `a.b[2]: ...` becomes
/// `a.b[2] (from LB_A_B): ...`.
pub(super) fn name_env_source(applied: &[&EnvOverride], message: String) -> String {
    for o in applied {
        let Some(rest) = message.strip_prefix(o.key) else {
            continue;
        };
        if !(rest.starts_with(':') || rest.starts_with('[')) {
            continue;
        }
        if let Some(colon) = rest.find(':') {
            let (index, tail) = rest.split_at(colon);
            return format!("{}{index} (from {}){tail}", o.key, o.env);
        }
    }
    message
}

/// Whether `name` is one of Fulcrum's variables.
pub(super) fn is_override(name: &str) -> bool {
    ENV_OVERRIDES.iter().any(|o| o.env == name)
}

/// One `LB_*` environment override: the config key it sets, the variable, and the setter.
pub(super) struct EnvOverride {
    pub(super) key: &'static str,
    pub(super) env: &'static str,
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
pub(super) const ENV_OVERRIDES: &[EnvOverride] = &[
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::testutil::{assert_one_error_contains, env_from, errors_of, scalar_keys};

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
}
