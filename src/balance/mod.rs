//! Backend selection: the eight strategies and their dispatch.
//!
//! Each strategy is a pingora `BackendSelection` in its own file. `Balancer` is the one
//! selector type the proxy's pingora `LoadBalancer` holds: it is built for the configured
//! [`Strategy`] and forwards to it. Selectors are rebuilt (and swapped in by pingora through
//! `ArcSwap`) whenever the backend set changes; live state they read (in-flight counts, latency
//! averages) lives in each backend's [`BackendState`](crate::backend::BackendState), carried in
//! the pingora `Backend`'s `ext`, so it survives rebuilds.
//!
//! Filtering is not a selector's job: a selector yields candidates in preference order and the
//! caller's `select_with` accept closure skips the ones that may not be used (unhealthy, tried,
//! full). Every selector eventually yields every backend, so a request finds an admitted backend
//! whenever one exists.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A load-balancing strategy, as named in the config file (`strategy:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Strict rotation over admitted backends.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm).
    WeightedRoundRobin,
    /// Fewest in-flight requests per unit of weight.
    LeastConnections,
    /// Lowest latency EWMA × (in-flight + 1).
    LeastResponseTime,
    /// Hash of the client IP address.
    IpHash,
    /// Weighted random.
    Random,
    /// Ketama ring over a configurable key.
    ConsistentHashing,
    /// Two weighted-random candidates, the less loaded wins.
    PowerOfTwoChoices,
}

impl Strategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [Strategy; 8] = [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnections,
        Strategy::LeastResponseTime,
        Strategy::IpHash,
        Strategy::Random,
        Strategy::ConsistentHashing,
        Strategy::PowerOfTwoChoices,
    ];

    /// The config-file name (`round_robin`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::LeastResponseTime => "least_response_time",
            Strategy::IpHash => "ip_hash",
            Strategy::Random => "random",
            Strategy::ConsistentHashing => "consistent_hashing",
            Strategy::PowerOfTwoChoices => "power_of_two_choices",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown strategy {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// What the hash-based strategies hash (`hash_key:` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client's IP address (`client_ip`, the default).
    #[default]
    ClientIp,
    /// A request header's value (`header:X-User-Id`).
    Header(http::HeaderName),
    /// A request cookie's value (`cookie:session`).
    Cookie(String),
    /// The request path without the query (`path`).
    Path,
}

