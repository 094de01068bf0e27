//! What a backend *is*: [`BackendServer`] (as written in the config file or posted to the admin
//! API), its parsed [`UpstreamUrl`], its [`Weight`], and [`BackendSpec`], a backend that passed
//! validation (id, weight, URL and TLS settings checked, address resolved, `ca_file` read, its
//! pingora peer built). Validation happens here, once; the rest of the crate takes a
//! `BackendSpec` and never checks again.
//!
//! The only I/O in this module is resolving a URL's host name and reading a `ca_file`
//! ([`BackendSpec::resolve`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::peer::{CaBundle, PeerSettings, PeerTemplate, UpstreamProtocol};

/// Largest accepted backend weight. Smooth weighted round robin precomputes one period of
/// `sum(weights)` picks, so weights are kept in a range where that table stays small.
pub const MAX_WEIGHT: u32 = 1000;

/// One upstream server, as written in the config file (`backends:`) or posted to the API.
///
/// The seed's `BackendServer`: `id`, `url`, `weight`, `capacity`, `tags`; and how to connect:
/// `protocol`, `tls_verify`, `ca_file`. Its `HealthStatus` is not configuration: it lives in
/// [`BackendState::health`](super::BackendState::health).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendServer {
    /// Unique identifier, used in logs, metrics labels, `/health` and the admin API.
    pub id: String,
    /// Where the backend listens: `http://host[:port]` (port 80 by default) or
    /// `https://host[:port]` (443; TLS with SNI = host, certificate verified).
    pub url: String,
    /// Relative share of traffic for the weighted strategies, 1 to [`MAX_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Maximum concurrent requests in flight to this backend; 0 means unlimited.
    #[serde(default)]
    pub capacity: u64,
    /// Free-form metadata (`datacenter: us-west`), reported but not interpreted.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `h1` (default) or `h2`: HTTP/2 negotiated by ALPN over https, prior-knowledge h2c over
    /// http.
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_default")]
    pub protocol: UpstreamProtocol,
    /// Verify an https backend's certificate (default true). `false` accepts any certificate:
    /// for self-signed test servers only.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub tls_verify: bool,
    /// PEM file of the CAs trusted to sign an https backend's certificate, instead of the
    /// system roots. Read once, when the backend is validated (and again at each reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_weight() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl BackendServer {
    /// A backend with weight 1, no capacity limit and no tags.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            url: url.into(),
            weight: default_weight(),
            capacity: 0,
            tags: BTreeMap::new(),
            protocol: UpstreamProtocol::H1,
            tls_verify: true,
            ca_file: None,
        }
    }

    /// The same backend with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Checks every field without I/O and returns the parsed URL.
    pub fn check(&self) -> Result<UpstreamUrl, InvalidField> {
        validate_id(&self.id)?;
        Weight::new(self.weight)?;
        let url = UpstreamUrl::parse(&self.url).map_err(|r| InvalidField::new("url", r))?;
        self.check_tls(&url)?;
        Ok(url)
    }

    /// `tls_verify` and `ca_file` are about https backends, and contradict each other.
    fn check_tls(&self, url: &UpstreamUrl) -> Result<(), InvalidField> {
        let http_only = |field| {
            InvalidField::new(
                field,
                format!(
                    "only applies to https backends, and url {:?} is http",
                    self.url
                ),
            )
        };
        if !url.is_tls() && !self.tls_verify {
            return Err(http_only("tls_verify"));
        }
        let Some(path) = &self.ca_file else {
            return Ok(());
        };
        if path.as_os_str().is_empty() {
            return Err(InvalidField::new(
                "ca_file",
                "must not be empty; leave it out to trust the system roots",
            ));
        }
        if !url.is_tls() {
            return Err(http_only("ca_file"));
        }
        if !self.tls_verify {
            return Err(InvalidField::new(
                "ca_file",
                "has no effect with tls_verify: false (nothing is verified); remove one of them",
            ));
        }
        Ok(())
    }

    /// Checks every field and resolves the URL to a socket address (blocking DNS for names).
    pub fn validate(&self) -> Result<SocketAddr, InvalidField> {
        self.check()?
            .resolve()
            .map_err(|r| InvalidField::new("url", r))
    }
}

/// A backend field that failed validation: which one and why. Displays as `field: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The field: `id`, `url`, `weight`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    /// An error on `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidField {}

/// A backend weight, 1 to [`MAX_WEIGHT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(u32);

impl Weight {
    /// Weight 1.
    pub const ONE: Weight = Weight(1);

