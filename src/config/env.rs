//! `LB_*` environment overrides, driven by serde rather than by a hand-kept table.
//!
//! The overridable keys are the ones a config serialises to (top level and the nested sections
//! `circuit_breaker`, `rate_limit` and `acme`; not `pingora`, `backends` or `tls_certificates`), and each one's variable is
//! `LB_` + the key in upper case, `.` becoming `_`, so keys and variable names cannot drift. A
//! variable's text becomes a YAML value of the kind the key's default has (booleans also take
//! `1/0`, `yes/no`, `on/off`; lists are comma-separated; an empty value unsets an optional key
//! and turns an optional section off), is put into the serialised config, and the whole is
//! deserialised again with `deny_unknown_fields`, so the file's own types and messages apply.
//! An `LB_` variable naming no key is an error, and every error names the variable.

use std::sync::OnceLock;

use serde_yaml::{Mapping, Value};

use super::error::strip_location;
use super::{AcmeConfig, ConfigError, LoadBalancerConfig, RateLimitConfig};

impl LoadBalancerConfig {
    /// Applies the `LB_*` variables among `vars` (name, value pairs; other names are ignored),
    /// for configs built in code. Every valid value is applied; the invalid ones, and variables
    /// that name no key, are reported together. Does not validate: call [`Self::validate`].
    pub fn apply_env<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), ConfigError> {
        let (config, _, errors) = overlay(self, vars);
        *self = config;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::from_messages(errors))
        }
    }
}

/// The process's `LB_*` variables (values that are not UTF-8 are converted lossily).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .filter(|(k, _)| k.starts_with("LB_"))
        .collect()
}

/// One overridable key.
pub(super) struct EnvKey {
    /// `port`, `circuit_breaker.timeout`.
    pub(super) key: String,
    /// `LB_PORT`, `LB_CIRCUIT_BREAKER_TIMEOUT`.
    pub(super) var: String,
    kind: Kind,
    /// In a section that is off by default (`rate_limit`): an empty value turns it off.
    optional_section: bool,
}

/// What a variable's text becomes, from the key's value in [`sample`].
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Number,
    Text,
    /// `null` by default: an empty value unsets it.
    Optional,
    /// Comma-separated; an empty value is an empty list.
    List,
}

/// Every overridable key, in the order the config declares them.
pub(super) fn env_keys() -> &'static [EnvKey] {
    static KEYS: OnceLock<Vec<EnvKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (Ok(Value::Mapping(top)), Ok(defaults)) = (
            serde_yaml::to_value(sample()),
            serde_yaml::to_value(LoadBalancerConfig::default()),
        ) else {
            return Vec::new(); // not reachable: the config serialises to a mapping
        };
        let mut keys = Vec::new();
        for (name, value) in &top {
            let Some(name) = name.as_str() else { continue };
            match value {
                _ if NOT_FROM_ENV.contains(&name) => {}
                Value::Mapping(section) => {
                    let optional_section = defaults.get(name).is_some_and(Value::is_null);
                    for (inner, value) in section {
                        if let Some(inner) = inner.as_str() {
                            keys.push(env_key(&format!("{name}.{inner}"), value, optional_section));
                        }
                    }
                }
                value => keys.push(env_key(name, value, false)),
            }
        }
        keys
    })
}

/// Top-level keys with structured values that have no `LB_*` variable.
const NOT_FROM_ENV: [&str; 3] = ["pingora", "backends", "tls_certificates"];

/// The defaults with every optional section present, so that its keys are listed.
fn sample() -> LoadBalancerConfig {
    LoadBalancerConfig {
        rate_limit: Some(RateLimitConfig::new(1)),
        acme: Some(AcmeConfig::new(Vec::new(), "")),
        ..LoadBalancerConfig::default()
    }
}

fn env_key(key: &str, value: &Value, optional_section: bool) -> EnvKey {
    let kind = match value {
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::Null => Kind::Optional,
        Value::Sequence(_) => Kind::List,
        _ => Kind::Text,
    };
    EnvKey {
        key: key.to_string(),
        var: format!("LB_{}", key.to_uppercase().replace('.', "_")),
        kind,
        optional_section,
    }
}

