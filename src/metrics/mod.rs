//! Metrics: what Fulcrum counts on the request path and how the admin listener shows it.
//!
//! This module owns
//! - the process-wide counters ([`Metrics`]): requests by status class, request durations, a
//!   10-second request-rate window, retries, spent retry budgets, rate-limited requests and open
//!   client connections;
//! - what a finished request counts: the process-wide counters here, and each backend's
//!   finished-request counters ([`BackendStats::record_finished`](crate::backend::BackendStats::record_finished)),
//!   which live and die with the backend (metrics reads backend state; the backend knows
//!   nothing of metrics);
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
//!
//! Layout: this file holds [`Metrics`] with its hot-path `record_*` methods and readers,
//! [`RequestRecord`] and the status classes; the lock-free [`DurationHistogram`] is
//! `crate::histogram`; `rate` the requests-per-second window; `registry` the families kept in
//! the `prometheus::Registry`; `prometheus` the text exposition and the per-backend families;
//! `json` the JSON snapshot.

mod json;
mod prometheus;
mod rate;
mod registry;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::histogram::{DurationHistogram, HistogramSnapshot, DURATION_BUCKETS};
pub use rate::RATE_WINDOW_SECS;

use crate::backend::BackendState;
use crate::balance::Strategy;
use crate::histogram::nanos;
use rate::RateWindow;
use registry::Prom;

/// Position of `strategy` in [`Strategy::ALL`].
fn strategy_index(strategy: Strategy) -> u8 {
    Strategy::ALL
        .iter()
        .position(|s| *s == strategy)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

/// Fulcrum's version, as reported by `fulcrum_build_info` and the JSON snapshot.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// Reads a row of counters.
fn load_all<const N: usize>(counters: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| counters[i].load(Ordering::Relaxed))
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

/// All of Fulcrum's metrics.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    /// Index in [`Strategy::ALL`] (a reload may change it).
    strategy: AtomicU8,
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
            strategy: AtomicU8::new(strategy_index(strategy)),
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
        let i = usize::from(self.strategy.load(Ordering::Relaxed));
        Strategy::ALL.get(i).copied().unwrap_or_default()
    }

    /// Reports `strategy` from now on (a reload changed it).
    pub fn set_strategy(&self, strategy: Strategy) {
        self.strategy
            .store(strategy_index(strategy), Ordering::Relaxed);
        if let Some(p) = &self.prom {
            p.set_strategy(strategy);
        }
    }

    /// Counts a configuration reload and whether it succeeded.
    pub fn record_reload(&self, success: bool) {
        if let Some(p) = &self.prom {
            p.record_reload(success);
        }
    }

    /// Reloads so far that succeeded (`true`) or failed (`false`).
    pub fn reloads(&self, success: bool) -> u64 {
        let outcome = if success { "success" } else { "failure" };
        self.read(|p| p.reloads.with_label_values(&[outcome]).get())
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
            Some(b) => b.stats.record_finished(class, r.upstream),
            None => {
                self.unrouted[class].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.when_live(|p| p.request_duration.observe(r.total.as_secs_f64()));
    }

    /// Counts one retry.
    pub fn record_retry(&self) {
        self.when_live(|p| p.retries.inc());
    }

    /// Counts one retry refused because the retry budget was spent.
    pub fn record_budget_exhausted(&self) {
        self.when_live(|p| p.budget_exhausted.inc());
    }

    /// Counts one request refused by the rate limiter.
    pub fn record_rate_limited(&self) {
        self.when_live(|p| p.rate_limited.inc());
    }

    /// A client connection opened.
    pub fn connection_opened(&self) {
        self.when_live(|p| p.client_connections.inc());
    }

    /// A client connection closed.
    pub fn connection_closed(&self) {
        self.when_live(|p| p.client_connections.dec());
    }

    /// Runs `count` on the registry's handles while recording is on.
    fn when_live(&self, count: impl FnOnce(&Prom)) {
        if let Some(p) = self.prom.as_ref().filter(|_| self.enabled) {
            count(p);
        }
    }

    /// Finished requests so far.
    pub fn total_requests(&self) -> u64 {
        self.requests_by_class().iter().sum()
    }

    /// Finished requests by class, in [`CODE_CLASSES`] order.
    pub fn requests_by_class(&self) -> [u64; CODE_CLASSES.len()] {
        load_all(&self.requests)
    }

    /// Finished requests that never got a backend, by class.
    fn unrouted_by_class(&self) -> [u64; CODE_CLASSES.len()] {
        load_all(&self.unrouted)
    }

    /// Open client connections.
    pub fn active_connections(&self) -> u64 {
        self.read(|p| u64::try_from(p.client_connections.get()).unwrap_or(0))
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.read(|p| p.retries.get())
    }

    /// Retries refused by the budget so far.
    pub fn retry_budget_exhausted(&self) -> u64 {
        self.read(|p| p.budget_exhausted.get())
    }

    /// Requests refused by the rate limiter so far.
    pub fn rate_limited_requests(&self) -> u64 {
        self.read(|p| p.rate_limited.get())
    }

    /// A count kept in the registry (0 when there is none).
    fn read(&self, count: impl FnOnce(&Prom) -> u64) -> u64 {
        self.prom.as_ref().map_or(0, count)
    }

    /// Requests per second over the last [`RATE_WINDOW_SECS`] seconds.
    pub fn requests_per_second(&self) -> f64 {
        self.rate.rate(self.started.elapsed())
    }
}
