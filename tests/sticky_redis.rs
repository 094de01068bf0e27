//! The Redis session store against a real `redis-server` started here on a free 127.0.0.1 port
//! (no persistence, killed on drop): two stores (two Fulcrum instances) agree on a session; a
//! lookup slides the key's TTL and an unused session expires; Redis stopped, hung (SIGSTOP) or
//! not yet started makes lookups `Unavailable` and pins fail within the timeout, never a hang,
//! with sessions cached in the last seconds still served; Redis back, the same store works
//! again. Then through the proxy: two in-process Fulcrum instances on one Redis agree, and serve
//! every request while it is down. Tool: `redis-server` (apt-get install redis-server).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::process::free_port;
use common::*;
use fulcrum::server::RunningLoadBalancer;
use fulcrum::sticky::redis::{RedisStore, RedisUrl, CACHE_TTL, REDIS_TIMEOUT};
use fulcrum::sticky::{Lookup, SessionStore};
use fulcrum::Strategy;

/// Longest a call may take when Redis does not answer: the timeout plus scheduling slack.
const FAST: Duration = Duration::from_millis(400);

/// A `redis-server` on 127.0.0.1:`port`, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis
            .client()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn client(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// `cmd key` answered as an integer (PTTL, EXISTS...).
    fn int(&self, cmd: &str, key: &str) -> i64 {
        redis::cmd(cmd)
            .arg(key)
            .query(&mut self.client().unwrap())
            .unwrap()
    }

    fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.client().unwrap())
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_present() -> bool {
    tools_present(missing_program(
        "redis-server",
        "apt-get install redis-server",
    ))
}

/// A runtime whose worker runs the client's background tasks (reconnects) between our calls,
/// as Fulcrum's does.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn store(url: &str, prefix: &str, timeout: Duration) -> RedisStore {
    RedisStore::new(&RedisUrl::parse(url).unwrap(), prefix, timeout)
}

fn pinned(backend: &str) -> Lookup {
    Lookup::Pinned(Arc::from(backend))
}

/// A time at which no local cache entry is fresh, so the lookup goes to Redis: each call is
/// 10 cache lifetimes later than the one before (entries are stamped with the times we pass).
fn past_cache() -> SystemTime {
    static CALLS: AtomicU32 = AtomicU32::new(1);
    SystemTime::now() + 10 * CACHE_TTL * CALLS.fetch_add(1, Ordering::Relaxed)
}

/// Runs `f` and returns its result with how long it took.
async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let t = Instant::now();
    let out = f.await;
    (out, t.elapsed())
}

#[test]
fn two_instances_agree_and_a_repin_moves_the_session() {
    if !redis_present() {
        return;
    }
    let redis = Redis::start(free_port());
    let timeout = Duration::from_secs(60);
    let (a, b) = (
        store(&redis.url(), "agree:", timeout),
        store(&redis.url(), "agree:", timeout),
    );
    let now = SystemTime::now();
    runtime().block_on(async {
        let token = a.pin(None, "web2", now).await.unwrap();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|c| c.is_ascii_hexdigit()));
        let key = format!("agree:{token}");
        assert_eq!(redis.get(&key).as_deref(), Some("web2"));
        let pttl = redis.int("PTTL", &key);
        assert!((59_000..=60_000).contains(&pttl), "PTTL {pttl}");

        // B has never seen it: it asks Redis
        assert_eq!(b.lookup(&token, now).await, pinned("web2"));
        assert_eq!(b.active(), Some(1), "B caches what Redis said");

        // B fails the session over: same id (B just saw it live), new backend, for everyone
        let again = b.pin(Some(&token), "web3", now).await.unwrap();
        assert_eq!(again, token);
        assert_eq!(redis.get(&key).as_deref(), Some("web3"));
        // A's cache may serve the old pin for up to CACHE_TTL, then A sees the new one
        assert_eq!(a.lookup(&token, now).await, pinned("web2"));
        let later = now + CACHE_TTL + Duration::from_millis(1);
        assert_eq!(a.lookup(&token, later).await, pinned("web3"));

        // unknown ids and junk are misses, and a client cannot choose its id
        let unknown = "0123456789abcdef0123456789abcdef";
        assert_eq!(b.lookup(unknown, now).await, Lookup::Miss);
        for junk in ["", "web3", "zz", &token[..31], &token.to_uppercase()] {
            assert_eq!(b.lookup(junk, now).await, Lookup::Miss, "{junk:?}");
        }
        let chosen = a.pin(Some(unknown), "web1", now).await.unwrap();
        assert_ne!(chosen, unknown);

        // a key of ours holding another program's data is no session, and no outage
        let foreign = "fedcba9876543210fedcba9876543210";
        let _: () = redis::cmd("HSET")
            .arg(format!("agree:{foreign}"))
            .arg("f")
            .arg("v")
            .query(&mut redis.client().unwrap())
            .unwrap();
        assert_eq!(b.lookup(foreign, now).await, Lookup::Miss);
        assert!(b.reachable());

        // a different prefix is a different keyspace
        let other = store(&redis.url(), "other:", timeout);
        assert_eq!(other.lookup(&token, now).await, Lookup::Miss);
    });
}