/// `config` with the `LB_*` variables among `vars` applied, the keys applied, and the errors.
pub(super) fn overlay<K: AsRef<str>, V: AsRef<str>>(
    config: &LoadBalancerConfig,
    vars: impl IntoIterator<Item = (K, V)>,
) -> (LoadBalancerConfig, Vec<&'static EnvKey>, Vec<String>) {
    let keys = env_keys();
    let (mut found, mut errors) = (Vec::new(), Vec::new());
    for (name, value) in vars {
        let (name, value) = (name.as_ref(), value.as_ref());
        if !name.starts_with("LB_") {
            continue;
        }
        match keys.iter().position(|k| k.var == name) {
            Some(i) => found.push((i, value.to_string())),
            None => errors.push(unknown_variable(name)),
        }
    }
    // In the config's order, so that a section is turned on before its other keys are set.
    found.sort_by_key(|(i, _)| *i);
    let mut doc = match serde_yaml::to_value(config) {
        Ok(doc) => doc,
        Err(e) => return (config.clone(), Vec::new(), vec![format!("LB_*: {e}")]),
    };
    let (mut config, mut applied) = (config.clone(), Vec::new());
    for (i, raw) in found {
        let key = &keys[i];
        // Try each variable on its own, so that every bad one is reported and the rest apply.
        let mut trial = doc.clone();
        set(&mut trial, key, &raw);
        match deserialize(&trial) {
            Ok(c) => {
                (doc, config) = (trial, c);
                applied.push(key);
            }
            Err(e) => {
                let e = e.strip_prefix(&format!("{}: ", key.key)).unwrap_or(&e);
                errors.push(format!("{}: {e}", key.var));
            }
        }
    }
    (config, applied, errors)
}

fn unknown_variable(name: &str) -> String {
    let close = env_keys()
        .iter()
        .find(|k| strsim::levenshtein(&k.var, name) <= 2);
    match close {
        Some(k) => format!("{name}: not a Fulcrum setting; did you mean {}?", k.var),
        None => format!(
            "{name}: not a Fulcrum setting (variables are LB_ + a key in upper case, such as \
             LB_PORT or LB_CIRCUIT_BREAKER_TIMEOUT; pingora, backends and tls_certificates \
             cannot be set this way)"
        ),
    }
}

/// Puts the value `raw` stands for at `key` in the serialised config.
fn set(doc: &mut Value, key: &EnvKey, raw: &str) {
    let value = match key.kind {
        _ if key.optional_section && raw.trim().is_empty() => {
            if let Some((section, _)) = key.key.split_once('.') {
                doc[section] = Value::Null;
            }
            return;
        }
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => Value::String(raw.to_string()),
        },
        Kind::Number => scalar(raw),
        Kind::Optional if raw.is_empty() => Value::Null,
        Kind::Text | Kind::Optional => Value::String(raw.to_string()),
        Kind::List if raw.trim().is_empty() => Value::Sequence(Vec::new()),
        Kind::List => Value::Sequence(raw.split(',').map(scalar).collect()),
    };
    match key.key.split_once('.') {
        Some((section, inner)) => {
            if !doc[section].is_mapping() {
                doc[section] = Value::Mapping(Mapping::new());
            }
            doc[section][inner] = value;
        }
        None => doc[key.key.as_str()] = value,
    }
}

/// A whole number as a number, anything else as a string (for serde to refuse with its type).
fn scalar(raw: &str) -> Value {
    let t = raw.trim();
    match (t.parse::<u64>(), t.parse::<i64>()) {
        (Ok(n), _) => Value::from(n),
        (_, Ok(n)) => Value::from(n),
        _ => Value::String(t.to_string()),
    }
}

/// Deserialises through YAML text, so that errors carry the key path (`trusted_proxies[1]: ...`).
fn deserialize(doc: &Value) -> Result<LoadBalancerConfig, String> {
    let text = serde_yaml::to_string(doc).map_err(|e| e.to_string())?;
    serde_yaml::from_str(&text).map_err(|e| strip_location(&e))
}

/// Rewrites a validation message about a key set from the environment to name the variable:
/// `port: ...` becomes `port (from LB_PORT): ...`, and `a.b[2]: ...` becomes
/// `a.b[2] (from LB_A_B): ...`.
pub(super) fn name_env_source(applied: &[&EnvKey], message: String) -> String {
    for k in applied {
        let Some(rest) = message.strip_prefix(k.key.as_str()) else {
            continue;
        };
        if !(rest.starts_with(':') || rest.starts_with('[')) {
            continue;
        }
        if let Some(colon) = rest.find(':') {
            let (index, tail) = rest.split_at(colon);
            return format!("{}{index} (from {}){tail}", k.key, k.var);
        }
    }
    message
}

#[cfg(test)]
mod tests;
