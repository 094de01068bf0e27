//! Metrics: counters recorded on the request path, rendered on the admin listener as Prometheus
//! text or as the seed's JSON snapshot.
//!
//! (Interface skeleton; the implementation lands in the next commit.)

use std::sync::Arc;
use std::time::Duration;

use crate::backend::BackendState;
use crate::balance::Strategy;

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
    strategy: Strategy,
}

impl Metrics {
    /// Metrics for a load balancer running `strategy`; `enabled: false` records nothing.
    pub fn new(enabled: bool, strategy: Strategy) -> Self {
        Self { enabled, strategy }
    }

    /// Whether metrics are collected.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The strategy reported in the snapshot.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Counts one finished request.
    pub fn record_request(&self, _r: &RequestRecord<'_>) {}

    /// Counts one retry.
    pub fn record_retry(&self) {}

    /// Counts one retry refused because the retry budget was spent.
    pub fn record_budget_exhausted(&self) {}

    /// Counts one request refused by the rate limiter.
    pub fn record_rate_limited(&self) {}

    /// A client connection opened.
    pub fn connection_opened(&self) {}

    /// A client connection closed.
    pub fn connection_closed(&self) {}

    /// Prometheus text exposition of everything, including per-backend state.
    pub fn prometheus_text(&self, _backends: &[Arc<BackendState>]) -> String {
        String::new()
    }

    /// The seed's JSON snapshot.
    pub fn json_snapshot(&self, _backends: &[Arc<BackendState>]) -> serde_json::Value {
        serde_json::Value::Null
    }
}
