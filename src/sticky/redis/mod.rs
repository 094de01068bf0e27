//! [`RedisStore`]: sessions shared through Redis (`session_store: redis://HOST:PORT/DB`), so
//! every Fulcrum instance pointed at the same Redis sends a client to the same backend.
//!
//! A session is the key `session_store_prefix` + id (the id: 128 random bits from the operating
//! system's CSPRNG, sent as 32 hex digits, like the memory store's) holding the backend id, with
//! a TTL of `session_timeout`: set by a pin, slid by every lookup that reaches Redis
//! (`GETEX key PX ms`, Redis ≥ 6.2).
//!
//! The hot path rarely waits for Redis: what Redis answered (and what this instance pinned) is
//! kept for [`CACHE_TTL`] in a small local cache (`cache::LocalCache`: 4096 entries at most,
//! sharded), so a client's burst costs one round trip. The price: a cache hit does not slide
//! the TTL (the next miss, at most [`CACHE_TTL`] later, does), and a re-pin made by another
//! instance is seen here at most [`CACHE_TTL`] late.
//!
//! Redis is never waited on for long. Every call is bounded by [`REDIS_TIMEOUT`]; a failure
//! makes `lookup` answer [`Lookup::Unavailable`] (the request is balanced as if it had no
//! session) and `pin` fail, and for the next [`RETRY_AFTER`] requests skip Redis at once (cached
//! sessions still resolve) until one request probes it again. The connection (redis-rs's
//! `ConnectionManager`: one multiplexed connection) is made lazily on first use, so Fulcrum
//! starts and serves with Redis down, and is re-made in the background when it breaks; one
//! still failing after [`REBUILD_AFTER`] is replaced whole.

mod cache;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ConnectionAddr, FromRedisValue};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use ring::rand::SystemRandom;

use super::memory::{parse_id, random_id};
use super::{Lookup, SessionStore, StoreError};
use crate::histogram::nanos;
use cache::LocalCache;

/// Longest a request waits for one Redis call (a round trip on a LAN takes well under 1 ms).
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// How long an answer from Redis is reused without asking again (capped at `session_timeout`).
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// After a failed call, how long requests skip Redis before one probes it again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A connection still failing this long after the first failure is replaced by a new one.
pub const REBUILD_AFTER: Duration = Duration::from_secs(5);

/// Each attempt to connect gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Sessions in Redis behind a local cache (see the module docs).
pub struct RedisStore {
    client: Client,
    /// `host:port/db`, for logs (never the password).
    target: String,
    /// Made on first use (it needs the runtime); replaced when it keeps failing.
    conn: ArcSwapOption<ConnectionManager>,
    prefix: Box<str>,
    ttl_ms: u64,
    cache: LocalCache,
    rng: SystemRandom,
    epoch: Instant,
    /// Nanoseconds after `epoch` until which requests skip Redis; 0 while it answers.
    skip_until: AtomicU64,
    /// Nanoseconds after `epoch` of the first failure of this outage (or the last rebuild).
    down_since: AtomicU64,
}

/// A checked `session_store: redis://…` value: a `redis://` URL with a host, an optional port
/// and an optional database number (a user and password are allowed). Shown and compared
/// without its password.
#[derive(Clone)]
pub struct RedisUrl {
    client: Client,
    /// `host:port/db`.
    target: String,
}

impl RedisUrl {
    /// Checks `url` as a start would, without connecting. The error names `session_store`
    /// and never repeats the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("session_store: not a valid redis://HOST:PORT/DB URL: {why}");
        if !url.starts_with("redis://") {
            return Err(bad(
                "it must start with redis:// (TLS and unix sockets are not supported)",
            ));
        }
        let client = Client::open(url)
            .map_err(|e| bad(e.to_string().trim_end_matches(" - InvalidClientConfig")))?;
        let info = client.get_connection_info();
        match info.addr() {
            ConnectionAddr::Tcp(host, _) if !host.is_empty() => {}
            _ => return Err(bad("no host")),
        }
        let target = format!("{}/{}", info.addr(), info.redis_settings().db());
        Ok(Self { client, target })
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}", self.target)
    }
}

impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (
            self.client.get_connection_info(),
            other.client.get_connection_info(),
        );
        self.target == other.target
            && a.redis_settings().username() == b.redis_settings().username()
            && a.redis_settings().password() == b.redis_settings().password()
    }
}

