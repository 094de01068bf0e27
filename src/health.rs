//! Active health checks: [`HealthService`] runs them; their results feed each backend's health
//! view.
//!
//! The service runs pingora's health registry of the backend set (all backends in parallel):
//! a first pass at start, then one every `health_check_interval`.
//! [`ActiveHealthCheck`] is the [`HealthCheck`] the registry runs. It sends pingora's
//! [`HttpHealthCheck`] request (`GET health_check_path`, 2xx passes, bounded by
//! `health_check_timeout`) and feeds every result into the backend's [`HealthTracker`]. It
//! connects as requests do, from the backend's [`PeerTemplate`]: TLS with the same SNI,
//! verification and CA for an https backend, HTTP/2 for `protocol: h2`. Its
//! settings, the interval included, can be replaced while it runs (a reload): the next check
//! uses them, and a new interval takes effect at once.
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

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora_core::{Error, ErrorType, Result};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::{Backend, HealthRegistry};
use tokio::sync::Notify;

pub use crate::backend::health::{
    HealthMachine, HealthStatus, HealthTracker, LastCheck, Thresholds,
};
use crate::backend::{state_of, PeerTemplate};

/// Settings of the active HTTP health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// Path requested (`health_check_path`).
    pub path: String,
    /// Bound on one whole check: connect, request and response headers (`health_check_timeout`).
    pub timeout: Duration,
    /// Rise and fall thresholds.
    pub thresholds: Thresholds,
    /// Time from the start of one pass over all backends to the start of the next
    /// (`health_check_interval`).
    pub interval: Duration,
}

/// What a cached probe is for: the backend's `Host` header and how to connect to it (address,
/// TLS, protocol), so that a backend replaced by a reload with other settings gets its own.
type ProbeKey = (String, PeerTemplate);

/// The [`HealthCheck`] the health registry runs for every backend. Clones share their
/// settings, so the one kept by the reload path changes the one the registry runs.
#[derive(Clone)]
pub struct ActiveHealthCheck {
    inner: Arc<CheckInner>,
}

struct CheckInner {
    settings: ArcSwap<HealthCheckSettings>,
    /// One pingora HTTP check per backend `Host` header and peer.
    probes: Mutex<HashMap<ProbeKey, Arc<HttpHealthCheck>>>,
    /// Wakes the service when the settings change (a shorter interval applies at once).
    changed: Notify,
}

impl ActiveHealthCheck {
    /// A checker with these settings.
    pub fn new(settings: HealthCheckSettings) -> Self {
        Self {
            inner: Arc::new(CheckInner {
                settings: ArcSwap::from_pointee(settings),
                probes: Mutex::new(HashMap::new()),
                changed: Notify::new(),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<HealthCheckSettings> {
        self.inner.settings.load_full()
    }

    /// Replaces the settings: the next check of each backend uses them. Returns whether they
    /// changed.
    pub fn set_settings(&self, settings: HealthCheckSettings) -> bool {
        let old = self.inner.settings.load_full();
        if *old == settings {
            return false;
        }
        let probes_differ = old.path != settings.path || old.timeout != settings.timeout;
        self.inner.settings.store(Arc::new(settings));
        if probes_differ {
            self.probes().clear(); // rebuilt with the new path and timeout on the next check
        }
        self.inner.changed.notify_one();
        true
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, HashMap<ProbeKey, Arc<HttpHealthCheck>>> {
        match self.inner.probes.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn probe_for(&self, target: &Backend) -> Result<Arc<HttpHealthCheck>> {
        let addr = target.as_inet().copied().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "health check of a non-inet backend",
            )
        })?;
        let key = match state_of(target) {
            Some(s) => (host_header(&s.server.url), s.peer_template().clone()),
            None => (addr.to_string(), PeerTemplate::plain(addr)),
        };
        let mut probes = self.probes();
        if let Some(p) = probes.get(&key) {
            return Ok(p.clone());
        }
        let (host, template) = key;
        let settings = self.settings();
        let mut probe = HttpHealthCheck::new(&host, template.settings().tls);
        probe.peer_template = template.peer();
        let mut req = RequestHeader::build("GET", settings.path.as_bytes(), None)?;
        req.insert_header("Host", host.as_str())?;
        req.insert_header("User-Agent", "fulcrum-health-check")?;
        probe.req = req;
        probe.peer_template.options.connection_timeout = Some(settings.timeout);
        probe.peer_template.options.read_timeout = Some(settings.timeout);
        probe.peer_template.options.write_timeout = Some(settings.timeout);
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
        probes.insert((host, template), probe.clone());
        Ok(probe)
    }
}

/// Pingora background service running the checks of a backend set's health registry: a first
/// pass at once, then a pass every interval, as the [`ActiveHealthCheck`]'s settings say at the
/// time. It reports ready before the first pass, as pingora's own load balancer does: the
/// proxy starts with the backends **unknown** (they take traffic) rather than wait for a slow
/// one's check to time out.
pub struct HealthService {
    registry: Arc<HealthRegistry>,
    check: ActiveHealthCheck,
}

impl HealthService {
    /// Runs `registry`'s checks on `check`'s schedule (`check` is the one the registry holds).
    pub fn new(registry: Arc<HealthRegistry>, check: ActiveHealthCheck) -> Self {
        Self { registry, check }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = tokio::time::Instant::now();
        let mut next = last;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    last = tokio::time::Instant::now();
                    tokio::select! {
                        () = self.registry.run_health_check(true) => {}
                        _ = shutdown.changed() => return,
                    }
                    next = last + self.check.settings().interval;
                }
                // new settings: the next pass is one new interval after the last one began
                () = self.check.inner.changed.notified() => {
                    next = last + self.check.settings().interval;
                }
                _ = shutdown.changed() => return,
            }
        }
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
        let settings = self.settings();
        let result = match tokio::time::timeout(settings.timeout, probe.check(target)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(
                ErrorType::ReadTimedout,
                format!("health check took longer than {:?}", settings.timeout),
            ),
        };
        if let Some(state) = state_of(target) {
            let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            let now = SystemTime::now();
            if let Some(status) = state.health.record(outcome, now, settings.thresholds) {
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
        let t = self.settings().thresholds;
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
