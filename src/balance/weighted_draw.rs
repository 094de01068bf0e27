//! Weighted picks over a backend set by cumulative weights: [`Cumulative`] (binary search,
//! `len()` entries instead of `sum(weights)`) and [`WeightedDraw`], its lock-free random draws
//! (random, power of two choices; IP hash uses `Cumulative` with a hash).

use super::selector_input::Members;
use crate::rng::scale;

/// Weighted random draws over a backend set (random, power of two choices): the cumulative
/// weights and a lock-free generator.
#[derive(Debug)]
pub struct WeightedDraw {
    weights: Cumulative,
    rng: crate::rng::SplitMix64,
}

impl WeightedDraw {
    /// Draws over `members`, from a generator seeded with `seed`.
    pub fn new(members: &Members, seed: u64) -> Self {
        Self {
            weights: Cumulative::new(members),
            rng: crate::rng::SplitMix64::new(seed),
        }
    }

    /// One backend, with probability proportional to its weight.
    pub fn draw(&self) -> usize {
        self.weights.pick(self.rng.next_u64())
    }

    /// A uniform value in `0..n` (`n > 0`).
    pub fn below(&self, n: u64) -> u64 {
        self.rng.below(n)
    }
}

/// Cumulative weights, for weighted picks by binary search: the same mapping as a table holding
/// each backend's index `weight` times, in `len()` instead of `sum(weights)` entries.
#[derive(Debug)]
pub struct Cumulative {
    ends: Box<[u64]>,
}

impl Cumulative {
    /// Prefix sums of the gcd-reduced weights of `members`.
    pub fn new(members: &Members) -> Self {
        let mut total = 0;
        let ends = members
            .reduced_weights()
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Self { ends }
    }

    /// The backend that 64 uniformly distributed bits `x` fall on, with probability
    /// proportional to its weight (`x`'s high bits scaled onto `0..sum(weights)`). Needs at least
    /// one backend.
    pub fn pick(&self, x: u64) -> usize {
        let total = self.ends.last().copied().unwrap_or(1);
        let point = scale(x, total);
        self.ends
            .partition_point(|&end| end <= point)
            .min(self.ends.len().saturating_sub(1))
    }
}
