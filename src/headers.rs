//! Request headers Fulcrum adds or reads: `X-Forwarded-*`, `X-Real-IP`, `Forwarded`,
//! `X-Request-Id`, cookies, `Upgrade: websocket`.
//!
//! Pure functions over pingora's header types; the proxy calls them from its filters.
//!
//! Forwarded headers ([`write_forwarded`]) are believed only from a trusted proxy (as Traefik
//! does by default): from anyone else a client's own `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host`, `X-Real-IP` and `Forwarded` are dropped and Fulcrum writes its own, so a
//! backend reading the left-most `X-Forwarded-For` entry cannot be spoofed.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::client::TrustedProxies;
use crate::rng::mix;

/// `Forwarded` (RFC 7239), which Fulcrum never writes: from anyone but a trusted proxy it is
/// dropped. The `X-Forwarded-*` and `X-Real-IP` headers are replaced instead.
static FORWARDED: http::HeaderName = http::HeaderName::from_static("forwarded");

/// Unique request ids: a random per-process prefix and a scrambled counter, 32 hex digits.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    /// A generator whose ids start with `prefix` (random in production).
    pub fn new(prefix: u64) -> Self {
        Self {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// The next id. The counter goes through a bijective mixer, so ids never repeat within a
    /// process and do not reveal the request count.
    pub fn next_id(&self) -> [u8; 32] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; 32];
        write_hex(&mut out[..16], self.prefix);
        write_hex(&mut out[16..], mix(n));
        out
    }

    /// The request id to use: the client's when acceptable, else a new one.
    pub fn for_request(&self, client_sent: Option<&HeaderValue>) -> Option<HeaderValue> {
        match client_sent {
            Some(v) if acceptable_request_id(v) => Some(v.clone()),
            _ => HeaderValue::from_bytes(&self.next_id()).ok(),
        }
    }
}

fn write_hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// A client-supplied request id is kept when it is short and printable.
pub fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// Rewrites the forwarded headers of `upstream` (a copy of the client's request) for the
/// backend.
///
/// From a trusted proxy (`peer` in `trusted`): `X-Forwarded-For` is its list with `peer`
/// appended, its `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` are kept (ours are
/// written when it sent none), and `X-Real-IP` is `client`, the address it vouches for.
///
/// From anyone else (or an unknown peer): all five are dropped, then `X-Forwarded-For` and
/// `X-Real-IP` are the peer, `X-Forwarded-Proto` is `scheme` and `X-Forwarded-Host` is the
/// request's `Host`.
pub fn write_forwarded(
    upstream: &mut RequestHeader,
    peer: Option<IpAddr>,
    client: Option<IpAddr>,
    trusted: &TrustedProxies,
    scheme: &'static str,
) -> pingora::Result<()> {
    let Some(peer) = peer.filter(|p| trusted.trusts(p)) else {
        // Every header below is inserted (replacing what the client sent) or removed; the
        // lookups by a constant name spare the common request, which sent none, the removals.
        if upstream.headers.contains_key(&FORWARDED) {
            upstream.remove_header("forwarded");
        }
        match peer {
            Some(peer) => {
                let ip = HeaderValue::try_from(peer.to_string()).map_err(header_error)?;
                upstream.insert_header("X-Real-IP", ip.clone())?;
                upstream.insert_header("X-Forwarded-For", ip)?;
            }
            None => {
                upstream.remove_header("x-real-ip");
                upstream.remove_header("x-forwarded-for");
            }
        }
        upstream.insert_header("X-Forwarded-Proto", scheme)?;
        match forwarded_host(upstream) {
            Some(host) => upstream.insert_header("X-Forwarded-Host", host)?,
            None => {
                upstream.remove_header("x-forwarded-host");
            }
        }
        return Ok(());
    };
    upstream.insert_header("X-Forwarded-For", forwarded_for(upstream, peer))?;
    if let Some(client) = client {
        upstream.insert_header("X-Real-IP", client.to_string())?;
    }
    if !upstream.headers.contains_key("x-forwarded-proto") {
        upstream.insert_header("X-Forwarded-Proto", scheme)?;
    }
    if !upstream.headers.contains_key("x-forwarded-host") {
        if let Some(host) = forwarded_host(upstream) {
            upstream.insert_header("X-Forwarded-Host", host)?;
        }
    }
    Ok(())
}

