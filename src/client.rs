//! Who the client is: the socket peer, the proxies trusted to speak for it, and what their
//! `X-Forwarded-For` says.
//!
//! [`TrustedProxies`]: the client is the socket peer, unless the peer is a trusted proxy; then it
//! is the right-most `X-Forwarded-For` entry that is not itself trusted. A client can put
//! anything in its own `X-Forwarded-For`, so entries left of the first untrusted one are never
//! believed.

use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `::1/128` (a bare address means a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical(*ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a `trusted_proxies` entry is not a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address (the whole entry is kept).
    NotAnAddress(String),
    /// The prefix length is not a number from 0 to `max`.
    Prefix {
        /// The whole entry.
        entry: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
}

impl std::fmt::Display for CidrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAnAddress(s) => write!(f, "{s:?} is not an IP address or CIDR network"),
            Self::Prefix { entry, max } => {
                write!(f, "{entry:?}: prefix length must be 0 to {max}")
            }
        }
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(
            addr.trim()
                .parse::<IpAddr>()
                .map_err(|_| CidrError::NotAnAddress(s.to_string()))?,
        );
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(CidrError::Prefix {
                        entry: s.to_string(),
                        max,
                    })
                }
            },
        };
        Ok(Self { addr, prefix })
    }
}

/// The networks whose `X-Forwarded-For` Fulcrum believes (`trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
}

impl TrustedProxies {
    /// Trusts these networks.
    pub fn new(networks: Vec<Cidr>) -> Self {
        Self { networks }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: &IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// The client's address: `peer`, or when `peer` is trusted, the right-most entry of the
    /// `X-Forwarded-For` values (in header order) that is not trusted. Unparsable entries stop
    /// the walk: everything left of them is the client's own claim.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        if self.networks.is_empty() || !self.trusts(&peer) {
            return peer;
        }
        let mut client = peer;
        for entry in forwarded_for.rev().flat_map(|v| v.rsplit(',')) {
            match parse_forwarded_ip(entry) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(&ip) {
                        return ip;
                    }
                }
                None => return client,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_cidrs() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("::1/128", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("10.0.0.0/8", "::ffff:10.1.1.1", true),
            ("10.0.0.0/8", "fd00::1", false),
        ];
        for (net, ip, want) in cases {
            let c: Cidr = net.parse().unwrap();
            assert_eq!(c.contains(&ip.parse().unwrap()), want, "{net} ∋ {ip}");
        }
        assert_eq!(
            "10.1.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn client_ip_walks_forwarded_for_from_the_right() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer_trusted: IpAddr = "10.0.0.1".parse().unwrap();
        let peer_untrusted: IpAddr = "198.51.100.1".parse().unwrap();
        let cases: &[(IpAddr, &[&str], &str)] = &[
            (peer_untrusted, &["1.2.3.4"], "198.51.100.1"),
            (peer_trusted, &[], "10.0.0.1"),
            (peer_trusted, &["1.2.3.4"], "1.2.3.4"),
            (peer_trusted, &["6.6.6.6, 1.2.3.4"], "1.2.3.4"),
            (peer_trusted, &["6.6.6.6, 1.2.3.4, 10.0.0.9"], "1.2.3.4"),
            (peer_trusted, &["6.6.6.6", "1.2.3.4:5678"], "1.2.3.4"),
            (peer_trusted, &["garbage, 10.0.0.9"], "10.0.0.9"),
            (peer_trusted, &["10.0.0.8, 10.0.0.9"], "10.0.0.8"),
        ];
        for (peer, xff, want) in cases {
            let got = trusted.client_ip(*peer, xff.iter().copied());
            assert_eq!(got.to_string(), *want, "{peer} {xff:?}");
        }
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(peer_trusted, ["1.2.3.4"].into_iter()),
            peer_trusted
        );
    }
}
