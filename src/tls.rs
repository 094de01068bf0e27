//! Downstream TLS: the certificates the TLS listener serves, chosen by the client's SNI, and
//! replaced whole by a reload without touching open connections.
//!
//! [`CertStore::load`] reads each configured pair of PEM files once (the chain, leaf first, and
//! its private key), checks that the key belongs to the leaf, and reads the names the leaf is
//! valid for (its subjectAltName DNS names; the subject CN only when it has none) and its
//! expiry. Every problem is a config error naming the key and the file, so `fulcrum -t`
//! catches it; nothing here panics.
//!
//! [`SniResolver`] is the rustls certificate resolver of the listener: per handshake it picks
//! a certificate for the SNI name (an exact name first, then a `*.` wildcard covering one
//! label, else the first certificate; no SNI gets the first) from the current store, one
//! `ArcSwap` load. A reload stores a new store: handshakes from then on use it, connections
//! already established keep theirs. [`listener_settings`] makes pingora's listener settings:
//! TLS 1.2 and 1.3 only (pingora's rustls builder), ALPN `h2, http/1.1`.
//!
//! Certificates obtained over ACME ([`Certificate`], added by [`SniResolver::set_obtained`])
//! live beside the configured ones and survive a reload, which replaces only the configured
//! ones. They are matched first, by their names like any other (so a name both configured and
//! obtained is served from the obtained certificate once there is one); the default for no
//! SNI or no match stays the first configured certificate, or the first obtained one when
//! none is configured. With `acme` on and nothing configured, the store may be empty until
//! the first certificate arrives: handshakes are then refused (rustls' fatal alert), never
//! answered with a made-up certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::config::{LoadBalancerConfig, TlsCertificate};

/// One certificate, loaded and checked.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Lower-case DNS names, wildcards as `*.example.com`.
    names: Vec<String>,
    not_after: SystemTime,
    cert_file: PathBuf,
    /// The chain's file, or `acme:<first domain>` for an obtained one.
    source: String,
}

/// What a loaded certificate is, for logs, `/health` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Where it comes from: its chain's file as configured, or `acme:<first domain>`.
    pub source: String,
    /// The chain's file.
    pub cert_file: PathBuf,
    /// The names it is served for.
    pub names: Vec<String>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

/// The TLS listener's certificates: the configured ones in configuration order (the first is
/// the default) and the obtained ones (ACME). Empty only while `acme` has not obtained its
/// first certificate and nothing is configured.
#[derive(Clone)]
pub struct CertStore {
    certs: Vec<Loaded>,
    obtained: Vec<Loaded>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.infos()).finish()
    }
}

impl CertStore {
    /// Loads the certificates `config` names: `ssl_cert_file`/`ssl_key_file` first, then
    /// `tls_certificates`. `None` when TLS is off. Every problem is reported, each naming its
    /// key and file. None at all is an error unless `acme` will obtain one.
    pub fn from_config(config: &LoadBalancerConfig) -> Result<Option<Self>, Vec<String>> {
        if !config.enable_ssl {
            return Ok(None);
        }
        let mut pairs = Vec::new();
        if let (Some(cert), Some(key)) = (&config.ssl_cert_file, &config.ssl_key_file) {
            pairs.push((
                "ssl_cert_file".to_string(),
                "ssl_key_file".to_string(),
                TlsCertificate {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                },
            ));
        }
        for (i, c) in config.tls_certificates.iter().enumerate() {
            pairs.push((
                format!("tls_certificates[{i}].cert_file"),
                format!("tls_certificates[{i}].key_file"),
                c.clone(),
            ));
        }
        let mut certs = Vec::with_capacity(pairs.len());
        let mut errors = Vec::new();
        for (cert_key, key_key, files) in &pairs {
            match load(cert_key, key_key, files) {
                Ok(c) => certs.push(c),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if certs.is_empty() && config.acme.is_none() {
            return Err(vec!["enable_ssl: true needs a certificate".to_string()]);
        }
        Ok(Some(Self {
            certs,
            obtained: Vec::new(),
        }))
    }

    /// The certificate for a client that asked for `sni`; `None` only when the store is empty.
    pub fn choose(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let first = self.certs.first().or(self.obtained.first()).map(|c| &c.key);
        let Some(sni) = sni else {
            return first;
        };
        let sni = sni.trim_end_matches('.');
        let all = || self.obtained.iter().chain(&self.certs);
        let exact = all().find(|c| c.names.iter().any(|n| n.eq_ignore_ascii_case(sni)));
        let wildcard = || {
            let (_, parent) = sni.split_once('.')?;
            all().find(|c| {
                c.names.iter().any(|n| {
                    n.strip_prefix("*.")
                        .is_some_and(|suffix| suffix.eq_ignore_ascii_case(parent))
                })
            })
        };
        exact.or_else(wildcard).map(|c| &c.key).or(first)
    }

    /// What is loaded: the configured certificates in order, then the obtained ones.
    pub fn infos(&self) -> Vec<CertInfo> {
        self.certs
            .iter()
            .chain(&self.obtained)
            .map(Loaded::info)
            .collect()
    }
}

impl Loaded {
    fn info(&self) -> CertInfo {
        CertInfo {
            source: self.source.clone(),
            cert_file: self.cert_file.clone(),
            names: self.names.clone(),
            not_after: self.not_after,
        }
    }
}

/// A certificate obtained at run time (ACME), loaded and checked like a configured one, for
/// [`SniResolver::set_obtained`].
#[derive(Clone)]
pub struct Certificate(Loaded);

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.info().fmt(f)
    }
}

