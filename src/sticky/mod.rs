//! Sticky sessions: which backend a client's session cookie pins it to, and where that is kept.
//!
//! A [`SessionStore`] turns the cookie's value into a backend id ([`SessionStore::lookup`],
//! which also slides the session's expiry) and pins a session to a backend
//! ([`SessionStore::pin`], which returns the cookie value to send). Three stores, chosen by
//! `session_store:`:
//!
//! - [`memory::MemoryStore`] (`memory`, the default): random 128-bit ids in a sharded map with
//!   sliding expiry, bounded by `max_sessions`; one instance only.
//! - [`cookie::CookieStore`] (`cookie`): the cookie itself carries the backend id and expiry
//!   under an HMAC, so any number of instances sharing the secret agree without shared state;
//!   its expiry slides by a new cookie on every hit ([`SessionStore::reissue_on_hit`]).
//! - [`redis::RedisStore`] (`redis://HOST:PORT/DB`): ids in Redis with a sliding TTL, behind a
//!   small local cache, so several instances agree; never waited on for more than 100 ms.
//!
//! A cookie the store does not know (unknown, expired, forged, malformed: whatever its bytes) is
//! a [`Lookup::Miss`], never an error: the request is balanced as if it had none. A store that
//! cannot answer (Redis down) says [`Lookup::Unavailable`]: the request is balanced too, and the
//! error is counted. Stores take the time as an argument, so their expiry is tested with an
//! injected clock.
//!
//! The pipeline ([`crate::proxy`]) asks the store before the strategy: a pinned backend that can
//! take the request gets it; otherwise (unhealthy, breaker open, draining, removed, full) the
//! request is balanced and the session re-pinned, with a new cookie.

pub mod cookie;
pub mod memory;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::http::RequestHeader;

use crate::config::LoadBalancerConfig;
use crate::headers::cookie_value;

/// What a store knows of a cookie value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A live session pinned to this backend id (its expiry was just extended, or is to be
    /// by a new cookie: [`SessionStore::reissue_on_hit`]).
    Pinned(Arc<str>),
    /// No such live session: unknown, expired, forged or malformed.
    Miss,
    /// The store could not answer in time (counted as a store error).
    Unavailable,
}

/// Why a store could not pin a session.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Where sessions live (see the module docs).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The store's kind for `/health` and metrics: `memory`, `cookie` or `redis`.
    fn kind(&self) -> &'static str;

    /// The backend the session in cookie value `token` is pinned to, extending it to
    /// `now + timeout` (sliding expiry) when the store holds the expiry (see
    /// [`SessionStore::reissue_on_hit`] for a store whose cookie holds it).
    async fn lookup(&self, token: &str, now: SystemTime) -> Lookup;

    /// Whether a hit must send the client a new cookie value, from
    /// `pin(Some(token), backend, now)`, for its session to slide: `true` when the value itself
    /// carries the expiry (`cookie`), which only a new value can extend; `false` (the default)
    /// when [`SessionStore::lookup`] extended it in the store, and the value stays the same.
    fn reissue_on_hit(&self) -> bool {
        false
    }

    /// Pins a session to `backend` until `now + timeout` and returns the cookie value to send.
    /// `previous` is the client's current cookie value, if any, which a store may reuse.
    async fn pin(
        &self,
        previous: Option<&str>,
        backend: &str,
        now: SystemTime,
    ) -> Result<String, StoreError>;

    /// Sessions held, when the store knows (memory: exact; Redis: its local cache; cookie:
    /// `None`, the clients hold them).
    fn active(&self) -> Option<u64>;

    /// Drops expired sessions (the memory store's cleanup task calls it).
    fn sweep(&self, _now: SystemTime) {}

    /// Whether the store answers now, for `/health` (Redis: false from a failed call until the
    /// next one that succeeds; the others always answer).
    fn reachable(&self) -> bool {
        true
    }
}

/// What the sticky layer counted, for metrics and `/health`.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Requests whose cookie led to their pinned backend.
    pub hits: AtomicU64,
    /// Requests with no usable session (no cookie, or one the store does not know).
    pub misses: AtomicU64,
    /// Sessions moved to another backend because theirs could not take the request.
    pub repins: AtomicU64,
    /// Lookups or pins the store could not answer.
    pub store_errors: AtomicU64,
}

