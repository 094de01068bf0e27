//! What Fulcrum knows about a backend while it runs: [`BackendState`] (its spec, live counters,
//! health view, breaker, current weight, draining flag) and the [`InFlightGuard`] that counts a
//! request against it for exactly as long as the request lives.
//!
//! A `BackendState` is shared (`Arc`) between the [`BackendSet`](super::BackendSet), the pingora
//! [`Backend`] that carries it in its `ext` field, the selectors built from those backends and
//! the requests in flight. It therefore survives selector rebuilds: adding or removing another
//! backend never resets its in-flight count or latency average. Everything here is atomics; no
//! I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use pingora_load_balancing::Backend;

use super::health::HealthTracker;
use super::peer::PeerTemplate;
use super::spec::{BackendServer, BackendSpec, Weight};
use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::histogram::DurationHistogram;

/// Number of classes a finished request is counted under: 1xx to 5xx, and "no response".
pub const STATUS_CLASSES: usize = 6;

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
    /// Finished requests whose last attempt came here, by the class of the status sent to the
    /// client (1xx..5xx, none).
    finished: [AtomicU64; STATUS_CLASSES],
    /// Their time from choosing this backend to its response headers.
    upstream: DurationHistogram,
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
            finished: Default::default(),
            upstream: DurationHistogram::default(),
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

    /// Counts one request sent to this backend.
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one finished request whose last attempt came here: `class` indexes
    /// 1xx..5xx and "no response" (out of range is ignored), `upstream` is its time to response
    /// headers.
    pub fn record_finished(&self, class: usize, upstream: Option<Duration>) {
        if let Some(c) = self.finished.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(d) = upstream {
            self.upstream.observe(d);
        }
    }

    /// Finished requests by class (see [`Self::record_finished`]).
    pub fn finished_by_class(&self) -> [u64; STATUS_CLASSES] {
        std::array::from_fn(|i| self.finished[i].load(Ordering::Relaxed))
    }

    /// Time to response headers of the finished requests.
    pub fn upstream_histogram(&self) -> &DurationHistogram {
        &self.upstream
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
    /// How to connect (TLS, SNI, verification, CA, protocol): built once, copied per attempt.
    peer: PeerTemplate,
    /// Live counters.
    pub stats: BackendStats,
    /// Active health-check view (unknown until the first check).
    pub health: HealthTracker,
    /// Circuit breaker, when `circuit_breaker_enabled` (swapped by a reload: see
    /// [`Self::set_breaker`]).
    pub breaker: ArcSwapOption<CircuitBreaker>,
    /// Current weight (the admin API can change it; `server.weight` is the initial one).
    weight: AtomicU32,
    /// Draining: no new requests; requests in flight finish.
    draining: AtomicBool,
}

impl BackendState {
    /// The live state of a validated backend, with a circuit breaker when `breaker` is given.
    pub fn new(spec: BackendSpec, breaker: Option<BreakerSettings>) -> Arc<Self> {
        let addr = spec.addr();
        let peer = spec.peer().clone();
        let server = spec.into_server();
        Arc::new(Self {
            addr,
            peer,
            stats: BackendStats::default(),
            health: HealthTracker::default(),
            weight: AtomicU32::new(server.weight),
            breaker: ArcSwapOption::new(breaker.map(|b| Arc::new(CircuitBreaker::new(b)))),
            draining: AtomicBool::new(false),
            server,
        })
    }

    /// Validates `server` (resolving its URL) and creates its state, without a breaker.
    pub fn validated(server: BackendServer) -> Result<Arc<Self>, super::InvalidField> {
        Ok(Self::new(BackendSpec::resolve(server)?, None))
    }

