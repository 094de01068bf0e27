//! What a backend *is*: [`BackendServer`] (as written in the config file or posted to the admin
//! API), its parsed [`UpstreamUrl`], its [`Weight`], and [`BackendSpec`], a backend that passed
//! validation (id, weight and URL checked, address resolved). Validation happens here, once; the
//! rest of the crate takes a `BackendSpec` and never checks again.
//!
//! The only I/O in this module is resolving a URL's host name ([`BackendSpec::resolve`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

/// Largest accepted backend weight. Smooth weighted round robin precomputes one period of
/// `sum(weights)` picks, so weights are kept in a range where that table stays small.
pub const MAX_WEIGHT: u32 = 1000;

/// One upstream server, as written in the config file (`backends:`) or posted to the API.
///
/// The seed's `BackendServer`: `id`, `url`, `weight`, `capacity`, `tags`. Its `HealthStatus` is
/// not configuration: it lives in [`BackendState::health`](super::BackendState::health).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendServer {
    /// Unique identifier, used in logs, metrics labels, `/health` and the admin API.
    pub id: String,
    /// Where the backend listens: `http://host:port` (the port defaults to 80).
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
}

fn default_weight() -> u32 {
    1
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
        UpstreamUrl::parse(&self.url).map_err(|r| InvalidField::new("url", r))
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

/// A validated backend: its configuration and the address its URL resolved to. Only
/// [`BackendSpec::resolve`] makes one, so holding one means every field was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    server: BackendServer,
    addr: SocketAddr,
}

impl BackendSpec {
    /// Validates `server` and resolves its URL (blocking DNS for host names: call it off the
    /// async runtime's threads, as [`BackendSpec::resolve_async`] does).
    pub fn resolve(server: BackendServer) -> Result<Self, InvalidField> {
        let addr = server.validate()?;
        Ok(Self { server, addr })
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
    pub(crate) fn unchecked(server: BackendServer, addr: SocketAddr) -> Self {
        Self { server, addr }
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

    /// The configuration, consumed.
    pub fn into_server(self) -> BackendServer {
        self.server
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
    /// `http` (https backends come with TLS support).
    pub scheme: String,
    /// Host name or IP address, without brackets.
    pub host: String,
    /// Port, 80 when the URL names none.
    pub port: u16,
}

impl UpstreamUrl {
    /// Parses `http://host[:port][/]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL; expected http://host:port"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "https" {
            return Err(format!(
                "{url:?}: https backends are not supported yet (they land with TLS support)"
            ));
        }
        if scheme != "http" {
            return Err(format!("{url:?}: scheme must be http, got {scheme:?}"));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{url:?}: only scheme, host and port are allowed (no path, query or user info)"
            ));
        }
        let (host, port) = split_host_port(authority).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Self { scheme, host, port })
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

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
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
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("invalid port {p:?}")),
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    type UrlCase<'a> = (&'a str, Result<(&'a str, u16), &'a str>);

    #[test]
    fn parses_urls() {
        let cases: &[UrlCase] = &[
            ("http://127.0.0.1:8001", Ok(("127.0.0.1", 8001))),
            ("http://127.0.0.1:8001/", Ok(("127.0.0.1", 8001))),
            ("HTTP://10.0.0.1", Ok(("10.0.0.1", 80))),
            ("http://[::1]:9000", Ok(("::1", 9000))),
            (
                "http://web1.example.com:8001",
                Ok(("web1.example.com", 8001)),
            ),
            ("127.0.0.1:8001", Err("not a URL")),
            ("https://a:1", Err("not supported yet")),
            ("ftp://a:1", Err("scheme must be http")),
            ("http://a:1/path", Err("no path")),
            ("http://a:0", Err("invalid port")),
            ("http://a:99999", Err("invalid port")),
            ("http://:80", Err("empty host")),
            ("http://", Err("no host")),
            ("http://[::1", Err("unclosed")),
        ];
        for (url, want) in cases {
            match (UpstreamUrl::parse(url), want) {
                (Ok(u), Ok((host, port))) => {
                    assert_eq!((u.host.as_str(), u.port), (*host, *port), "{url}")
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "{url}: {e}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn validates_fields_and_names_them() {
        let ok = BackendServer::new("web-1.a_b", "http://127.0.0.1:1");
        assert_eq!(ok.validate(), Ok("127.0.0.1:1".parse().unwrap()));
        let cases = [
            (
                BackendServer::new("", "http://127.0.0.1:1"),
                "id",
                "must not be empty",
            ),
            (
                BackendServer::new("a b", "http://127.0.0.1:1"),
                "id",
                "\"a b\"",
            ),
            (ok.clone().with_weight(0), "weight", "must be between 1"),
            (
                ok.clone().with_weight(MAX_WEIGHT + 1),
                "weight",
                "must be between 1",
            ),
            (BackendServer::new("a", "nope"), "url", "not a URL"),
        ];
        for (server, field, reason) in cases {
            let err = server.validate().unwrap_err();
            assert_eq!(err.field, field, "{server:?}");
            assert!(err.reason.contains(reason), "{server:?}: {err}");
            assert!(err.to_string().starts_with(&format!("{field}: ")));
        }
        let spec = BackendSpec::resolve(ok.clone()).unwrap();
        assert_eq!((spec.id(), spec.addr().port()), ("web-1.a_b", 1));
        assert_eq!(Weight::new(MAX_WEIGHT).unwrap().get(), MAX_WEIGHT);
    }
}