impl Certificate {
    /// Loads the pair `files`, known as `source` (`acme:example.com`); the error names the
    /// source and the file.
    pub fn load(source: &str, files: &TlsCertificate) -> Result<Self, String> {
        load(source, source, files).map(|mut c| {
            c.source = source.to_string();
            Self(c)
        })
    }

    /// What it is.
    pub fn info(&self) -> CertInfo {
        self.0.info()
    }
}

/// Loads one pair; the error names the key and the file.
fn load(cert_key: &str, key_key: &str, files: &TlsCertificate) -> Result<Loaded, String> {
    let (cert_path, key_path) = (&files.cert_file, &files.key_file);
    let at =
        |key: &str, path: &Path, e: &dyn fmt::Display| format!("{key}: {}: {e}", path.display());
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| at(cert_key, cert_path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(cert_key, cert_path, &e))?;
    let Some(leaf) = chain.first() else {
        return Err(at(cert_key, cert_path, &"holds no PEM certificate"));
    };
    let (names, not_after) = names_and_expiry(leaf).map_err(|e| at(cert_key, cert_path, &e))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| at(key_key, key_path, &e))?;
    pingora_rustls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| at(key_key, key_path, &"no TLS crypto provider is installed"))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        at(
            key_key,
            key_path,
            &format!("cannot be used with {}: {e}", cert_path.display()),
        )
    })?;
    if not_after < SystemTime::now() {
        log::warn!(
            "{cert_key}: {} expired at {}",
            cert_path.display(),
            crate::time::rfc3339(not_after)
        );
    }
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        not_after,
        cert_file: cert_path.clone(),
        source: cert_path.display().to_string(),
    })
}

/// The DNS names a leaf is valid for (its subjectAltName, else its CN), lower case, and when
/// it expires.
fn names_and_expiry(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    let expiry = cert.validity().not_after.timestamp();
    let not_after =
        u64::try_from(expiry).map_or(UNIX_EPOCH, |secs| UNIX_EPOCH + Duration::from_secs(secs));
    Ok((names, not_after))
}

/// The rustls certificate resolver of the TLS listener (see the module docs).
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("store", &self.store.load())
            .finish()
    }
}

impl SniResolver {
    /// A resolver serving `store`.
    pub fn new(store: CertStore) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
        }
    }

    /// Serves `store`'s configured certificates from the next handshake on, beside the
    /// obtained ones already served (a reload re-reads files; it does not drop ACME's).
    pub fn replace(&self, store: CertStore) {
        self.store.rcu(|current| CertStore {
            certs: store.certs.clone(),
            obtained: current.obtained.clone(),
        });
    }

    /// Serves `cert` from the next handshake on, in place of the obtained certificate with the
    /// same source (a renewal), or beside the others.
    pub fn set_obtained(&self, cert: Certificate) {
        self.store.rcu(|current| {
            let mut next = CertStore::clone(current);
            match next.obtained.iter_mut().find(|c| c.source == cert.0.source) {
                Some(slot) => *slot = cert.0.clone(),
                None => next.obtained.push(cert.0.clone()),
            }
            next
        });
    }

    /// The certificates served now.
    pub fn infos(&self) -> Vec<CertInfo> {
        self.store.load().infos()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = self.store.load().choose(hello.server_name()).cloned();
        if chosen.is_none() {
            log::debug!("TLS handshake refused: no certificate yet (ACME has not obtained one)");
        }
        chosen
    }
}

