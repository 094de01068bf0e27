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

// TEMPORARY stub (replaced by the balance branch)
#[allow(missing_docs)]
pub struct Balancer(std::sync::Arc<pingora_load_balancing::selection::RoundRobin>);
#[allow(missing_docs)]
pub fn max_iterations(n: usize) -> usize {
    n * 2 + 16
}
impl pingora_load_balancing::selection::BackendSelection for Balancer {
    type Iter = <pingora_load_balancing::selection::RoundRobin as pingora_load_balancing::selection::BackendSelection>::Iter;
    type Config = BalanceConfig;
    fn build(b: &std::collections::BTreeSet<pingora_load_balancing::Backend>) -> Self {
        Self(std::sync::Arc::new(
            pingora_load_balancing::selection::RoundRobin::build(b),
        ))
    }
    fn iter(self: &std::sync::Arc<Self>, key: &[u8]) -> Self::Iter {
        self.0.iter(key)
    }
}
