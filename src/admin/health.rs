//! `GET /health` and `GET /ready`.
//!
//! `/health` is the seed's JSON `{status, timestamp, servers: [{id, url, health,
//! active_connections}]}` plus each backend's weight, breaker state, draining flag and last check
//! (time and error); status 200 while at least one backend is healthy, else 503. `/ready` tells
//! load balancers and Kubernetes whether to send traffic: 200 while serving, 503 once shutdown
//! has begun.

use std::time::SystemTime;

use http::{Response, StatusCode};
use serde::Serialize;

use super::json_response;
use crate::backend::{BackendState, Registry};
use crate::health::HealthStatus;

/// Body of `GET /health`.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// `healthy` when at least one backend is healthy, else `unhealthy`.
    pub status: &'static str,
    /// When the report was made (RFC 3339, UTC).
    pub timestamp: String,
    /// One entry per backend.
    pub servers: Vec<ServerHealth>,
}

/// One backend in `/health`.
#[derive(Debug, Serialize)]
pub struct ServerHealth {
    /// Backend id.
    pub id: String,
    /// Backend URL.
    pub url: String,
    /// `unknown`, `healthy` or `unhealthy`.
    pub health: &'static str,
    /// Requests in flight to it.
    pub active_connections: u64,
    /// Current weight.
    pub weight: u32,
    /// `closed`, `open`, `half_open`, or `disabled` when breakers are off.
    pub breaker: &'static str,
    /// Whether it is draining (no new requests).
    pub draining: bool,
    /// When its last health check finished (RFC 3339), if any.
    pub last_check: Option<String>,
    /// Why its last health check failed, if it did.
    pub last_error: Option<String>,
}

impl ServerHealth {
    /// The entry for one backend.
    pub fn of(b: &BackendState) -> Self {
        let last = b.health.last_check();
        Self {
            id: b.id().to_string(),
            url: b.server.url.clone(),
            health: b.health.status().as_str(),
            active_connections: b.stats.in_flight(),
            weight: b.weight(),
            breaker: b
                .breaker
                .as_ref()
                .map_or("disabled", |br| br.state().as_str()),
            draining: b.is_draining(),
            last_check: last.at.map(rfc3339),
            last_error: last.error,
        }
    }
}

/// The `/health` report and its HTTP status.
pub fn report(registry: &Registry, now: SystemTime) -> (StatusCode, HealthReport) {
    let backends = registry.snapshot();
    let servers: Vec<ServerHealth> = backends.iter().map(|b| ServerHealth::of(b)).collect();
    let any_healthy = backends
        .iter()
        .any(|b| b.health.status() == HealthStatus::Healthy);
    let (code, status) = if any_healthy {
        (StatusCode::OK, "healthy")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    let report = HealthReport {
        status,
        timestamp: rfc3339(now),
        servers,
    };
    (code, report)
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
}

/// The `/ready` answer.
pub fn ready(shutting_down: bool) -> Response<Vec<u8>> {
    if shutting_down {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &Ready {
                status: "shutting_down",
            },
        )
    } else {
        json_response(StatusCode::OK, &Ready { status: "ready" })
    }
}

/// `2026-11-27T08:30:00.123Z` for a time after 1970.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendServer;
    use crate::health::Thresholds;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_795_763_696, "2026-11-27T07:14:56.000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000Z"),
        ];
        for (secs, want) in cases {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(rfc3339(t), want, "{secs}");
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn health_is_200_only_with_a_healthy_backend() {
        let reg = Registry::new();
        let (code, rep) = report(&reg, SystemTime::UNIX_EPOCH);
        assert_eq!(
            (code, rep.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        );

        let a = reg
            .add(BackendServer::new("a", "http://127.0.0.1:1"))
            .unwrap();
        reg.add(BackendServer::new("b", "http://127.0.0.1:2"))
            .unwrap();
        let (code, rep) = report(&reg, SystemTime::UNIX_EPOCH);
        assert_eq!(
            code,
            StatusCode::SERVICE_UNAVAILABLE,
            "unknown is not healthy"
        );
        assert_eq!(rep.servers[0].health, "unknown");

        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        a.health.record(Ok(()), SystemTime::UNIX_EPOCH, t);
        let (code, rep) = report(&reg, SystemTime::UNIX_EPOCH);
        assert_eq!((code, rep.status), (StatusCode::OK, "healthy"));
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["servers"][0]["id"], "a");
        assert_eq!(json["servers"][0]["url"], "http://127.0.0.1:1");
        assert_eq!(json["servers"][0]["health"], "healthy");
        assert_eq!(json["servers"][0]["active_connections"], 0);
        assert_eq!(json["servers"][1]["health"], "unknown");
        assert_eq!(json["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["servers"][0]["weight"], 1);
        assert_eq!(json["servers"][0]["breaker"], "disabled");
        assert_eq!(json["servers"][0]["draining"], false);
        assert_eq!(json["servers"][0]["last_check"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["servers"][0]["last_error"], serde_json::Value::Null);
        assert_eq!(json["servers"][1]["last_check"], serde_json::Value::Null);
    }

    #[test]
    fn ready_follows_shutdown() {
        assert_eq!(ready(false).status(), StatusCode::OK);
        assert_eq!(ready(true).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