#[test]
fn a_lookup_slides_the_ttl_and_an_idle_session_expires() {
    if !redis_present() {
        return;
    }
    let redis = Redis::start(free_port());
    let url = redis.url();
    let rt = runtime();
    rt.block_on(async {
        // sliding, without waiting: age the key by hand, then look it up
        let (a, b) = (
            store(&url, "slide:", Duration::from_secs(60)),
            store(&url, "slide:", Duration::from_secs(60)),
        );
        let now = SystemTime::now();
        let token = a.pin(None, "web1", now).await.unwrap();
        let key = format!("slide:{token}");
        let _: () = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(5_000)
            .query(&mut redis.client().unwrap())
            .unwrap();
        // a hit in A's local cache does not reach Redis ...
        assert_eq!(a.lookup(&token, now).await, pinned("web1"));
        assert!(redis.int("PTTL", &key) <= 5_000);
        // ... a lookup that does (B's first, A's once its cache entry is stale) slides it
        assert_eq!(b.lookup(&token, now).await, pinned("web1"));
        let pttl = redis.int("PTTL", &key);
        assert!(pttl > 59_000, "PTTL after a lookup: {pttl}");
        let _: () = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(5_000)
            .query(&mut redis.client().unwrap())
            .unwrap();
        let stale = now + CACHE_TTL;
        assert_eq!(a.lookup(&token, stale).await, pinned("web1"));
        assert!(redis.int("PTTL", &key) > 59_000);
    });

    // expiry in real time: a 1 s session used at 0.6 s and 1.2 s lives until 2.2 s, not 1 s
    let timeout = Duration::from_secs(1);
    let (a, b) = (
        store(&url, "expire:", timeout),
        store(&url, "expire:", timeout),
    );
    let start = Instant::now();
    let token = rt.block_on(a.pin(None, "web1", SystemTime::now())).unwrap();
    let at = |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms).saturating_sub(start.elapsed()));
        SystemTime::now()
    };
    let now = at(600);
    assert_eq!(rt.block_on(b.lookup(&token, now)), pinned("web1"));
    let now = at(1200);
    assert_eq!(
        rt.block_on(a.lookup(&token, now)),
        pinned("web1"),
        "slid at 0.6 s"
    );
    let now = at(2600);
    assert_eq!(
        rt.block_on(b.lookup(&token, now)),
        Lookup::Miss,
        "idle 1.4 s"
    );
    assert_eq!(rt.block_on(a.lookup(&token, now)), Lookup::Miss);
    assert_eq!(redis.int("EXISTS", &format!("expire:{token}")), 0);
}

