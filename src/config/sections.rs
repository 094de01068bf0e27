//! The nested sections of the file: `circuit_breaker:` ([`CircuitBreakerConfig`]),
//! `rate_limit:` ([`RateLimitConfig`]) and the entries of `tls_certificates:`
//! ([`TlsCertificate`]), with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de::null_as_default;
use super::serde_duration;

/// Per-backend circuit breaker settings (`circuit_breaker:`), the seed's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Backend response statuses that count as a failure, besides connection errors and
    /// timeouts (default [`Self::DEFAULT_FAILURE_STATUS_CODES`]; each 100-599; empty: none).
    #[serde(deserialize_with = "null_as_default")]
    pub failure_status_codes: Vec<u16>,
}

impl CircuitBreakerConfig {
    /// Default `failure_status_codes`: the 5xx statuses that mean the backend (or what is
    /// behind it) is failing, not that the request was bad.
    pub const DEFAULT_FAILURE_STATUS_CODES: [u16; 4] = [500, 502, 503, 504];
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_threshold: 3,
            timeout: Duration::from_secs(30),
            half_open_max_calls: 10,
            failure_status_codes: Self::DEFAULT_FAILURE_STATUS_CODES.to_vec(),
        }
    }
}

/// One certificate of the TLS listener (an entry of `tls_certificates:`): PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Per-client-IP rate limiting (`rate_limit:`; absent or `null` is off).
///
/// In YAML `requests_per_second` is required and `burst` defaults to it; unknown keys are
/// errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RateLimitYaml")]
pub struct RateLimitConfig {
    /// Sustained requests per second allowed per client IP (>= 1).
    pub requests_per_second: u32,
    /// Requests a client may send at once (>= 1; in YAML defaults to `requests_per_second`).
    pub burst: u32,
}

impl RateLimitConfig {
    /// `requests_per_second` per client, with a burst of one second's worth (the YAML default).
    pub fn new(requests_per_second: u32) -> Self {
        Self {
            requests_per_second,
            burst: requests_per_second,
        }
    }
}

/// `rate_limit:` as written: `burst` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitYaml {
    requests_per_second: u32,
    #[serde(default)]
    burst: Option<u32>,
}

impl From<RateLimitYaml> for RateLimitConfig {
    fn from(y: RateLimitYaml) -> Self {
        Self {
            requests_per_second: y.requests_per_second,
            burst: y.burst.unwrap_or(y.requests_per_second),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{assert_one_error_contains, errors_of};
    use crate::config::LoadBalancerConfig;

    fn load(yaml: &str) -> LoadBalancerConfig {
        LoadBalancerConfig::from_yaml_str(yaml).unwrap()
    }

    #[test]
    fn circuit_breaker_defaults_and_status_codes() {
        let d = CircuitBreakerConfig::default();
        assert_eq!(
            (
                d.failure_threshold,
                d.recovery_threshold,
                d.timeout,
                d.half_open_max_calls
            ),
            (5, 3, Duration::from_secs(30), 10)
        );
        assert_eq!(d.failure_status_codes, [500, 502, 503, 504]);
        let cases: [(&str, &[u16]); 4] = [
            (
                "circuit_breaker: {failure_status_codes: [502, 429]}",
                &[502, 429],
            ),
            ("circuit_breaker: {failure_status_codes: []}", &[]),
            ("circuit_breaker:\n  failure_status_codes:\n", &[]),
            ("circuit_breaker: {timeout: 1m}", &[500, 502, 503, 504]),
        ];
        for (yaml, want) in cases {
            assert_eq!(
                load(yaml).circuit_breaker.failure_status_codes,
                want,
                "{yaml}"
            );
        }
    }

    #[test]
    fn rate_limit_is_off_by_default_and_burst_defaults_to_the_rate() {
        assert_eq!(LoadBalancerConfig::default().rate_limit, None);
        assert_eq!(load("rate_limit: null").rate_limit, None);
        assert_eq!(load("rate_limit:\n").rate_limit, None);
        let cases = [
            ("rate_limit: {requests_per_second: 50}", (50, 50)),
            (
                "rate_limit: {requests_per_second: 50, burst: 200}",
                (50, 200),
            ),
            (
                "rate_limit: {requests_per_second: 50, burst: null}",
                (50, 50),
            ),
            (
                "rate_limit:\n  requests_per_second: 1\n  burst: 1\n",
                (1, 1),
            ),
        ];
        for (yaml, (rps, burst)) in cases {
            let want = RateLimitConfig {
                requests_per_second: rps,
                burst,
            };
            assert_eq!(load(yaml).rate_limit, Some(want), "{yaml}");
        }
        assert_eq!(
            RateLimitConfig::new(7),
            RateLimitConfig {
                requests_per_second: 7,
                burst: 7
            }
        );
    }

    #[test]
    fn section_parse_errors_name_the_key() {
        let cases: [(&str, &[&str]); 5] = [
            (
                "rate_limit: {burst: 5}",
                &["rate_limit: missing field `requests_per_second`"],
            ),
            (
                "rate_limit: {}",
                &["rate_limit: missing field `requests_per_second`"],
            ),
            (
                "rate_limit: {requests_per_second: 5, brust: 9}",
                &["rate_limit: unknown field `brust`", "burst"],
            ),
            (
                "rate_limit: {requests_per_second: -1}",
                &["rate_limit.requests_per_second: invalid type: integer `-1`"],
            ),
            (
                "circuit_breaker: {failure_status_codes: [500, 70000]}",
                &["circuit_breaker.failure_status_codes[1]: invalid value"],
            ),
        ];
        for (yaml, parts) in cases {
            let errors = errors_of(LoadBalancerConfig::from_yaml_str(yaml));
            assert_one_error_contains(yaml, &errors, parts);
        }
    }
}
