//! Reload in place: a new configuration applied to the running process, without new sockets
//! and without dropping a request.
//!
//! [`Reloader`] owns the configuration in force and the handles of what can change while
//! running ([`Live`]). A reload (SIGHUP through [`ReloadOnHangup`], `POST /api/reload`, or
//! [`Reloader::reload_config`] from code) reads the file, validates it exactly like `fulcrum -t`
//! (into [`Settings`], DNS included, off the async threads), and only then applies it:
//!
//! | what | how |
//! |---|---|
//! | backends | [`BackendSet::reconcile`] in one rebuild: new ids added, weights set, a changed URL, capacity or tags replaces the backend, ids gone from the file leave the selector at once while their requests in flight finish; backends added through the API and never in a file stay |
//! | `strategy` | a new selector over the same members ([`BackendSet::set_selector`]); health is kept |
//! | circuit breaker | every breaker reconfigured, keeping its state ([`BackendSet::set_breakers`]) |
//! | health check | path, timeout, thresholds and interval ([`ActiveHealthCheck::set_settings`]) |
//! | retries, rate limit, `hash_key`, timeouts, trusted proxies, failure statuses | new [`ProxySettings`] for requests that start from now on; the limiter's counts and the retry budget carry over when their settings did not change |
//! | admin token | the next admin call checks the new one |
//! | TLS certificates | re-read from their files (also when the paths did not change) and served from the next handshake on; open connections keep theirs; the ACME certificate stays (the `acme` section itself needs an upgrade) |
//!
//! Keys that need new sockets or a new process ([`NEEDS_UPGRADE`]: ports, addresses, the
//! `pingora` section, the access log, client connection limits...) are reported and logged as
//! needing an upgrade, and otherwise left as they are. An invalid file changes nothing: every
//! problem is logged with its key and returned, and the previous configuration keeps serving.
//! Each reload is counted by outcome in the metrics. Reloads run one at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::access_log::AccessLog;
use crate::backend::{BackendSet, BackendState, SetError};
use crate::balance::{BalanceConfig, Balancer};
use crate::config::{ConfigError, LoadBalancerConfig};
use crate::health::ActiveHealthCheck;
use crate::metrics::Metrics;
use crate::proxy::{LiveSettings, ProxySettings};
use crate::ratelimit::RateLimiter;
use crate::retry::RetryPolicy;
use crate::rng::random_seed;
use crate::settings::Settings;
use crate::tls::SniResolver;

/// Top-level keys whose change needs new sockets or a new process (an upgrade): a reload
/// reports them and keeps their running values.
pub const NEEDS_UPGRADE: &[&str] = &[
    "port",
    "bind_address",
    "admin_address",
    "pingora",
    "metrics_enabled",
    "logging_enabled",
    "access_log",
    "client_header_timeout",
    "client_idle_timeout",
    "max_request_header_size",
    "underscores_in_headers",
    "max_idle_conns",
    "max_idle_conns_per_host",
    "graceful_shutdown",
    "shutdown_timeout",
    "enable_sticky_sessions",
    "session_cookie_name",
    "session_timeout",
    "session_store",
    "session_store_prefix",
    "max_sessions",
    "session_secret",
    "session_secret_file",
    "enable_ssl",
    "tls_listen_port",
    "h2c",
    "acme",
];

/// The parts of a running load balancer that a reload changes.
pub struct Live {
    /// The backends.
    pub backends: Arc<BackendSet<Balancer>>,
    /// The settings each request starts with.
    pub proxy: Arc<LiveSettings>,
    /// The active health check (its settings and interval).
    pub health: ActiveHealthCheck,
    /// Strategy label and reload counts.
    pub metrics: Arc<Metrics>,
    /// The admin API's bearer token.
    pub admin_token: Arc<ArcSwapOption<String>>,
    /// The access log (not reopened by a reload; carried into new proxy settings).
    pub access_log: Option<Arc<AccessLog>>,
    /// The TLS listener, when one runs: a reload re-reads its certificates.
    pub tls: Option<RunningTls>,
}

/// The running TLS listener.
pub struct RunningTls {
    /// Its port (plain HTTP redirects here).
    pub port: u16,
    /// Its certificates.
    pub resolver: Arc<SniResolver>,
}

/// The pipeline's settings for `settings`. The rate limiter and the retry policy of
/// `previous` are kept when their settings did not change, so a reload does not reset a
/// client's count or the retry budget. `https_port` is the running TLS listener's port, if
/// any: plain HTTP is redirected there when the settings ask for it.
pub fn proxy_settings(
    settings: &Settings,
    access_log: Option<Arc<AccessLog>>,
    previous: Option<&ProxySettings>,
    https_port: Option<u16>,
) -> ProxySettings {
    let rate_limit = settings.rate_limit.map(|limit| {
        previous
            .and_then(|p| p.rate_limit.as_ref())
            .filter(|l| l.limit() == limit)
            .cloned()
            .unwrap_or_else(|| Arc::new(RateLimiter::new(limit)))
    });
    let retry = previous
        .map(|p| &p.retry)
        .filter(|r| r.settings() == settings.retry)
        .cloned()
        .unwrap_or_else(|| Arc::new(RetryPolicy::new(settings.retry, random_seed())));
    ProxySettings {
        key: settings.key.clone(),
        connect_timeout: settings.connect_timeout,
        request_timeout: settings.request_timeout,
        websocket_idle_timeout: settings.websocket_idle_timeout,
        access_log,
        https_redirect: https_port.filter(|_| settings.redirect_http_to_https),
        failure_statuses: settings.failure_statuses.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
        rate_limit,
        retry,
    }
}

