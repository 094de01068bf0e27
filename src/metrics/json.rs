//! The seed's JSON snapshot ([`Metrics::json_snapshot`]): process totals, and per-backend
//! state and counters read from the backends given.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{Metrics, NO_RESPONSE, SERVER_ERROR, VERSION};
use crate::backend::BackendState;

impl Metrics {
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
            let trips = b.breaker_trips();
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
                    "breaker": b.breaker_state(),
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
            "strategy": self.strategy().as_str(),
            "version": VERSION,
            "servers": servers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::Strategy;
    use crate::metrics::test_support::backend;

    #[test]
    fn json_server_fields() {
        let a = backend("a", 1);
        let m = Metrics::new(true, Strategy::LeastConnections);
        for status in [200, 200, 503, 404] {
            a.stats.record_request();
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
