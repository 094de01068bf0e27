//! The `acme:` section ([`AcmeConfig`]): certificates obtained and renewed automatically from
//! an ACME (RFC 8555) certificate authority, and its checks. Reading `ca_file` and looking at
//! `storage_dir` is I/O, done when the settings are built ([`crate::acme::AcmeSettings`]).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Let's Encrypt's production directory, the default `acme.directory_url`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Automatic certificates (`acme:`; absent or `null` is off). One certificate for all
/// `domains`, validated with HTTP-01 on the plain listener, stored in `storage_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL, `https://` (default [`LETS_ENCRYPT`]; Let's Encrypt's staging
    /// directory is `https://acme-staging-v02.api.letsencrypt.org/directory`).
    #[serde(default = "lets_encrypt")]
    pub directory_url: String,
    /// Contact address given to the CA for the account (default none).
    #[serde(default)]
    pub email: Option<String>,
    /// DNS names the certificate is for (required, at least one; no wildcards: HTTP-01 cannot
    /// validate them). The first names the certificate in logs, files and metrics.
    pub domains: Vec<String>,
    /// Directory the account key and the certificate are kept in (required; created, mode
    /// 0700, if missing; its parent must exist).
    pub storage_dir: PathBuf,
    /// PEM file of the CA certificates trusted for the directory's own TLS (default none: the
    /// system's roots). For a private or test CA such as pebble.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn lets_encrypt() -> String {
    LETS_ENCRYPT.to_string()
}

impl AcmeConfig {
    /// A section for `domains` kept in `storage_dir`, from Let's Encrypt, without an email.
    pub fn new(domains: Vec<String>, storage_dir: impl Into<PathBuf>) -> Self {
        Self {
            directory_url: lets_encrypt(),
            email: None,
            domains,
            storage_dir: storage_dir.into(),
            ca_file: None,
        }
    }

    /// The checks that need no I/O; each message names its key (`acme.domains[1]: ...`).
    pub(super) fn check(&self, enable_ssl: bool, errors: &mut Vec<String>) {
        if !enable_ssl {
            errors.push(
                "acme: set, but enable_ssl is false; set enable_ssl: true to serve the \
                 certificates it obtains"
                    .into(),
            );
        }
        match self.directory_url.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() && !rest.starts_with('/') => {}
            _ => errors.push(format!(
                "acme.directory_url: {:?} is not an https:// URL (RFC 8555 directories are \
                 served over https)",
                self.directory_url
            )),
        }
        if let Some(email) = &self.email {
            if let Err(e) = check_email(email) {
                errors.push(format!("acme.email: {email:?} {e}"));
            }
        }
        if self.domains.is_empty() {
            errors.push("acme.domains: must not be empty".into());
        }
        let mut seen = HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            if let Err(e) = check_domain(d) {
                errors.push(format!("acme.domains[{i}]: {d:?} {e}"));
            } else if !seen.insert(d.to_ascii_lowercase()) {
                errors.push(format!("acme.domains[{i}]: {d:?} is listed twice"));
            }
        }
        if self.storage_dir.as_os_str().is_empty() {
            errors.push("acme.storage_dir: must not be empty".into());
        }
        if self
            .ca_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            errors.push(
                "acme.ca_file: must not be empty (leave it out for the system's roots)".into(),
            );
        }
    }
}

/// A DNS name a CA can validate over HTTP-01: letters, digits and hyphens in labels of 1 to 63
/// characters, at least two labels, at most 253 characters, no wildcard, no IP address.
fn check_domain(d: &str) -> Result<(), &'static str> {
    if d.starts_with("*.") {
        return Err(
            "is a wildcard: HTTP-01, the only challenge Fulcrum answers, cannot \
                    validate wildcards",
        );
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an IP address, not a DNS name");
    }
    if d.is_empty() || d.len() > 253 {
        return Err("is not a DNS name (1 to 253 characters)");
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err("is not a fully qualified DNS name (CAs refuse single labels)");
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if labels.iter().all(label_ok) {
        Ok(())
    } else {
        Err(
            "is not a DNS name (labels of letters, digits and inner hyphens, 1 to 63 \
             characters; internationalised names in their xn-- form)",
        )
    }
}

