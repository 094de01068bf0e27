//! Backends: what a backend *is* ([`BackendServer`], from config or the API) and what Fulcrum
//! knows about it while running ([`BackendState`]: live counters and health, kept in the
//! [`Registry`] by id).
//!
//! A `BackendState` is shared (`Arc`) between the registry, the pingora [`Backend`] that carries it
//! in its `ext` field, the selectors built from those backends and the requests in flight. It
//! therefore survives selector rebuilds: adding or removing another backend never resets its
//! in-flight count or latency average. This module never does I/O except resolving a backend
//! URL's host name once, when the backend is created.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_load_balancing::Backend;
use serde::{Deserialize, Serialize};

use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::health::HealthTracker;

/// Largest accepted backend weight. Smooth weighted round robin precomputes one period of
/// `sum(weights)` picks, so weights are kept in a range where that table stays small.
pub const MAX_WEIGHT: u32 = 1000;

/// One upstream server, as written in the config file (`backends:`) or posted to the API.
///
/// The seed's `BackendServer`: `id`, `url`, `weight`, `capacity`, `tags`. Its `HealthStatus` is
/// not configuration: it lives in [`BackendState::health`].
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

    /// Checks every field and resolves the URL to a socket address.
    ///
    /// Errors name the offending field (`url: ...`, `weight: ...`); the caller prefixes the
    /// backend's position or id.
    pub fn validate(&self) -> Result<SocketAddr, String> {
        validate_id(&self.id)?;
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            return Err(format!(
                "weight: must be between 1 and {MAX_WEIGHT}, got {}",
                self.weight
            ));
        }
        let url = UpstreamUrl::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        url.resolve().map_err(|e| format!("url: {e}"))
    }
}

/// Ids go into metric labels, URLs (`/api/backends/{id}`) and logs, so they are kept simple.
fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id: must not be empty".into());
    }
    if id.len() > 128 {
        return Err(format!("id: longer than 128 characters: {id:?}"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "id: {id:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
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

/// Lock-free counters of one backend, updated by every request.
#[derive(Debug)]
pub struct BackendStats {
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 5],
    /// Exponentially weighted moving average of the time to response headers, in nanoseconds,
    /// stored as `f64` bits; [`UNMEASURED`] until the first sample.
    latency_ewma: AtomicU64,
    /// Finished requests by status class and their upstream-duration histogram, written by
    /// [`crate::metrics::Metrics`].
    metrics: crate::metrics::BackendMetrics,
}

const UNMEASURED: u64 = u64::MAX;

/// Weight of a new latency sample in the moving average.
pub const EWMA_ALPHA: f64 = 0.3;

/// Next value of an exponentially weighted moving average (`prev` is `None` before the first
/// sample, which is then taken as is).
pub fn ewma_next(prev: Option<f64>, sample: f64, alpha: f64) -> f64 {
    match prev {
        None => sample,
        Some(p) => p + alpha * (sample - p),
    }
}

impl Default for BackendStats {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            responses: Default::default(),
            latency_ewma: AtomicU64::new(UNMEASURED),
            metrics: Default::default(),
        }
    }
}

impl BackendStats {
    /// Requests currently being proxied to this backend.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since it was added.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Finished requests whose last attempt came here, by status class, and their time to
    /// response headers (see [`crate::metrics`]).
    pub fn metrics(&self) -> &crate::metrics::BackendMetrics {
        &self.metrics
    }

