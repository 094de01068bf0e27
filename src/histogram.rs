//! The lock-free duration histogram (a leaf module: metrics render it, backends and the process
//! counters record into it): [`DurationHistogram`] over the fixed [`DURATION_BUCKETS`],
//! its point-in-time [`HistogramSnapshot`], and the integer bucket bounds the hot path compares
//! against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`DURATION_BUCKETS`] in nanoseconds, for integer comparisons on the hot path.
const BUCKET_NANOS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Saturating conversion of a duration to nanoseconds.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A lock-free histogram of durations over [`DURATION_BUCKETS`].
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKET_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a [`DurationHistogram`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per bound in [`DURATION_BUCKETS`].
    pub cumulative: [u64; BUCKET_NANOS.len()],
    /// Samples observed (the `+Inf` bucket).
    pub count: u64,
    /// Sum of all samples, in seconds.
    pub sum_seconds: f64,
}

impl DurationHistogram {
    /// Adds one sample (two relaxed `fetch_add`s).
    pub fn observe(&self, d: Duration) {
        let ns = nanos(d);
        let i = BUCKET_NANOS.partition_point(|&bound| bound < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(ns, Ordering::Relaxed);
    }

    /// Reads the buckets; the count is their sum, so it always equals the `+Inf` bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; BUCKET_NANOS.len()];
        let mut running = 0u64;
        for (i, slot) in cumulative.iter_mut().enumerate() {
            running += self.buckets[i].load(Ordering::Relaxed);
            *slot = running;
        }
        let count = running + self.buckets[BUCKET_NANOS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_agree() {
        for (s, ns) in DURATION_BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = DurationHistogram::default();
        for ms in [0, 1, 2, 7, 30_000, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.cumulative[0], 2, "0 ms and 1 ms are <= 0.001 s");
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[3], 4, "7 ms <= 0.01 s");
        assert_eq!(s.cumulative[13], 5, "30 s <= 30 s; 60 s only in +Inf");
        assert!((s.sum_seconds - 90.010).abs() < 1e-9);
    }
}
