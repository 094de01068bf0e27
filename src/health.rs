//! Active health checks: pingora's background service runs them; their results feed each
//! backend's health view.
//!
//! Pingora's background service runs the checks (every `health_check_interval`, all backends in
//! parallel); [`ActiveHealthCheck`] is the [`HealthCheck`] it runs. It sends pingora's
//! [`HttpHealthCheck`] request (`GET health_check_path`, 2xx passes, bounded by
//! `health_check_timeout`) and feeds every result into the backend's [`HealthTracker`].
//!
//! The tracker, not pingora's internal flag, is what selection, `/health` and metrics read: it
//! knows a third state, **unknown** (no result yet), which pingora does not (its backends start
//! healthy and a first successful check is never reported). The tracker and its state machine
//! (rise and fall thresholds, the table of transitions) live with the backend state, in
//! [`crate::backend::health`]; this module only runs the checks and feeds the results in. The
//! first result decides because a backend has no track record yet: a backend that is down when
//! Fulcrum starts gets no traffic from the first check on (the first check runs at startup),
//! instead of after `unhealthy_threshold` intervals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora_core::{Error, ErrorType, Result};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::Backend;

pub use crate::backend::health::{
    HealthMachine, HealthStatus, HealthTracker, LastCheck, Thresholds,
};
use crate::backend::state_of;

/// Settings of the active HTTP health check.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    /// Path requested (`health_check_path`).
    pub path: String,
    /// Bound on one whole check: connect, request and response headers (`health_check_timeout`).
    pub timeout: Duration,
    /// Rise and fall thresholds.
    pub thresholds: Thresholds,
}

/// The [`HealthCheck`] pingora's background service runs for every backend.
pub struct ActiveHealthCheck {
    settings: HealthCheckSettings,
    /// One pingora HTTP check per backend address, so each sends its own `Host` header.
    probes: Mutex<HashMap<std::net::SocketAddr, Arc<HttpHealthCheck>>>,
}

impl ActiveHealthCheck {
    /// A checker with these settings.
    pub fn new(settings: HealthCheckSettings) -> Self {
        Self {
            settings,
            probes: Mutex::new(HashMap::new()),
        }
    }

    fn probe_for(&self, target: &Backend) -> Result<Arc<HttpHealthCheck>> {
        let addr = target.as_inet().copied().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "health check of a non-inet backend",
            )
        })?;
        let mut probes = match self.probes.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(p) = probes.get(&addr) {
            return Ok(p.clone());
        }
        let host = state_of(target)
            .map(|s| host_header(&s.server.url))
            .unwrap_or_else(|| addr.to_string());
        let mut probe = HttpHealthCheck::new(&host, false);
        let mut req = RequestHeader::build("GET", self.settings.path.as_bytes(), None)?;
        req.insert_header("Host", host.as_str())?;
        req.insert_header("User-Agent", "fulcrum-health-check")?;
        probe.req = req;
        probe.peer_template.options.connection_timeout = Some(self.settings.timeout);
        probe.peer_template.options.read_timeout = Some(self.settings.timeout);
        probe.peer_template.options.write_timeout = Some(self.settings.timeout);
        probe.validator = Some(Box::new(|resp| {
            if resp.status.is_success() {
                Ok(())
            } else {
                Error::e_explain(
                    ErrorType::CustomCode("non 2xx status", resp.status.as_u16()),
                    "during http health check",
                )
            }
        }));
        let probe = Arc::new(probe);
        probes.insert(addr, probe.clone());
        Ok(probe)
    }
}

/// `host:port` of a backend URL, for the health check's `Host` header.
fn host_header(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.trim_end_matches('/').to_string()
}

#[async_trait]
impl HealthCheck for ActiveHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let probe = self.probe_for(target)?;
        let result = match tokio::time::timeout(self.settings.timeout, probe.check(target)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                format!("health check took longer than {:?}", self.settings.timeout),
            ),
        };
        if let Some(state) = state_of(target) {
            let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            let now = SystemTime::now();
            if let Some(status) = state.health.record(outcome, now, self.settings.thresholds) {
                match status {
                    HealthStatus::Unhealthy => log::warn!(
                        "backend {} ({}) is unhealthy: {}",
                        state.id(),
                        state.server.url,
                        state.health.last_check().error.unwrap_or_default()
                    ),
                    _ => log::info!(
                        "backend {} ({}) is {}",
                        state.id(),
                        state.server.url,
                        status.as_str()
                    ),
                }
            }
        }
        result
    }

    fn health_threshold(&self, success: bool) -> usize {
        let t = self.settings.thresholds;
        if success {
            t.healthy as usize
        } else {
            t.unhealthy as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_the_url_authority() {
        assert_eq!(host_header("http://web1:8001"), "web1:8001");
        assert_eq!(host_header("http://127.0.0.1:1/"), "127.0.0.1:1");
    }
}
