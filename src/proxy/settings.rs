//! [`ProxySettings`]: what the pipeline runs with besides the backends, replaced whole by a
//! reload ([`LiveSettings`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::balance::RequestKey;
use crate::breaker::StatusSet;
use crate::client::TrustedProxies;
use crate::ratelimit::RateLimiter;
use crate::retry::RetryPolicy;

/// Everything the pipeline needs besides the backends, built once from the config.
pub struct ProxySettings {
    /// What the strategy hashes (nothing, the client IP, a header, a cookie or the path).
    pub key: RequestKey,
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Timeout of each read from and write to the backend.
    pub request_timeout: Duration,
    /// Timeout of each read and write, on both sides, of a WebSocket (in place of
    /// `request_timeout`).
    pub websocket_idle_timeout: Duration,
    /// Where access-log lines go (`None` when `logging_enabled` is off).
    pub access_log: Option<Arc<AccessLog>>,
    /// Plain HTTP requests are answered with a redirect to https on this port.
    pub https_redirect: Option<u16>,
    /// Statuses that count as failures for a backend's circuit breaker.
    pub failure_statuses: StatusSet,
    /// Whose `X-Forwarded-For` to believe.
    pub trusted_proxies: TrustedProxies,
    /// Per-client rate limit, if any (shared, so a reload that keeps the limit keeps the
    /// counts).
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Retries: attempts, backoff, budget (shared like the limiter).
    pub retry: Arc<RetryPolicy>,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySettings")
            .field("key", &self.key)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("websocket_idle_timeout", &self.websocket_idle_timeout)
            .field("https_redirect", &self.https_redirect)
            .field("rate_limit", &self.rate_limit.as_ref().map(|r| r.limit()))
            .field("retry", &self.retry.settings())
            .finish_non_exhaustive()
    }
}

/// The settings requests start with; a reload stores new ones.
pub type LiveSettings = ArcSwap<ProxySettings>;
