//! The rate limiter under contention across interval boundaries: no request may panic in it.
//!
//! pingora-limits' `Rate` (which the limiter used before) subtracts a clock reading taken before
//! another thread's interval reset from that reset's timestamp (`now - last_reset` underflows),
//! and asserts that a losing thread's clock is within a second of the winner's. Both happen
//! only when a thread is descheduled at the wrong instruction, so this test oversubscribes the
//! CPUs with many limiters whose interval boundaries are spread over the second.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum::ratelimit::{Limit, RateLimiter};

#[test]
#[ignore = "stress: 16 threads for 6 s on all CPUs; run with `cargo test --test ratelimit_clock -- --ignored`"]
fn no_panic_across_interval_boundaries_under_contention() {
    let limiters: Arc<Vec<RateLimiter>> = Arc::new(
        (0..500)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                RateLimiter::new(Limit::new(1000, 1000).unwrap())
            })
            .collect(),
    );
    let panics = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(6);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (limiters, panics) = (limiters.clone(), panics.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while Instant::now() < deadline {
                    i += 1;
                    let ip = IpAddr::from([10, 0, 0, (i % 7) as u8]);
                    let limiter = &limiters[i % limiters.len()];
                    let r = std::panic::catch_unwind(|| limiter.check(&ip));
                    if r.is_err() {
                        panics.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        panics.load(Ordering::Relaxed),
        0,
        "a request panicked in the limiter"
    );
}