fn header_error(e: http::header::InvalidHeaderValue) -> Box<pingora::Error> {
    pingora::Error::because(pingora::ErrorType::InternalError, "forwarded header", e)
}

/// `X-Forwarded-For` for the upstream request: the client's list with `peer` appended.
pub fn forwarded_for(req: &RequestHeader, peer: IpAddr) -> String {
    let mut out = String::new();
    for v in req.headers.get_all("x-forwarded-for") {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                out.push_str(s);
                out.push_str(", ");
            }
        }
    }
    let _ = write!(out, "{peer}");
    out
}

/// The `X-Forwarded-For` values as strings, in header order (for trusted-proxy resolution).
pub fn forwarded_for_values(req: &RequestHeader) -> impl DoubleEndedIterator<Item = &str> {
    req.headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// `X-Forwarded-Host`: the client's `Host`, or the authority of an absolute URI.
pub fn forwarded_host(req: &RequestHeader) -> Option<HeaderValue> {
    req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Where `redirect_http_to_https` sends a plain-HTTP request: the same host (without its
/// port), `https_port` unless it is 443, the same path and query. `None` without a usable host.
pub fn https_location(req: &RequestHeader, https_port: u16) -> Option<String> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let host = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => &host[..rest.find(']')? + 2],
        None => host.split(':').next().unwrap_or(host),
    };
    if host.is_empty() {
        return None;
    }
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    })
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
}

