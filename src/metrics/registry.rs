//! The process-wide families kept in each [`Metrics`](super::Metrics)' own
//! `prometheus::Registry` ([`Prom`]): their names, help texts and buckets, registered once, with
//! the handles the hot path counts through cached.

use std::time::{SystemTime, UNIX_EPOCH};

use pingora_prometheus::prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::{DURATION_BUCKETS, VERSION};
use crate::balance::Strategy;

/// The families kept in this instance's `prometheus::Registry`, with their handles cached.
#[derive(Debug)]
pub(super) struct Prom {
    pub(super) registry: Registry,
    pub(super) request_duration: Histogram,
    pub(super) retries: IntCounter,
    pub(super) budget_exhausted: IntCounter,
    pub(super) rate_limited: IntCounter,
    pub(super) client_connections: IntGauge,
}

impl Prom {
    pub(super) fn new(strategy: Strategy) -> pingora_prometheus::prometheus::Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_support::sample;
    use crate::metrics::Metrics;

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
}
