//! The admin API token: [`Secret`], the redacting wrapper `admin_token` is held in, and
//! [`LoadBalancerConfig::admin_token`], the effective token from `admin_token` or the file
//! `admin_token_file` names, with the checks [`LoadBalancerConfig::validate`] runs on it.
//!
//! The token never appears in `Debug` output or in an error message: errors give its length or
//! the position of a bad character, never the value.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ConfigError, LoadBalancerConfig};

/// Fewest characters accepted in an admin token.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Shortest `session_secret` (and each key of `session_secret_file`): 32 characters, 256 bits
/// at most of an HMAC-SHA256 key's strength.
pub const MIN_SESSION_SECRET_LEN: usize = 32;

/// Largest `admin_token_file` read: the file holds one token, so anything bigger is a mistake
/// (and reading stops there, so a device or a huge file cannot exhaust memory).
const MAX_TOKEN_FILE_SIZE: u64 = 4096;

/// A string that must not leak: `Debug` prints `"<redacted>"`, and there is no `Display`.
///
/// In YAML it is a plain string (an unquoted `1234...` is read as its text). Serialising writes
/// the value in clear, so a serialised config round-trips; do not serialise a config to show
/// it to anyone who may not see the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it (comparing a presented token).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl LoadBalancerConfig {
    /// The effective admin API token: `admin_token`, or the content of `admin_token_file`
    /// with trailing newlines trimmed (read on every call), or `None` when neither is set, in
    /// which case mutating admin calls are refused. Errors when both are set, when the file
    /// cannot be read, or when the token is not valid (at least [`MIN_ADMIN_TOKEN_LEN`]
    /// characters, visible ASCII only); they never contain the token.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        match (&self.admin_token, &self.admin_token_file) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "admin_token: cannot be set together with admin_token_file; set only one of them",
            )),
            (Some(token), None) => check_token(token.expose().as_bytes())
                .map(|()| Some(token.expose().to_string()))
                .map_err(|e| ConfigError::new(format!("admin_token: {e}"))),
            (None, Some(path)) => read_token_file(path).map(Some).map_err(|e| {
                ConfigError::new(format!("admin_token_file: {}: {e}", path.display()))
            }),
            (None, None) => Ok(None),
        }
    }
}

/// Reads and checks a token file; the error leaves out key and path.
fn read_token_file(path: &Path) -> Result<String, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_SIZE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_SIZE {
        return Err(format!(
            "larger than {MAX_TOKEN_FILE_SIZE} bytes; the file must hold only the token"
        ));
    }
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    check_token(&bytes)?;
    // Visible ASCII is UTF-8.
    String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())
}

