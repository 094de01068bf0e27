//! Per-client rate limiting.
//!
//! [`RateLimiter`]: `rate_limit: {requests_per_second: R, burst: B}` allows each client IP about
//! `B` requests in a sliding window of `B / R` seconds (`B` is raised to `R` if smaller, so a
//! window is at least a second): a burst of `B` at once, `R` per second sustained, like a token
//! bucket of size `B` refilled at `R`/s. The window is estimated from two fixed intervals (the
//! previous interval's count weighted by how much of it the window still covers, plus the
//! current one's), so a client that times its requests to an interval boundary can get up to
//! about `2B` through in one window. Counts live in two of pingora-limits' [`Estimator`]s, fixed-size
//! lock-free count-min sketches: memory does not grow with the number of clients, and a hash
//! collision can only over-count (limit a client early), never let one through. Refused
//! requests are not counted, so a client that backs off gets back in.
//!
//! The intervals are rotated here rather than by pingora-limits' `Rate`, whose rotation
//! subtracts a clock reading taken before another thread's rotation from that rotation's
//! timestamp (an overflow panic in debug builds, both intervals wiped in release ones) and
//! asserts that a thread which lost the race read the clock within a second of the winner.
//! Here a late clock reading is simply counted in the newest interval: no arithmetic on clock
//! readings can overflow, and nothing asserts.
//!
//! Who the client is (the key counted) is decided in [`crate::client`].

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pingora_limits::estimator::Estimator;

/// Count-min sketch rows.
const SKETCH_HASHES: usize = 4;
/// Count-min sketch columns: 16 times pingora-limits' default, so that tens of thousands of
/// active clients rarely collide into a false 429 (about 1 MiB for the two intervals).
const SKETCH_SLOTS: usize = 16 * 1024;

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The window's limit (`burst`), for `X-RateLimit-Limit`.
    pub limit: u64,
    /// Requests left in the current window, for `X-RateLimit-Remaining`.
    pub remaining: u64,
    /// Whole seconds to wait before retrying, for `Retry-After` (at least 1).
    pub retry_after: u64,
}

/// Requests per sliding window, per client IP.
pub struct RateLimiter {
    /// Interval `n` (counted from `start` in steps of `interval_ms`) counts into
    /// `slots[n % 2]`; the other slot holds interval `n - 1`.
    slots: [Estimator; 2],
    /// The newest interval any request has seen.
    newest: AtomicU64,
    start: Instant,
    interval_ms: u64,
    burst: u64,
    window: Duration,
    limit: Limit,
}

/// A validated per-client limit: both numbers at least 1 (zero is unrepresentable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Sustained requests per second per client.
    pub per_second: NonZeroU32,
    /// Requests a client may send at once.
    pub burst: NonZeroU32,
}

impl Limit {
    /// The limit, or `None` when either number is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        Some(Self {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }
}

impl RateLimiter {
    /// A limiter allowing `burst` requests per `burst / per_second` seconds. A `burst` below
    /// `per_second` is raised to it, so a window is at least a second.
    pub fn new(limit: Limit) -> Self {
        let requests_per_second = limit.per_second.get();
        let burst = limit.burst.get().max(requests_per_second);
        let window = Duration::from_secs_f64(f64::from(burst) / f64::from(requests_per_second));
        Self {
            slots: [
                Estimator::new(SKETCH_HASHES, SKETCH_SLOTS),
                Estimator::new(SKETCH_HASHES, SKETCH_SLOTS),
            ],
            newest: AtomicU64::new(0),
            start: Instant::now(),
            interval_ms: u64::try_from(window.as_millis()).map_or(u64::MAX, |ms| ms.max(1)),
            burst: u64::from(burst),
            window,
            limit,
        }
    }

    /// The limit it was built for.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// The sliding window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Decides for one request from `client`, counting it when allowed.
    pub fn check(&self, client: &IpAddr) -> Decision {
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.check_at(client, now_ms)
    }

    /// [`Self::check`] at `now_ms` milliseconds after the limiter was made. Readings may arrive
    /// out of order (a thread descheduled between reading the clock and counting): a reading
    /// older than the newest interval counts in the newest interval.
    fn check_at(&self, client: &IpAddr, now_ms: u64) -> Decision {
        let n = self.advance(now_ms / self.interval_ms);
        let into = now_ms.saturating_sub(n.saturating_mul(self.interval_ms));
        let fraction = (into as f64 / self.interval_ms as f64).min(1.0);
        let current = &self.slots[slot(n)];
        let previous = self.slots[1 - slot(n)].get(client).max(0) as f64;
        let used = previous * (1.0 - fraction) + current.get(client).max(0) as f64;
        decide(used, self.burst, self.window, || {
            current.incr(client, 1);
        })
    }

    /// Moves to interval `n` if it is newer than the newest seen, clearing the slots whose
    /// counts it makes stale; returns the interval to count in (`n`, or a newer one).
    fn advance(&self, n: u64) -> u64 {
        let mut seen = self.newest.load(Ordering::Acquire);
        while n > seen {
            match self
                .newest
                .compare_exchange_weak(seen, n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // Interval n's slot held interval n - 2 or older. The other slot holds
                    // n - 1 only if that was the newest interval; otherwise it is stale too.
                    self.slots[slot(n)].reset();
                    if n - seen > 1 {
                        self.slots[1 - slot(n)].reset();
                    }
                    return n;
                }
                Err(actual) => seen = actual,
            }
        }
        seen
    }
}