    /// Requests to this backend that failed (connect error or error while proxying).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts one response from this backend by its status class.
    pub fn record_response(&self, status: u16) {
        if let Some(c) = self
            .responses
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Responses counted so far by class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub fn responses_by_class(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed))
    }

    /// Records one failed attempt.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Moving average of the time to response headers; `None` before the first response.
    pub fn latency_ewma(&self) -> Option<Duration> {
        self.latency_ewma_nanos()
            .map(|ns| Duration::from_nanos(ns as u64))
    }

    /// [`Self::latency_ewma`] in nanoseconds, as selectors read it.
    pub fn latency_ewma_nanos(&self) -> Option<f64> {
        match self.latency_ewma.load(Ordering::Relaxed) {
            UNMEASURED => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// Folds one time-to-response-headers sample into the moving average.
    pub fn record_latency(&self, sample: Duration) {
        let sample = sample.as_nanos() as f64;
        let mut current = self.latency_ewma.load(Ordering::Relaxed);
        loop {
            let prev = (current != UNMEASURED).then(|| f64::from_bits(current));
            let next = ewma_next(prev, sample, EWMA_ALPHA).to_bits();
            match self.latency_ewma.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Everything Fulcrum tracks about one backend while it runs.
#[derive(Debug)]
pub struct BackendState {
    /// The backend's configuration.
    pub server: BackendServer,
    /// The resolved address requests are sent to.
    pub addr: SocketAddr,
    /// Live counters.
    pub stats: BackendStats,
    /// Active health-check view (unknown until the first check).
    pub health: HealthTracker,
    /// Circuit breaker, when `circuit_breaker_enabled`.
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// Current weight (the admin API can change it; `server.weight` is the initial one).
    weight: AtomicU32,
    /// Draining: no new requests; requests in flight finish.
    draining: AtomicBool,
}

impl BackendState {
    /// Validates `server` and creates its state, without a circuit breaker.
    pub fn new(server: BackendServer) -> Result<Arc<Self>, String> {
        Self::with_breaker(server, None)
    }

    /// Validates `server` and creates its state, with a breaker when `breaker` is given.
    pub fn with_breaker(
        server: BackendServer,
        breaker: Option<BreakerSettings>,
    ) -> Result<Arc<Self>, String> {
        let addr = server
            .validate()
            .map_err(|e| format!("backend {:?}: {e}", server.id))?;
        Ok(Self::build(server, addr, breaker))
    }

    /// A state for `server` at `addr`, without validation (for backends pingora built itself).
    pub(crate) fn build(
        server: BackendServer,
        addr: SocketAddr,
        breaker: Option<BreakerSettings>,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            stats: BackendStats::default(),
            health: HealthTracker::default(),
            weight: AtomicU32::new(server.weight),
            breaker: breaker.map(|b| Arc::new(CircuitBreaker::new(b))),
            draining: AtomicBool::new(false),
            server,
        })
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.server.id
    }

    /// A pingora [`Backend`] for this state: address and weight, with the state in `ext`.
    pub fn to_backend(self: &Arc<Self>) -> Backend {
        let mut backend = Backend {
            addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(self.addr),
            weight: self.weight() as usize,
            ext: http::Extensions::new(),
        };
        backend.ext.insert(self.clone());
        backend
    }

    /// The current weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight. The caller rebuilds the selector (the pingora backend set changes).
    pub fn set_weight(&self, weight: u32) -> Result<(), String> {
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(format!(
                "weight: must be between 1 and {MAX_WEIGHT}, got {weight}"
            ));
        }
        self.weight.store(weight, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the backend is draining (takes no new requests).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts (true) or stops (false) draining.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// The backend's configuration with its current weight.
    pub fn config(&self) -> BackendServer {
        BackendServer {
            weight: self.weight(),
            ..self.server.clone()
        }
    }

    /// True while a new request may be sent here without exceeding `capacity`.
    pub fn has_capacity(&self) -> bool {
        self.server.capacity == 0 || self.stats.in_flight() < self.server.capacity
    }
}

/// The [`BackendState`] a pingora [`Backend`] carries, if it was made by
/// [`BackendState::to_backend`].
pub fn state_of(backend: &Backend) -> Option<&Arc<BackendState>> {
    backend.ext.get::<Arc<BackendState>>()
}

/// Counts one request in flight to a backend for as long as it lives: created when the backend
/// is chosen, dropped on every exit path (response, error, retry, client abort).
#[derive(Debug)]
pub struct InFlightGuard {
    state: Arc<BackendState>,
}

impl InFlightGuard {
    /// Counts a new request to `state`.
    pub fn new(state: Arc<BackendState>) -> Self {
        state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        state.stats.requests.fetch_add(1, Ordering::Relaxed);
        Self { state }
    }

    /// Counts a new request to `state` if that keeps it within its `capacity` (checked and
    /// reserved in one atomic step, so concurrent requests never overshoot).
    pub fn try_new(state: &Arc<BackendState>) -> Option<Self> {
        let capacity = state.server.capacity;
        if capacity > 0 {
            state
                .stats
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < capacity).then_some(n + 1)
                })
                .ok()?;
        } else {
            state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        state.stats.requests.fetch_add(1, Ordering::Relaxed);
        Some(Self {
            state: state.clone(),
        })
    }

    /// The backend this guard counts against.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All backends by id, in the order they were added. Rebuilt and swapped (never locked) when a
/// backend is added or removed.
#[derive(Debug, Default)]
pub struct Registry {
    backends: ArcSwap<Vec<Arc<BackendState>>>,
    breaker: Option<BreakerSettings>,
}

impl Registry {
    /// An empty registry whose backends have no circuit breaker.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry whose backends each get a circuit breaker with these settings.
    pub fn with_breakers(breaker: Option<BreakerSettings>) -> Self {
        Self {
            breaker,
            ..Self::default()
        }
    }

    /// A snapshot of all backends.
    pub fn snapshot(&self) -> Arc<Vec<Arc<BackendState>>> {
        self.backends.load_full()
    }

    /// The backend with this id.
    pub fn get(&self, id: &str) -> Option<Arc<BackendState>> {
        self.backends.load().iter().find(|b| b.id() == id).cloned()
    }

    /// Adds a backend; its id and address must be new.
    pub fn add(&self, server: BackendServer) -> Result<Arc<BackendState>, String> {
        let state = BackendState::with_breaker(server, self.breaker)?;
        let mut result = Ok(state.clone());
        self.backends.rcu(|current| {
            let mut next = Vec::clone(current);
            result = match current.iter().find(|b| b.id() == state.id()) {
                Some(_) => Err(format!("backend {:?}: id already exists", state.id())),
                None => match current.iter().find(|b| b.addr == state.addr) {
                    Some(other) => Err(format!(
                        "backend {:?}: url {} has the same address as backend {:?}",
                        state.id(),
                        state.server.url,
                        other.id()
                    )),
                    None => {
                        next.push(state.clone());
                        Ok(state.clone())
                    }
                },
            };
            next
        });
        result
    }

    /// Removes the backend with this id and returns it.
    pub fn remove(&self, id: &str) -> Option<Arc<BackendState>> {
        let mut removed = None;
        self.backends.rcu(|current| {
            removed = current.iter().find(|b| b.id() == id).cloned();
            current
                .iter()
                .filter(|b| b.id() != id)
                .cloned()
                .collect::<Vec<_>>()
        });
        removed
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.load().len()
    }

    /// True when there is no backend.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    fn validates_fields() {
        let ok = BackendServer::new("web-1.a_b", "http://127.0.0.1:1");
        assert_eq!(ok.validate(), Ok("127.0.0.1:1".parse().unwrap()));
        let cases = [
            (
                BackendServer::new("", "http://127.0.0.1:1"),
                "id: must not be empty",
            ),
            (
                BackendServer::new("a b", "http://127.0.0.1:1"),
                "id: \"a b\"",
            ),
            (ok.clone().with_weight(0), "weight: must be between 1"),
            (
                ok.clone().with_weight(MAX_WEIGHT + 1),
                "weight: must be between 1",
            ),
            (BackendServer::new("a", "nope"), "url: "),
        ];
        for (server, want) in cases {
            let err = server.validate().unwrap_err();
            assert!(err.contains(want), "{server:?}: {err}");
        }
    }

    #[test]
    fn ewma_moves_towards_samples() {
        assert_eq!(ewma_next(None, 100.0, 0.3), 100.0);
        assert!((ewma_next(Some(100.0), 200.0, 0.3) - 130.0).abs() < 1e-9);
        let stats = BackendStats::default();
        assert_eq!(stats.latency_ewma(), None);
        stats.record_latency(Duration::from_millis(10));
        stats.record_latency(Duration::from_millis(20));
        assert_eq!(stats.latency_ewma(), Some(Duration::from_millis(13)));
    }

    #[test]
    fn guard_counts_in_flight_until_dropped() {
        let state = BackendState::new(BackendServer::new("a", "http://127.0.0.1:1")).unwrap();
        let g1 = InFlightGuard::new(state.clone());
        let g2 = InFlightGuard::new(state.clone());
        assert_eq!(state.stats.in_flight(), 2);
        drop(g1);
        assert_eq!(state.stats.in_flight(), 1);
        drop(g2);
        assert_eq!((state.stats.in_flight(), state.stats.requests()), (0, 2));
    }

    #[test]
    fn try_new_respects_capacity() {
        let mut server = BackendServer::new("a", "http://127.0.0.1:1");
        server.capacity = 2;
        let state = BackendState::new(server).unwrap();
        let g1 = InFlightGuard::try_new(&state).unwrap();
        let _g2 = InFlightGuard::try_new(&state).unwrap();
        assert!(InFlightGuard::try_new(&state).is_none());
        drop(g1);
        assert!(InFlightGuard::try_new(&state).is_some());
        let unlimited = BackendState::new(BackendServer::new("b", "http://127.0.0.1:2")).unwrap();
        let guards: Vec<_> = (0..100)
            .filter_map(|_| InFlightGuard::try_new(&unlimited))
            .collect();
        assert_eq!(guards.len(), 100);
    }

    #[test]
    fn registry_rejects_duplicates_and_keeps_state_across_changes() {
        let reg = Registry::new();
        let a = reg
            .add(BackendServer::new("a", "http://127.0.0.1:1"))
            .unwrap();
        let _guard = InFlightGuard::new(a.clone());
        reg.add(BackendServer::new("b", "http://127.0.0.1:2"))
            .unwrap();
        let dup_id = reg
            .add(BackendServer::new("a", "http://127.0.0.1:3"))
            .unwrap_err();
        assert!(dup_id.contains("id already exists"), "{dup_id}");
        let dup_addr = reg
            .add(BackendServer::new("c", "http://127.0.0.1:2"))
            .unwrap_err();
        assert!(
            dup_addr.contains("same address as backend \"b\""),
            "{dup_addr}"
        );
        assert!(reg.remove("b").is_some());
        assert!(reg.remove("b").is_none());
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.get("a").unwrap().stats.in_flight(), 1);
        let backend = reg.get("a").unwrap().to_backend();
        assert!(Arc::ptr_eq(state_of(&backend).unwrap(), &a));
    }
}
