//! Helpers shared by the config module's tests.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::{ConfigError, LoadBalancerConfig, RateLimitConfig};

/// The messages of an error that must be there.
pub(super) fn errors_of(r: Result<LoadBalancerConfig, ConfigError>) -> Vec<String> {
    match r {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.messages().to_vec(),
    }
}

/// Asserts that one message contains every one of `parts`.
pub(super) fn assert_one_error_contains(what: &str, errors: &[String], parts: &[&str]) {
    assert!(
        errors.iter().any(|e| parts.iter().all(|p| e.contains(p))),
        "{what}: no error contains all of {parts:?}; got {errors:#?}"
    );
}

/// Top-level keys and the keys of nested sections (`circuit_breaker.timeout`), with their values;
/// `pingora`, `backends` and `tls_certificates` are left out.
pub(super) fn scalar_keys(config: &LoadBalancerConfig) -> BTreeMap<String, Value> {
    let Value::Mapping(top) = serde_yaml::to_value(config).unwrap() else {
        panic!("config does not serialise to a mapping");
    };
    let mut keys = BTreeMap::new();
    for (k, v) in top {
        let k = k.as_str().unwrap().to_string();
        match v {
            // Pass-through and list sections have no single-value override.
            _ if k == "pingora" || k == "backends" || k == "tls_certificates" => {}
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

/// The defaults, with every optional section present (`rate_limit`, `acme`), so that
/// [`scalar_keys`] lists every key.
pub(super) fn every_key_config() -> LoadBalancerConfig {
    LoadBalancerConfig {
        rate_limit: Some(RateLimitConfig {
            requests_per_second: 100,
            burst: 200,
        }),
        acme: Some(super::AcmeConfig::new(
            vec!["example.com".into()],
            "/var/lib/fulcrum/acme",
        )),
        ..LoadBalancerConfig::default()
    }
}