#[test]
fn redis_stopped_or_hung_is_unavailable_fast_and_the_same_store_recovers() {
    if !redis_present() {
        return;
    }
    let port = free_port();
    let mut redis = Redis::start(port);
    let url = redis.url();
    let timeout = Duration::from_secs(60);
    let (a, b) = (store(&url, "down:", timeout), store(&url, "down:", timeout));
    let rt = runtime();
    let t0 = SystemTime::now();
    let token = rt.block_on(a.pin(None, "web1", t0)).unwrap();
    assert_eq!(rt.block_on(b.lookup(&token, t0)), pinned("web1"));

    // hung: the process stops answering, its socket stays open
    redis.signal("-STOP");
    let (lookup, took) = rt.block_on(timed(b.lookup(&token, past_cache())));
    assert_eq!(lookup, Lookup::Unavailable);
    assert!(took >= REDIS_TIMEOUT && took < FAST, "hung Redis: {took:?}");
    assert!(!b.reachable());
    let (pin, took) = rt.block_on(timed(b.pin(None, "web2", SystemTime::now())));
    assert!(pin.is_err() && took < FAST, "pin while hung: {took:?}");
    redis.signal("-CONT");
    let back = pinned("web1");
    wait_for(
        &rt,
        "answering again after SIGCONT",
        || b.lookup(&token, past_cache()),
        |l| *l == back,
    );
    assert!(b.reachable());

    // stopped: connections refused. A's cache still answers for its recent sessions
    drop(redis);
    let (lookup, took) = rt.block_on(timed(b.lookup(&token, past_cache())));
    assert_eq!(lookup, Lookup::Unavailable);
    assert!(took < FAST, "stopped Redis: {took:?}");
    assert_eq!(
        rt.block_on(a.lookup(&token, t0 + Duration::from_secs(1))),
        pinned("web1"),
        "cached within CACHE_TTL"
    );
    let (pin, took) = rt.block_on(timed(a.pin(None, "web2", SystemTime::now())));
    assert!(pin.is_err() && took < FAST, "pin while stopped: {took:?}");

    // back (empty: no persistence): the same stores pin and agree again
    redis = Redis::start(port);
    let fresh = wait_for(
        &rt,
        "pinning again after a restart",
        || a.pin(None, "web3", SystemTime::now()),
        Result::is_ok,
    )
    .unwrap();
    let agreed = pinned("web3");
    wait_for(
        &rt,
        "B agreeing again",
        || b.lookup(&fresh, past_cache()),
        |l| *l == agreed,
    );
    assert!(a.reachable() && b.reachable());
    drop(redis);
}

#[test]
fn a_store_made_before_redis_starts_connects_when_it_does() {
    if !redis_present() {
        return;
    }
    let port = free_port();
    let s = store(
        &format!("redis://127.0.0.1:{port}/3"),
        "late:",
        Duration::from_secs(60),
    );
    let rt = runtime();
    let (pin, took) = rt.block_on(timed(s.pin(None, "web1", SystemTime::now())));
    assert!(pin.is_err() && took < FAST, "nothing listening: {took:?}");
    let redis = Redis::start(port);
    let token = wait_for(
        &rt,
        "pinning once Redis started",
        || s.pin(None, "web1", SystemTime::now()),
        Result::is_ok,
    )
    .unwrap();
    // database 3 of the URL, not 0
    let mut c = redis.client().unwrap();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut c).unwrap();
    let got: Option<String> = redis::cmd("GET")
        .arg(format!("late:{token}"))
        .query(&mut c)
        .unwrap();
    assert_eq!(got.as_deref(), Some("web1"));
    assert_eq!(redis.get(&format!("late:{token}")), None);
}

