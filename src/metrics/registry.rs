//! The process-wide families kept in each [`Metrics`](super::Metrics)' own
//! `prometheus::Registry` ([`Prom`]): their names, help texts and buckets, registered once, with
//! the handles the hot path counts through cached.

use std::time::{SystemTime, UNIX_EPOCH};

use pingora_prometheus::prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
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
    pub(super) build_info: IntGaugeVec,
    /// Reloads by `outcome` (`success`, `failure`).
    pub(super) reloads: IntCounterVec,
    pub(super) last_reload_successful: IntGauge,
    pub(super) last_reload_success_time: Gauge,
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
        start_time.set(unix_now());
        let reloads = IntCounterVec::new(
            Opts::new(
                "fulcrum_config_reloads_total",
                "Configuration reloads in place (SIGHUP or POST /api/reload), by outcome.",
            ),
            &["outcome"],
        )?;
        for outcome in ["success", "failure"] {
            reloads.with_label_values(&[outcome]);
        }
        let last_reload_successful = IntGauge::new(
            "fulcrum_config_last_reload_successful",
            "1 when the last configuration reload succeeded (or none was tried), 0 when it failed.",
        )?;
        last_reload_successful.set(1);
        let last_reload_success_time = Gauge::new(
            "fulcrum_config_last_reload_success_timestamp_seconds",
            "When the running configuration was last loaded (start or reload), in seconds since \
             the Unix epoch.",
        )?;
        last_reload_success_time.set(unix_now());
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(client_connections.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(start_time))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload_successful.clone()))?;
        registry.register(Box::new(last_reload_success_time.clone()))?;
        Ok(Self {
            registry,
            request_duration,
            retries,
            budget_exhausted,
            rate_limited,
            client_connections,
            build_info,
            reloads,
            last_reload_successful,
            last_reload_success_time,
        })
    }

    /// Labels `fulcrum_build_info` with `strategy` instead of the previous one.
    pub(super) fn set_strategy(&self, strategy: Strategy) {
        self.build_info.reset();
        self.build_info
            .with_label_values(&[VERSION, strategy.as_str()])
            .set(1);
    }

    /// Counts a reload.
    pub(super) fn record_reload(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[outcome]).inc();
        self.last_reload_successful.set(i64::from(success));
        if success {
            self.last_reload_success_time.set(unix_now());
        }
    }
}

/// Now in seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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
        let text = m.prometheus_text(&[], &[], None);
        let info = format!("fulcrum_build_info{{strategy=\"round_robin\",version=\"{VERSION}\"}}");
        assert_eq!(sample(&text, &info), Some(1.0), "{text}");
        assert!(text.contains("# TYPE fulcrum_start_time_seconds gauge"));
        m.set_strategy(Strategy::LeastConnections);
        m.record_reload(false);
        let text = m.prometheus_text(&[], &[], None);
        let info =
            format!("fulcrum_build_info{{strategy=\"least_connections\",version=\"{VERSION}\"}}");
        assert_eq!(sample(&text, &info), Some(1.0), "{text}");
        assert!(!text.contains("strategy=\"round_robin\""), "{text}");
        assert_eq!(m.strategy(), Strategy::LeastConnections);
        let failed = "fulcrum_config_reloads_total{outcome=\"failure\"}";
        assert_eq!(sample(&text, failed), Some(1.0), "{text}");
        let ok = "fulcrum_config_reloads_total{outcome=\"success\"}";
        assert_eq!(sample(&text, ok), Some(0.0), "{text}");
        assert_eq!(
            sample(&text, "fulcrum_config_last_reload_successful"),
            Some(0.0)
        );
        m.record_reload(true);
        assert_eq!((m.reloads(true), m.reloads(false)), (1, 1));
        let text = m.prometheus_text(&[], &[], None);
        assert_eq!(
            sample(&text, "fulcrum_config_last_reload_successful"),
            Some(1.0)
        );
        // two instances do not share a registry
        let other = Metrics::new(true, Strategy::Random);
        other.record_retry();
        assert_eq!((m.retries(), other.retries()), (0, 1));
    }
}