    /// `weight` if it is in range.
    pub fn new(weight: u32) -> Result<Self, InvalidField> {
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(InvalidField::new(
                "weight",
                format!("must be between 1 and {MAX_WEIGHT}, got {weight}"),
            ));
        }
        Ok(Self(weight))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A validated backend: its configuration, the address its URL resolved to and the pingora
/// peer built from them. Only [`BackendSpec::resolve`] makes one, so holding one means every
/// field was checked and `ca_file` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    server: BackendServer,
    addr: SocketAddr,
    peer: PeerTemplate,
}

impl BackendSpec {
    /// Validates `server`, resolves its URL (blocking DNS for host names: call it off the
    /// async runtime's threads, as [`BackendSpec::resolve_async`] does), reads its `ca_file`
    /// and builds its peer. An https backend with `tls_verify: false` is logged as a warning
    /// (at start, at each reload and when added through the API).
    pub fn resolve(server: BackendServer) -> Result<Self, InvalidField> {
        let url = server.check()?;
        let addr = url.resolve().map_err(|r| InvalidField::new("url", r))?;
        let ca = match &server.ca_file {
            Some(path) => Some(CaBundle::read(path).map_err(|r| InvalidField::new("ca_file", r))?),
            None => None,
        };
        if url.is_tls() && !server.tls_verify {
            log::warn!(
                "backend {} ({}): tls_verify is false: its certificate is not checked, so \
                 anyone on the path can impersonate it; use it for test servers only",
                server.id,
                server.url
            );
        }
        let peer = PeerTemplate::new(peer_settings(&server, &url, addr, ca));
        Ok(Self { server, addr, peer })
    }

    /// [`Self::resolve`] on tokio's blocking pool, so a slow DNS answer never stalls a runtime
    /// thread.
    pub async fn resolve_async(server: BackendServer) -> Result<Self, InvalidField> {
        tokio::task::spawn_blocking(move || Self::resolve(server))
            .await
            .unwrap_or_else(|e| Err(InvalidField::new("url", format!("resolver failed: {e}"))))
    }

    /// A spec for a backend whose address is known and whose fields were checked elsewhere
    /// (backends pingora built itself, test fixtures).
    /// Its peer connects as the URL says (plain HTTP/1.1 when the URL does not parse), without
    /// any `ca_file`.
    pub(crate) fn unchecked(server: BackendServer, addr: SocketAddr) -> Self {
        let peer = match UpstreamUrl::parse(&server.url) {
            Ok(url) => PeerTemplate::new(peer_settings(&server, &url, addr, None)),
            Err(_) => PeerTemplate::plain(addr),
        };
        Self { server, addr, peer }
    }

    /// The configuration.
    pub fn server(&self) -> &BackendServer {
        &self.server
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.server.id
    }

    /// The resolved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pingora peer requests and health checks to this backend start from.
    pub fn peer(&self) -> &PeerTemplate {
        &self.peer
    }

    /// The configuration, consumed.
    pub fn into_server(self) -> BackendServer {
        self.server
    }
}

fn peer_settings(
    server: &BackendServer,
    url: &UpstreamUrl,
    addr: SocketAddr,
    ca: Option<CaBundle>,
) -> PeerSettings {
    PeerSettings {
        addr,
        tls: url.is_tls(),
        sni: url.host.clone(),
        verify: server.tls_verify,
        protocol: server.protocol,
        ca,
    }
}

/// Ids go into metric labels, URLs (`/api/backends/{id}`) and logs, so they are kept simple.
fn validate_id(id: &str) -> Result<(), InvalidField> {
    let reason = if id.is_empty() {
        "must not be empty".to_string()
    } else if id.len() > 128 {
        format!("longer than 128 characters: {id:?}")
    } else if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        format!("{id:?} contains {c:?}; use letters, digits, '-', '_' and '.'")
    } else {
        return Ok(());
    };
    Err(InvalidField::new("id", reason))
}

/// A parsed backend URL: scheme, host and port. Paths are not allowed: Fulcrum forwards the
/// client's path unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`, in lower case.
    pub scheme: String,
    /// Host name or IP address, without brackets.
    pub host: String,
    /// Port: 80 (http) or 443 (https) when the URL names none.
    pub port: u16,
}

impl UpstreamUrl {
    /// Parses `http://host[:port][/]` or `https://host[:port][/]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL; expected http://host:port"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => {
                return Err(format!(
                    "{url:?}: scheme must be http or https, got {scheme:?}"
                ))
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{url:?}: only scheme, host and port are allowed (no path, query or user info)"
            ));
        }
        let (host, port) =
            split_host_port(authority, default_port).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Self { scheme, host, port })
    }

    /// Whether the backend is reached over TLS (`https`).
    pub fn is_tls(&self) -> bool {
        self.scheme == "https"
    }

    /// Resolves the host (blocking DNS for names; done once, when the backend is created).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {:?}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{:?} resolves to no address", self.host))
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or("expected ':' after ']'")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("invalid port {p:?}")),
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests;