/// Pingora's settings for the TLS listener: certificates from `resolver`, TLS 1.2 and 1.3,
/// ALPN `h2, http/1.1`.
pub fn listener_settings(resolver: Arc<SniResolver>) -> pingora::Result<TlsSettings> {
    // The paths are unused: with a resolver set, pingora builds from it.
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, written to `dir/<stem>.{pem,key}`.
    fn pair(dir: &Path, stem: &str, names: &[&str]) -> TlsCertificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsCertificate {
            cert_file: dir.join(format!("{stem}.pem")),
            key_file: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let dir = std::env::temp_dir().join(format!("fulcrum-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = pair(&dir, "first", &["default.test"]);
        let config = LoadBalancerConfig {
            enable_ssl: true,
            ssl_cert_file: Some(first.cert_file),
            ssl_key_file: Some(first.key_file),
            tls_certificates: vec![
                pair(&dir, "wild", &["*.example.org"]),
                pair(&dir, "exact", &["api.example.org", "Other.Test"]),
            ],
            ..LoadBalancerConfig::default()
        };
        let store = CertStore::from_config(&config).unwrap().unwrap();
        let which = |sni: Option<&str>| {
            let chosen = store.choose(sni).unwrap();
            store
                .certs
                .iter()
                .position(|c| Arc::ptr_eq(&c.key, chosen))
                .unwrap()
        };
        let cases = [
            (None, 0),
            (Some("default.test"), 0),
            (Some("unknown.test"), 0),
            (Some("www.example.org"), 1),
            (Some("api.example.org"), 2), // exact beats an earlier wildcard
            (Some("API.EXAMPLE.ORG."), 2),
            (Some("other.test"), 2),
            (Some("example.org"), 0),     // a wildcard covers one label...
            (Some("a.b.example.org"), 0), // ...exactly one
        ];
        for (sni, want) in cases {
            assert_eq!(which(sni), want, "{sni:?}");
        }
        let infos = store.infos();
        assert_eq!(infos[2].names, ["api.example.org", "other.test"]);
        assert!(infos[0].not_after > SystemTime::now());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn obtained_certificates_match_first_and_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("fulcrum-tls-acme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let configured = pair(&dir, "conf", &["default.test", "both.test"]);
        let mut config = LoadBalancerConfig {
            enable_ssl: true,
            acme: Some(crate::config::AcmeConfig::new(
                vec!["acme.test".into()],
                &dir,
            )),
            ..LoadBalancerConfig::default()
        };
        // ACME alone: a valid store, empty until the first certificate
        let empty = CertStore::from_config(&config).unwrap().unwrap();
        assert!(empty.choose(None).is_none() && empty.choose(Some("acme.test")).is_none());
        let resolver = SniResolver::new(empty);
        let obtained = pair(&dir, "acme", &["acme.test", "both.test"]);
        let cert = Certificate::load("acme:acme.test", &obtained).unwrap();
        assert_eq!(cert.info().source, "acme:acme.test");
        resolver.set_obtained(cert.clone());
        let served = |sni: Option<&str>| {
            let store = resolver.store.load();
            let key = store.choose(sni).unwrap().clone();
            store
                .infos()
                .into_iter()
                .zip(store.certs.iter().chain(&store.obtained))
                .find(|(_, c)| Arc::ptr_eq(&c.key, &key))
                .map(|(i, _)| i.source)
                .unwrap()
        };
        assert_eq!(
            served(None),
            "acme:acme.test",
            "the only certificate is the default"
        );

        // a reload brings a configured certificate: it becomes the default, ACME's stays
        config.ssl_cert_file = Some(configured.cert_file.clone());
        config.ssl_key_file = Some(configured.key_file.clone());
        resolver.replace(CertStore::from_config(&config).unwrap().unwrap());
        let conf_source = configured.cert_file.display().to_string();
        assert_eq!(served(None), conf_source);
        assert_eq!(served(Some("unknown.test")), conf_source);
        assert_eq!(served(Some("default.test")), conf_source);
        assert_eq!(served(Some("acme.test")), "acme:acme.test");
        assert_eq!(
            served(Some("both.test")),
            "acme:acme.test",
            "obtained match first"
        );

        // a renewal replaces the obtained certificate with the same source
        resolver.set_obtained(cert);
        let sources: Vec<String> = resolver.infos().into_iter().map(|i| i.source).collect();
        assert_eq!(sources, [conf_source.clone(), "acme:acme.test".into()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_off_loads_nothing() {
        assert!(CertStore::from_config(&LoadBalancerConfig::default())
            .unwrap()
            .is_none());
    }
}
