//! [`LocalCache`]: what this instance learned from Redis in the last second or two, so a client's
//! burst of requests costs Redis one round trip, not one per request.
//!
//! Session id → backend, each entry fresh for a short ttl from when Redis said so (or
//! this instance pinned it). 16 shards, each behind its own short lock (never held across an
//! await); at most [`CAPACITY`] entries: a full shard first drops its stale entries, then its
//! oldest. Time is an argument, so freshness is tested with an injected clock; a clock that went
//! backwards makes an entry stale rather than eternal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Number of shards (a power of two).
const SHARDS: usize = 16;

/// Most entries held, all shards together.
pub const CAPACITY: usize = 4096;

const PER_SHARD: usize = CAPACITY / SHARDS;

struct Entry {
    backend: Arc<str>,
    /// When Redis last confirmed it (or this instance wrote it).
    seen: SystemTime,
}

/// The store's local cache (see the module docs).
pub struct LocalCache {
    shards: Vec<Mutex<HashMap<u128, Entry>>>,
    ttl: Duration,
}

impl LocalCache {
    /// An empty cache whose entries stay fresh for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl,
        }
    }

    fn shard(&self, id: u128) -> MutexGuard<'_, HashMap<u128, Entry>> {
        lock(&self.shards[(id as usize) % SHARDS])
    }

    fn fresh(&self, e: &Entry, now: SystemTime) -> bool {
        now.duration_since(e.seen).is_ok_and(|age| age < self.ttl)
    }

    /// The backend of session `id` if Redis confirmed it less than `ttl` before `now`.
    pub fn get(&self, id: u128, now: SystemTime) -> Option<Arc<str>> {
        let shard = self.shard(id);
        let e = shard.get(&id)?;
        self.fresh(e, now).then(|| e.backend.clone())
    }

    /// Remembers that session `id` is pinned to `backend` as of `now`.
    pub fn put(&self, id: u128, backend: Arc<str>, now: SystemTime) {
        let mut shard = self.shard(id);
        if !shard.contains_key(&id) && shard.len() >= PER_SHARD {
            shard.retain(|_, e| self.fresh(e, now));
            if shard.len() >= PER_SHARD {
                let oldest = shard.iter().min_by_key(|(_, e)| e.seen).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(id, Entry { backend, seen: now });
    }

    /// Forgets session `id`.
    pub fn remove(&self, id: u128) {
        self.shard(id).remove(&id);
    }

    /// Drops the entries no longer fresh at `now`.
    pub fn sweep(&self, now: SystemTime) {
        for shard in &self.shards {
            lock(shard).retain(|_, e| self.fresh(e, now));
        }
    }

    /// Entries held (fresh or not yet swept).
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_fresh_for_the_ttl_and_the_cache_is_bounded() {
        let cache = LocalCache::new(Duration::from_secs(2));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        cache.put(7, Arc::from("web1"), t0);
        assert_eq!(cache.get(7, ms(1999)).as_deref(), Some("web1"));
        assert_eq!(cache.get(7, ms(2000)), None, "stale at exactly the ttl");
        assert_eq!(
            cache.get(7, t0 - Duration::from_secs(1)),
            None,
            "clock went back"
        );
        assert_eq!(cache.get(8, t0), None);
        cache.put(7, Arc::from("web2"), ms(2500));
        assert_eq!(cache.get(7, ms(3000)).as_deref(), Some("web2"), "re-put");
        cache.remove(7);
        assert_eq!(cache.get(7, ms(3000)), None);

        // a flood of fresh ids (1 µs apart) never holds more than CAPACITY: the oldest go
        let us = |n: u128| ms(10_000) + Duration::from_micros(n as u64);
        let n = 3 * CAPACITY as u128;
        for id in 0..n {
            cache.put(id, Arc::from("web1"), us(id));
        }
        assert_eq!(cache.entries(), CAPACITY);
        assert!(cache.get(n - 1, us(n)).is_some());
        assert!(cache.get(0, us(n)).is_none());
        // stale entries go first when a shard is full
        let later = ms(20_000);
        cache.put(n, Arc::from("web2"), later);
        assert_eq!(cache.entries(), CAPACITY - PER_SHARD + 1);
        cache.sweep(later + Duration::from_secs(2));
        assert_eq!(cache.entries(), 0);
    }
}
