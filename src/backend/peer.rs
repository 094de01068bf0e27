//! How Fulcrum connects to one backend: the protocol it speaks ([`UpstreamProtocol`]), the
//! certificates it trusts ([`CaBundle`], read from `ca_file`) and [`PeerTemplate`], the pingora
//! [`HttpPeer`] built once per backend from those and its URL: scheme, SNI, certificate
//! verification, CA, ALPN and the HTTP/2 options. The proxy and the health checks clone the
//! template and add their own timeouts; nothing here runs per request.
//!
//! The only I/O is reading a `ca_file` ([`CaBundle::read`]), once, when a backend is validated.
//!
//! Pingora facts this relies on (`pingora-core` 0.9.1, rustls):
//! - an **empty SNI turns certificate verification off**, so an https peer always gets the
//!   URL's host as its SNI, an IP literal included (rustls then checks the certificate against
//!   the IP address and sends no SNI extension, as RFC 6066 requires);
//! - a peer's own CA list replaces the trusted roots for that peer (otherwise the system roots,
//!   or pingora's `ca_file` for all peers);
//! - upstream HTTP/2 multiplexes at most `max_h2_streams` requests per connection, 1 unless set;
//! - the connection pool tells peers apart by address, scheme, SNI and verification flags but
//!   not by CA or ALPN, so the template's `group_key` carries those: a backend replaced with
//!   another CA or protocol never reuses the old one's connections.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::tls::{CertificateDer, RootCertStore};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::WrappedX509;
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

/// Concurrent requests Fulcrum multiplexes on one upstream HTTP/2 connection (pingora's
/// default is 1, which would open one connection per request). A backend that allows fewer
/// streams (its `SETTINGS_MAX_CONCURRENT_STREAMS`) makes requests wait for a free stream.
pub const MAX_H2_STREAMS: usize = 100;

/// Time between two HTTP/2 PINGs on an upstream h2 connection; a PING unanswered within 5 s
/// (pingora's limit) closes the connection, so a dead backend does not keep a pooled one.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(60);

/// The HTTP version Fulcrum speaks to a backend (`protocol:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    H1,
    /// HTTP/2: negotiated by ALPN (`h2` only) over TLS; prior-knowledge cleartext h2c over
    /// `http://`.
    H2,
}

impl UpstreamProtocol {
    /// `h1` or `h2`, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
        }
    }

    /// Whether this is the default (`h1`), to leave it out when a backend is written back.
    pub fn is_default(&self) -> bool {
        *self == Self::H1
    }
}

impl TryFrom<String> for UpstreamProtocol {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "h1" => Ok(Self::H1),
            "h2" => Ok(Self::H2),
            _ => Err(format!("expected h1 or h2, got {s:?}")),
        }
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for UpstreamProtocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for UpstreamProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Fails inside the string's own deserializer, so that the error names the key.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = UpstreamProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("h1 or h2")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                UpstreamProtocol::try_from(v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// The certificates a backend's `ca_file` holds: the only ones trusted to sign its certificate.
/// Two bundles are equal when they hold the same certificates, whatever file they came from.
#[derive(Clone)]
pub struct CaBundle {
    certs: Arc<CaType>,
    /// Hash of the certificates' DER bytes (pool separation, probe cache, `Debug`).
    fingerprint: u64,
}

