//! `GET /health` and `GET /ready`.
//!
//! `/health` is the seed's JSON `{status, timestamp, servers: [{id, url, health,
//! active_connections}]}` plus each backend's weight, breaker state, draining flag and last check
//! (time and error), and `tls_certificates`: each certificate the TLS listener serves (source,
//! names, expiry; empty without TLS); status 200 while at least one backend may take traffic
//! (healthy or not yet checked, and not draining), else 503. `/ready` tells
//! load balancers and Kubernetes whether to send traffic: 200 while serving, 503 once shutdown
//! has begun.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Response, StatusCode};
use serde::Serialize;

use super::json_response;
use crate::backend::BackendState;
use crate::health::HealthStatus;
use crate::sticky::SessionsReport;
use crate::time::rfc3339;
use crate::tls::CertInfo;

/// Body of `GET /health`.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// `healthy` when at least one backend is healthy, else `unhealthy`.
    pub status: &'static str,
    /// When the report was made (RFC 3339, UTC).
    pub timestamp: String,
    /// One entry per backend.
    pub servers: Vec<ServerHealth>,
    /// The TLS listener's certificates (empty when TLS is off).
    pub tls_certificates: Vec<CertificateHealth>,
    /// The sticky-session store's state, when sticky sessions are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionsHealth>,
}

/// The sticky-session store in `/health`.
#[derive(Debug, Serialize)]
pub struct SessionsHealth {
    /// `memory`, `cookie` or `redis`.
    pub store: &'static str,
    /// Sessions held, when the store knows.
    pub active_sessions: Option<u64>,
    /// Requests sent to their pinned backend.
    pub hits: u64,
    /// Requests without a usable session.
    pub misses: u64,
    /// Sessions moved to another backend.
    pub repins: u64,
    /// Store calls that failed (Redis unreachable, ...).
    pub store_errors: u64,
    /// Whether the store answered its last call (Redis); memory and cookie always do.
    pub reachable: bool,
}

/// One certificate of the TLS listener in `/health`.
#[derive(Debug, Serialize)]
pub struct CertificateHealth {
    /// Its chain's file as configured, or `acme:<first domain>`.
    pub source: String,
    /// The DNS names it is served for.
    pub names: Vec<String>,
    /// When it expires (RFC 3339, UTC).
    pub not_after: String,
}

impl HealthReport {
    /// The report with the TLS listener's `certificates`.
    /// The report with the sticky-session store's state, when sticky sessions are on.
    pub fn with_sessions(mut self, report: Option<SessionsReport>) -> Self {
        self.sessions = report.map(|r| SessionsHealth {
            store: r.store,
            active_sessions: r.active,
            hits: r.hits,
            misses: r.misses,
            repins: r.repins,
            store_errors: r.store_errors,
            reachable: r.reachable,
        });
        self
    }

    /// The report with the TLS listener's certificates.
    pub fn with_certificates(mut self, certificates: &[CertInfo]) -> Self {
        self.tls_certificates = certificates
            .iter()
            .map(|c| CertificateHealth {
                source: c.source.clone(),
                names: c.names.clone(),
                not_after: rfc3339(c.not_after),
            })
            .collect();
        self
    }
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
            breaker: b.breaker_state(),
            draining: b.is_draining(),
            last_check: last.at.map(rfc3339),
            last_error: last.error,
        }
    }
}

/// The `/health` report and its HTTP status, agreeing with routing: 200 while at least one
/// backend may take a request ([`BackendState::is_routable`]: not unhealthy, not draining), else
/// 503. `status` is `healthy` when such a backend has passed a check, `unknown` when the only
/// routable ones are still waiting for their first check (they take traffic), `unhealthy` when
/// none is routable.
pub fn report(backends: &[Arc<BackendState>], now: SystemTime) -> (StatusCode, HealthReport) {
    let servers: Vec<ServerHealth> = backends.iter().map(|b| ServerHealth::of(b)).collect();
    let routable = || backends.iter().filter(|b| b.is_routable());
    let (code, status) = if routable().any(|b| b.health.status() == HealthStatus::Healthy) {
        (StatusCode::OK, "healthy")
    } else if routable().next().is_some() {
        (StatusCode::OK, "unknown")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    let report = HealthReport {
        status,
        timestamp: rfc3339(now),
        servers,
        tls_certificates: Vec::new(),
        sessions: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{block_on, BackendServer, BackendSet};
    use crate::health::Thresholds;
    use pingora_load_balancing::selection::RoundRobin;

    fn backend(set: &BackendSet<RoundRobin>, id: &str, port: u16) -> Arc<BackendState> {
        let server = BackendServer::new(id, format!("http://127.0.0.1:{port}"));
        block_on(set.add_server(server)).unwrap().unwrap()
    }

    #[test]
    fn health_agrees_with_routing() {
        let (code, rep) = report(&[], SystemTime::UNIX_EPOCH);
        assert_eq!(
            (code, rep.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        );

        let members: BackendSet<RoundRobin> = BackendSet::new((), None, None);
        let (a, b) = (backend(&members, "a", 1), backend(&members, "b", 2));
        let set = [a.clone(), b.clone()];
        let (code, rep) = report(&set, SystemTime::UNIX_EPOCH);
        assert_eq!(
            (code, rep.status),
            (StatusCode::OK, "unknown"),
            "unknown backends take traffic, so the balancer is up"
        );
        assert_eq!(rep.servers[0].health, "unknown");

        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        a.health.record(Ok(()), SystemTime::UNIX_EPOCH, t);
        let (code, rep) = report(&set, SystemTime::UNIX_EPOCH);
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
        assert_eq!(json["tls_certificates"], serde_json::json!([]));
        let cert = CertInfo {
            source: "acme:a.example".into(),
            cert_file: "/var/lib/a.example.pem".into(),
            names: vec!["a.example".into()],
            not_after: SystemTime::UNIX_EPOCH,
        };
        let json = serde_json::to_value(rep.with_certificates(&[cert])).unwrap();
        assert_eq!(
            json["tls_certificates"],
            serde_json::json!([{"source": "acme:a.example", "names": ["a.example"],
                "not_after": "1970-01-01T00:00:00.000Z"}])
        );

        // the healthy one drains, the other fails its check: nothing takes traffic
        members.drain("a").unwrap();
        b.health
            .record(Err("refused".into()), SystemTime::UNIX_EPOCH, t);
        let (code, rep) = report(&set, SystemTime::UNIX_EPOCH);
        assert_eq!(
            (code, rep.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
        );
    }

    #[test]
    fn ready_follows_shutdown() {
        assert_eq!(ready(false).status(), StatusCode::OK);
        assert_eq!(ready(true).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
