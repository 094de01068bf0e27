//! Per-client rate limiting, and who the client is.
//!
//! [`RateLimiter`]: `rate_limit: {requests_per_second: R, burst: B}` allows each client IP about
//! `B` requests in a sliding window of `B / R` seconds (`B` is raised to `R` if smaller): a burst
//! of `B` at once, `R` per second sustained, like a token bucket of size `B` refilled at `R`/s.
//! The window is estimated from two fixed intervals (pingora-limits' proportional estimate), so
//! a client that times its requests to an interval boundary can get up to about `2B` through in
//! one window. Counts live in
//! pingora-limits' [`Rate`], a fixed-size lock-free count-min sketch: memory does not grow with
//! the number of clients, and a hash collision can only over-count (limit a client early), never
//! let one through. Refused requests are not counted, so a client that backs off gets back in.
//!
//! [`TrustedProxies`]: the client is the socket peer, unless the peer is a trusted proxy; then it
//! is the right-most `X-Forwarded-For` entry that is not itself trusted. A client can put
//! anything in its own `X-Forwarded-For`, so entries left of the first untrusted one are never
//! believed.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use pingora_limits::rate::Rate;

/// Count-min sketch rows.
const SKETCH_HASHES: usize = 4;
/// Count-min sketch columns: 16 times pingora-limits' default, so that tens of thousands of
/// active clients rarely collide into a false 429 (about 1 MiB for the two intervals).
const SKETCH_SLOTS: usize = 16 * 1024;

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The window's limit (`burst`), for `X-RateLimit-Limit`.
    pub limit: u64,
    /// Requests left in the current window, for `X-RateLimit-Remaining`.
    pub remaining: u64,
    /// Whole seconds to wait before retrying, for `Retry-After` (at least 1).
    pub retry_after: u64,
}

/// Requests per sliding window, per client IP.
pub struct RateLimiter {
    rate: Rate,
    burst: u64,
    window: Duration,
}

impl RateLimiter {
    /// A limiter allowing `burst` requests per `burst / requests_per_second` seconds. A `burst`
    /// below `requests_per_second` is raised to it: pingora-limits' estimator needs windows of
    /// at least a second (its interval reset asserts on shorter ones).
    pub fn new(requests_per_second: u32, burst: u32) -> Result<Self, String> {
        if requests_per_second == 0 || burst == 0 {
            return Err("requests_per_second and burst must be at least 1".into());
        }
        let burst = burst.max(requests_per_second);
        let window = Duration::from_secs_f64(f64::from(burst) / f64::from(requests_per_second));
        Ok(Self {
            rate: Rate::new_with_estimator_config(window, SKETCH_HASHES, SKETCH_SLOTS),
            burst: u64::from(burst),
            window,
        })
    }

    /// The sliding window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Decides for one request from `client`, counting it when allowed.
    pub fn check(&self, client: &IpAddr) -> Decision {
        let used = self.rate.rate_with(client, |c| {
            c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
        });
        decide(used, self.burst, self.window, || {
            self.rate.observe(client, 1);
        })
    }
}

/// The pure decision: `used` requests (estimated) already in the window.
fn decide(used: f64, burst: u64, window: Duration, count: impl FnOnce()) -> Decision {
    let used_whole = used.ceil().max(0.0) as u64;
    let retry_after = window.as_secs_f64().ceil().max(1.0) as u64;
    if used_whole < burst {
        count();
        Decision {
            allowed: true,
            limit: burst,
            remaining: burst - used_whole - 1,
            retry_after,
        }
    } else {
        Decision {
            allowed: false,
            limit: burst,
            remaining: 0,
            retry_after,
        }
    }
}

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

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(
            addr.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?,
        );
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: prefix length must be 0 to {max}")),
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
    fn decisions() {
        let w = Duration::from_millis(500);
        // (used in window, burst) -> (allowed, remaining)
        let cases = [
            (0.0, 5, true, 4),
            (3.2, 5, true, 0),
            (4.0, 5, true, 0),
            (5.0, 5, false, 0),
            (9.0, 5, false, 0),
        ];
        for (used, burst, allowed, remaining) in cases {
            let mut counted = false;
            let d = decide(used, burst, w, || counted = true);
            assert_eq!(
                (d.allowed, d.remaining, counted),
                (allowed, remaining, allowed),
                "{used}"
            );
            assert_eq!((d.limit, d.retry_after), (burst, 1));
        }
        assert_eq!(
            decide(0.0, 1, Duration::from_millis(2500), || {}).retry_after,
            3
        );
    }

    #[test]
    fn limiter_allows_the_burst_then_refuses_per_client() {
        let limiter = RateLimiter::new(10, 20).unwrap();
        assert_eq!(limiter.window(), Duration::from_secs(2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let allowed = (0..50).filter(|_| limiter.check(&a).allowed).count();
        assert_eq!(allowed, 20);
        assert!(limiter.check(&b).allowed, "another client is unaffected");
        assert!(RateLimiter::new(0, 1).is_err());
        let raised = RateLimiter::new(100, 10).unwrap();
        assert_eq!(
            raised.window(),
            Duration::from_secs(1),
            "never under a second"
        );
    }

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
