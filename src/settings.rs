//! [`Settings`]: everything Fulcrum runs with, checked once and turned into runtime types.
//!
//! `Settings::try_from(&LoadBalancerConfig)` runs the configuration's semantic checks
//! ([`LoadBalancerConfig::validate`], pure), then does the one piece of I/O validation needs:
//! resolving each backend's host, once. It refuses two backends at one address, checks the
//! `pingora:` section and the admin token, and builds the typed values the services take
//! (backend specs, backoff, breaker, health check, request key). After it, nothing is checked
//! again: the backend set adds specs without resolving, and the server only wires.
//!
//! It sits above the modules whose types it builds (backend, balance, breaker, retry, health)
//! and below the server that wires them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use crate::acme::AcmeSettings;
use crate::backend::{BackendSpec, InvalidField};
use crate::balance::{RequestKey, Strategy};
use crate::breaker::{BreakerSettings, StatusSet};
use crate::client::TrustedProxies;
use crate::config::{ConfigError, LoadBalancerConfig};
use crate::downstream::ClientLimits;
use crate::health::{HealthCheckSettings, Thresholds};
use crate::ratelimit::Limit;
use crate::retry::{Backoff, RetrySettings};
use crate::sticky::SessionSettings;
use crate::tls::CertStore;

/// The validated runtime settings of one load balancer.
#[derive(Debug)]
pub struct Settings {
    /// The backends, validated and resolved.
    pub backends: Vec<BackendSpec>,
    /// The selection strategy.
    pub strategy: Strategy,
    /// What the strategy hashes.
    pub key: RequestKey,
    /// The active health check and its interval.
    pub health: HealthCheckSettings,
    /// Per-backend circuit breakers, when enabled.
    pub breaker: Option<BreakerSettings>,
    /// Statuses that count against a backend.
    pub failure_statuses: StatusSet,
    /// Retries: how many per request, the wait before each, the share of traffic.
    pub retry: RetrySettings,
    /// Limits on client connections before pingora parses a request.
    pub client_limits: ClientLimits,
    /// Pingora's server configuration (threads, pid file, upgrade socket, grace periods).
    pub server_conf: ServerConf,
    /// Bearer token for mutating admin calls, read from `admin_token` or its file.
    pub admin_token: Option<String>,
    /// Per-client rate limit, when configured.
    pub rate_limit: Option<Limit>,
    /// Whose forwarded headers to believe.
    pub trusted_proxies: TrustedProxies,
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Timeout of each read from and write to a backend.
    pub request_timeout: Duration,
    /// Timeout of each read and write on either side of a WebSocket.
    pub websocket_idle_timeout: Duration,
    /// Longest wait for requests in flight when stopping or removing a backend.
    pub shutdown_timeout: Duration,
    /// The TLS listener, when `enable_ssl`.
    pub tls: Option<TlsListener>,
    /// Plain HTTP is redirected to https (`redirect_http_to_https`, with TLS on).
    pub redirect_http_to_https: bool,
    /// Cleartext HTTP/2 with prior knowledge on the plain port.
    pub h2c: bool,
    /// Sticky sessions, when enabled.
    pub sessions: Option<SessionSettings>,
    /// Automatic certificates, when `acme` is set (with TLS on).
    pub acme: Option<AcmeSettings>,
}

/// The TLS listener's port and certificates.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// `tls_listen_port` (0: a free port, chosen at start).
    pub port: u16,
    /// The certificates, loaded and checked.
    pub certs: CertStore,
}

impl TryFrom<&LoadBalancerConfig> for Settings {
    type Error = ConfigError;