/// Whether the request asks to become a WebSocket: HTTP/1.1 with `Upgrade: websocket` (any
/// case). This is exactly the request pingora forwards as an upgrade (its default upstream
/// request policy strips every other `Upgrade`), so the timeouts chosen from it apply to the
/// streams that can switch.
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_location_keeps_host_path_and_query() {
        let req = |target: &str, host: &str| {
            let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            r.insert_header("Host", host).unwrap();
            r
        };
        let cases = [
            (
                "/a?b=1",
                "example.com:8080",
                8443,
                Some("https://example.com:8443/a?b=1"),
            ),
            ("/", "example.com", 443, Some("https://example.com/")),
            ("/x", "[::1]:8080", 8443, Some("https://[::1]:8443/x")),
            ("/x", "[::1]", 443, Some("https://[::1]/x")),
            ("/x", "", 443, None),
            ("/x", "[::1", 443, None),
        ];
        for (target, host, port, want) in cases {
            assert_eq!(
                https_location(&req(target, host), port).as_deref(),
                want,
                "{host}{target}"
            );
        }
    }

    #[test]
    fn request_ids_are_hex_and_distinct() {
        let ids = RequestIds::new(0xabcd);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(&a[..16], b"000000000000abcd");
    }

    #[test]
    fn keeps_only_sane_client_request_ids() {
        let ids = RequestIds::new(1);
        let cases = [
            ("abc-123", true),
            ("has space", false),
            (&*"x".repeat(129), false),
            (&*"x".repeat(128), true),
        ];
        for (v, kept) in cases {
            let hv = HeaderValue::from_str(v).unwrap();
            assert_eq!(acceptable_request_id(&hv), kept, "{v:?}");
            let got = ids.for_request(Some(&hv)).unwrap();
            assert_eq!(got == hv, kept, "{v:?}");
        }
        assert!(!acceptable_request_id(&HeaderValue::from_static("")));
        assert_eq!(ids.for_request(None).unwrap().len(), 32);
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&[], "10.1.2.3"),
            (&["1.1.1.1"], "1.1.1.1, 10.1.2.3"),
            (
                &["1.1.1.1, 2.2.2.2", "3.3.3.3"],
                "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3",
            ),
            (&[" "], "10.1.2.3"),
        ];
        for (existing, want) in cases {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            for v in *existing {
                req.append_header("X-Forwarded-For", *v).unwrap();
            }
            assert_eq!(forwarded_for(&req, client), *want, "{existing:?}");
            assert_eq!(forwarded_for_values(&req).count(), existing.len());
        }
    }

    #[test]
    fn forwarded_headers_are_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        const SPOOFED: [(&str, &str); 5] = [
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Real-IP", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
        ];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // (peer, client, sent, want: for, proto, host, real ip, forwarded)
        type Want = [Option<&'static str>; 5];
        type Case<'a> = (
            Option<IpAddr>,
            Option<IpAddr>,
            &'a [(&'a str, &'a str)],
            Want,
        );
        let cases: &[Case] = &[
            (
                ip("198.51.100.1"),
                ip("198.51.100.1"),
                &SPOOFED,
                [
                    Some("198.51.100.1"),
                    Some("http"),
                    Some("shop.example"),
                    Some("198.51.100.1"),
                    None,
                ],
            ),
            (
                ip("10.0.0.1"),
                ip("6.6.6.6"),
                &SPOOFED,
                [
                    Some("6.6.6.6, 10.0.0.1"),
                    Some("https"),
                    Some("evil.example"),
                    Some("6.6.6.6"),
                    Some("for=6.6.6.6"),
                ],
            ),
            (
                ip("10.0.0.1"),
                ip("10.0.0.1"),
                &[],
                [
                    Some("10.0.0.1"),
                    Some("http"),
                    Some("shop.example"),
                    Some("10.0.0.1"),
                    None,
                ],
            ),
            (
                None,
                None,
                &SPOOFED,
                [None, Some("http"), Some("shop.example"), None, None],
            ),
        ];
        for (peer, client, sent, want) in cases {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("Host", "shop.example").unwrap();
            for (k, v) in *sent {
                req.append_header(*k, *v).unwrap();
            }
            write_forwarded(&mut req, *peer, *client, &trusted, "http").unwrap();
            let names = [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-real-ip",
                "forwarded",
            ];
            for (name, want) in names.iter().zip(want) {
                let got: Vec<_> = req.headers.get_all(*name).iter().collect();
                assert_eq!(got, want.iter().collect::<Vec<_>>(), "{name} from {peer:?}");
            }
        }
    }

    #[test]
    fn forwarded_host_prefers_the_host_header() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.set_uri("http://a.example:81/x".parse().unwrap());
        assert_eq!(forwarded_host(&req).unwrap(), "a.example:81");
        req.insert_header("Host", "b.example").unwrap();
        assert_eq!(forwarded_host(&req).unwrap(), "b.example");
        let bare = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(forwarded_host(&bare), None);
    }

    #[test]
    fn finds_cookie_values() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("Cookie", "a=1; session=xyz").unwrap();
        req.append_header("Cookie", "sess=no; b=2").unwrap();
        assert_eq!(cookie_value(&req, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie_value(&req, "b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&req, "sess"), Some(&b"no"[..]));
        assert_eq!(cookie_value(&req, "c"), None);
    }

    #[test]
    fn recognises_websocket_upgrades() {
        use http::Version;
        // (version, Upgrade value; every request says `Connection: Upgrade`) -> WebSocket
        let cases = [
            (Version::HTTP_11, Some("websocket"), true),
            (Version::HTTP_11, Some("WebSocket"), true),
            (Version::HTTP_11, Some("h2c"), false),
            (Version::HTTP_11, Some("websocket, h2c"), false),
            (Version::HTTP_11, None, false),
            (Version::HTTP_10, Some("websocket"), false),
            (Version::HTTP_2, Some("websocket"), false),
        ];
        for (version, upgrade, want) in cases {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.set_version(version);
            req.insert_header("Connection", "Upgrade").unwrap();
            if let Some(upgrade) = upgrade {
                req.insert_header("Upgrade", upgrade).unwrap();
            }
            assert_eq!(is_websocket_upgrade(&req), want, "{version:?} {upgrade:?}");
        }
    }
}