/// The slot interval `n` counts in.
fn slot(n: u64) -> usize {
    (n & 1) as usize
}

/// The pure decision: `used` requests (estimated) already in the window.
fn decide(used: f64, burst: u64, window: Duration, count: impl FnOnce()) -> Decision {
    let used_whole = used.ceil().max(0.0) as u64;
    let retry_after = window.as_secs_f64().ceil().max(1.0) as u64;
    if used_whole < burst {
        count();
        Decision {
            allowed: true,
            limit: burst,
            remaining: burst - used_whole - 1,
            retry_after,
        }
    } else {
        Decision {
            allowed: false,
            limit: burst,
            remaining: 0,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let w = Duration::from_millis(500);
        // (used in window, burst) -> (allowed, remaining)
        let cases = [
            (0.0, 5, true, 4),
            (3.2, 5, true, 0),
            (4.0, 5, true, 0),
            (5.0, 5, false, 0),
            (9.0, 5, false, 0),
        ];
        for (used, burst, allowed, remaining) in cases {
            let mut counted = false;
            let d = decide(used, burst, w, || counted = true);
            assert_eq!(
                (d.allowed, d.remaining, counted),
                (allowed, remaining, allowed),
                "{used}"
            );
            assert_eq!((d.limit, d.retry_after), (burst, 1));
        }
        assert_eq!(
            decide(0.0, 1, Duration::from_millis(2500), || {}).retry_after,
            3
        );
    }

    #[test]
    fn limiter_allows_the_burst_then_refuses_per_client() {
        let limiter = RateLimiter::new(Limit::new(10, 20).unwrap());
        assert_eq!(limiter.window(), Duration::from_secs(2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let allowed = (0..50).filter(|_| limiter.check(&a).allowed).count();
        assert_eq!(allowed, 20);
        assert!(limiter.check(&b).allowed, "another client is unaffected");
        assert!(Limit::new(0, 1).is_none() && Limit::new(1, 0).is_none());
        let raised = RateLimiter::new(Limit::new(100, 10).unwrap());
        assert_eq!(
            raised.window(),
            Duration::from_secs(1),
            "never under a second"
        );
    }

    /// Requests allowed out of `tries` from `ip` at `now_ms`.
    fn allowed_at(limiter: &RateLimiter, ip: &IpAddr, now_ms: u64, tries: usize) -> usize {
        (0..tries)
            .filter(|_| limiter.check_at(ip, now_ms).allowed)
            .count()
    }

    #[test]
    fn the_window_slides_over_two_intervals() {
        let limiter = RateLimiter::new(Limit::new(10, 10).unwrap()); // 10 per second, 1 s intervals
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(allowed_at(&limiter, &ip, 0, 30), 10);
        assert_eq!(allowed_at(&limiter, &ip, 999, 5), 0);
        // half-way through the next interval half of the previous one still counts
        assert_eq!(allowed_at(&limiter, &ip, 1500, 30), 5);
        // at the start of interval 2, interval 1's five weigh fully and interval 0 is gone
        assert_eq!(allowed_at(&limiter, &ip, 2000, 30), 5);
        assert_eq!(
            allowed_at(&limiter, &ip, 9000, 30),
            10,
            "both stale intervals cleared"
        );
    }

    /// pingora-limits' `Rate` panics when a thread's clock reading is older than another
    /// thread's interval reset (`now - last_reset` underflows) or more than a second older
    /// than the winning reset (`assert!(new >= now - 1000)`). Readings arriving out of order
    /// are driven here directly: they must neither panic nor reopen the window.
    #[test]
    fn late_clock_readings_neither_panic_nor_reset_the_window() {
        let limiter = RateLimiter::new(Limit::new(10, 10).unwrap());
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(allowed_at(&limiter, &ip, 5_000, 10), 10);
        // read before the reset to interval 5, by 1 ms and by more than a second
        assert_eq!(allowed_at(&limiter, &ip, 4_999, 10), 0);
        assert_eq!(allowed_at(&limiter, &ip, 3_500, 10), 0);
        assert_eq!(allowed_at(&limiter, &ip, 0, 10), 0);
        assert_eq!(
            limiter.newest.load(Ordering::Relaxed),
            5,
            "no step back in time"
        );
        // the clock's extremes
        assert_eq!(allowed_at(&limiter, &ip, u64::MAX, 30), 10);
        assert_eq!(allowed_at(&limiter, &ip, 7_000, 1), 0);
        let other: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(limiter.check_at(&other, 7_000).allowed);
    }

    #[test]
    fn concurrent_out_of_order_readings_never_panic() {
        let limiter = RateLimiter::new(Limit::new(100, 100).unwrap());
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        let allowed = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (limiter, allowed) = (&limiter, &allowed);
                s.spawn(move || {
                    // each thread's clock runs from a different start, crossing the others'
                    for i in 0..2_000u64 {
                        let now = (t * 300 + i * 7) % 5_000;
                        if limiter.check_at(&ip, now).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // 5 s of clock readings at 100 per window: at most about 2 windows' worth per interval
        let allowed = allowed.load(Ordering::Relaxed);
        assert!((100..=1_000).contains(&allowed), "{allowed}");
    }
}
