//! The Prometheus text exposition ([`Metrics::prometheus_text`]): the registry's families plus
//! the per-backend families built at scrape time from the backends given, so a removed backend
//! disappears from the next scrape, and the expiry of each TLS certificate served, encoded
//! together in name order.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use pingora_prometheus::prometheus::proto::{
    Bucket, Counter as CounterProto, Gauge as GaugeProto, Histogram as HistogramProto, LabelPair,
    Metric, MetricFamily, MetricType,
};
use pingora_prometheus::prometheus::TextEncoder;

use super::{HistogramSnapshot, Metrics, CODE_CLASSES, DURATION_BUCKETS};
use crate::backend::BackendState;
use crate::breaker::BreakerState;
use crate::health::HealthStatus;
use crate::sticky::SessionsReport;
use crate::tls::CertInfo;

impl Metrics {
    /// Prometheus text exposition of everything, including per-backend state and the expiry
    /// of the TLS listener's `certificates`.
    pub fn prometheus_text(
        &self,
        backends: &[Arc<BackendState>],
        certificates: &[CertInfo],
        sessions: Option<&SessionsReport>,
    ) -> String {
        let mut families = self
            .prom
            .as_ref()
            .map(|p| p.registry.gather())
            .unwrap_or_default();
        families.extend(self.backend_families(backends));
        families.extend(certificate_family(certificates));
        if let Some(report) = sessions {
            families.extend(session_families(report));
        }
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
            let backend = [("backend", id)];
            let by_class = b.stats.finished_by_class();
            for (class, n) in CODE_CLASSES.iter().zip(by_class) {
                requests.push(counter(&[("backend", id), ("code_class", class)], n));
            }
            upstream.push(histogram(
                &backend,
                &b.stats.upstream_histogram().snapshot(),
            ));
            in_flight.push(gauge(&backend, b.stats.in_flight() as f64));
            let status = b.health.status();
            health.extend(state_gauges(
                id,
                [
                    HealthStatus::Healthy,
                    HealthStatus::Unhealthy,
                    HealthStatus::Unknown,
                ],
                status,
                HealthStatus::as_str,
            ));
            up.push(gauge(&backend, flag(status == HealthStatus::Healthy)));
            weight.push(gauge(&backend, f64::from(b.weight())));
            draining.push(gauge(&backend, flag(b.is_draining())));
            attempts.push(counter(&backend, b.stats.requests()));
            failures.push(counter(&backend, b.stats.failures()));
            if let Some(br) = &*b.breaker.load() {
                breaker_state.extend(state_gauges(
                    id,
                    [
                        BreakerState::Closed,
                        BreakerState::Open,
                        BreakerState::HalfOpen,
                    ],
                    br.state(),
                    BreakerState::as_str,
                ));
                breaker_trips.push(counter(&backend, br.trips()));
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
}

/// The sticky-session families: sessions held (when the store knows), requests by what their
/// session did, store errors.
fn session_families(r: &SessionsReport) -> Vec<MetricFamily> {
    let store = [("store", r.store)];
    let mut out = Vec::new();
    if let Some(active) = r.active {
        out.extend(family(
            "fulcrum_sessions_active",
            "Sticky sessions held by the store (the memory store: all of them; Redis: its local \
             cache).",
            MetricType::GAUGE,
            vec![gauge(&store, active as f64)],
        ));
    }
    let requests = [("hit", r.hits), ("miss", r.misses), ("repin", r.repins)]
        .iter()
        .map(|(result, n)| counter(&[("result", result), ("store", r.store)], *n))
        .collect();
    out.extend(family(
        "fulcrum_session_requests_total",
        "Requests by what their sticky session did: hit (sent to its pinned backend), miss (no \
         usable session: a new one was pinned), repin (its backend could not take it).",
        MetricType::COUNTER,
        requests,
    ));
    out.extend(family(
        "fulcrum_session_store_errors_total",
        "Session store calls that failed or timed out (the request was balanced without its \
         session).",
        MetricType::COUNTER,
        vec![counter(&store, r.store_errors)],
    ));
    out
}

/// `fulcrum_tls_certificate_expiry_timestamp_seconds`: one series per certificate served,
/// `cert` its file or `acme:<first domain>`, `names` its DNS names joined by commas.
fn certificate_family(certificates: &[CertInfo]) -> Option<MetricFamily> {
    let series = certificates
        .iter()
        .map(|c| {
            let expiry = c
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let names = c.names.join(",");
            gauge(&[("cert", &c.source), ("names", &names)], expiry)
        })
        .collect();
    family(
        "fulcrum_tls_certificate_expiry_timestamp_seconds",
        "When each certificate the TLS listener serves expires (Unix time); cert is its file or \
         acme:<first domain>, names its DNS names.",
        MetricType::GAUGE,
        series,
    )
}

/// 1 for true, 0 for false.
fn flag(on: bool) -> f64 {
    f64::from(u8::from(on))
}

/// One `{backend, state}` gauge per state, 1 for `current` and 0 for the others.
fn state_gauges<S: Copy + PartialEq>(
    backend: &str,
    states: [S; 3],
    current: S,
    name: fn(S) -> &'static str,
) -> [Metric; 3] {
    states.map(|s| {
        gauge(
            &[("backend", backend), ("state", name(s))],
            flag(s == current),
        )
    })
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

/// A series with these labels, its value filled in by `set`.
fn metric(pairs: &[(&str, &str)], set: impl FnOnce(&mut Metric)) -> Metric {
    let mut m = Metric::from_label(labels(pairs));
    set(&mut m);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = GaugeProto::new();
    g.set_value(value);
    metric(pairs, |m| m.set_gauge(g))
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = CounterProto::new();
    c.set_value(value as f64);
    metric(pairs, |m| m.set_counter(c))
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
    metric(pairs, |m| m.set_histogram(h))
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
