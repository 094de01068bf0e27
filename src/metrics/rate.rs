//! The requests-per-second window: [`RateWindow`], a lock-free ring of one-second buckets
//! averaged over the last [`RATE_WINDOW_SECS`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seconds the request rate is averaged over.
pub const RATE_WINDOW_SECS: u64 = 10;
const RATE_SLOTS: usize = 16;
const LOW32: u64 = 0xffff_ffff;

/// Requests per second over the last [`RATE_WINDOW_SECS`]: a ring of one-second buckets, each an
/// `AtomicU64` holding `second << 32 | count`, so a bucket from an older second is recognised
/// and restarted in the same compare-and-swap that counts.
#[derive(Debug, Default)]
pub(super) struct RateWindow {
    slots: [AtomicU64; RATE_SLOTS],
}

impl RateWindow {
    fn slot(&self, second: u64) -> &AtomicU64 {
        &self.slots[(second % RATE_SLOTS as u64) as usize]
    }

    /// Counts one request at `elapsed` since start.
    pub(super) fn tick(&self, elapsed: Duration) {
        let second = elapsed.as_secs();
        let stamp = second & LOW32;
        let _ = self
            .slot(second)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(if v >> 32 != stamp {
                    stamp << 32 | 1
                } else if v & LOW32 == LOW32 {
                    v
                } else {
                    v + 1
                })
            });
    }

    /// Requests per second between the start of the window's first second and `elapsed`
    /// (at least one second, so a burst right after start does not read as a huge rate).
    pub(super) fn rate(&self, elapsed: Duration) -> f64 {
        let now = elapsed.as_secs();
        let first = now.saturating_sub(RATE_WINDOW_SECS - 1);
        let count: u64 = (first..=now)
            .map(|s| {
                let v = self.slot(s).load(Ordering::Relaxed);
                if v >> 32 == s & LOW32 {
                    v & LOW32
                } else {
                    0
                }
            })
            .sum();
        let span = (elapsed.as_secs_f64() - first as f64).max(1.0);
        count as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_covers_the_last_ten_seconds() {
        let w = RateWindow::default();
        let at = |s: f64| Duration::from_secs_f64(s);
        for _ in 0..20 {
            w.tick(at(0.5));
        }
        assert_eq!(w.rate(at(0.5)), 20.0, "at least a one-second span");
        for i in 0..40 {
            w.tick(at(3.0 + f64::from(i) / 10.0));
        }
        assert_eq!(w.rate(at(9.0)), 60.0 / 9.0);
        // at 12.5 s the window starts at 3 s: second 0 has left it
        assert_eq!(w.rate(at(12.5)), 40.0 / 9.5);
        // the ring's slot for second 0 is reused at second 16 without counting old hits
        w.tick(at(16.2));
        assert_eq!(w.rate(at(16.5)), 1.0 / 9.5);
        assert_eq!(w.rate(at(100.0)), 0.0);
    }
}