impl CaBundle {
    /// Reads a PEM file of one or more certificates. The message of an error starts with the
    /// path.
    pub fn read(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let pem = std::fs::read(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
        Self::from_pem(&pem).map_err(|e| format!("{shown}: {e}"))
    }

    /// Parses PEM text: every block must be a certificate that rustls accepts as a trust
    /// anchor, and there must be at least one.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let mut certs = Vec::new();
        let mut hasher = DefaultHasher::new();
        for (i, block) in Pem::iter_from_buffer(pem).enumerate() {
            let n = i + 1;
            let block = block.map_err(|e| format!("PEM block {n} is malformed: {e}"))?;
            if block.label != "CERTIFICATE" {
                return Err(format!(
                    "PEM block {n} is a {:?}, not a CERTIFICATE; a CA file holds certificates \
                     only",
                    block.label
                ));
            }
            let der = block.contents;
            RootCertStore::empty()
                .add(CertificateDer::from(der.as_slice()))
                .map_err(|e| format!("certificate {n} is not a usable CA certificate: {e}"))?;
            der.hash(&mut hasher);
            let cert = WrappedX509::try_new(der, |der| {
                X509Certificate::from_der(der).map(|(_, cert)| cert)
            })
            .map_err(|e| format!("certificate {n} cannot be parsed: {e}"))?;
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err("no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
        }
        Ok(Self {
            certs: certs.into(),
            fingerprint: hasher.finish(),
        })
    }

    /// Number of certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Always false: a bundle holds at least one certificate.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && self.certs.len() == other.certs.len()
            && self
                .certs
                .iter()
                .zip(other.certs.iter())
                .all(|(a, b)| a.borrow_raw_cert() == b.borrow_raw_cert())
    }
}

impl Eq for CaBundle {}

impl Hash for CaBundle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaBundle({} certificates, {:016x})",
            self.certs.len(),
            self.fingerprint
        )
    }
}

/// How to reach a backend, as far as the connection goes: what a [`PeerTemplate`] is built
/// from. Its equality and hash are the template's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSettings {
    /// The resolved address.
    pub addr: SocketAddr,
    /// `https` URL: connect with TLS.
    pub tls: bool,
    /// SNI and the name the certificate must match: the URL's host (https only).
    pub sni: String,
    /// Verify the certificate (`tls_verify`).
    pub verify: bool,
    /// `protocol`.
    pub protocol: UpstreamProtocol,
    /// The backend's own trusted CAs (`ca_file`); `None`: the system roots.
    pub ca: Option<CaBundle>,
}

/// A backend's pingora peer, built once; [`PeerTemplate::peer`] hands out copies.
#[derive(Clone)]
pub struct PeerTemplate {
    settings: PeerSettings,
    peer: HttpPeer,
}

impl PeerTemplate {
    /// Builds the peer for `settings`.
    pub fn new(settings: PeerSettings) -> Self {
        let sni = if settings.tls {
            settings.sni.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(settings.addr, settings.tls, sni);
        let options = &mut peer.options;
        if settings.tls {
            options.verify_cert = settings.verify;
            options.verify_hostname = settings.verify;
            options.ca = settings.ca.as_ref().map(|ca| ca.certs.clone());
        }
        if settings.protocol == UpstreamProtocol::H2 {
            // over TLS: offer only h2 in ALPN; in cleartext: prior-knowledge h2c
            options.alpn = ALPN::H2;
            options.max_h2_streams = MAX_H2_STREAMS;
            options.h2_ping_interval = Some(H2_PING_INTERVAL);
        }
        let mut group = DefaultHasher::new();
        (settings.protocol, &settings.ca).hash(&mut group);
        peer.group_key = group.finish();
        Self { settings, peer }
    }

    /// Plain HTTP/1.1 to `addr`, for a backend known only by its address.
    pub fn plain(addr: SocketAddr) -> Self {
        Self::new(PeerSettings {
            addr,
            tls: false,
            sni: String::new(),
            verify: true,
            protocol: UpstreamProtocol::H1,
            ca: None,
        })
    }

    /// A copy of the peer, for one connection attempt (the caller sets its timeouts).
    pub fn peer(&self) -> HttpPeer {
        self.peer.clone()
    }

    /// What the template was built from.
    pub fn settings(&self) -> &PeerSettings {
        &self.settings
    }
}

impl PartialEq for PeerTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl Eq for PeerTemplate {}

impl Hash for PeerTemplate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.settings.hash(state);
    }
}

