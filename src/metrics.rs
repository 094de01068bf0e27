//! Metrics: what Fulcrum counts on the request path and how the admin listener shows it.
//!
//! This module owns
//! - the process-wide counters ([`Metrics`]): requests by status class, request durations, a
//!   10-second request-rate window, retries, spent retry budgets, rate-limited requests and open
//!   client connections;
//! - the per-backend counters that only metrics write ([`BackendMetrics`], kept in each backend's
//!   [`BackendStats`](crate::backend::BackendStats) so they live and die with the backend);
//! - both renderings: Prometheus text ([`Metrics::prometheus_text`]) and the seed's JSON
//!   snapshot ([`Metrics::json_snapshot`]).
//!
//! The hot path (`record_*`, `connection_*`) only touches atomics: plain `fetch_add`s, the
//! `prometheus` crate's lock-free counters and histogram whose handles are created once, and a
//! compare-and-swap for the rate window. Nothing is allocated and no label is looked up per
//! request. Everything that is *state* rather than a count (in flight, health, breaker, weight,
//! draining) is read from the backends at scrape time, so a removed backend disappears from the
//! next scrape.
//!
//! Each [`Metrics`] has its own `prometheus::Registry` (never the global default one), so several
//! load balancers can run in one process. Per-backend families are built at scrape time from the
//! backends given to the renderer and encoded together with the registry's families.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pingora_prometheus::prometheus::proto::{
    Bucket, Counter as CounterProto, Gauge as GaugeProto, Histogram as HistogramProto, LabelPair,
    Metric, MetricFamily, MetricType,
};
use pingora_prometheus::prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde_json::{json, Map, Value};

use crate::backend::BackendState;
use crate::balance::Strategy;
use crate::breaker::BreakerState;
use crate::health::HealthStatus;

/// Fulcrum's version, as reported by `fulcrum_build_info` and the JSON snapshot.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`DURATION_BUCKETS`] in nanoseconds, for integer comparisons on the hot path.
const BUCKET_NANOS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Status classes in counter order; the last one is "no response was sent".
pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Index of `none` in [`CODE_CLASSES`].
const NO_RESPONSE: usize = 5;
/// Index of `5xx` in [`CODE_CLASSES`].
const SERVER_ERROR: usize = 4;

/// Index into [`CODE_CLASSES`] of a status sent to the client (0, or anything outside
/// 100..=599, is `none`).
pub fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => NO_RESPONSE,
    }
}

/// The `code_class` label of a status: `1xx`..`5xx`, or `none` when no response was sent.
pub fn code_class(status: u16) -> &'static str {
    CODE_CLASSES[class_index(status)]
}

/// Saturating conversion of a duration to nanoseconds.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A lock-free histogram of durations over [`DURATION_BUCKETS`].
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKET_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a [`DurationHistogram`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per bound in [`DURATION_BUCKETS`].
    pub cumulative: [u64; BUCKET_NANOS.len()],
    /// Samples observed (the `+Inf` bucket).
    pub count: u64,
    /// Sum of all samples, in seconds.
    pub sum_seconds: f64,
}

impl DurationHistogram {
    /// Adds one sample (two relaxed `fetch_add`s).
    pub fn observe(&self, d: Duration) {
        let ns = nanos(d);
        let i = BUCKET_NANOS.partition_point(|&bound| bound < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(ns, Ordering::Relaxed);
    }

    /// Reads the buckets; the count is their sum, so it always equals the `+Inf` bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; BUCKET_NANOS.len()];
        let mut running = 0u64;
        for (i, slot) in cumulative.iter_mut().enumerate() {
            running += self.buckets[i].load(Ordering::Relaxed);
            *slot = running;
        }
        let count = running + self.buckets[BUCKET_NANOS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Per-backend counters written only by [`Metrics::record_request`]: finished requests whose last
/// attempt went to this backend, by status class, and their time to response headers.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    by_class: [AtomicU64; CODE_CLASSES.len()],
    upstream: DurationHistogram,
}

impl BackendMetrics {
    /// Finished requests by class, in [`CODE_CLASSES`] order.
    pub fn requests_by_class(&self) -> [u64; CODE_CLASSES.len()] {
        std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed))
    }

