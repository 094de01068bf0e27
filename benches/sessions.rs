//! Cost of one session lookup per store, next to a plain pick for scale: what sticky sessions add
//! to a request before (or instead of) the strategy.
//!
//! - `round_robin_pick_3`: `select_with` of round robin over 3 backends (as in the selection
//!   bench), what a request without a session pays;
//! - `memory_hit`, `memory_miss`: the memory store holding 10,000 sessions, looking
//!   up live ids and well-formed unknown ones;
//! - `cookie_verify_hit`: the signed cookie store verifying a live value (base64 decode and one
//!   HMAC-SHA256); `cookie_reissue`: signing the new value every cookie hit sends back;
//! - `redis_cache_hit`: the Redis store answering from its local cache (a `redis-server` started
//!   here takes the pins; skipped without one).
//!
//! Each lookup cycles through 1,024 values, goes through the `SessionStore` trait object (its
//! boxed future included) and is polled once: a local lookup never waits, and one that did
//! would stop the bench. The time is taken once, outside the loop, as the pipeline does per
//! request. Another store is one more function like [`memory`], listed in [`sessions`].

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use common::{backends, keys, KEYS};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use fulcrum::balance::{max_iterations, BalanceConfig, Balancer, Strategy};
use fulcrum::sticky::cookie::CookieStore;
use fulcrum::sticky::memory::MemoryStore;
use fulcrum::sticky::redis::{RedisStore, RedisUrl};
use fulcrum::sticky::{Lookup, SessionStore};
use pingora_load_balancing::{discovery, Backends, LoadBalancer};

mod common;

type Group<'a> = BenchmarkGroup<'a, WallTime>;

const TIMEOUT: Duration = Duration::from_secs(3600);
const SESSIONS: usize = 10_000;

/// The output of a future that is ready at once (a local store's).
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a local session lookup waited"),
    }
}

/// Benches `store.lookup` over `tokens`, after checking the first gives `want`.
fn lookups(
    group: &mut Group,
    name: &str,
    store: &dyn SessionStore,
    tokens: &[String],
    want: Lookup,
) {
    let now = SystemTime::now();
    assert_eq!(ready(store.lookup(&tokens[0], now)), want, "{name}");
    let mut k = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            k = (k + 1) % tokens.len();
            black_box(ready(store.lookup(black_box(&tokens[k]), now)))
        })
    });
}

/// What a request without a session pays: a round-robin pick over 3 backends.
fn plain_pick(group: &mut Group) {
    let lb = LoadBalancer::<Balancer>::from_backends_with_config(
        Backends::new(discovery::Static::new(backends(3))),
        Some(BalanceConfig {
            strategy: Strategy::RoundRobin,
            seed: 1,
        }),
    );
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .block_on(lb.update())
        .unwrap_or_else(|e| panic!("{e}"));
    let keys = keys();
    let steps = max_iterations(3);
    let mut k = 0;
    group.bench_function("round_robin_pick_3", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(lb.select_with(black_box(&keys[k]), steps, |_, _| true))
        })
    });
}

/// The memory store holding [`SESSIONS`] sessions: live ids, then unknown ones.
fn memory(group: &mut Group) {
    let store = MemoryStore::new(TIMEOUT, SESSIONS * 2);
    let now = SystemTime::now();
    let live: Vec<String> = (0..SESSIONS)
        .map(|i| {
            ready(store.pin(None, &format!("b{}", i % 3), now)).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let unknown: Vec<String> = (0..KEYS as u128)
        .map(|i| format!("{:032x}", i * 0x9e37_79b9_7f4a_7c15))
        .collect();
    let hit = Lookup::Pinned("b0".into());
    lookups(group, "memory_hit", &store, &live[..KEYS], hit);
    lookups(group, "memory_miss", &store, &unknown, Lookup::Miss);
}

/// The signed cookie store with two keys (a rotation in progress): verifying, and re-issuing.
fn cookie(group: &mut Group) {
    let keys = vec![vec![b'n'; 32], vec![b'o'; 32]];
    let store = CookieStore::new(keys, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let now = SystemTime::now();
    let values: Vec<String> = (0..KEYS)
        .map(|i| {
            ready(store.pin(None, &format!("b{}", i % 3), now)).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let hit = Lookup::Pinned("b0".into());
    lookups(group, "cookie_verify_hit", &store, &values, hit);
    let mut k = 0;
    group.bench_function("cookie_reissue", |b| {
        b.iter(|| {
            k = (k + 1) % values.len();
            black_box(ready(store.pin(Some(&values[k]), black_box("b1"), now)))
        })
    });
}

/// The Redis store answering from its local cache (what a client's second request within 2 s
/// costs): a real `redis-server` on a free port takes the pins that warm the cache, then the
/// lookups never reach it. Skipped, with a line saying so, without `redis-server`.
fn redis_cache_hit(group: &mut Group) {
    let Some(server) = RedisServer::start() else {
        eprintln!("session_lookup/redis_cache_hit: skipped, no redis-server on PATH");
        return;
    };
    let url = RedisUrl::parse(&format!("redis://127.0.0.1:{}/0", server.port))
        .unwrap_or_else(|e| panic!("{e}"));
    let store = RedisStore::new(&url, "bench:", TIMEOUT);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let now = SystemTime::now();
    let values: Vec<String> = rt.block_on(async {
        let mut values = Vec::with_capacity(KEYS);
        for i in 0..KEYS {
            let pin = store.pin(None, &format!("b{}", i % 3), now).await;
            values.push(pin.unwrap_or_else(|e| panic!("{e}")));
        }
        values
    });
    let hit = Lookup::Pinned("b0".into());
    lookups(group, "redis_cache_hit", &store, &values, hit);
}

/// A `redis-server` on a free 127.0.0.1 port, without persistence, killed on drop.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on port {port} within 2 s");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every session bench in one group, so criterion reports them side by side.
fn sessions(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_lookup");
    plain_pick(&mut group);
    memory(&mut group);
    cookie(&mut group);
    redis_cache_hit(&mut group);
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = sessions
}
criterion_main!(benches);