/// What a reload did (the body of `POST /api/reload`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Always `reloaded`.
    pub status: &'static str,
    /// Ids of the backends added.
    pub added: Vec<String>,
    /// Ids of the backends removed.
    pub removed: Vec<String>,
    /// Ids of the backends whose weight changed or that were replaced (URL, capacity, tags).
    pub updated: Vec<String>,
    /// Other top-level keys whose new values are in force.
    pub changed: Vec<String>,
    /// Keys that changed but need an upgrade; their running values stay.
    pub needs_upgrade: Vec<String>,
    /// Whether every request in flight on removed or replaced backends finished (within
    /// `shutdown_timeout`) before the reload reported.
    pub drained: bool,
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// The load balancer was not started from a file (`--demo`, or built in code).
    NoFile,
    /// The file could not be read or is invalid; every problem names its key.
    Invalid(ConfigError),
    /// The backends cannot be applied as they are: one would share its address with a
    /// backend added through the API.
    Backends(SetError),
}

impl ReloadError {
    /// One line per problem.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(e) => e.messages().to_vec(),
            other => vec![other.to_string()],
        }
    }
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => {
                f.write_str("no configuration file to reload (started with --demo or from code)")
            }
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::Backends(e) => write!(f, "backends: {e}"),
        }
    }
}

impl std::error::Error for ReloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReloadError::NoFile => None,
            ReloadError::Invalid(e) => Some(e),
            ReloadError::Backends(e) => Some(e),
        }
    }
}

/// Applies new configurations to a running load balancer (see the module docs).
pub struct Reloader {
    file: Option<PathBuf>,
    live: Live,
    /// The configuration in force. Held through a reload, so reloads run one at a time.
    current: tokio::sync::Mutex<LoadBalancerConfig>,
}

impl Reloader {
    /// A reloader for a load balancer running `config`, read from `file` when there is one.
    pub fn new(file: Option<PathBuf>, config: LoadBalancerConfig, live: Live) -> Self {
        Self {
            file,
            live,
            current: tokio::sync::Mutex::new(config),
        }
    }