    fn try_from(cfg: &LoadBalancerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        // The kinds of I/O a config needs, each reporting every problem, together.
        let acme = cfg.acme.as_ref().map(AcmeSettings::load).transpose();
        let (backends, certs, acme) =
            match (resolve_backends(cfg), CertStore::from_config(cfg), acme) {
                (Ok(b), Ok(c), Ok(a)) => (b, c, a),
                (b, c, a) => {
                    let mut errors = b.err().map(ConfigError::into_messages).unwrap_or_default();
                    errors.extend(c.err().unwrap_or_default());
                    errors.extend(a.err().unwrap_or_default());
                    return Err(ConfigError::from_messages(errors));
                }
            };
        let breaker = cfg.circuit_breaker_enabled.then_some(BreakerSettings {
            failure_threshold: cfg.circuit_breaker.failure_threshold,
            recovery_threshold: cfg.circuit_breaker.recovery_threshold,
            timeout: cfg.circuit_breaker.timeout,
            half_open_max_calls: cfg.circuit_breaker.half_open_max_calls,
        });
        Ok(Self {
            backends,
            strategy: cfg.strategy,
            key: RequestKey::for_strategy(cfg.strategy, &cfg.hash_key),
            health: HealthCheckSettings {
                path: cfg.health_check_path.clone(),
                timeout: cfg.effective_health_check_timeout(),
                thresholds: Thresholds {
                    healthy: cfg.healthy_threshold,
                    unhealthy: cfg.unhealthy_threshold,
                },
                interval: cfg.health_check_interval,
            },
            breaker,
            failure_statuses: StatusSet::new(&cfg.circuit_breaker.failure_status_codes),
            retry: RetrySettings {
                max_retries: cfg.max_retries,
                backoff: Backoff::new(cfg.retry_backoff, cfg.effective_retry_backoff_max()),
                budget_percent: cfg.retry_budget_percent,
            },
            client_limits: ClientLimits {
                header_timeout: cfg.client_header_timeout,
                idle_timeout: cfg.client_idle_timeout,
                max_header_size: cfg.max_request_header_size,
                underscores_in_headers: cfg.underscores_in_headers,
            },
            server_conf: cfg.server_conf()?,
            admin_token: cfg.admin_token()?,
            trusted_proxies: TrustedProxies::new(cfg.trusted_proxies.clone()),
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            websocket_idle_timeout: cfg.websocket_idle_timeout,
            shutdown_timeout: cfg.shutdown_timeout,
            tls: certs.map(|certs| TlsListener {
                port: cfg.tls_listen_port,
                certs,
            }),
            redirect_http_to_https: cfg.enable_ssl && cfg.redirect_http_to_https,
            h2c: cfg.h2c,
            sessions: SessionSettings::from_config(cfg).map_err(ConfigError::new)?,
            acme,
            rate_limit: match cfg.rate_limit {
                None => None,
                Some(r) => Some(Limit::new(r.requests_per_second, r.burst).ok_or_else(|| {
                    ConfigError::new("rate_limit: requests_per_second and burst must be at least 1")
                })?),
            },
        })
    }
}

/// Resolves every backend once, refusing two at one address; every problem is reported.
fn resolve_backends(cfg: &LoadBalancerConfig) -> Result<Vec<BackendSpec>, ConfigError> {
    let mut errors = Vec::new();
    let mut specs = Vec::with_capacity(cfg.backends.len());
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, server) in cfg.backends.iter().enumerate() {
        let label = format!("backends[{i}] (id {:?})", server.id);
        let spec = match BackendSpec::resolve(server.clone()) {
            Ok(spec) => spec,
            Err(e) => {
                errors.push(format!("{label}: {e}"));
                continue;
            }
        };
        if let Some(&j) = seen.get(&spec.addr()) {
            let e = InvalidField::new(
                "url",
                format!(
                    "{:?} is the same address ({}) as backends[{j}] (id {:?})",
                    server.url,
                    spec.addr(),
                    cfg.backends[j].id
                ),
            );
            errors.push(format!("{label}: {e}"));
            continue;
        }
        seen.insert(spec.addr(), i);
        specs.push(spec);
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(ConfigError::from_messages(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendServer;

    fn config(urls: &[(&str, &str)]) -> LoadBalancerConfig {
        LoadBalancerConfig {
            backends: urls
                .iter()
                .map(|(id, url)| BackendServer::new(*id, *url))
                .collect(),
            ..LoadBalancerConfig::default()
        }
    }

    #[test]
    fn resolves_backends_once_into_specs() {
        let s = Settings::try_from(&config(&[
            ("a", "http://127.0.0.1:8001"),
            ("b", "http://localhost:8002"),
        ]))
        .unwrap();
        let addrs: Vec<_> = s.backends.iter().map(|b| b.addr().port()).collect();
        assert_eq!(addrs, [8001, 8002]);
        assert_eq!(s.key, RequestKey::None);
        assert!(s.breaker.is_some());
    }

    #[test]
    fn every_backend_problem_is_reported_with_its_key() {
        let err = Settings::try_from(&config(&[
            ("a", "http://127.0.0.1:8001"),
            ("b", "http://127.0.0.1:8001"),
            ("c", "http://no-such-host.invalid:80"),
        ]))
        .unwrap_err();
        let msgs = err.messages();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].starts_with("backends[1] (id \"b\"): url: ")
                && msgs[0].contains("same address (127.0.0.1:8001) as backends[0]"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("backends[2] (id \"c\"): url: cannot resolve"),
            "{msgs:?}"
        );
    }

    #[test]
    fn semantic_checks_run_first() {
        let mut cfg = config(&[("a", "http://127.0.0.1:8001")]);
        cfg.max_retries = 99;
        let err = Settings::try_from(&cfg).unwrap_err();
        assert!(err.messages()[0].starts_with("max_retries"), "{err}");
    }
}
