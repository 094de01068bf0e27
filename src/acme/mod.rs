//! Automatic certificates over ACME (RFC 8555): one certificate for the `acme.domains`,
//! obtained and renewed from the CA at `acme.directory_url`, validated with HTTP-01 on the
//! plain listener, kept in `acme.storage_dir`, and served by the TLS listener beside the
//! configured certificates.
//!
//! This module owns
//! - [`AcmeSettings`]: the `acme:` section checked with the I/O it needs (`ca_file` read,
//!   `storage_dir` looked at), so `fulcrum -t` catches what a start would;
//! - [`Challenges`] (`challenge`): the HTTP-01 answers the pipeline gives at
//!   `/.well-known/acme-challenge/<token>`, before the redirect to https and the rate limit;
//! - `storage`: the files in `storage_dir` (the chain, its key with mode 0600, the account),
//!   each written aside and renamed into place;
//! - `order` (with its HTTPS client, `http`): one certificate order through `instant-acme`;
//! - `schedule`: when to renew (about 30 days before expiry, sooner for short-lived
//!   certificates) and how long to back off after a failure (1 min doubling to 1 h), pure;
//! - [`AcmeService`] (`service`): the background service that loads the stored certificate
//!   at start (serving needs no network), then orders, stores and hot-swaps certificates into
//!   the listener's [`SniResolver`](crate::tls::SniResolver), logging each step.
//!
//! It sits above `config` and `tls` and below the pipeline (`proxy` asks [`Challenges`]) and
//! the wiring (`server` starts [`AcmeService`]).

mod challenge;
mod http;
mod order;
mod schedule;
mod service;
mod storage;

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

pub use challenge::{Challenges, CHALLENGE_PATH};
pub use schedule::{backoff, renewal_time, BACKOFF_MAX, BACKOFF_MIN, RENEW_BEFORE};
pub use service::AcmeService;

use crate::config::AcmeConfig;

/// The `acme:` section, checked: what the ACME service runs with.
#[derive(Clone)]
pub struct AcmeSettings {
    /// The CA's directory.
    pub directory_url: String,
    /// `mailto:` + `acme.email`, when given.
    pub contact: Option<String>,
    /// The names of the certificate, lower case, in configuration order.
    pub domains: Vec<String>,
    /// Where the account and the certificate are kept.
    pub storage_dir: PathBuf,
    /// The roots trusted for the directory's TLS, from `acme.ca_file`; `None`: the system's.
    pub ca: Option<Vec<CertificateDer<'static>>>,
}

impl fmt::Debug for AcmeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeSettings")
            .field("directory_url", &self.directory_url)
            .field("contact", &self.contact)
            .field("domains", &self.domains)
            .field("storage_dir", &self.storage_dir)
            .field("ca_certificates", &self.ca.as_ref().map(Vec::len))
            .finish()
    }
}

impl AcmeSettings {
    /// Checks what `config` needs from the disk: `ca_file` holds PEM certificates, and
    /// `storage_dir` is a directory or can be created (its parent is one). Every problem is
    /// reported, each naming its key. ([`AcmeConfig`]'s own checks ran already.)
    pub fn load(config: &AcmeConfig) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let ca = match &config.ca_file {
            None => None,
            Some(file) => match read_ca(file) {
                Ok(certs) => Some(certs),
                Err(e) => {
                    errors.push(format!("acme.ca_file: {}: {e}", file.display()));
                    None
                }
            },
        };
        if let Err(e) = check_storage_dir(&config.storage_dir) {
            errors.push(format!(
                "acme.storage_dir: {}: {e}",
                config.storage_dir.display()
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            directory_url: config.directory_url.clone(),
            contact: config.email.as_ref().map(|e| format!("mailto:{e}")),
            domains: config
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            storage_dir: config.storage_dir.clone(),
            ca,
        })
    }

    /// The name of the certificate in files, logs, `/health` and metrics: `acme:<first
    /// domain>`.
    pub fn source(&self) -> String {
        format!("acme:{}", self.domains.first().map_or("", String::as_str))
    }
}

/// Every certificate of a PEM file; at least one.
fn read_ca(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// `dir` is a directory, or is missing and its parent is one (it is created at start).
fn check_storage_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err("exists and is not a directory".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if parent.is_dir() {
                Ok(())
            } else {
                Err(format!(
                    "does not exist, and neither does its parent {} (only the last component \
                     is created)",
                    parent.display()
                ))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_with_the_key_named() {
        let dir =
            std::env::temp_dir().join(format!("fulcrum-acme-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.txt");
        std::fs::write(&not_pem, "no certificate here\n").unwrap();
        let mut config = AcmeConfig::new(vec!["Example.COM".into()], dir.join("a/b"));
        config.ca_file = Some(not_pem.clone());
        let errors = AcmeSettings::load(&config).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "acme.ca_file: {}: holds no PEM",
                not_pem.display()
            )),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("acme.storage_dir: ")
                && errors[1].contains("neither does its parent"),
            "{errors:?}"
        );

        config.ca_file = None;
        config.storage_dir = not_pem.clone();
        let errors = AcmeSettings::load(&config).unwrap_err();
        assert!(
            errors[0].ends_with("exists and is not a directory"),
            "{errors:?}"
        );

        config.storage_dir = dir.join("new");
        config.email = Some("ops@example.com".into());
        let s = AcmeSettings::load(&config).unwrap();
        assert_eq!(s.domains, ["example.com"]);
        assert_eq!(s.contact.as_deref(), Some("mailto:ops@example.com"));
        assert_eq!(s.source(), "acme:example.com");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