    /// Time from choosing this backend to its response headers.
    pub fn upstream(&self) -> &DurationHistogram {
        &self.upstream
    }

    fn record(&self, class: usize, upstream: Option<Duration>) {
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        if let Some(d) = upstream {
            self.upstream.observe(d);
        }
    }
}

/// What one finished request looked like, for the counters.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    /// Status sent to the client (0 if none was sent).
    pub status: u16,
    /// Time from the request head to the end of the response.
    pub total: Duration,
    /// Time from choosing the last backend to its response headers.
    pub upstream: Option<Duration>,
    /// The backend of the last attempt.
    pub backend: Option<&'a Arc<BackendState>>,
    /// Attempts made (0 when no backend was tried).
    pub attempts: u32,
}

/// Seconds the request rate is averaged over.
pub const RATE_WINDOW_SECS: u64 = 10;
const RATE_SLOTS: usize = 16;
const LOW32: u64 = 0xffff_ffff;

/// Requests per second over the last [`RATE_WINDOW_SECS`]: a ring of one-second buckets, each an
/// `AtomicU64` holding `second << 32 | count`, so a bucket from an older second is recognised
/// and restarted in the same compare-and-swap that counts.
#[derive(Debug, Default)]
struct RateWindow {
    slots: [AtomicU64; RATE_SLOTS],
}

impl RateWindow {
    fn slot(&self, second: u64) -> &AtomicU64 {
        &self.slots[(second % RATE_SLOTS as u64) as usize]
    }

    /// Counts one request at `elapsed` since start.
    fn tick(&self, elapsed: Duration) {
        let second = elapsed.as_secs();
        let stamp = second & LOW32;
        let _ = self
            .slot(second)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(if v >> 32 != stamp {
                    stamp << 32 | 1
                } else if v & LOW32 == LOW32 {
                    v
                } else {
                    v + 1
                })
            });
    }

    /// Requests per second between the start of the window's first second and `elapsed`
    /// (at least one second, so a burst right after start does not read as a huge rate).
    fn rate(&self, elapsed: Duration) -> f64 {
        let now = elapsed.as_secs();
        let first = now.saturating_sub(RATE_WINDOW_SECS - 1);
        let count: u64 = (first..=now)
            .map(|s| {
                let v = self.slot(s).load(Ordering::Relaxed);
                if v >> 32 == s & LOW32 {
                    v & LOW32
                } else {
                    0
                }
            })
            .sum();
        let span = (elapsed.as_secs_f64() - first as f64).max(1.0);
        count as f64 / span
    }
}

/// The families kept in this instance's `prometheus::Registry`, with their handles cached.
#[derive(Debug)]
struct Prom {
    registry: Registry,
    request_duration: Histogram,
    retries: IntCounter,
    budget_exhausted: IntCounter,
    rate_limited: IntCounter,
    client_connections: IntGauge,
}

impl Prom {
    fn new(strategy: Strategy) -> pingora_prometheus::prometheus::Result<Self> {
        let registry = Registry::new();
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "fulcrum_request_duration_seconds",
                "Time from a request's head to the end of its response, as the client sees it.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let retries = IntCounter::new(
            "fulcrum_retries_total",
            "Attempts retried on another backend after a failure.",
        )?;
        let budget_exhausted = IntCounter::new(
            "fulcrum_retry_budget_exhausted_total",
            "Retries refused because the retry budget was spent.",
        )?;
        let rate_limited = IntCounter::new(
            "fulcrum_rate_limited_requests_total",
            "Requests refused with 429 by the per-client rate limiter.",
        )?;
        let client_connections = IntGauge::new(
            "fulcrum_client_connections",
            "Client connections currently open on the traffic listeners.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "fulcrum_build_info",
                "Always 1; labels give Fulcrum's version and load-balancing strategy.",
            ),
            &["version", "strategy"],
        )?;
        build_info
            .with_label_values(&[VERSION, strategy.as_str()])
            .set(1);
        let start_time = Gauge::new(
            "fulcrum_start_time_seconds",
            "When this load balancer started, in seconds since the Unix epoch.",
        )?;
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(client_connections.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(start_time))?;
        Ok(Self {
            registry,
            request_duration,
            retries,
            budget_exhausted,
            rate_limited,
            client_connections,
        })
    }
}

