//! The admin listener (default `127.0.0.1:9090`), separate from the traffic port so a backend's
//! own paths are never shadowed.
//!
//! Serves `GET /health`: the seed's JSON `{status, timestamp, servers: [{id, url, health,
//! active_connections}]}`, with status 200 while at least one backend is healthy and 503
//! otherwise. It only reads the [`Registry`]; it never changes anything.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::backend::Registry;
use crate::health::HealthStatus;

/// The admin HTTP application.
pub struct AdminApp {
    registry: Arc<Registry>,
}

impl AdminApp {
    /// An admin app reporting on `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The `/health` report and its HTTP status.
    pub fn health_report(&self, now: SystemTime) -> (StatusCode, HealthReport) {
        let backends = self.registry.snapshot();
        let servers: Vec<ServerHealth> = backends
            .iter()
            .map(|b| ServerHealth {
                id: b.id().to_string(),
                url: b.server.url.clone(),
                health: b.health.status().as_str(),
                active_connections: b.stats.in_flight(),
            })
            .collect();
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
}

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
}

fn json_response<T: Serialize>(code: StatusCode, body: &T) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let mut resp = Response::new(bytes);
    *resp.status_mut() = code;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error_response(code: StatusCode, msg: impl Into<String>) -> Response<Vec<u8>> {
    json_response(code, &ErrorBody { error: msg.into() })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let mut resp = match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/health") => {
                let (code, report) = self.health_report(SystemTime::now());
                json_response(code, &report)
            }
            (_, "/health") => {
                error_response(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD on /health")
            }
            _ => error_response(StatusCode::NOT_FOUND, format!("no admin endpoint {path}")),
        };
        let len = resp.body().len();
        if let Ok(v) = http::HeaderValue::from_str(&len.to_string()) {
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, v);
        }
        if session.req_header().method == Method::HEAD {
            resp.body_mut().clear();
        }
        resp
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
        let reg = Arc::new(Registry::new());
        let app = AdminApp::new(reg.clone());
        let (code, report) = app.health_report(SystemTime::UNIX_EPOCH);
        assert_eq!(
            (code, report.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        );

        let a = reg
            .add(BackendServer::new("a", "http://127.0.0.1:1"))
            .unwrap();
        reg.add(BackendServer::new("b", "http://127.0.0.1:2"))
            .unwrap();
        let (code, report) = app.health_report(SystemTime::UNIX_EPOCH);
        assert_eq!(
            code,
            StatusCode::SERVICE_UNAVAILABLE,
            "unknown is not healthy"
        );
        assert_eq!(report.servers[0].health, "unknown");

        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        a.health.record(Ok(()), SystemTime::UNIX_EPOCH, t);
        let (code, report) = app.health_report(SystemTime::UNIX_EPOCH);
        assert_eq!((code, report.status), (StatusCode::OK, "healthy"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["servers"][0]["id"], "a");
        assert_eq!(json["servers"][0]["url"], "http://127.0.0.1:1");
        assert_eq!(json["servers"][0]["health"], "healthy");
        assert_eq!(json["servers"][0]["active_connections"], 0);
        assert_eq!(json["servers"][1]["health"], "unknown");
        assert_eq!(json["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}
