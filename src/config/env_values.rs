//! Parsing `LB_*` values: one parser per value type, used by the table in `env`. Errors say
//! what was expected (`invalid value "abc": expected a port number 0-65535`); the caller puts the
//! variable's name in front. Lists are comma-separated and an empty value is an empty list.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{parse_duration, LoadBalancerConfig, RateLimitConfig, Secret};
use crate::balance::Strategy;
use crate::client::Cidr;

pub(super) fn invalid(value: &str, expected: &str) -> String {
    format!("invalid value {value:?}: expected {expected}")
}

pub(super) fn env_strategy(v: &str) -> Result<Strategy, String> {
    Strategy::from_str(v.trim()).map_err(|_| {
        let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
        invalid(v, &format!("one of {}", names.join(", ")))
    })
}

pub(super) fn env_port(v: &str) -> Result<u16, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, "a port number 0-65535"))
}

pub(super) fn env_ip(v: &str) -> Result<IpAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, "an IP address such as 0.0.0.0 or ::"))
}

pub(super) fn env_socket_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, "an address with a port such as 127.0.0.1:9090"))
}

pub(super) fn env_duration(v: &str) -> Result<Duration, String> {
    parse_duration(v.trim())
}

pub(super) fn env_string(v: &str) -> Result<String, String> {
    Ok(v.to_string())
}

/// An empty value unsets the path.
pub(super) fn env_path(v: &str) -> Result<Option<PathBuf>, String> {
    Ok((!v.is_empty()).then(|| PathBuf::from(v)))
}

/// An empty value unsets the secret. Never fails, so the value never reaches a message.
pub(super) fn env_secret(v: &str) -> Result<Option<Secret>, String> {
    Ok((!v.is_empty()).then(|| Secret::new(v)))
}

pub(super) fn env_u32(v: &str) -> Result<u32, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, &format!("a whole number 0-{}", u32::MAX)))
}

pub(super) fn env_usize(v: &str) -> Result<usize, String> {
    v.trim()
        .parse()
        .map_err(|_| invalid(v, &format!("a whole number 0-{}", usize::MAX)))
}

/// A comma-separated list of status codes (`500,502,503`); empty is an empty list. The range
/// is checked by validation, which names the entry.
pub(super) fn env_status_codes(v: &str) -> Result<Vec<u16>, String> {
    env_list(v, |item| {
        item.parse::<u16>().map_err(|_| {
            invalid(
                v,
                "a comma-separated list of status codes such as 500,502,503",
            )
        })
    })
}

/// A comma-separated list of networks (`10.0.0.0/8, ::1`); empty is an empty list.
pub(super) fn env_cidrs(v: &str) -> Result<Vec<Cidr>, String> {
    let mut i = 0;
    env_list(v, |item| {
        let entry = Cidr::from_str(item).map_err(|e| format!("trusted_proxies[{i}]: {e}"));
        i += 1;
        entry
    })
}

/// Splits on commas and trims; an empty (or all-blank) value is an empty list.
pub(super) fn env_list<T>(
    v: &str,
    parse: impl FnMut(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    if v.trim().is_empty() {
        return Ok(Vec::new());
    }
    v.split(',').map(str::trim).map(parse).collect()
}

/// Sets `rate_limit.requests_per_second`. When rate limiting is off this turns it on, with
/// `burst` equal to the rate (the YAML default); when it is on, `burst` is left as it is. An
/// empty value turns rate limiting off.
pub(super) fn env_rate_limit_rps(c: &mut LoadBalancerConfig, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        c.rate_limit = None;
        return Ok(());
    }
    let rps = env_u32(v)?;
    match &mut c.rate_limit {
        Some(r) => r.requests_per_second = rps,
        None => c.rate_limit = Some(RateLimitConfig::new(rps)),
    }
    Ok(())
}

