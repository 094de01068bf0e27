//! [`MemoryStore`]: sessions in this process's memory (`session_store: memory`, the default).
//!
//! Ids are 128 random bits from the operating system's CSPRNG, sent as 32 hex digits: they say
//! nothing about the backend. The map is split into shards, each behind its own short lock
//! (never held across an await), so concurrent requests rarely wait for each other. Expiry
//! slides: every lookup extends the session to `now + session_timeout`. A sweep (run by a
//! background task) drops expired sessions; `max_sessions` bounds the map, a full shard evicting
//! its session closest to expiry, so a flood of new clients cannot exhaust memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ring::rand::{SecureRandom, SystemRandom};

use super::{Lookup, SessionStore, StoreError};

/// Number of shards (a power of two).
const SHARDS: usize = 16;

struct Entry {
    backend: Arc<str>,
    expires: SystemTime,
}

type Shard = HashMap<u128, Entry>;

/// Sessions in memory (see the module docs).
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    timeout: Duration,
    per_shard: usize,
    rng: SystemRandom,
    active: AtomicU64,
}

impl MemoryStore {
    /// A store whose sessions live `timeout` past their last use, at most `max_sessions` of
    /// them (at least one per shard).
    pub fn new(timeout: Duration, max_sessions: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            timeout,
            per_shard: max_sessions.div_ceil(SHARDS).max(1),
            rng: SystemRandom::new(),
            active: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: u128) -> MutexGuard<'_, Shard> {
        let i = (id as usize) % SHARDS;
        match self.shards[i].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn new_id(&self) -> Result<u128, StoreError> {
        random_id(&self.rng)
    }

    /// Recounts the sessions (after a change of the map's size).
    fn recount(&self, delta: i64) {
        if delta >= 0 {
            self.active.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.active
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }
}

/// A new session id: 128 bits from the operating system's CSPRNG (the Redis store's too).
pub(super) fn random_id(rng: &SystemRandom) -> Result<u128, StoreError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)
        .map_err(|_| StoreError("the system's random number generator failed".into()))?;
    Ok(u128::from_le_bytes(bytes))
}

/// The id in a cookie value: exactly 32 lower-case hex digits (the Redis store's too).
pub(super) fn parse_id(token: &str) -> Option<u128> {
    if token.len() != 32
        || !token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    u128::from_str_radix(token, 16).ok()
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn lookup(&self, token: &str, now: SystemTime) -> Lookup {
        let Some(id) = parse_id(token) else {
            return Lookup::Miss;
        };
        let mut shard = self.shard(id);
        match shard.get_mut(&id) {
            Some(e) if e.expires > now => {
                e.expires = now + self.timeout;
                Lookup::Pinned(e.backend.clone())
            }
            Some(_) => {
                shard.remove(&id);
                drop(shard);
                self.recount(-1);
                Lookup::Miss
            }
            None => Lookup::Miss,
        }
    }

    async fn pin(
        &self,
        previous: Option<&str>,
        backend: &str,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        let id = match previous.and_then(parse_id) {
            Some(id) if self.shard(id).contains_key(&id) => id,
            _ => self.new_id()?,
        };
        let entry = Entry {
            backend: Arc::from(backend),
            expires: now + self.timeout,
        };
        let mut shard = self.shard(id);
        let mut delta = 0i64;
        if !shard.contains_key(&id) && shard.len() >= self.per_shard {
            // full: evict the session closest to expiry
            let oldest = shard.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k);
            if let Some(k) = oldest {
                shard.remove(&k);
                delta -= 1;
            }
        }
        if shard.insert(id, entry).is_none() {
            delta += 1;
        }
        drop(shard);
        self.recount(delta);
        Ok(format!("{id:032x}"))
    }

    fn active(&self) -> Option<u64> {
        Some(self.active.load(Ordering::Relaxed))
    }

    fn sweep(&self, now: SystemTime) {
        for i in 0..SHARDS {
            let mut shard = match self.shards[i].lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let before = shard.len();
            shard.retain(|_, e| e.expires > now);
            let removed = before - shard.len();
            drop(shard);
            self.recount(-(removed as i64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn sessions_slide_expire_and_repin_transition_by_transition() {
        let store = MemoryStore::new(T, 1000);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let token = block(store.pin(None, "web1", at(0))).unwrap();
        assert_eq!(token.len(), 32);
        let pinned = |b: &str| Lookup::Pinned(Arc::from(b));
        // (time, lookup expected): each hit slides the expiry to time + 60 s
        let steps = [
            (30, pinned("web1")),  // expires 90
            (89, pinned("web1")),  // expires 149
            (148, pinned("web1")), // expires 208
            (208, Lookup::Miss),   // exactly at expiry: gone
            (209, Lookup::Miss),
        ];
        for (t, want) in steps {
            assert_eq!(block(store.lookup(&token, at(t))), want, "at {t} s");
        }
        assert_eq!(store.active(), Some(0), "the expired session was dropped");

        // re-pinning keeps the client's id when it is still live, and moves it
        let token = block(store.pin(None, "web1", at(300))).unwrap();
        let again = block(store.pin(Some(&token), "web2", at(310))).unwrap();
        assert_eq!(again, token);
        assert_eq!(block(store.lookup(&token, at(320))), pinned("web2"));
        // an expired or unknown previous id gets a new one
        let other =
            block(store.pin(Some("00000000000000000000000000000000"), "web3", at(330))).unwrap();
        assert_ne!(other, "00000000000000000000000000000000");
    }

    #[test]
    fn anything_but_a_live_id_is_a_miss() {
        let store = MemoryStore::new(T, 1000);
        let now = SystemTime::now();
        let live = block(store.pin(None, "web1", now)).unwrap();
        let mut upper = live.to_ascii_uppercase();
        if upper == live {
            upper.push('0');
        }
        for bad in ["", "web1", "zz", &live[..31], &upper, &format!("{live}0")] {
            assert_eq!(block(store.lookup(bad, now)), Lookup::Miss, "{bad:?}");
        }
    }

    #[test]
    fn ids_are_random_and_the_map_is_bounded() {
        let store = MemoryStore::new(T, 64);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut ids = std::collections::HashSet::new();
        for i in 0..1000u64 {
            let t = now + Duration::from_millis(i);
            ids.insert(block(store.pin(None, "web1", t)).unwrap());
        }
        assert_eq!(ids.len(), 1000, "no id repeats");
        let active = store.active().unwrap();
        assert!(
            (16..=64).contains(&active),
            "bounded by max_sessions: {active}"
        );
        store.sweep(now + T + Duration::from_secs(2));
        assert_eq!(store.active(), Some(0));
    }
}