/// All of Fulcrum's metrics.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    strategy: Strategy,
    started: Instant,
    /// Every finished request by class (backend or not).
    requests: [AtomicU64; CODE_CLASSES.len()],
    /// Finished requests that never got a backend (`backend="none"`), by class.
    unrouted: [AtomicU64; CODE_CLASSES.len()],
    /// Sum of the client-side durations, for the JSON average.
    total_nanos: AtomicU64,
    rate: RateWindow,
    /// `None` only if the registry could not be built (a bug; logged, and the tests build one).
    prom: Option<Prom>,
}

impl Metrics {
    /// Metrics for a load balancer running `strategy`; `enabled: false` records nothing.
    pub fn new(enabled: bool, strategy: Strategy) -> Self {
        let prom = match Prom::new(strategy) {
            Ok(p) => Some(p),
            Err(e) => {
                log::error!("cannot build the Prometheus registry: {e}");
                None
            }
        };
        Self {
            enabled,
            strategy,
            started: Instant::now(),
            requests: Default::default(),
            unrouted: Default::default(),
            total_nanos: AtomicU64::new(0),
            rate: RateWindow::default(),
            prom,
        }
    }

    /// Whether metrics are collected.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The strategy reported in the snapshot.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Time since these metrics were created (the load balancer's uptime).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counts one finished request.
    pub fn record_request(&self, r: &RequestRecord<'_>) {
        if !self.enabled {
            return;
        }
        let class = class_index(r.status);
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        self.total_nanos
            .fetch_add(nanos(r.total), Ordering::Relaxed);
        self.rate.tick(self.started.elapsed());
        match r.backend {
            Some(b) => b.stats.metrics().record(class, r.upstream),
            None => {
                self.unrouted[class].fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(p) = &self.prom {
            p.request_duration.observe(r.total.as_secs_f64());
        }
    }

    /// Counts one retry.
    pub fn record_retry(&self) {
        if let Some(p) = self.live() {
            p.retries.inc();
        }
    }

    /// Counts one retry refused because the retry budget was spent.
    pub fn record_budget_exhausted(&self) {
        if let Some(p) = self.live() {
            p.budget_exhausted.inc();
        }
    }

    /// Counts one request refused by the rate limiter.
    pub fn record_rate_limited(&self) {
        if let Some(p) = self.live() {
            p.rate_limited.inc();
        }
    }

    /// A client connection opened.
    pub fn connection_opened(&self) {
        if let Some(p) = self.live() {
            p.client_connections.inc();
        }
    }

    /// A client connection closed.
    pub fn connection_closed(&self) {
        if let Some(p) = self.live() {
            p.client_connections.dec();
        }
    }

    /// The registry's handles while recording is on.
    fn live(&self) -> Option<&Prom> {
        self.prom.as_ref().filter(|_| self.enabled)
    }

    /// Finished requests so far.
    pub fn total_requests(&self) -> u64 {
        self.requests
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Finished requests by class, in [`CODE_CLASSES`] order.
    pub fn requests_by_class(&self) -> [u64; CODE_CLASSES.len()] {
        std::array::from_fn(|i| self.requests[i].load(Ordering::Relaxed))
    }

    /// Open client connections.
    pub fn active_connections(&self) -> u64 {
        self.prom.as_ref().map_or(0, |p| {
            u64::try_from(p.client_connections.get()).unwrap_or(0)
        })
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.prom.as_ref().map_or(0, |p| p.retries.get())
    }

    /// Retries refused by the budget so far.
    pub fn retry_budget_exhausted(&self) -> u64 {
        self.prom.as_ref().map_or(0, |p| p.budget_exhausted.get())
    }

    /// Requests refused by the rate limiter so far.
    pub fn rate_limited_requests(&self) -> u64 {
        self.prom.as_ref().map_or(0, |p| p.rate_limited.get())
    }

    /// Prometheus text exposition of everything, including per-backend state.
    pub fn prometheus_text(&self, backends: &[Arc<BackendState>]) -> String {
        let mut families = self
            .prom
            .as_ref()
            .map(|p| p.registry.gather())
            .unwrap_or_default();
        families.extend(self.backend_families(backends));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        match TextEncoder::new().encode_to_string(&families) {
            Ok(text) => text,
            Err(e) => {
                log::error!("cannot encode the metrics: {e}");
                String::new()
            }
        }
    }

    /// The families built from the backends at scrape time (empty ones left out).
    fn backend_families(&self, backends: &[Arc<BackendState>]) -> Vec<MetricFamily> {
        let mut requests = Vec::new();
        let mut upstream = Vec::new();
        let mut in_flight = Vec::new();
        let mut health = Vec::new();
        let mut up = Vec::new();
        let mut weight = Vec::new();
        let mut draining = Vec::new();
        let mut attempts = Vec::new();
        let mut failures = Vec::new();
        let mut breaker_state = Vec::new();
        let mut breaker_trips = Vec::new();
        for b in backends {
            let id = b.id();
            let by_class = b.stats.metrics().requests_by_class();
            for (class, n) in CODE_CLASSES.iter().zip(by_class) {
                requests.push(counter(&[("backend", id), ("code_class", class)], n));
            }
            upstream.push(histogram(
                &[("backend", id)],
                &b.stats.metrics().upstream().snapshot(),
            ));
            in_flight.push(gauge(&[("backend", id)], b.stats.in_flight() as f64));
            let status = b.health.status();
            for s in [
                HealthStatus::Healthy,
                HealthStatus::Unhealthy,
                HealthStatus::Unknown,
            ] {
                health.push(gauge(
                    &[("backend", id), ("state", s.as_str())],
                    f64::from(u8::from(s == status)),
                ));
            }
            up.push(gauge(
                &[("backend", id)],
                f64::from(u8::from(status == HealthStatus::Healthy)),
            ));
            weight.push(gauge(&[("backend", id)], f64::from(b.weight())));
            draining.push(gauge(
                &[("backend", id)],
                f64::from(u8::from(b.is_draining())),
            ));
            attempts.push(counter(&[("backend", id)], b.stats.requests()));
            failures.push(counter(&[("backend", id)], b.stats.failures()));
            if let Some(br) = &b.breaker {
                let state = br.state();
                for s in [
                    BreakerState::Closed,
                    BreakerState::Open,
                    BreakerState::HalfOpen,
                ] {
                    breaker_state.push(gauge(
                        &[("backend", id), ("state", s.as_str())],
                        f64::from(u8::from(s == state)),
                    ));
                }
                breaker_trips.push(counter(&[("backend", id)], br.trips()));
            }
        }
        for (class, n) in CODE_CLASSES.iter().zip(self.unrouted_by_class()) {
            if n > 0 {
                requests.push(counter(&[("backend", "none"), ("code_class", class)], n));
            }
        }
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        [
            family(
                "fulcrum_requests_total",
                "Finished requests by the backend of their last attempt (\"none\" when Fulcrum \
                 answered without one) and status class (\"none\" when no response was sent).",
                COUNTER,
                requests,
            ),
            family(
                "fulcrum_upstream_duration_seconds",
                "Time from choosing a backend to its response headers, for the last attempt of \
                 each finished request.",
                HISTOGRAM,
                upstream,
            ),
            family(
                "fulcrum_backend_in_flight",
                "Requests currently being proxied to the backend.",
                GAUGE,
                in_flight,
            ),
            family(
                "fulcrum_backend_health",
                "Active health-check state of the backend: 1 for the current state, 0 otherwise.",
                GAUGE,
                health,
            ),
            family(
                "fulcrum_backend_up",
                "1 when the backend passes its health checks, 0 when failing or not checked yet.",
                GAUGE,
                up,
            ),
            family(
                "fulcrum_backend_weight",
                "Current weight of the backend.",
                GAUGE,
                weight,
            ),
            family(
                "fulcrum_backend_draining",
                "1 while the backend is draining (takes no new requests).",
                GAUGE,
                draining,
            ),
            family(
                "fulcrum_backend_attempts_total",
                "Attempts sent to the backend; a retried request counts once per backend tried.",
                COUNTER,
                attempts,
            ),
            family(
                "fulcrum_backend_failures_total",
                "Attempts to the backend that failed (connect error, timeout, reset or a failure \
                 status).",
                COUNTER,
                failures,
            ),
            family(
                "fulcrum_circuit_breaker_state",
                "Circuit breaker state of the backend: 1 for the current state, 0 otherwise.",
                GAUGE,
                breaker_state,
            ),
            family(
                "fulcrum_circuit_breaker_trips_total",
                "Times the backend's circuit breaker went from closed to open.",
                COUNTER,
                breaker_trips,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn unrouted_by_class(&self) -> [u64; CODE_CLASSES.len()] {
        std::array::from_fn(|i| self.unrouted[i].load(Ordering::Relaxed))
    }

    /// Requests per second over the last [`RATE_WINDOW_SECS`] seconds.
    pub fn requests_per_second(&self) -> f64 {
        self.rate.rate(self.started.elapsed())
    }

    /// The seed's JSON snapshot.
    pub fn json_snapshot(&self, backends: &[Arc<BackendState>]) -> Value {
        let by_class = self.requests_by_class();
        let total: u64 = by_class.iter().sum();
        let failed = by_class[SERVER_ERROR] + by_class[NO_RESPONSE];
        let average_ms = if total == 0 {
            0.0
        } else {
            self.total_nanos.load(Ordering::Relaxed) as f64 / total as f64 / 1e6
        };
        let mut servers = Map::new();
        let mut trips_sum = 0u64;
        for b in backends {
            let trips = b.breaker.as_ref().map_or(0, |br| br.trips());
            trips_sum += trips;
            let requests = b.stats.requests();
            let failures = b.stats.failures();
            let availability = if requests == 0 {
                1.0
            } else {
                1.0 - failures.min(requests) as f64 / requests as f64
            };
            let r = b.stats.responses_by_class();
            servers.insert(
                b.id().to_string(),
                json!({
                    "url": b.server.url,
                    "weight": b.weight(),
                    "health": b.health.status().as_str(),
                    "breaker": b.breaker.as_ref().map_or("disabled", |br| br.state().as_str()),
                    "draining": b.is_draining(),
                    "requests": requests,
                    "failures": failures,
                    "availability": availability,
                    "response_time": b.stats.latency_ewma_nanos().map(|ns| ns / 1e6),
                    "active_connections": b.stats.in_flight(),
                    "circuit_breaker_trips": trips,
                    "responses": {
                        "1xx": r[0], "2xx": r[1], "3xx": r[2], "4xx": r[3], "5xx": r[4],
                    },
                }),
            );
        }
        json!({
            "total_requests": total,
            "successful_requests": total - failed,
            "failed_requests": failed,
            "average_response_time": average_ms,
            "requests_per_second": self.requests_per_second(),
            "active_connections": self.active_connections(),
            "circuit_breaker_trips": trips_sum,
            "retries": self.retries(),
            "retry_budget_exhausted": self.retry_budget_exhausted(),
            "rate_limited_requests": self.rate_limited_requests(),
            "uptime_seconds": self.uptime().as_secs_f64(),
            "strategy": self.strategy.as_str(),
            "version": VERSION,
            "servers": servers,
        })
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::new();
            l.set_name((*name).to_string());
            l.set_value((*value).to_string());
            l
        })
        .collect()
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = GaugeProto::new();
    g.set_value(value);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = CounterProto::new();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn histogram(pairs: &[(&str, &str)], snap: &HistogramSnapshot) -> Metric {
    let mut h = HistogramProto::new();
    h.set_sample_count(snap.count);
    h.set_sample_sum(snap.sum_seconds);
    h.set_bucket(
        DURATION_BUCKETS
            .iter()
            .zip(snap.cumulative)
            .map(|(&bound, n)| {
                let mut b = Bucket::new();
                b.set_upper_bound(bound);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}

/// A family, or `None` when it has no series (the encoder refuses empty families).
fn family(name: &str, help: &str, ty: MetricType, metrics: Vec<Metric>) -> Option<MetricFamily> {
    if metrics.is_empty() {
        return None;
    }
    let mut f = MetricFamily::new();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(ty);
    f.set_metric(metrics);
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendServer, InFlightGuard};
    use crate::breaker::BreakerSettings;
    use crate::health::Thresholds;

    fn backend(id: &str, port: u16) -> Arc<BackendState> {
        BackendState::new(BackendServer::new(id, format!("http://127.0.0.1:{port}"))).unwrap()
    }

    fn request<'a>(
        status: u16,
        ms: u64,
        backend: Option<&'a Arc<BackendState>>,
    ) -> RequestRecord<'a> {
        RequestRecord {
            status,
            total: Duration::from_millis(ms),
            upstream: backend.map(|_| Duration::from_millis(ms / 2)),
            backend,
            attempts: u32::from(backend.is_some()),
        }
    }

    /// The value of the sample whose name and labels are exactly `series`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn statuses_map_to_code_classes() {
        let cases = [
            (0, "none"),
            (99, "none"),
            (100, "1xx"),
            (101, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (301, "3xx"),
            (399, "3xx"),
            (404, "4xx"),
            (429, "4xx"),
            (500, "5xx"),
            (503, "5xx"),
            (599, "5xx"),
            (600, "none"),
            (999, "none"),
        ];
        for (status, want) in cases {
            assert_eq!(code_class(status), want, "{status}");
        }
    }

    #[test]
    fn bucket_bounds_agree() {
        for (s, ns) in DURATION_BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = DurationHistogram::default();
        for ms in [0, 1, 2, 7, 30_000, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.cumulative[0], 2, "0 ms and 1 ms are <= 0.001 s");
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[3], 4, "7 ms <= 0.01 s");
        assert_eq!(s.cumulative[13], 5, "30 s <= 30 s; 60 s only in +Inf");
        assert!((s.sum_seconds - 90.010).abs() < 1e-9);
    }

    #[test]
    fn the_registry_builds() {
        let m = Metrics::new(true, Strategy::RoundRobin);
        assert!(m.prom.is_some());
        let text = m.prometheus_text(&[]);
        let info = format!("fulcrum_build_info{{strategy=\"round_robin\",version=\"{VERSION}\"}}");
        assert_eq!(sample(&text, &info), Some(1.0), "{text}");
        assert!(text.contains("# TYPE fulcrum_start_time_seconds gauge"));
        // two instances do not share a registry
        let other = Metrics::new(true, Strategy::Random);
        other.record_retry();
        assert_eq!((m.retries(), other.retries()), (0, 1));
    }

    #[test]
    fn recorded_requests_show_in_both_formats() {
        let a = backend("a", 1);
        let mut b_server = BackendServer::new("b", "http://127.0.0.1:2");
        b_server.weight = 3;
        let settings = BreakerSettings {
            failure_threshold: 5,
            recovery_threshold: 1,
            timeout: Duration::from_secs(30),
            half_open_max_calls: 1,
        };
        let b = BackendState::with_breaker(b_server, Some(settings)).unwrap();
        let m = Metrics::new(true, Strategy::RoundRobin);
        // (status, total ms, backend) → expected class per backend
        let table: &[(u16, u64, Option<&Arc<BackendState>>)] = &[
            (200, 10, Some(&a)),
            (200, 20, Some(&a)),
            (404, 30, Some(&a)),
            (503, 40, Some(&b)),
            (0, 50, Some(&b)),
            (302, 60, Some(&b)),
            (429, 70, None),
            (503, 80, None),
            (101, 90, Some(&a)),
        ];
        for &(status, ms, backend) in table {
            m.record_request(&request(status, ms, backend));
        }
        m.record_retry();
        m.record_retry();
        m.record_budget_exhausted();
        m.record_rate_limited();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        let _in_flight = InFlightGuard::new(b.clone());
        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        a.health.record(Ok(()), SystemTime::now(), t);
        b.set_draining(true);

        let backends = [a.clone(), b.clone()];
        let j = m.json_snapshot(&backends);
        assert_eq!(j["total_requests"], 9);
        assert_eq!(j["failed_requests"], 3, "two 5xx and one without response");
        assert_eq!(j["successful_requests"], 6);
        assert_eq!(j["average_response_time"], 50.0);
        assert_eq!(j["retries"], 2);
        assert_eq!(j["retry_budget_exhausted"], 1);
        assert_eq!(j["rate_limited_requests"], 1);
        assert_eq!(j["active_connections"], 1);
        assert_eq!(j["circuit_breaker_trips"], 0);
        assert_eq!(j["strategy"], "round_robin");
        assert_eq!(j["version"], VERSION);
        assert!(j["uptime_seconds"].as_f64().unwrap() >= 0.0);
        assert!(j["requests_per_second"].as_f64().unwrap() > 0.0);
        let sb = &j["servers"]["b"];
        assert_eq!(sb["url"], "http://127.0.0.1:2");
        assert_eq!(sb["weight"], 3);
        assert_eq!(sb["breaker"], "closed");
        assert_eq!(sb["draining"], true);
        assert_eq!(sb["active_connections"], 1);
        assert_eq!(sb["requests"], 1);
        assert_eq!(sb["availability"], 1.0);
        assert_eq!(sb["response_time"], Value::Null);
        assert_eq!(j["servers"]["a"]["breaker"], "disabled");
        assert_eq!(j["servers"]["a"]["health"], "healthy");
        assert_eq!(sb["health"], "unknown");

        let text = m.prometheus_text(&backends);
        let want = [
            (
                "fulcrum_requests_total{backend=\"a\",code_class=\"2xx\"}",
                2.0,
            ),
            (
                "fulcrum_requests_total{backend=\"a\",code_class=\"4xx\"}",
                1.0,
            ),
            (
                "fulcrum_requests_total{backend=\"a\",code_class=\"1xx\"}",
                1.0,
            ),
            (
                "fulcrum_requests_total{backend=\"a\",code_class=\"5xx\"}",
                0.0,
            ),
            (
                "fulcrum_requests_total{backend=\"b\",code_class=\"5xx\"}",
                1.0,
            ),
            (
                "fulcrum_requests_total{backend=\"b\",code_class=\"none\"}",
                1.0,
            ),
            (
                "fulcrum_requests_total{backend=\"b\",code_class=\"3xx\"}",
                1.0,
            ),
            (
                "fulcrum_requests_total{backend=\"none\",code_class=\"4xx\"}",
                1.0,
            ),
            (
                "fulcrum_requests_total{backend=\"none\",code_class=\"5xx\"}",
                1.0,
            ),
            ("fulcrum_request_duration_seconds_count", 9.0),
            ("fulcrum_request_duration_seconds_bucket{le=\"0.01\"}", 1.0),
            ("fulcrum_request_duration_seconds_bucket{le=\"0.05\"}", 5.0),
            (
                "fulcrum_upstream_duration_seconds_count{backend=\"a\"}",
                4.0,
            ),
            (
                "fulcrum_upstream_duration_seconds_count{backend=\"b\"}",
                3.0,
            ),
            (
                "fulcrum_upstream_duration_seconds_bucket{backend=\"a\",le=\"0.005\"}",
                1.0,
            ),
            ("fulcrum_backend_in_flight{backend=\"b\"}", 1.0),
            ("fulcrum_backend_in_flight{backend=\"a\"}", 0.0),
            (
                "fulcrum_backend_health{backend=\"a\",state=\"healthy\"}",
                1.0,
            ),
            (
                "fulcrum_backend_health{backend=\"a\",state=\"unknown\"}",
                0.0,
            ),
            (
                "fulcrum_backend_health{backend=\"b\",state=\"unknown\"}",
                1.0,
            ),
            ("fulcrum_backend_up{backend=\"a\"}", 1.0),
            ("fulcrum_backend_up{backend=\"b\"}", 0.0),
            ("fulcrum_backend_weight{backend=\"b\"}", 3.0),
            ("fulcrum_backend_draining{backend=\"b\"}", 1.0),
            ("fulcrum_backend_draining{backend=\"a\"}", 0.0),
            ("fulcrum_backend_attempts_total{backend=\"b\"}", 1.0),
            (
                "fulcrum_circuit_breaker_state{backend=\"b\",state=\"closed\"}",
                1.0,
            ),
            (
                "fulcrum_circuit_breaker_state{backend=\"b\",state=\"open\"}",
                0.0,
            ),
            ("fulcrum_circuit_breaker_trips_total{backend=\"b\"}", 0.0),
            ("fulcrum_retries_total", 2.0),
            ("fulcrum_retry_budget_exhausted_total", 1.0),
            ("fulcrum_rate_limited_requests_total", 1.0),
            ("fulcrum_client_connections", 1.0),
        ];
        for (series, value) in want {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(!text.contains("fulcrum_requests_total{backend=\"none\",code_class=\"2xx\"}"));
        assert!(
            !text.contains("fulcrum_circuit_breaker_state{backend=\"a\""),
            "a has no breaker"
        );
        let sum: f64 = text
            .lines()
            .filter(|l| l.starts_with("fulcrum_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(sum, 9.0, "requests_total sums to the JSON total");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
        }
    }

    #[test]
    fn disabled_metrics_record_nothing() {
        let a = backend("a", 1);
        let m = Metrics::new(false, Strategy::RoundRobin);
        m.record_request(&request(200, 5, Some(&a)));
        m.record_request(&request(503, 5, None));
        m.record_retry();
        m.record_budget_exhausted();
        m.record_rate_limited();
        m.connection_opened();
        let j = m.json_snapshot(std::slice::from_ref(&a));
        for key in [
            "total_requests",
            "failed_requests",
            "retries",
            "retry_budget_exhausted",
            "rate_limited_requests",
            "active_connections",
        ] {
            assert_eq!(j[key], 0, "{key}");
        }
        assert_eq!(j["requests_per_second"], 0.0);
        assert_eq!(j["average_response_time"], 0.0);
        assert_eq!(a.stats.metrics().requests_by_class(), [0; 6]);
        let text = m.prometheus_text(&[a]);
        assert_eq!(
            sample(&text, "fulcrum_request_duration_seconds_count"),
            Some(0.0)
        );
        assert!(!text.contains("backend=\"none\""));
    }

    #[test]
    fn a_removed_backend_disappears() {
        let (a, b) = (backend("a", 1), backend("b", 2));
        let m = Metrics::new(true, Strategy::RoundRobin);
        m.record_request(&request(200, 1, Some(&b)));
        let both = m.prometheus_text(&[a.clone(), b.clone()]);
        assert!(both.contains("backend=\"b\""));
        let only_a = m.prometheus_text(std::slice::from_ref(&a));
        assert!(only_a.contains("backend=\"a\""));
        assert!(!only_a.contains("backend=\"b\""), "{only_a}");
        let j = m.json_snapshot(&[a]);
        assert!(j["servers"].get("b").is_none());
        assert_eq!(j["total_requests"], 1, "process totals keep its requests");
        let none = m.prometheus_text(&[]);
        assert!(!none.contains("backend="), "{none}");
    }

    #[test]
    fn rate_window_covers_the_last_ten_seconds() {
        let w = RateWindow::default();
        let at = |s: f64| Duration::from_secs_f64(s);
        for _ in 0..20 {
            w.tick(at(0.5));
        }
        assert_eq!(w.rate(at(0.5)), 20.0, "at least a one-second span");
        for i in 0..40 {
            w.tick(at(3.0 + f64::from(i) / 10.0));
        }
        assert_eq!(w.rate(at(9.0)), 60.0 / 9.0);
        // at 12.5 s the window starts at 3 s: second 0 has left it
        assert_eq!(w.rate(at(12.5)), 40.0 / 9.5);
        // the ring's slot for second 0 is reused at second 16 without counting old hits
        w.tick(at(16.2));
        assert_eq!(w.rate(at(16.5)), 1.0 / 9.5);
        assert_eq!(w.rate(at(100.0)), 0.0);
    }

    #[test]
    fn json_server_fields() {
        let a = backend("a", 1);
        let m = Metrics::new(true, Strategy::LeastConnections);
        for status in [200, 200, 503, 404] {
            drop(InFlightGuard::new(a.clone()));
            a.stats.record_response(status);
        }
        a.stats.record_failure();
        a.stats.record_latency(Duration::from_millis(4));
        let j = m.json_snapshot(&[a]);
        let s = &j["servers"]["a"];
        assert_eq!(s["requests"], 4);
        assert_eq!(s["failures"], 1);
        assert_eq!(s["availability"], 0.75);
        assert_eq!(s["response_time"], 4.0);
        assert_eq!(
            s["responses"],
            json!({"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1})
        );
        assert_eq!(j["strategy"], "least_connections");
        assert_eq!(j["requests_per_second"], 0.0);
    }
}