    /// The circuit breaker's state, or `disabled`.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker
            .load()
            .as_ref()
            .map_or("disabled", |b| b.state().as_str())
    }

    /// Closed→open transitions of the circuit breaker (0 without one).
    pub fn breaker_trips(&self) -> u64 {
        self.breaker.load().as_ref().map_or(0, |b| b.trips())
    }

    /// Gives the backend a breaker with `settings`, or none. A breaker it has keeps its state
    /// under the new thresholds ([`CircuitBreaker::reconfigured`]).
    pub(crate) fn set_breaker(&self, settings: Option<BreakerSettings>) {
        let current = self.breaker.load_full();
        let next = match (settings, current) {
            (None, _) => None,
            (Some(s), None) => Some(Arc::new(CircuitBreaker::new(s))),
            (Some(s), Some(old)) if old.settings() == s => return,
            (Some(s), Some(old)) => Some(Arc::new(old.reconfigured(s))),
        };
        self.breaker.store(next);
    }

    /// Whether this backend runs `spec` as it is, weight aside: same address, URL, capacity,
    /// tags, protocol and TLS settings (`tls_verify`, `ca_file` and the certificates in it).
    /// (A reload replaces a backend whose spec changed otherwise.)
    pub fn runs(&self, spec: &BackendSpec) -> bool {
        let (s, other) = (&self.server, spec.server());
        self.addr == spec.addr()
            && s.url == other.url
            && s.capacity == other.capacity
            && s.tags == other.tags
            && s.protocol == other.protocol
            && s.tls_verify == other.tls_verify
            && s.ca_file == other.ca_file
            && self.peer == *spec.peer()
    }

    /// How requests and health checks connect to this backend.
    pub fn peer_template(&self) -> &PeerTemplate {
        &self.peer
    }

    /// A pingora peer for one attempt at this backend: a copy of its template (scheme, SNI,
    /// verification, CA, ALPN, HTTP/2 options), without timeouts.
    pub fn new_peer(&self) -> pingora_core::upstreams::peer::HttpPeer {
        self.peer.peer()
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

    /// Changes the weight. Only [`BackendSet::set_weight`](super::BackendSet::set_weight)
    /// calls it, since the selectors must be rebuilt.
    pub(super) fn set_weight(&self, weight: Weight) {
        self.weight.store(weight.get(), Ordering::Relaxed);
    }

    /// Whether the backend is draining (takes no new requests).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts (true) or stops (false) draining. Outside this module only the
    /// [`BackendSet`](super::BackendSet) calls it (and unit tests building a lone state).
    pub(crate) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// The backend's configuration with its current weight.
    pub fn config(&self) -> BackendServer {
        BackendServer {
            weight: self.weight(),
            ..self.server.clone()
        }
    }

    /// Whether routing may send this backend a request, capacity and breaker aside: not
    /// unhealthy (unknown backends take traffic) and not draining. `/health` reports from the
    /// same rule.
    pub fn is_routable(&self) -> bool {
        self.health.status().admits() && !self.is_draining()
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
    /// Counts one more request in flight to `state`.
    pub fn new(state: Arc<BackendState>) -> Self {
        state.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { state }
    }

    /// Counts one more request in flight to `state` if that keeps it within its `capacity`
    /// (checked and reserved in one atomic step, so concurrent requests never overshoot). The
    /// request is counted in [`BackendStats::requests`] only when it is sent
    /// ([`BackendStats::record_request`]): a reservation given back unused counts nothing.
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let state = BackendState::validated(BackendServer::new("a", "http://127.0.0.1:1")).unwrap();
        let g1 = InFlightGuard::new(state.clone());
        let g2 = InFlightGuard::new(state.clone());
        assert_eq!(state.stats.in_flight(), 2);
        drop(g1);
        assert_eq!(state.stats.in_flight(), 1);
        drop(g2);
        assert_eq!(
            (state.stats.in_flight(), state.stats.requests()),
            (0, 0),
            "a reservation is no request until it is sent"
        );
        state.stats.record_request();
        assert_eq!(state.stats.requests(), 1);
    }

    #[test]
    fn a_changed_protocol_or_tls_setting_is_another_spec() {
        let spec = |f: fn(&mut BackendServer)| {
            let mut server = BackendServer::new("a", "https://127.0.0.1:1");
            f(&mut server);
            BackendSpec::resolve(server).unwrap()
        };
        let state = BackendState::new(spec(|_| ()), None);
        assert!(
            state.runs(&spec(|s| s.weight = 5)),
            "a weight is set, not replaced"
        );
        assert!(!state.runs(&spec(|s| s.protocol = super::super::UpstreamProtocol::H2)));
        assert!(!state.runs(&spec(|s| s.tls_verify = false)));
        assert!(!state.runs(&spec(|s| s.url = "http://127.0.0.1:1".into())));
        let peer = state.new_peer();
        assert_eq!(
            (peer.sni.as_str(), peer.options.verify_cert),
            ("127.0.0.1", true)
        );
    }

    #[test]
    fn try_new_respects_capacity() {
        let mut server = BackendServer::new("a", "http://127.0.0.1:1");
        server.capacity = 2;
        let state = BackendState::validated(server).unwrap();
        let g1 = InFlightGuard::try_new(&state).unwrap();
        let _g2 = InFlightGuard::try_new(&state).unwrap();
        assert!(InFlightGuard::try_new(&state).is_none());
        drop(g1);
        assert!(InFlightGuard::try_new(&state).is_some());
        let unlimited =
            BackendState::validated(BackendServer::new("b", "http://127.0.0.1:2")).unwrap();
        let guards: Vec<_> = (0..100)
            .filter_map(|_| InFlightGuard::try_new(&unlimited))
            .collect();
        assert_eq!(guards.len(), 100);
    }
}