impl Eq for RedisUrl {}

impl RedisStore {
    /// A store for `session_store: url` with keys `prefix` + id living `timeout` past their
    /// last use. Does not connect (the first request does, and Redis may be down until then),
    /// so it needs no runtime.
    pub fn new(url: &RedisUrl, prefix: &str, timeout: Duration) -> Self {
        let ttl_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            client: url.client.clone(),
            target: url.target.clone(),
            conn: ArcSwapOption::empty(),
            prefix: prefix.into(),
            ttl_ms,
            cache: LocalCache::new(CACHE_TTL.min(timeout)),
            rng: SystemRandom::new(),
            epoch: Instant::now(),
            skip_until: AtomicU64::new(0),
            down_since: AtomicU64::new(0),
        }
    }

    /// The Redis key of session `id`.
    fn key(&self, id: u128) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 32);
        key.push_str(&self.prefix);
        let _ = write!(key, "{id:032x}");
        key
    }

    fn nanos(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// Whether this request may ask Redis: always while it answers; after a failure, only the
    /// one request that first finds [`RETRY_AFTER`] over (the others skip another round).
    fn may_ask(&self) -> bool {
        let until = self.skip_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.nanos();
        now >= until
            && self
                .skip_until
                .compare_exchange(
                    until,
                    now + nanos(RETRY_AFTER),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The connection, made on first use (inside the runtime it will spawn its tasks on).
    fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(conn) = self.conn.load().as_deref() {
            return Ok(conn.clone());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("no async runtime".into());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(RETRY_AFTER);
        let ours = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map(Arc::new)
            .map_err(|e| e.to_string())?;
        // two requests may race here: the loser's connection is dropped before it connects
        let none: Option<Arc<ConnectionManager>> = None;
        let prev = self.conn.compare_and_swap(&none, Some(ours.clone()));
        Ok(prev.as_deref().unwrap_or(&ours).clone())
    }

    /// Sends `cmd`, bounded by [`REDIS_TIMEOUT`]. Any failure but a key of the wrong type (not
    /// ours: Redis is fine) starts or extends an outage.
    async fn call<T: FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T, Failure> {
        if !self.may_ask() {
            return Err(Failure::Down(format!(
                "redis at {} is unreachable",
                self.target
            )));
        }
        let result = match self.connection() {
            Ok(mut conn) => {
                match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async(&mut conn)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) if e.code() == Some("WRONGTYPE") => {
                        self.answered();
                        return Err(Failure::WrongType);
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} ms", REDIS_TIMEOUT.as_millis())),
                }
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.answered(),
            Err(e) => self.failed(e),
        }
        result.map_err(|e| Failure::Down(format!("redis at {}: {e}", self.target)))
    }

    fn answered(&self) {
        if self.skip_until.load(Ordering::Relaxed) != 0 {
            self.skip_until.store(0, Ordering::Relaxed);
            log::info!("session store: redis at {} answers again", self.target);
        }
    }

    fn failed(&self, why: &str) {
        let now = self.nanos();
        let was_up = self
            .skip_until
            .swap(now + nanos(RETRY_AFTER), Ordering::Relaxed)
            == 0;
        if was_up {
            self.down_since.store(now, Ordering::Relaxed);
            log::warn!(
                "session store: redis at {} failed ({why}); requests are balanced without \
                 their sessions until it answers",
                self.target
            );
        } else if now.saturating_sub(self.down_since.load(Ordering::Relaxed))
            >= nanos(REBUILD_AFTER)
        {
            // a connection stuck on an error it does not reconnect after: start afresh
            self.down_since.store(now, Ordering::Relaxed);
            self.conn.store(None);
        }
    }
}

/// Why a Redis call gave no value.
enum Failure {
    /// The key holds something else than a session (another program's data): Redis is fine.
    WrongType,
    /// Redis did not answer in time, or with an error: an outage.
    Down(String),
}

#[async_trait]
impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn lookup(&self, token: &str, now: SystemTime) -> Lookup {
        let Some(id) = parse_id(token) else {
            return Lookup::Miss;
        };
        if let Some(backend) = self.cache.get(id, now) {
            return Lookup::Pinned(backend);
        }
        let mut cmd = ::redis::cmd("GETEX");
        cmd.arg(self.key(id)).arg("PX").arg(self.ttl_ms);
        match self.call::<Option<String>>(&cmd).await {
            Ok(Some(backend)) => {
                let backend: Arc<str> = Arc::from(backend);
                self.cache.put(id, backend.clone(), now);
                Lookup::Pinned(backend)
            }
            Ok(None) | Err(Failure::WrongType) => Lookup::Miss,
            Err(Failure::Down(_)) => Lookup::Unavailable,
        }
    }

    async fn pin(
        &self,
        previous: Option<&str>,
        backend: &str,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        // keep the client's id only if Redis confirmed it lately (a client cannot choose its id)
        let id = match previous.and_then(parse_id) {
            Some(id) if self.cache.get(id, now).is_some() => id,
            _ => random_id(&self.rng)?,
        };
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.key(id))
            .arg(backend)
            .arg("PX")
            .arg(self.ttl_ms);
        match self.call::<()>(&cmd).await {
            Ok(()) => {
                self.cache.put(id, Arc::from(backend), now);
                Ok(format!("{id:032x}"))
            }
            Err(e) => {
                // the old pin is what failed over: do not keep serving it from the cache
                self.cache.remove(id);
                Err(StoreError(match e {
                    Failure::Down(why) => why,
                    Failure::WrongType => "redis: WRONGTYPE on SET".into(),
                }))
            }
        }
    }

    fn active(&self) -> Option<u64> {
        Some(self.cache.entries() as u64)
    }

    fn sweep(&self, now: SystemTime) {
        self.cache.sweep(now);
    }

    fn reachable(&self) -> bool {
        self.skip_until.load(Ordering::Relaxed) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_connecting_and_never_echo_the_password() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "redis://localhost",
            "redis://redis.internal:6380/15",
            "redis://:s3cret@10.0.0.5:6379/2",
            "redis://fulcrum:s3cret@[::1]:6379",
        ] {
            assert!(RedisUrl::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "redis://",
            "redis:///0",
            "redis://host:port/0",
            "redis://host:99999/0",
            "redis://host:6379/zero",
            "redis://0.0.0.0:6379",
            "rediss://host:6379/0",
            "redis+unix:///run/redis.sock",
            "memcached://host",
            "redis://:hunter2@host/x",
        ] {
            let e = RedisUrl::parse(bad).expect_err(bad);
            assert!(e.starts_with("session_store: "), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
        let url = RedisUrl::parse("redis://:hunter2@127.0.0.1:6380/2").unwrap();
        assert_eq!(format!("{url:?}"), "redis://127.0.0.1:6380/2");
        assert_eq!(
            url,
            RedisUrl::parse("redis://:hunter2@127.0.0.1:6380/2").unwrap()
        );
        assert_ne!(
            url,
            RedisUrl::parse("redis://:other@127.0.0.1:6380/2").unwrap()
        );
        assert_ne!(
            url,
            RedisUrl::parse("redis://:hunter2@127.0.0.1:6380/3").unwrap()
        );
    }

    #[test]
    fn redis_down_is_unavailable_fast_and_then_skipped() {
        // a port nothing listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // made outside any runtime: construction does not connect
        let url = RedisUrl::parse(&format!("redis://127.0.0.1:{port}/0")).unwrap();
        let store = RedisStore::new(&url, "t:", Duration::from_secs(60));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let now = SystemTime::now();
        let id = "0123456789abcdef0123456789abcdef";
        rt.block_on(async {
            assert!(store.reachable());
            assert_eq!(store.lookup("not-an-id", now).await, Lookup::Miss);
            let t = Instant::now();
            assert_eq!(store.lookup(id, now).await, Lookup::Unavailable);
            assert!(t.elapsed() < REDIS_TIMEOUT * 3, "{:?}", t.elapsed());
            assert!(!store.reachable());
            // within RETRY_AFTER: no wait at all
            let t = Instant::now();
            assert!(store.pin(None, "web1", now).await.is_err());
            assert_eq!(store.lookup(id, now).await, Lookup::Unavailable);
            assert!(t.elapsed() < Duration::from_millis(20), "{:?}", t.elapsed());
        });
        assert_eq!(store.active(), Some(0));
        assert_eq!(store.kind(), "redis");
    }
}