impl SessionStats {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(hits, misses, repins, store_errors)` now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.repins.load(Ordering::Relaxed),
            self.store_errors.load(Ordering::Relaxed),
        )
    }
}

/// Which store the configuration asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `memory`, holding at most this many sessions.
    Memory {
        /// `max_sessions`.
        max_sessions: usize,
    },
    /// `cookie`, signing with the first key and accepting every one.
    Cookie {
        /// From `session_secret` or `session_secret_file`.
        keys: SessionKeys,
    },
    /// `redis://HOST:PORT/DB`, keys under `session_store_prefix`.
    Redis {
        /// `session_store`, checked.
        url: redis::RedisUrl,
        /// `session_store_prefix`.
        prefix: String,
    },
}

/// HMAC keys of the cookie store; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys(pub Vec<Vec<u8>>);

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({} keys, redacted)", self.0.len())
    }
}

/// The sticky settings of a configuration, validated; `None` when sticky sessions are off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// `session_cookie_name`.
    pub cookie_name: String,
    /// `session_timeout`.
    pub timeout: Duration,
    /// `session_store` and its keys.
    pub store: StoreChoice,
}

impl SessionSettings {
    /// The sticky settings `config` asks for; the error names the key.
    pub fn from_config(config: &LoadBalancerConfig) -> Result<Option<Self>, String> {
        if !config.enable_sticky_sessions {
            return Ok(None);
        }
        let store = match config.session_store.as_str() {
            "memory" => StoreChoice::Memory {
                max_sessions: config.max_sessions,
            },
            "cookie" => StoreChoice::Cookie {
                keys: SessionKeys(cookie::keys_from_config(config).map_err(|e| e.to_string())?),
            },
            url if url.starts_with("redis") => StoreChoice::Redis {
                url: redis::RedisUrl::parse(url)?,
                prefix: config.session_store_prefix.clone(),
            },
            other => {
                return Err(format!(
                    "session_store: {other:?}: expected memory, cookie or redis://HOST:PORT/DB"
                ))
            }
        };
        Ok(Some(Self {
            cookie_name: config.session_cookie_name.clone(),
            timeout: config.session_timeout,
            store,
        }))
    }

    /// A new store of the chosen kind.
    pub fn build_store(&self) -> Result<Arc<dyn SessionStore>, StoreError> {
        Ok(match &self.store {
            StoreChoice::Memory { max_sessions } => {
                Arc::new(memory::MemoryStore::new(self.timeout, *max_sessions))
            }
            StoreChoice::Cookie { keys } => {
                Arc::new(cookie::CookieStore::new(keys.0.clone(), self.timeout)?)
            }
            StoreChoice::Redis { url, prefix } => {
                Arc::new(redis::RedisStore::new(url, prefix, self.timeout))
            }
        })
    }
}

/// The sticky layer as the pipeline uses it: a store, the cookie's name and lifetime, and the
/// counters.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    cookie_name: String,
    timeout: Duration,
    /// What happened to requests and the store so far.
    pub stats: SessionStats,
}

/// What the sticky layer reports (`/health`, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsReport {
    /// `memory`, `cookie` or `redis`.
    pub store: &'static str,
    /// Sessions held, when the store knows.
    pub active: Option<u64>,
    /// Requests sent to their pinned backend.
    pub hits: u64,
    /// Requests without a usable session.
    pub misses: u64,
    /// Sessions moved to another backend.
    pub repins: u64,
    /// Store calls that failed.
    pub store_errors: u64,
    /// Whether the store answered its last call (always true for memory and cookie).
    pub reachable: bool,
}

impl Sessions {
    /// Sessions in `store`, carried by cookie `cookie_name`, expiring `timeout` after last use.
    pub fn new(store: Arc<dyn SessionStore>, cookie_name: String, timeout: Duration) -> Self {
        Self {
            store,
            cookie_name,
            timeout,
            stats: SessionStats::default(),
        }
    }

    /// The store (for its cleanup task).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The client's session cookie value, if it could be one of ours, and the backend id its
    /// session is pinned to, if the store knows it. A store that cannot answer counts an error
    /// and the request is balanced as if it had no session.
    pub async fn lookup(
        &self,
        req: &RequestHeader,
        now: SystemTime,
    ) -> (Option<String>, Option<Arc<str>>) {
        let Some(token) = cookie_value(req, &self.cookie_name).and_then(plausible_token) else {
            return (None, None);
        };
        let pinned = match self.store.lookup(token, now).await {
            Lookup::Pinned(backend) => Some(backend),
            Lookup::Miss => None,
            Lookup::Unavailable => {
                SessionStats::count(&self.stats.store_errors);
                None
            }
        };
        (Some(token.to_string()), pinned)
    }