/// Through the proxy: two Fulcrum instances on one Redis send a client to the same backend
/// whichever it reaches; with Redis stopped every request is still served (balanced, no new
/// cookie, store errors counted); with Redis back (empty) the client gets a new session that
/// both instances agree on again.
#[test]
fn two_fulcrum_instances_agree_through_redis_and_serve_while_it_is_down() {
    if !redis_present() {
        return;
    }
    let port = free_port();
    let mut redis = Redis::start(port);
    let b = backends(&[("a", 0), ("b", 0), ("c", 0)]);
    let sticky = || {
        let pairs: Vec<_> = b.iter().map(|x| (x, 1)).collect();
        let mut cfg = config(Strategy::RoundRobin, &pairs);
        cfg.enable_sticky_sessions = true;
        cfg.session_store = redis.url();
        cfg.session_store_prefix = "e2e:".into();
        cfg
    };
    let (one, two) = (start(sticky()), start(sticky()));
    let lbs = [&one, &two];

    let first = get(one.listen_addr(), "/");
    let cookie = cookie_of(&first).expect("a new client gets a cookie");
    let home = served_by(&first);
    for i in 0..20 {
        let r = with_cookie(lbs[i % 2], &cookie);
        assert_eq!(served_by(&r), home, "request {i}");
        let refreshed = cookie_of(&r);
        assert_eq!(
            refreshed,
            Some(cookie.clone()),
            "a hit refreshes the same cookie"
        );
    }
    let seen = counts(&sequence(two.listen_addr(), 6));
    assert_eq!(
        seen.len(),
        3,
        "cookieless requests follow the strategy: {seen:?}"
    );
    let sessions = |lb: &RunningLoadBalancer| -> serde_json::Value {
        let health = get(lb.admin_addr(), "/health").body;
        serde_json::from_str::<serde_json::Value>(&health).unwrap()["sessions"].clone()
    };
    assert_eq!(sessions(&two)["store"], "redis");
    assert_eq!(sessions(&two)["hits"], 10, "{}", sessions(&two));

    // Redis stopped; past the local caches' lifetime every lookup needs it
    drop(redis);
    std::thread::sleep(CACHE_TTL + Duration::from_millis(100));
    let start_down = Instant::now();
    for i in 0..20 {
        let r = with_cookie(lbs[i % 2], &cookie);
        assert_eq!(r.status, 200, "request {i} with Redis down");
        assert!(cookie_of(&r).is_none(), "no session can be pinned");
        assert_eq!(get(lbs[i % 2].listen_addr(), "/").status, 200);
    }
    let took = start_down.elapsed();
    assert!(took < Duration::from_secs(3), "40 requests took {took:?}");
    for lb in lbs {
        let errors = sessions(lb)["store_errors"].as_u64().unwrap();
        assert!(errors >= 1, "{}", sessions(lb));
    }

    // back, empty: the old cookie is unknown, the client gets a new session both agree on
    redis = Redis::start(port);
    let renewed = wait_for(
        &runtime(),
        "a new session after Redis came back",
        || async { cookie_of(&with_cookie(&one, &cookie)) },
        Option::is_some,
    )
    .unwrap();
    assert_ne!(renewed, cookie, "Redis came back empty: a new session");
    let home = served_by(&with_cookie(&one, &renewed));
    for i in 0..10 {
        assert_eq!(served_by(&with_cookie(lbs[i % 2], &renewed)), home);
    }
    drop(redis);
}

/// The `name=value` part of a response's `Set-Cookie`.
fn cookie_of(r: &Resp) -> Option<String> {
    Some(
        r.header("set-cookie")?
            .split(';')
            .next()?
            .trim()
            .to_string(),
    )
}

fn with_cookie(lb: &RunningLoadBalancer, cookie: &str) -> Resp {
    request(lb.listen_addr(), "GET", "/", &[("Cookie", cookie)], None).unwrap()
}

/// Polls `f` every 50 ms until `done` accepts its output (at most 5 s, else the test fails),
/// and says how long `what` took.
fn wait_for<T: std::fmt::Debug, Fut: std::future::Future<Output = T>>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    f: impl Fn() -> Fut,
    done: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let out = rt.block_on(f());
        if done(&out) {
            eprintln!("{what}: {} ms", start.elapsed().as_millis());
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: still {out:?} after 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
