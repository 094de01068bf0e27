//! Weighted random.

use std::collections::BTreeSet;

use pingora_load_balancing::Backend;

use super::candidates::{Pick, Seen};
use super::selector_input::Members;
use super::weighted_draw::WeightedDraw;

/// Further random draws, after the first, before the address-order scan.
const EXTRA_DRAWS: u32 = 4;

/// Weighted random (nginx's `random`, pingora's `Random`): each pick is an independent draw in
/// which a backend's chance is proportional to its weight (binary search of the cumulative
/// weights with a lock-free SplitMix64 draw). Rejected candidates are followed by a few more draws,
/// then every backend in address order after the first.
#[derive(Debug)]
pub struct Random {
    members: Members,
    draws: WeightedDraw,
}

impl Random {
    /// A selector over `backends` drawing from a generator seeded with `seed`.
    pub fn new(backends: &BTreeSet<Backend>, seed: u64) -> Self {
        let members = Members::new(backends);
        Self {
            draws: WeightedDraw::new(&members, seed),
            members,
        }
    }
}

impl Pick for Random {
    /// Draws taken after the first.
    type Cursor = u32;

    fn members(&self) -> &Members {
        &self.members
    }

    fn first(&self, _key: &[u8]) -> (usize, u32) {
        (self.draws.draw(), 0)
    }

    fn further(&self, draws: &mut u32, seen: &Seen) -> Option<usize> {
        while *draws < EXTRA_DRAWS {
            *draws += 1;
            let i = self.draws.draw();
            if !seen.contains(i) {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Strategy;

    #[tokio::test]
    async fn shares_follow_the_weights() {
        let cases: &[(&[u32], &[f64])] = &[
            (&[1, 1, 1], &[1.0 / 3.0; 3]),
            (&[3, 1], &[0.75, 0.25]),
            (&[1, 2, 1], &[0.25, 0.5, 0.25]),
        ];
        for (weights, want) in cases {
            let lb = Lb::new(Strategy::Random, weights).await;
            let mut counts = vec![0_u32; weights.len()];
            (0..30_000).for_each(|_| counts[lb.picked(b"", &[])] += 1);
            for (c, w) in counts.iter().zip(*want) {
                let share = f64::from(*c) / 30_000.0;
                assert!((share - w).abs() < 0.05 * w, "{weights:?}: {counts:?}");
            }
        }
    }

    #[tokio::test]
    async fn same_seed_same_picks() {
        let a = Lb::new(Strategy::Random, &[1, 1, 1, 1]).await;
        let b = Lb::new(Strategy::Random, &[1, 1, 1, 1]).await;
        assert_eq!(a.names(50, b"", &[]), b.names(50, b"", &[]));
        assert_eq!(a.names(20, b"", &[0, 1, 2]), "d".repeat(20));
    }
}