    /// Pins the client's session to `backend` and returns the `Set-Cookie` value, or `None`
    /// (counted) when the store cannot.
    pub async fn pin(
        &self,
        previous: Option<&str>,
        backend: &str,
        secure: bool,
        now: SystemTime,
    ) -> Option<String> {
        match self.store.pin(previous, backend, now).await {
            Ok(value) => Some(set_cookie(&self.cookie_name, &value, self.timeout, secure)),
            Err(e) => {
                SessionStats::count(&self.stats.store_errors);
                log::debug!("session store: cannot pin a session to {backend}: {e}");
                None
            }
        }
    }

    /// The `Set-Cookie` that keeps a hit's session alive in the browser: the store's new value
    /// when the value carries the expiry (`cookie`), else the same value with a fresh
    /// `Max-Age`, since the browser would otherwise drop it `session_timeout` after it was first
    /// sent, however often it is used.
    pub async fn refresh(
        &self,
        token: &str,
        backend: &str,
        secure: bool,
        now: SystemTime,
    ) -> Option<String> {
        if self.store.reissue_on_hit() {
            self.pin(Some(token), backend, secure, now).await
        } else {
            Some(set_cookie(&self.cookie_name, token, self.timeout, secure))
        }
    }

    /// What to report now.
    pub fn report(&self) -> SessionsReport {
        let (hits, misses, repins, store_errors) = self.stats.snapshot();
        SessionsReport {
            store: self.store.kind(),
            active: self.store.active(),
            hits,
            misses,
            repins,
            store_errors,
            reachable: self.store.reachable(),
        }
    }
}

/// Pingora background service dropping expired sessions once a minute (the memory store; the
/// others have nothing to sweep).
pub struct SessionSweeper(pub Arc<Sessions>);

#[async_trait]
impl pingora::services::background::BackgroundService for SessionSweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(60)) => {
                    self.0.store.sweep(SystemTime::now());
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// `Set-Cookie` for `value`: `HttpOnly; Path=/; Max-Age=…; SameSite=Lax`, and `Secure` on TLS.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        max_age.as_secs()
    )
}

/// Whether `value` can be a cookie value we issued: 1 to 512 visible ASCII bytes without `;`,
/// `,`, `"`, `\` or spaces. Anything else is a miss without asking the store.
pub fn plausible_token(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= 512
        && value
            .iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    if ok {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_tokens() {
        assert_eq!(
            set_cookie("LB_SESSION_ID", "abc", Duration::from_secs(7200), false),
            "LB_SESSION_ID=abc; Path=/; Max-Age=7200; HttpOnly; SameSite=Lax"
        );
        assert!(set_cookie("S", "x", Duration::from_secs(1), true).ends_with("; Secure"));
        assert_eq!(plausible_token(b"0123abcdef"), Some("0123abcdef"));
        for bad in [
            &b""[..],
            b"a;b",
            b"a b",
            b"\"q\"",
            b"\xff\xfe",
            &[b'a'; 513],
        ] {
            assert_eq!(plausible_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_redis_url_chooses_the_redis_store_and_a_bad_one_names_the_key() {
        let mut cfg = LoadBalancerConfig {
            enable_sticky_sessions: true,
            session_store: "redis://127.0.0.1:6379/1".into(),
            session_store_prefix: "app:".into(),
            ..LoadBalancerConfig::default()
        };
        let settings = SessionSettings::from_config(&cfg).unwrap().unwrap();
        let StoreChoice::Redis { url, prefix } = &settings.store else {
            panic!("{settings:?}");
        };
        assert_eq!(format!("{url:?}"), "redis://127.0.0.1:6379/1");
        assert_eq!(prefix, "app:");
        assert_eq!(settings.build_store().unwrap().kind(), "redis");
        for bad in ["redis://:pw@host:port/1", "rediss://:pw@host/1"] {
            cfg.session_store = bad.into();
            let e = SessionSettings::from_config(&cfg).unwrap_err();
            assert!(e.starts_with("session_store: ") && !e.contains("pw"), "{e}");
        }
    }
}