    /// The file reloads read, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// Re-reads the configuration file and applies it (SIGHUP, `POST /api/reload`). Logged
    /// and counted either way.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        match self.file.clone() {
            None => self.account(Err(ReloadError::NoFile)),
            Some(file) => {
                self.validate_and_apply(move || LoadBalancerConfig::from_file(&file))
                    .await
            }
        }
    }

    /// Validates `config` and applies it, like a reload of the file would (for embedders).
    /// Logged and counted either way.
    pub async fn reload_config(
        &self,
        config: LoadBalancerConfig,
    ) -> Result<ReloadReport, ReloadError> {
        self.validate_and_apply(move || Ok(config)).await
    }

    /// Loads a configuration and validates it into [`Settings`] on a blocking thread (file
    /// reading, DNS), then applies it; logs and counts the outcome.
    async fn validate_and_apply(
        &self,
        load: impl FnOnce() -> Result<LoadBalancerConfig, ConfigError> + Send + 'static,
    ) -> Result<ReloadReport, ReloadError> {
        let validated = tokio::task::spawn_blocking(move || {
            let config = load()?;
            let settings = Settings::try_from(&config)?;
            Ok::<_, ConfigError>((config, settings))
        })
        .await;
        let outcome = match validated {
            Ok(Ok((config, settings))) => self.apply(config, settings).await,
            Ok(Err(e)) => Err(ReloadError::Invalid(e)),
            Err(e) => Err(ReloadError::Invalid(ConfigError::new(format!(
                "validation stopped: {e}"
            )))),
        };
        self.account(outcome)
    }

    /// Applies a validated configuration; then waits (up to the new `shutdown_timeout`) for
    /// the requests in flight on backends that left.
    async fn apply(
        &self,
        config: LoadBalancerConfig,
        settings: Settings,
    ) -> Result<ReloadReport, ReloadError> {
        let live = &self.live;
        let mut current = self.current.lock().await;
        let retire: Vec<String> = current.backends.iter().map(|b| b.id.clone()).collect();
        let diff = live
            .backends
            .reconcile(settings.backends.clone(), &retire)
            .await
            .map_err(ReloadError::Backends)?;
        if config.strategy != current.strategy {
            let selector = BalanceConfig {
                strategy: settings.strategy,
                seed: random_seed(),
            };
            live.backends
                .set_selector(selector)
                .await
                .map_err(ReloadError::Backends)?;
            live.metrics.set_strategy(settings.strategy);
        }
        live.backends.set_breakers(settings.breaker).await;
        live.health.set_settings(settings.health.clone());
        if let (Some(running), Some(tls)) = (&live.tls, &settings.tls) {
            running.resolver.replace(tls.certs.clone());
            log::info!("TLS certificates re-read: {:?}", tls.certs);
        }
        let previous = live.proxy.load_full();
        live.proxy.store(Arc::new(proxy_settings(
            &settings,
            live.access_log.clone(),
            Some(&previous),
            live.tls.as_ref().map(|t| t.port),
        )));
        live.admin_token
            .store(settings.admin_token.clone().map(Arc::new));
        let (changed, needs_upgrade) = changed_keys(&current, &config);
        *current = config;
        drop(current);

        let gone: Vec<Arc<BackendState>> = diff.gone().cloned().collect();
        let drained = wait_idle(&gone, settings.shutdown_timeout).await;
        let mut updated = diff.reweighted;
        updated.extend(diff.replaced.iter().map(|b| b.id().to_string()));
        Ok(ReloadReport {
            status: "reloaded",
            added: diff.added,
            removed: diff.removed.iter().map(|b| b.id().to_string()).collect(),
            updated,
            changed,
            needs_upgrade,
            drained,
        })
    }

    /// Logs and counts a reload's outcome.
    fn account(
        &self,
        outcome: Result<ReloadReport, ReloadError>,
    ) -> Result<ReloadReport, ReloadError> {
        let from = self
            .file
            .as_ref()
            .map_or_else(|| "code".to_string(), |f| f.display().to_string());
        match &outcome {
            Ok(r) => {
                self.live.metrics.record_reload(true);
                log::info!(
                    "configuration reloaded from {from}: backends added {:?}, removed {:?}, \
                     updated {:?}; changed {:?}{}",
                    r.added,
                    r.removed,
                    r.updated,
                    r.changed,
                    if r.drained {
                        ""
                    } else {
                        "; requests on removed backends were still in flight at shutdown_timeout"
                    }
                );
                if !r.needs_upgrade.is_empty() {
                    log::warn!(
                        "configuration {from}: {} changed but need an upgrade (new sockets or a \
                         new process); the running values stay until then",
                        r.needs_upgrade.join(", ")
                    );
                }
            }
            Err(ReloadError::NoFile) => {
                log::warn!("reload asked for, but there is {}", ReloadError::NoFile);
            }
            Err(e) => {
                self.live.metrics.record_reload(false);
                log::error!(
                    "configuration reload from {from} failed; the running configuration stays:"
                );
                for msg in e.messages() {
                    log::error!("  - {msg}");
                }
            }
        }
        outcome
    }
}

/// Top-level keys that differ between `old` and `new`, backends aside: those now in force,
/// and those that need an upgrade.
fn changed_keys(old: &LoadBalancerConfig, new: &LoadBalancerConfig) -> (Vec<String>, Vec<String>) {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return (Vec::new(), Vec::new());
    };
    let (mut live, mut upgrade) = (Vec::new(), Vec::new());
    for (key, value) in &new {
        if key == "backends" || old.get(key) == Some(value) {
            continue;
        }
        if NEEDS_UPGRADE.contains(&key.as_str()) {
            upgrade.push(key.clone());
        } else {
            live.push(key.clone());
        }
    }
    (live, upgrade)
}

/// Waits until no request is in flight on `states`, at most `limit`; whether they all finished.
async fn wait_idle(states: &[Arc<BackendState>], limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if states.iter().all(|s| s.stats.in_flight() == 0) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pingora background service reloading on SIGHUP. Installed whenever Fulcrum owns the
/// process's signals (the binary, `LoadBalancer::run`), also without a file (it only logs
/// then), so a SIGHUP never kills Fulcrum once it runs.
pub struct ReloadOnHangup(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP ({e}): reload with POST /api/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    log::info!("SIGHUP: reloading the configuration");
                    // logged and counted by the reloader
                    let _outcome = self.0.reload().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_split_live_from_upgrade_and_skip_backends() {
        let old = LoadBalancerConfig::default();
        let mut new = old.clone();
        assert_eq!(changed_keys(&old, &new), (vec![], vec![]));
        new.strategy = crate::balance::Strategy::Random;
        new.max_retries = 1;
        new.port = 9999;
        new.pingora
            .0
            .insert("threads".into(), serde_yaml::Value::from(3));
        new.backends.push(crate::backend::BackendServer::new(
            "a",
            "http://127.0.0.1:1",
        ));
        let (live, upgrade) = changed_keys(&old, &new);
        assert_eq!(live, ["max_retries", "strategy"]);
        assert_eq!(upgrade, ["pingora", "port"]);
    }

    #[test]
    fn every_upgrade_key_is_a_config_key() {
        let serde_json::Value::Object(keys) =
            serde_json::to_value(LoadBalancerConfig::default()).unwrap()
        else {
            panic!("a config serialises to a map");
        };
        for key in NEEDS_UPGRADE {
            assert!(keys.contains_key(*key), "{key} is not a config key");
        }
    }
}
