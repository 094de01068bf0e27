//! Power of two choices.

use std::collections::BTreeSet;

use pingora_load_balancing::Backend;

use super::candidates::{Pick, Seen};
use super::ranking::{by_load, load};
use super::selector_input::Members;
use super::weighted_draw::WeightedDraw;

/// Draws allowed for a second candidate distinct from the first before taking a uniform one.
const DISTINCT_DRAWS: u32 = 8;

/// Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
/// Balancing", 2001): draw two distinct backends at weighted random and send the request to the
/// less loaded one (lower `in_flight / weight`, the first drawn on a tie). Nearly as even as
/// least connections, without scanning every backend and without herding onto the one least
/// loaded. The loser is the second candidate, then every backend in address order after the
/// first.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    members: Members,
    draws: WeightedDraw,
}

impl PowerOfTwoChoices {
    /// A selector over `backends` drawing from a generator seeded with `seed`.
    pub fn new(backends: &BTreeSet<Backend>, seed: u64) -> Self {
        let members = Members::new(backends);
        Self {
            draws: WeightedDraw::new(&members, seed),
            members,
        }
    }

    /// Two distinct weighted-random backends (the same one twice when there is only one).
    pub fn candidates(&self) -> (usize, usize) {
        let n = self.members.len();
        let first = self.draws.draw();
        if n < 2 {
            return (first, first);
        }
        for _ in 0..DISTINCT_DRAWS {
            let second = self.draws.draw();
            if second != first {
                return (first, second);
            }
        }
        // Weights so skewed that the draws keep hitting `first`: any other, uniformly.
        let offset = 1 + self.draws.below(n as u64 - 1) as usize;
        (first, (first + offset) % n)
    }
}

impl Pick for PowerOfTwoChoices {
    /// The loser, not yet yielded.
    type Cursor = Option<usize>;

    fn members(&self) -> &Members {
        &self.members
    }

    fn first(&self, _key: &[u8]) -> (usize, Option<usize>) {
        let (a, b) = self.candidates();
        let (winner, loser) = if by_load(&load(&self.members, b), &load(&self.members, a)).is_lt() {
            (b, a)
        } else {
            (a, b)
        };
        (winner, (loser != winner).then_some(loser))
    }

    fn further(&self, loser: &mut Option<usize>, seen: &Seen) -> Option<usize> {
        loser.take().filter(|&i| !seen.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use pingora_load_balancing::selection::BackendIter;

    use super::super::PickIter;
    use std::sync::Arc;

    use super::super::test_support::*;
    use super::super::Strategy;
    use super::*;

    #[test]
    fn candidates_are_distinct_and_weighted() {
        let (set, _) = backend_set(&[1, 1, 1]);
        let p2c = PowerOfTwoChoices::new(&set, 42);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            let (a, b) = p2c.candidates();
            assert_ne!(a, b);
            counts[a] += 1;
            counts[b] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1800..2200).contains(&c)),
            "{counts:?}"
        );
        let (set, _) = backend_set(&[1000, 1]);
        let p2c = PowerOfTwoChoices::new(&set, 1);
        assert!((0..100).all(|_| {
            let (a, b) = p2c.candidates();
            a != b
        }));
        let (set, _) = backend_set(&[1]);
        let p2c = Arc::new(PowerOfTwoChoices::new(&set, 1));
        let mut iter = PickIter::new(&p2c, b"");
        assert!(iter.next().is_some());
        assert!(iter.next().is_none());
    }

    #[tokio::test]
    async fn the_less_loaded_candidate_wins() {
        let lb = Lb::new(Strategy::PowerOfTwoChoices, &[1, 1, 1]).await;
        let _busy = lb.load(0, 10);
        let mut counts = [0; 3];
        (0..3000).for_each(|_| counts[lb.picked(b"", &[])] += 1);
        // The two candidates are distinct, so a, drawn, always meets a less loaded rival.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 1300 && counts[2] > 1300, "{counts:?}");
        // With two backends both are drawn every time: the idle one first, then the loser.
        let lb = Lb::new(Strategy::PowerOfTwoChoices, &[1, 1]).await;
        let _busy = lb.load(0, 1);
        for _ in 0..20 {
            assert_eq!(lb.offered(b""), [1, 0]);
        }
    }
}
