//! Per-client rate limiting.
//!
//! [`RateLimiter`]: `rate_limit: {requests_per_second: R, burst: B}` allows each client IP about
//! `B` requests in a sliding window of `B / R` seconds (`B` is raised to `R` if smaller): a burst
//! of `B` at once, `R` per second sustained, like a token bucket of size `B` refilled at `R`/s.
//! The window is estimated from two fixed intervals (pingora-limits' proportional estimate), so
//! a client that times its requests to an interval boundary can get up to about `2B` through in
//! one window. Counts live in
//! pingora-limits' [`Rate`], a fixed-size lock-free count-min sketch: memory does not grow with
//! the number of clients, and a hash collision can only over-count (limit a client early), never
//! let one through. Refused requests are not counted, so a client that backs off gets back in.
//! Who the client is (the key counted) is decided in [`crate::client`].

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::Rate;

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
    rate: Rate,
    burst: u64,
    window: Duration,
}

impl RateLimiter {
    /// A limiter allowing `burst` requests per `burst / requests_per_second` seconds. A `burst`
    /// below `requests_per_second` is raised to it: pingora-limits' estimator needs windows of
    /// at least a second (its interval reset asserts on shorter ones).
    pub fn new(requests_per_second: u32, burst: u32) -> Result<Self, String> {
        if requests_per_second == 0 || burst == 0 {
            return Err("requests_per_second and burst must be at least 1".into());
        }
        let burst = burst.max(requests_per_second);
        let window = Duration::from_secs_f64(f64::from(burst) / f64::from(requests_per_second));
        Ok(Self {
            rate: Rate::new_with_estimator_config(window, SKETCH_HASHES, SKETCH_SLOTS),
            burst: u64::from(burst),
            window,
        })
    }

    /// The sliding window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Decides for one request from `client`, counting it when allowed.
    pub fn check(&self, client: &IpAddr) -> Decision {
        let used = self.rate.rate_with(client, |c| {
            c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
        });
        decide(used, self.burst, self.window, || {
            self.rate.observe(client, 1);
        })
    }
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
        let limiter = RateLimiter::new(10, 20).unwrap();
        assert_eq!(limiter.window(), Duration::from_secs(2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let allowed = (0..50).filter(|_| limiter.check(&a).allowed).count();
        assert_eq!(allowed, 20);
        assert!(limiter.check(&b).allowed, "another client is unaffected");
        assert!(RateLimiter::new(0, 1).is_err());
        let raised = RateLimiter::new(100, 10).unwrap();
        assert_eq!(
            raised.window(),
            Duration::from_secs(1),
            "never under a second"
        );
    }
}
