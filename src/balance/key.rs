//! [`RequestKey`]: what the hash-based strategies hash, resolved once from the config
//! (`strategy` and `hash_key`) so a request only reads the one thing it needs.

use std::net::IpAddr;

use pingora::http::RequestHeader;

use super::{HashKey, Strategy};
use crate::headers::cookie_value;

/// Which bytes of a request the selector hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKey {
    /// Nothing: the strategy does not hash.
    None,
    /// The client's IP address (as far as trusted proxies say).
    ClientIp,
    /// A request header's value; the client IP when the header is missing.
    Header(http::HeaderName),
    /// A cookie's value; the client IP when the cookie is missing.
    Cookie(String),
    /// The path without the query.
    Path,
}

impl RequestKey {
    /// The key `strategy` hashes: `hash_key` for consistent hashing, the client IP for IP
    /// hash, nothing for the others.
    pub fn for_strategy(strategy: Strategy, hash_key: &HashKey) -> Self {
        match (strategy, hash_key) {
            (Strategy::IpHash, _) | (Strategy::ConsistentHashing, HashKey::ClientIp) => {
                RequestKey::ClientIp
            }
            (Strategy::ConsistentHashing, HashKey::Header(h)) => RequestKey::Header(h.clone()),
            (Strategy::ConsistentHashing, HashKey::Cookie(c)) => RequestKey::Cookie(c.clone()),
            (Strategy::ConsistentHashing, HashKey::Path) => RequestKey::Path,
            _ => RequestKey::None,
        }
    }

    /// The bytes to hash for `req` from `client`; `ip_buf` holds the address bytes when the
    /// client IP is the key. Empty when there is nothing to hash.
    pub fn resolve<'a>(
        &self,
        req: &'a RequestHeader,
        client: Option<IpAddr>,
        ip_buf: &'a mut [u8; 16],
    ) -> &'a [u8] {
        let found = match self {
            RequestKey::None => return &[],
            RequestKey::ClientIp => None,
            RequestKey::Path => Some(req.uri.path().as_bytes()),
            RequestKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
            RequestKey::Cookie(name) => cookie_value(req, name),
        };
        if let Some(key) = found {
            return key;
        }
        match client {
            Some(IpAddr::V4(v4)) => {
                ip_buf[..4].copy_from_slice(&v4.octets());
                &ip_buf[..4]
            }
            Some(IpAddr::V6(v6)) => {
                *ip_buf = v6.octets();
                &ip_buf[..]
            }
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_configured_key() {
        let mut req = RequestHeader::build("GET", b"/a/b?q=1", None).unwrap();
        req.insert_header("x-user", "u7").unwrap();
        req.insert_header("cookie", "a=1; sid=s9").unwrap();
        let client = Some(IpAddr::from([10, 0, 0, 7]));
        let header = HashKey::Header(http::HeaderName::from_static("x-user"));
        let cases: &[(Strategy, HashKey, &[u8])] = &[
            (Strategy::RoundRobin, HashKey::Path, b""),
            (Strategy::IpHash, HashKey::Path, &[10, 0, 0, 7]),
            (
                Strategy::ConsistentHashing,
                HashKey::ClientIp,
                &[10, 0, 0, 7],
            ),
            (Strategy::ConsistentHashing, HashKey::Path, b"/a/b"),
            (Strategy::ConsistentHashing, header, b"u7"),
            (
                Strategy::ConsistentHashing,
                HashKey::Cookie("sid".into()),
                b"s9",
            ),
            (
                Strategy::ConsistentHashing,
                HashKey::Cookie("none".into()),
                &[10, 0, 0, 7],
            ),
        ];
        for (strategy, hash_key, want) in cases {
            let key = RequestKey::for_strategy(*strategy, hash_key);
            let mut buf = [0; 16];
            assert_eq!(
                key.resolve(&req, client, &mut buf),
                *want,
                "{strategy} {hash_key}"
            );
        }
    }
}