/// Sets `rate_limit.burst`; rate limiting must be on (from the file or
/// `LB_RATE_LIMIT_REQUESTS_PER_SECOND`).
pub(super) fn env_rate_limit_burst(c: &mut LoadBalancerConfig, v: &str) -> Result<(), String> {
    let burst = env_u32(v)?;
    match &mut c.rate_limit {
        Some(r) => {
            r.burst = burst;
            Ok(())
        }
        None => Err(
            "rate limiting is off: set LB_RATE_LIMIT_REQUESTS_PER_SECOND (or \
             rate_limit.requests_per_second in the file) to turn it on"
                .to_string(),
        ),
    }
}

pub(super) fn env_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(v, "true or false (or 1/0, yes/no, on/off)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{assert_one_error_contains, env_from, errors_of};

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
    fn env_rate_limit_turns_it_on_and_off() {
        let load = |yaml: &str, vars: &[(&str, &str)]| {
            LoadBalancerConfig::from_yaml_str_with_env(yaml, &env_from(vars))
                .map(|c| c.rate_limit.map(|r| (r.requests_per_second, r.burst)))
        };
        let rps = "LB_RATE_LIMIT_REQUESTS_PER_SECOND";
        let burst = "LB_RATE_LIMIT_BURST";
        let on = "rate_limit: {requests_per_second: 10, burst: 40}";
        // (file, variables, expected (requests_per_second, burst))
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<(u32, u32)>);
        let cases: [Case; 6] = [
            // Off in the file: the rate turns it on, burst = rate unless given.
            ("", &[(rps, "50")], Some((50, 50))),
            ("", &[(rps, "50"), (burst, "80")], Some((50, 80))),
            // On in the file: each variable changes its own key only.
            (on, &[(rps, "50")], Some((50, 40))),
            (on, &[(burst, "5")], Some((10, 5))),
            // An empty rate turns it off.
            (on, &[(rps, "")], None),
            ("", &[], None),
        ];
        for (yaml, vars, want) in cases {
            assert_eq!(load(yaml, vars), Ok(want), "{yaml:?} {vars:?}");
        }
        let errors = errors_of(LoadBalancerConfig::from_yaml_str_with_env(
            "",
            &env_from(&[(burst, "5")]),
        ));
        assert_one_error_contains(
            "burst alone",
            &errors,
            &["LB_RATE_LIMIT_BURST: rate limiting is off: set LB_RATE_LIMIT_REQUESTS_PER_SECOND"],
        );
    }

    #[test]
    fn bad_resilience_env_values_name_the_variable() {
        let cases = [
            (
                "LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES",
                "500,5xx",
                "LB_CIRCUIT_BREAKER_FAILURE_STATUS_CODES: invalid value \"500,5xx\": expected a \
                 comma-separated list of status codes",
            ),
            (
                "LB_TRUSTED_PROXIES",
                "10.0.0.0/8, proxy.local",
                "LB_TRUSTED_PROXIES: trusted_proxies[1]: \"proxy.local\" is not an IP address",
            ),
            (
                "LB_TRUSTED_PROXIES",
                "10.0.0.0/8,",
                "LB_TRUSTED_PROXIES: trusted_proxies[1]: \"\" is not an IP address",
            ),
            (
                "LB_RATE_LIMIT_REQUESTS_PER_SECOND",
                "lots",
                "LB_RATE_LIMIT_REQUESTS_PER_SECOND: invalid value \"lots\"",
            ),
            (
                "LB_MAX_REQUEST_HEADER_SIZE",
                "32k",
                "LB_MAX_REQUEST_HEADER_SIZE: invalid value \"32k\"",
            ),
            (
                "LB_CONNECT_TIMEOUT",
                "5",
                "LB_CONNECT_TIMEOUT: invalid duration \"5\": add a unit",
            ),
        ];
        for (var, value, want) in cases {
            let errors = errors_of(LoadBalancerConfig::from_yaml_str_with_env(
                "",
                &env_from(&[(var, value)]),
            ));
            assert_one_error_contains(var, &errors, &[want]);
        }
    }
}
