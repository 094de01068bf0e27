//! `LB_*` environment overrides: [`ENV_OVERRIDES`], the one table mapping each config key to
//! its variable (`LB_` + the key in upper case, `.` becoming `_`) and its parser, so YAML keys
//! and variable names cannot drift; [`LoadBalancerConfig::apply_env`]; and naming the variable
//! in validation errors about values it set.

use std::str::FromStr;

use super::env_values::*;
use super::{ConfigError, LoadBalancerConfig};
use crate::balance::HashKey;

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
    env_override!("admin_token",                        "LB_ADMIN_TOKEN",                        admin_token,                         env_secret),
    env_override!("admin_token_file",                   "LB_ADMIN_TOKEN_FILE",                   admin_token_file,                    env_path),
    env_override!("health_check_interval",              "LB_HEALTH_CHECK_INTERVAL",              health_check_interval,               env_duration),
    env_override!("health_check_timeout",               "LB_HEALTH_CHECK_TIMEOUT",               health_check_timeout,                env_duration),
    env_override!("health_check_path",                  "LB_HEALTH_CHECK_PATH",                  health_check_path,                   env_string),
    env_override!("healthy_threshold",                  "LB_HEALTHY_THRESHOLD",                  healthy_threshold,                   env_u32),
    env_override!("unhealthy_threshold",                "LB_UNHEALTHY_THRESHOLD",                unhealthy_threshold,                 env_u32),
    env_override!("max_retries",                        "LB_MAX_RETRIES",                        max_retries,                         env_u32),
    env_override!("retry_backoff",                      "LB_RETRY_BACKOFF",                      retry_backoff,                       env_duration),
    env_override!("retry_backoff_max",                  "LB_RETRY_BACKOFF_MAX",                  retry_backoff_max,                   env_duration),
    env_override!("retry_budget_percent",               "LB_RETRY_BUDGET_PERCENT",               retry_budget_percent,                env_u32),
    env_override!("enable_sticky_sessions",             "LB_ENABLE_STICKY_SESSIONS",             enable_sticky_sessions,              env_bool),
    env_override!("session_cookie_name",                "LB_SESSION_COOKIE_NAME",                session_cookie_name,                 env_string),
    env_override!("session_timeout",                    "LB_SESSION_TIMEOUT",                    session_timeout,                     env_duration),
    env_override!("enable_ssl",                         "LB_ENABLE_SSL",                         enable_ssl,                          env_bool),
    env_override!("ssl_cert_file",                      "LB_SSL_CERT_FILE",                      ssl_cert_file,                       env_path),
    env_override!("ssl_key_file",                       "LB_SSL_KEY_FILE",                       ssl_key_file,                        env_path),
    env_override!("request_timeout",                    "LB_REQUEST_TIMEOUT",                    request_timeout,                     env_duration),
    env_override!("connect_timeout",                    "LB_CONNECT_TIMEOUT",                    connect_timeout,                     env_duration),
    env_override!("client_header_timeout",              "LB_CLIENT_HEADER_TIMEOUT",              client_header_timeout,               env_duration),
    env_override!("client_idle_timeout",                "LB_CLIENT_IDLE_TIMEOUT",                client_idle_timeout,                 env_duration),
    env_override!("max_request_header_size",            "LB_MAX_REQUEST_HEADER_SIZE",            max_request_header_size,             env_usize),
    env_override!("underscores_in_headers",             "LB_UNDERSCORES_IN_HEADERS",             underscores_in_headers,              env_bool),
    env_override!("max_idle_conns",                     "LB_MAX_IDLE_CONNS",                     max_idle_conns,                      env_usize),
    env_override!("max_idle_conns_per_host",            "LB_MAX_IDLE_CONNS_PER_HOST",            max_idle_conns_per_host,             env_usize),
    env_override!("circuit_breaker_enabled",            "LB_CIRCUIT_BREAKER_ENABLED",            circuit_breaker_enabled,             env_bool),
    env_override!("circuit_breaker.failure_threshold",  "LB_CIRCUIT_BREAKER_FAILURE_THRESHOLD",  circuit_breaker.failure_threshold,   env_u32),
    env_override!("circuit_breaker.recovery_threshold", "LB_CIRCUIT_BREAKER_RECOVERY_THRESHOLD", circuit_breaker.recovery_threshold,  env_u32),
    env_override!("circuit_breaker.timeout",            "LB_CIRCUIT_BREAKER_TIMEOUT",            circuit_breaker.timeout,             env_duration),
    env_override!("circuit_breaker.half_open_max_calls","LB_CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS",circuit_breaker.half_open_max_calls, env_u32),
    env_override!("circuit_breaker.failure_status_codes","LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES",circuit_breaker.failure_status_codes, env_status_codes),
    EnvOverride { key: "rate_limit.requests_per_second", env: "LB_RATE_LIMIT_REQUESTS_PER_SECOND", apply: env_rate_limit_rps },
    EnvOverride { key: "rate_limit.burst",               env: "LB_RATE_LIMIT_BURST",               apply: env_rate_limit_burst },
    env_override!("trusted_proxies",                    "LB_TRUSTED_PROXIES",                    trusted_proxies,                     env_cidrs),
    env_override!("metrics_enabled",                    "LB_METRICS_ENABLED",                    metrics_enabled,                     env_bool),
    env_override!("logging_enabled",                    "LB_LOGGING_ENABLED",                    logging_enabled,                     env_bool),
    env_override!("access_log",                         "LB_ACCESS_LOG",                         access_log,                          env_path),
    env_override!("graceful_shutdown",                  "LB_GRACEFUL_SHUTDOWN",                  graceful_shutdown,                   env_bool),
    env_override!("shutdown_timeout",                   "LB_SHUTDOWN_TIMEOUT",                   shutdown_timeout,                    env_duration),
];

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::balance::Strategy;
    use crate::client::Cidr;
    use crate::config::testutil::{
        assert_one_error_contains, env_from, errors_of, every_key_config, scalar_keys,
    };

    #[test]
    fn every_scalar_key_has_an_env_override() {
        let keys = scalar_keys(&every_key_config());
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
            ("admin_token", "0123456789abcdef"),
            ("admin_token_file", "/run/credentials/fulcrum/admin-token"),
            ("health_check_interval", "10s"),
            ("health_check_timeout", "1s"),
            ("health_check_path", "/ready"),
            ("healthy_threshold", "5"),
            ("unhealthy_threshold", "6"),
            ("max_retries", "7"),
            ("retry_backoff", "250ms"),
            ("retry_backoff_max", "10s"),
            ("retry_budget_percent", "50"),
            ("enable_sticky_sessions", "TRUE"),
            ("session_cookie_name", "SID"),
            ("session_timeout", "1h"),
            ("enable_ssl", "yes"),
            ("ssl_cert_file", "/etc/cert.pem"),
            ("ssl_key_file", "/etc/key.pem"),
            ("request_timeout", "1m"),
            ("connect_timeout", "1s"),
            ("client_header_timeout", "3s"),
            ("client_idle_timeout", "5m"),
            ("max_request_header_size", "65536"),
            ("underscores_in_headers", "true"),
            ("max_idle_conns", "64"),
            ("max_idle_conns_per_host", "8"),
            ("circuit_breaker_enabled", "off"),
            ("circuit_breaker.failure_threshold", "9"),
            ("circuit_breaker.recovery_threshold", "8"),
            ("circuit_breaker.timeout", "2m"),
            ("circuit_breaker.half_open_max_calls", "4"),
            ("circuit_breaker.failure_status_codes", "502, 429"),
            ("rate_limit.requests_per_second", "7"),
            ("rate_limit.burst", "9"),
            ("trusted_proxies", "10.0.0.0/8,::1"),
            ("metrics_enabled", "false"),
            ("logging_enabled", "off"),
            ("access_log", "/var/log/fulcrum/access.log"),
            ("graceful_shutdown", "No"),
            ("shutdown_timeout", "1m30s"),
        ]
        .into_iter()
        .collect();
        let defaults = scalar_keys(&every_key_config());
        for o in ENV_OVERRIDES {
            let sample = samples
                .get(o.key)
                .unwrap_or_else(|| panic!("no sample for {}", o.key));
            let mut config = every_key_config();
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

    #[test]
    fn env_sets_the_resilience_keys() {
        let env = env_from(&[
            ("LB_CONNECT_TIMEOUT", "750ms"),
            ("LB_RETRY_BACKOFF_MAX", "3s"),
            ("LB_RETRY_BUDGET_PERCENT", "35"),
            ("LB_CIRCUIT_BREAKER_ENABLED", "false"),
            ("LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES", " 500 ,503"),
            ("LB_CLIENT_HEADER_TIMEOUT", "4s"),
            ("LB_CLIENT_IDLE_TIMEOUT", "90s"),
            ("LB_MAX_REQUEST_HEADER_SIZE", "8192"),
            ("LB_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1 ,fd00::/8"),
        ]);
        let c = LoadBalancerConfig::from_yaml_str_with_env("", &env).unwrap();
        assert_eq!(c.connect_timeout, Duration::from_millis(750));
        assert_eq!(c.retry_backoff_max, Duration::from_secs(3));
        assert_eq!(c.retry_budget_percent, 35);
        assert!(!c.circuit_breaker_enabled);
        assert_eq!(c.circuit_breaker.failure_status_codes, [500, 503]);
        assert_eq!(c.client_header_timeout, Duration::from_secs(4));
        assert_eq!(c.client_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.max_request_header_size, 8192);
        let nets: Vec<Cidr> = ["10.0.0.0/8", "192.168.1.1/32", "fd00::/8"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(c.trusted_proxies, nets);

        // An empty list variable empties the list from the file.
        let yaml =
            "trusted_proxies: [10.0.0.0/8]\ncircuit_breaker: {failure_status_codes: [500]}\n";
        let env = env_from(&[
            ("LB_TRUSTED_PROXIES", ""),
            ("LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES", " "),
        ]);
        let c = LoadBalancerConfig::from_yaml_str_with_env(yaml, &env).unwrap();
        assert!(c.trusted_proxies.is_empty());
        assert!(c.circuit_breaker.failure_status_codes.is_empty());
    }

    #[test]
    fn resilience_validation_errors_name_the_variable() {
        let env = env_from(&[
            ("LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES", "500,700"),
            ("LB_RETRY_BUDGET_PERCENT", "150"),
            ("LB_RATE_LIMIT_REQUESTS_PER_SECOND", "10"),
            ("LB_RATE_LIMIT_BURST", "0"),
            ("LB_CONNECT_TIMEOUT", "0s"),
            ("LB_RETRY_BACKOFF_MAX", "10ms"),
        ]);
        let errors = errors_of(LoadBalancerConfig::from_yaml_str_with_env("", &env));
        for want in [
            "circuit_breaker.failure_status_codes[1] (from LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES): \
             must be an HTTP status code 100-599, got 700",
            "retry_budget_percent (from LB_RETRY_BUDGET_PERCENT): must be at most 100, got 150",
            "rate_limit.burst (from LB_RATE_LIMIT_BURST): must be at least 1",
            "connect_timeout (from LB_CONNECT_TIMEOUT): must be greater than 0s",
            "retry_backoff_max (from LB_RETRY_BACKOFF_MAX): 10ms is smaller than retry_backoff (100ms)",
        ] {
            assert_one_error_contains(want, &errors, &[want]);
        }
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }
}