impl FromStr for HashKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("invalid hash key {s:?}; expected client_ip, path, header:NAME or cookie:NAME")
        };
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashKey::ClientIp),
            None if s == "path" => Ok(HashKey::Path),
            Some(("header", name)) if !name.is_empty() => http::HeaderName::from_str(name)
                .map(HashKey::Header)
                .map_err(|_| format!("invalid header name {name:?} in hash key {s:?}")),
            Some(("cookie", name))
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) =>
            {
                Ok(HashKey::Cookie(name.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Path => f.write_str("path"),
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// Build-time settings of a [`Balancer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceConfig {
    /// Which strategy to build.
    pub strategy: Strategy,
    /// Seed of the random strategies' generator (fixed in tests, from the clock in production).
    pub seed: u64,
}

mod candidates;
pub mod consistent;
mod hash;
pub mod ip_hash;
pub mod key;
pub mod least_conn;
pub mod least_time;
pub mod p2c;
pub mod random;
mod ranking;
pub mod round_robin;
mod selector_input;
#[cfg(test)]
mod test_support;
pub mod weighted;
mod weighted_draw;

pub use key::RequestKey;

use std::collections::BTreeSet;
use std::sync::Arc;

use pingora_load_balancing::selection::{BackendIter, BackendSelection};

use pingora_load_balancing::Backend;

pub use candidates::{Pick, PickIter};

/// The selector the proxy's pingora `LoadBalancer` holds: one of the eight strategies, chosen by
/// [`BalanceConfig::strategy`] at build time. Each variant holds its strategy in an `Arc` so
/// that iterators can own it.
#[derive(Debug)]
pub enum Balancer {
    /// [`round_robin::RoundRobin`].
    RoundRobin(Arc<round_robin::RoundRobin>),
    /// [`weighted::WeightedRoundRobin`].
    WeightedRoundRobin(Arc<weighted::WeightedRoundRobin>),
    /// [`least_conn::LeastConnections`].
    LeastConnections(Arc<least_conn::LeastConnections>),
    /// [`least_time::LeastResponseTime`].
    LeastResponseTime(Arc<least_time::LeastResponseTime>),
    /// [`ip_hash::IpHash`].
    IpHash(Arc<ip_hash::IpHash>),
    /// [`random::Random`].
    Random(Arc<random::Random>),
    /// [`consistent::ConsistentHashing`].
    ConsistentHashing(Arc<consistent::ConsistentHashing>),
    /// [`p2c::PowerOfTwoChoices`].
    PowerOfTwoChoices(Arc<p2c::PowerOfTwoChoices>),
}

impl Balancer {
    /// The strategy this selector runs.
    pub fn strategy(&self) -> Strategy {
        match self {
            Balancer::RoundRobin(_) => Strategy::RoundRobin,
            Balancer::WeightedRoundRobin(_) => Strategy::WeightedRoundRobin,
            Balancer::LeastConnections(_) => Strategy::LeastConnections,
            Balancer::LeastResponseTime(_) => Strategy::LeastResponseTime,
            Balancer::IpHash(_) => Strategy::IpHash,
            Balancer::Random(_) => Strategy::Random,
            Balancer::ConsistentHashing(_) => Strategy::ConsistentHashing,
            Balancer::PowerOfTwoChoices(_) => Strategy::PowerOfTwoChoices,
        }
    }
}

impl BackendSelection for Balancer {
    type Iter = BalancerIter;
    type Config = BalanceConfig;

    fn build_with_config(backends: &BTreeSet<Backend>, config: &BalanceConfig) -> Self {
        let seed = config.seed;
        match config.strategy {
            Strategy::RoundRobin => {
                Balancer::RoundRobin(Arc::new(round_robin::RoundRobin::new(backends)))
            }
            Strategy::WeightedRoundRobin => {
                Balancer::WeightedRoundRobin(Arc::new(weighted::WeightedRoundRobin::new(backends)))
            }
            Strategy::LeastConnections => {
                Balancer::LeastConnections(Arc::new(least_conn::LeastConnections::new(backends)))
            }
            Strategy::LeastResponseTime => {
                Balancer::LeastResponseTime(Arc::new(least_time::LeastResponseTime::new(backends)))
            }
            Strategy::IpHash => Balancer::IpHash(Arc::new(ip_hash::IpHash::new(backends))),
            Strategy::Random => Balancer::Random(Arc::new(random::Random::new(backends, seed))),
            Strategy::ConsistentHashing => {
                Balancer::ConsistentHashing(Arc::new(consistent::ConsistentHashing::new(backends)))
            }
            Strategy::PowerOfTwoChoices => {
                Balancer::PowerOfTwoChoices(Arc::new(p2c::PowerOfTwoChoices::new(backends, seed)))
            }
        }
    }

    /// Round robin, seed 0.
    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(
            backends,
            &BalanceConfig {
                strategy: Strategy::RoundRobin,
                seed: 0,
            },
        )
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> BalancerIter {
        match &**self {
            Balancer::RoundRobin(s) => BalancerIter::RoundRobin(PickIter::new(s, key)),
            Balancer::WeightedRoundRobin(s) => {
                BalancerIter::WeightedRoundRobin(PickIter::new(s, key))
            }
            Balancer::LeastConnections(s) => BalancerIter::LeastConnections(PickIter::new(s, key)),
            Balancer::LeastResponseTime(s) => {
                BalancerIter::LeastResponseTime(PickIter::new(s, key))
            }
            Balancer::IpHash(s) => BalancerIter::IpHash(PickIter::new(s, key)),
            Balancer::Random(s) => BalancerIter::Random(PickIter::new(s, key)),
            Balancer::ConsistentHashing(s) => {
                BalancerIter::ConsistentHashing(PickIter::new(s, key))
            }
            Balancer::PowerOfTwoChoices(s) => {
                BalancerIter::PowerOfTwoChoices(PickIter::new(s, key))
            }
        }
    }
}

/// The candidates of one request, from whichever strategy the [`Balancer`] runs.
pub enum BalancerIter {
    /// From [`round_robin::RoundRobin`].
    RoundRobin(PickIter<round_robin::RoundRobin>),
    /// From [`weighted::WeightedRoundRobin`].
    WeightedRoundRobin(PickIter<weighted::WeightedRoundRobin>),
    /// From [`least_conn::LeastConnections`].
    LeastConnections(PickIter<least_conn::LeastConnections>),
    /// From [`least_time::LeastResponseTime`].
    LeastResponseTime(PickIter<least_time::LeastResponseTime>),
    /// From [`ip_hash::IpHash`].
    IpHash(PickIter<ip_hash::IpHash>),
    /// From [`random::Random`].
    Random(PickIter<random::Random>),
    /// From [`consistent::ConsistentHashing`].
    ConsistentHashing(PickIter<consistent::ConsistentHashing>),
    /// From [`p2c::PowerOfTwoChoices`].
    PowerOfTwoChoices(PickIter<p2c::PowerOfTwoChoices>),
}

impl BackendIter for BalancerIter {
    fn next(&mut self) -> Option<&Backend> {
        match self {
            BalancerIter::RoundRobin(it) => it.next(),
            BalancerIter::WeightedRoundRobin(it) => it.next(),
            BalancerIter::LeastConnections(it) => it.next(),
            BalancerIter::LeastResponseTime(it) => it.next(),
            BalancerIter::IpHash(it) => it.next(),
            BalancerIter::Random(it) => it.next(),
            BalancerIter::ConsistentHashing(it) => it.next(),
            BalancerIter::PowerOfTwoChoices(it) => it.next(),
        }
    }
}

/// The `max_iterations` to pass to pingora's `select_with` for `n_backends` backends.
///
/// Every strategy's iterator yields each backend exactly once and then `None` (consistent
/// hashing walks the Ketama ring itself and skips repeated owners), so `n_backends` steps
/// always reach every backend; the bound is twice that plus 16 so that it never is what ends a
/// search. A raw Ketama ring walk would need far more: up to `160 × sum(weights)` points.
pub fn max_iterations(n_backends: usize) -> usize {
    n_backends.saturating_mul(2).saturating_add(16)
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    fn config(strategy: Strategy) -> BalanceConfig {
        BalanceConfig { strategy, seed: 7 }
    }

    #[test]
    fn builds_the_configured_strategy() {
        let (set, _) = backend_set(&[1, 2, 3]);
        for strategy in Strategy::ALL {
            let balancer = Balancer::build_with_config(&set, &config(strategy));
            assert_eq!(balancer.strategy(), strategy);
            assert!(Arc::new(balancer).iter(b"k").next().is_some(), "{strategy}");
        }
        assert_eq!(Balancer::build(&set).strategy(), Strategy::RoundRobin);
    }

    #[test]
    fn no_backends_no_candidates() {
        for strategy in Strategy::ALL {
            let balancer = Arc::new(Balancer::build_with_config(
                &BTreeSet::new(),
                &config(strategy),
            ));
            assert!(balancer.iter(b"k").next().is_none(), "{strategy}");
        }
    }

    /// The raw iterator, without pingora's deduplication: each backend exactly once, then `None`.
    fn assert_yields_each_once(balancer: &Arc<Balancer>, n: usize, key: &[u8]) {
        let mut iter = balancer.iter(key);
        let mut seen = vec![0; n];
        while let Some(b) = iter.next() {
            seen[index(b)] += 1;
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "{}: {seen:?}",
            balancer.strategy()
        );
        assert!(iter.next().is_none());
    }

    #[tokio::test]
    async fn every_strategy_reaches_every_backend() {
        for n in [1, 3, 100] {
            let weights: Vec<u32> = (0..n).map(|i| 1 + (i as u32 * 7) % 5).collect();
            for strategy in Strategy::ALL {
                let lb = Lb::new(strategy, &weights).await;
                for key in [&b"10.0.0.1"[..], b"k2", b""] {
                    let mut offered = lb.offered(key);
                    assert_eq!(offered.len(), n, "{strategy} n={n}: offered twice");
                    offered.sort_unstable();
                    assert_eq!(offered, (0..n).collect::<Vec<_>>(), "{strategy} n={n}");
                }
                let (set, _) = backend_set(&weights);
                let balancer = Arc::new(Balancer::build_with_config(&set, &config(strategy)));
                for key in [&b"a"[..], b"b", b"c"] {
                    assert_yields_each_once(&balancer, n, key);
                }
            }
        }
    }

    #[test]
    fn backends_without_state_and_skewed_weights_work() {
        let mut set: BTreeSet<Backend> = (0..5)
            .map(|i| Backend::new_with_weight(&format!("127.0.0.1:{}", BASE_PORT + i), 1))
            .map(|b| b.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        set.insert(
            Backend::new_with_weight(&format!("127.0.0.1:{}", BASE_PORT + 5), 1000)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        for strategy in Strategy::ALL {
            let balancer = Arc::new(Balancer::build_with_config(&set, &config(strategy)));
            for key in [&b"a"[..], b"b", b"c", b"d"] {
                assert_yields_each_once(&balancer, 6, key);
            }
        }
    }

    #[test]
    fn every_backend_is_reachable_under_concurrency() {
        let (set, _) = backend_set(&[1, 2, 3, 1, 2, 3, 1, 2]);
        for strategy in Strategy::ALL {
            let balancer = Arc::new(Balancer::build_with_config(&set, &config(strategy)));
            std::thread::scope(|scope| {
                for t in 0..4_u32 {
                    let balancer = &balancer;
                    scope.spawn(move || {
                        for k in 0..2000_u32 {
                            let key = (t * 10_000 + k).to_be_bytes();
                            if k % 2 == 0 {
                                assert_yields_each_once(balancer, 8, &key);
                            } else {
                                // A typical request: the first or second candidate is taken.
                                let mut iter = balancer.iter(&key);
                                assert!(iter.next().is_some());
                            }
                        }
                    });
                }
            });
        }
    }
}