impl fmt::Debug for PeerTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::upstreams::peer::Peer;

    /// A self-signed CA certificate in PEM.
    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn settings(tls: bool, protocol: UpstreamProtocol) -> PeerSettings {
        PeerSettings {
            addr: "127.0.0.1:8443".parse().unwrap(),
            tls,
            sni: "127.0.0.1".into(),
            verify: true,
            protocol,
            ca: None,
        }
    }

    #[test]
    fn protocol_parses_h1_and_h2_only() {
        assert_eq!(
            UpstreamProtocol::try_from("h2".to_string()),
            Ok(UpstreamProtocol::H2)
        );
        let err = UpstreamProtocol::try_from("http2".to_string()).unwrap_err();
        assert_eq!(err, "expected h1 or h2, got \"http2\"");
        assert_eq!(
            serde_json::to_string(&UpstreamProtocol::H2).unwrap(),
            "\"h2\""
        );
    }

    #[test]
    fn https_peer_keeps_sni_even_for_an_ip_and_verifies() {
        let t = PeerTemplate::new(settings(true, UpstreamProtocol::H1));
        let peer = t.peer();
        assert!(peer.is_tls());
        assert_eq!(
            peer.sni(),
            "127.0.0.1",
            "an empty SNI would skip verification"
        );
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.options.alpn, ALPN::H1);
        assert_eq!(peer.options.max_h2_streams, 1);
    }

    #[test]
    fn h2_multiplexes_and_pings_over_tls_and_cleartext() {
        for tls in [true, false] {
            let peer = PeerTemplate::new(settings(tls, UpstreamProtocol::H2)).peer();
            assert_eq!(peer.is_tls(), tls);
            assert_eq!(peer.options.alpn, ALPN::H2, "h2 only (h2c when cleartext)");
            assert_eq!(peer.options.max_h2_streams, MAX_H2_STREAMS);
            assert_eq!(peer.options.h2_ping_interval, Some(H2_PING_INTERVAL));
        }
        let plain = PeerTemplate::plain("127.0.0.1:80".parse().unwrap()).peer();
        assert!(!plain.is_tls() && plain.sni().is_empty());
    }

    #[test]
    fn tls_verify_off_turns_both_checks_off() {
        let mut s = settings(true, UpstreamProtocol::H1);
        s.verify = false;
        let peer = PeerTemplate::new(s).peer();
        assert!(!peer.options.verify_cert && !peer.options.verify_hostname);
        assert_eq!(peer.sni(), "127.0.0.1");
    }

    #[test]
    fn ca_and_protocol_separate_connection_pools() {
        let ca = CaBundle::from_pem(ca_pem().as_bytes()).unwrap();
        assert_eq!(ca.len(), 1);
        let mut with_ca = settings(true, UpstreamProtocol::H1);
        with_ca.ca = Some(ca.clone());
        let a = PeerTemplate::new(with_ca.clone());
        assert_eq!(a.peer().get_ca().map(|c| c.len()), Some(1));
        let b = PeerTemplate::new(settings(true, UpstreamProtocol::H1));
        let c = PeerTemplate::new(settings(true, UpstreamProtocol::H2));
        let keys = [a.peer().group_key, b.peer().group_key, c.peer().group_key];
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
        assert_eq!(a, PeerTemplate::new(with_ca), "same inputs, same template");
        assert_ne!(a, b);
    }

    #[test]
    fn ca_files_are_checked() {
        let cases: &[(&str, &str)] = &[
            ("", "no PEM certificate"),
            ("just text\n", "no PEM certificate"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "\"PRIVATE KEY\", not a CERTIFICATE",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "certificate 1 is not a usable CA certificate",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                "PEM block 1 is malformed",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n",
                "PEM block 1 is malformed",
            ),
        ];
        for (pem, want) in cases {
            let err = CaBundle::from_pem(pem.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{pem:?}: {err}");
        }
        let two = format!("# a comment line\n{}{}", ca_pem(), ca_pem());
        assert_eq!(CaBundle::from_pem(two.as_bytes()).unwrap().len(), 2);
        let err = CaBundle::read(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            err.starts_with("/nonexistent/ca.pem: cannot read: "),
            "{err}"
        );
    }
}
