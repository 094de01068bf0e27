//! [`ConfigError`], and turning serde_yaml's messages into ones that lead with the key.
//!
//! Every message starts with the key it is about (`port: ...`, `backends[1] (id "web2"): ...`);
//! serde_yaml's own messages for unknown and duplicate keys do not, so
//! [`describe_yaml_error`] rewrites them and finds the line when serde_yaml gives none.

use std::fmt;
use std::path::{Path, PathBuf};

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

    /// An error with these messages (each starting with its key).
    pub(crate) fn from_messages(messages: Vec<String>) -> Self {
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
    /// [`LoadBalancerConfig::from_file`](super::LoadBalancerConfig::from_file).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The messages, for re-wording (naming the environment variable behind a value).
    pub(crate) fn into_messages(self) -> Vec<String> {
        self.messages
    }

    pub(super) fn with_path(mut self, path: &Path) -> Self {
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

/// serde_yaml reports unknown and duplicate top-level keys without the key in front and
/// sometimes without a position: lead with the key, like every other message, and find the
/// line when serde_yaml gives none.
pub(super) fn describe_yaml_error(yaml: &str, e: &serde_yaml::Error) -> String {
    let msg = strip_location(e);
    let at = e.location().map_or(String::new(), |loc| {
        format!(" at line {} column {}", loc.line(), loc.column())
    });
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

/// serde_yaml's message without its trailing " at line L column C".
pub(super) fn strip_location(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            let at = format!(" at line {} column {}", loc.line(), loc.column());
            msg.strip_suffix(at.as_str()).unwrap_or(&msg).to_string()
        }
        None => msg,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{assert_one_error_contains, errors_of};
    use crate::config::LoadBalancerConfig;

    #[test]
    fn error_display_lists_every_message() {
        let e = ConfigError::from_messages(vec!["a: x".into(), "b: y".into()]);
        assert_eq!(e.to_string(), "2 configuration errors:\n  a: x\n  b: y");
        assert_eq!(ConfigError::new("a: x").to_string(), "a: x");
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
                    "health_check_interval: invalid duration \"30\": add a unit",
                    "line 1",
                ],
            ),
            (
                "health_check_timeout: 30\n".into(),
                vec![
                    "health_check_timeout: invalid duration \"30\": add a unit",
                    "line 1",
                ],
            ),
            (
                "retry_backoff: 5x\n".into(),
                vec!["retry_backoff: invalid duration \"5x\": unknown time unit \"x\""],
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
}