/// An address a CA takes as a `mailto:` contact: one `@` between non-empty parts, no spaces,
/// commas or angle brackets.
fn check_email(e: &str) -> Result<(), &'static str> {
    let bad = |c: char| c.is_whitespace() || matches!(c, ',' | '<' | '>' | ':' | ';');
    match e.split_once('@') {
        Some((user, host)) if !user.is_empty() && host.contains('.') && !host.contains('@') => {
            if e.chars().any(bad) {
                Err("is not an email address (no spaces, commas, colons or angle brackets)")
            } else {
                Ok(())
            }
        }
        _ => Err("is not an email address (user@example.com)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(acme: &AcmeConfig, enable_ssl: bool) -> Vec<String> {
        let mut e = Vec::new();
        acme.check(enable_ssl, &mut e);
        e
    }

    #[test]
    fn a_complete_section_passes() {
        let mut a = AcmeConfig::new(vec!["example.com".into(), "www.example.com".into()], "/x");
        a.email = Some("ops@example.com".into());
        a.ca_file = Some("/etc/ca.pem".into());
        assert_eq!(errors(&a, true), Vec::<String>::new());
    }

    #[test]
    fn each_problem_names_its_key() {
        let mut a = AcmeConfig::new(
            vec![
                "*.example.com".into(),
                "localhost".into(),
                "a..b".into(),
                "10.0.0.1".into(),
                "ok.example".into(),
                "OK.example".into(),
                "-x.example".into(),
            ],
            "",
        );
        a.directory_url = "http://ca.example/dir".into();
        a.email = Some("not an address".into());
        a.ca_file = Some("".into());
        let e = errors(&a, false);
        let want = [
            "acme: set, but enable_ssl is false",
            "acme.directory_url: \"http://ca.example/dir\" is not an https:// URL",
            "acme.email: \"not an address\" is not an email address",
            "acme.domains[0]: \"*.example.com\" is a wildcard",
            "acme.domains[1]: \"localhost\" is not a fully qualified DNS name",
            "acme.domains[2]: \"a..b\" is not a DNS name",
            "acme.domains[3]: \"10.0.0.1\" is an IP address",
            "acme.domains[5]: \"OK.example\" is listed twice",
            "acme.domains[6]: \"-x.example\" is not a DNS name",
            "acme.storage_dir: must not be empty",
            "acme.ca_file: must not be empty",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
        let empty = AcmeConfig::new(Vec::new(), "/x");
        assert_eq!(errors(&empty, true), ["acme.domains: must not be empty"]);
    }

    #[test]
    fn the_yaml_section_names_its_keys() {
        use super::super::testutil::{assert_one_error_contains, errors_of};
        use super::super::LoadBalancerConfig;
        let cases: [(&str, &[&str]); 5] = [
            (
                "enable_ssl: true\nacme: {domain: [a.example], storage_dir: /x}",
                &["acme: unknown field `domain`", "domains"],
            ),
            (
                "enable_ssl: true\nacme: {domains: [a.example]}",
                &["acme: missing field `storage_dir`"],
            ),
            (
                "enable_ssl: true\nacme: {domains: [], storage_dir: /x}",
                &["acme.domains: must not be empty"],
            ),
            (
                "acme: {domains: [a.example], storage_dir: /x}",
                &["acme: set, but enable_ssl is false"],
            ),
            (
                "enable_ssl: true\nacme: {domains: [a.example], storage_dir: /x, email: x}",
                &["acme.email: \"x\" is not an email address"],
            ),
        ];
        for (yaml, parts) in cases {
            let errors = errors_of(LoadBalancerConfig::from_yaml_str(yaml));
            assert_one_error_contains(yaml, &errors, parts);
        }
        // TLS with only ACME certificates is a whole configuration: no ssl_cert_file needed
        let c = LoadBalancerConfig::from_yaml_str(
            "enable_ssl: true\nacme: {domains: [a.example, www.a.example], storage_dir: /x}",
        )
        .unwrap();
        let acme = c.acme.unwrap();
        assert_eq!(acme.directory_url, LETS_ENCRYPT);
        assert_eq!((acme.email, acme.ca_file), (None, None));
    }

    #[test]
    fn the_example_block_loads_when_uncommented() {
        let example = include_str!("../../conf/fulcrum.yaml");
        let block: String = example
            .lines()
            .skip_while(|l| !l.starts_with("# acme:"))
            .take_while(|l| l.starts_with("# acme:") || l.starts_with("#   "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        assert!(block.lines().count() >= 6, "no acme example: {block:?}");
        let yaml = format!("enable_ssl: true\n{block}");
        let c = super::super::LoadBalancerConfig::from_yaml_str(&yaml).unwrap();
        let acme = c.acme.unwrap();
        assert_eq!(acme.domains, ["example.com", "www.example.com"]);
        assert_eq!(acme.directory_url, LETS_ENCRYPT);
        assert_eq!(acme.storage_dir, PathBuf::from("/var/lib/fulcrum/acme"));
    }
}