/// At least [`MIN_ADMIN_TOKEN_LEN`] characters, each visible ASCII (`!` to `~`).
fn check_token(token: &[u8]) -> Result<(), String> {
    if let Some(i) = token.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "must be visible ASCII only (no spaces or control characters); byte {} is not",
            i + 1
        ));
    }
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!(
            "must be at least {MIN_ADMIN_TOKEN_LEN} characters, got {}",
            token.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::testutil::{assert_one_error_contains, errors_of};

    const TOKEN: &str = "s3cr3t-T0ken_0123456789";

    /// A file under the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, content: &[u8]) -> Self {
            let path = std::env::temp_dir()
                .join(format!("fulcrum-token-test-{}-{name}", std::process::id()));
            std::fs::write(&path, content).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn no_token_by_default() {
        let c = LoadBalancerConfig::default();
        assert_eq!((&c.admin_token, &c.admin_token_file), (&None, &None));
        assert_eq!(c.admin_token(), Ok(None));
    }

    #[test]
    fn token_from_yaml() {
        let c = LoadBalancerConfig::from_yaml_str(&format!("admin_token: {TOKEN}\n")).unwrap();
        assert_eq!(c.admin_token, Some(Secret::new(TOKEN)));
        assert_eq!(c.admin_token(), Ok(Some(TOKEN.to_string())));
        // An unquoted number is read as its text.
        let c = LoadBalancerConfig::from_yaml_str("admin_token: 0x1234567890abcdef\n").unwrap();
        assert_eq!(c.admin_token(), Ok(Some("0x1234567890abcdef".to_string())));
        // Exactly the minimum length, and every visible ASCII character, are accepted.
        let visible: String = (b'!'..=b'~').map(char::from).collect();
        for token in ["0123456789abcdef".to_string(), visible] {
            let c = LoadBalancerConfig {
                admin_token: Some(token.clone().into()),
                ..LoadBalancerConfig::default()
            };
            c.validate().unwrap();
            assert_eq!(c.admin_token(), Ok(Some(token)));
        }
    }

    #[test]
    fn effective_token_from_a_file_trims_trailing_newlines() {
        for (name, content) in [
            ("plain", TOKEN.to_string()),
            ("lf", format!("{TOKEN}\n")),
            ("crlf", format!("{TOKEN}\r\n")),
        ] {
            let file = TempFile::new(name, content.as_bytes());
            let yaml = format!("admin_token_file: {}\n", file.0.display());
            let c = LoadBalancerConfig::from_yaml_str(&yaml).unwrap();
            assert_eq!(c.admin_token_file.as_deref(), Some(file.0.as_path()));
            assert_eq!(c.admin_token, None);
            assert_eq!(c.admin_token(), Ok(Some(TOKEN.to_string())), "{name}");
        }
    }

    #[test]
    fn token_errors_name_the_key_and_never_the_token() {
        let leak = "leaky token 0123456789";
        let cases: [(String, &[&str]); 7] = [
            (
                "admin_token: short\n".into(),
                &["admin_token: must be at least 16 characters, got 5"],
            ),
            (
                format!("admin_token: \"{leak}\"\n"),
                &["admin_token: must be visible ASCII only", "byte 6 is not"],
            ),
            (
                "admin_token: \"0123456789abcdéf\"\n".into(),
                &["admin_token: must be visible ASCII only", "byte 15"],
            ),
            (
                "admin_token: [a, b]\n".into(),
                &["admin_token: invalid type: sequence, expected a string"],
            ),
            (
                "admin_token: 1234567890\n".into(),
                &["admin_token: must be at least 16 characters, got 10"],
            ),
            (
                format!("admin_token: {TOKEN}\nadmin_token_file: /run/token\n"),
                &["admin_token: cannot be set together with admin_token_file"],
            ),
            (
                "admin_token_file: /nonexistent/fulcrum-token\n".into(),
                &["admin_token_file: /nonexistent/fulcrum-token: cannot read:"],
            ),
        ];
        for (yaml, parts) in cases {
            let errors = errors_of(LoadBalancerConfig::from_yaml_str(&yaml));
            assert_one_error_contains(&yaml, &errors, parts);
            let all = errors.join("\n");
            for secret in [leak, TOKEN, "1234567890", "abcdéf"] {
                assert!(!all.contains(secret), "{yaml:?} leaks the token: {all}");
            }
        }
    }

    #[test]
    fn token_file_content_is_checked_like_the_key() {
        let big = vec![b'a'; MAX_TOKEN_FILE_SIZE as usize + 1];
        let cases: [(&str, &[u8], &str); 5] = [
            ("empty", b"\n", "must be at least 16 characters, got 0"),
            ("short", b"abc\n", "must be at least 16 characters, got 3"),
            ("space", b"leaky token 0123456789\n", "byte 6 is not"),
            ("two-lines", b"0123456789abcdef\nmore\n", "byte 17 is not"),
            ("big", &big, "larger than 4096 bytes"),
        ];
        for (name, content, want) in cases {
            let file = TempFile::new(name, content);
            let c = LoadBalancerConfig {
                admin_token_file: Some(file.0.clone()),
                ..LoadBalancerConfig::default()
            };
            let prefix = format!("admin_token_file: {}: ", file.0.display());
            for e in [c.validate().unwrap_err(), c.admin_token().unwrap_err()] {
                assert_one_error_contains(name, e.messages(), &[&prefix, want]);
                assert!(!e.to_string().contains("leaky"), "{e}");
            }
        }
    }

    #[test]
    fn debug_output_redacts_the_token() {
        let c = LoadBalancerConfig {
            admin_token: Some(TOKEN.into()),
            ..LoadBalancerConfig::default()
        };
        for shown in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains(TOKEN), "{shown}");
        }
        assert!(format!("{c:?}").contains("admin_token: Some(\"<redacted>\")"));
        // Serialising keeps it, so a config round-trips.
        let yaml = serde_yaml::to_string(&c).unwrap();
        assert_eq!(LoadBalancerConfig::from_yaml_str(&yaml), Ok(c));
    }

    #[test]
    fn env_sets_the_token_keys() {
        let file = TempFile::new("env", format!("{TOKEN}\n").as_bytes());
        let path = file.0.display().to_string();
        let load = |yaml: &str, vars: &[(&str, &str)]| {
            LoadBalancerConfig::from_yaml_str_with_env(yaml, vars.iter().copied())
        };
        let c = load("", &[("LB_ADMIN_TOKEN", TOKEN)]).unwrap();
        assert_eq!(c.admin_token(), Ok(Some(TOKEN.to_string())));
        let c = load("", &[("LB_ADMIN_TOKEN_FILE", &path)]).unwrap();
        assert_eq!(c.admin_token_file.as_deref(), Some(file.0.as_path()));
        assert_eq!(c.admin_token(), Ok(Some(TOKEN.to_string())));
        // An empty variable unsets the key, so the environment can switch file and key.
        let yaml = format!("admin_token: {TOKEN}\n");
        let c = load(
            &yaml,
            &[("LB_ADMIN_TOKEN", ""), ("LB_ADMIN_TOKEN_FILE", &path)],
        )
        .unwrap();
        assert_eq!(
            (c.admin_token.is_none(), c.admin_token_file.is_some()),
            (true, true)
        );
        let c = load(
            &format!("admin_token_file: {path}\n"),
            &[("LB_ADMIN_TOKEN_FILE", "")],
        );
        assert_eq!(c.map(|c| c.admin_token_file), Ok(None));

        let errors = errors_of(load("", &[("LB_ADMIN_TOKEN", "short token")]));
        assert_one_error_contains(
            "short",
            &errors,
            &["admin_token (from LB_ADMIN_TOKEN): must be visible ASCII only"],
        );
        assert!(!errors.join("\n").contains("short token"), "{errors:?}");
        let errors = errors_of(load(&yaml, &[("LB_ADMIN_TOKEN_FILE", &path)]));
        assert_one_error_contains("both", &errors, &["admin_token: cannot be set together"]);
    }
}
