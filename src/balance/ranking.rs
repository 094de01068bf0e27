//! What the ranking strategies (least connections, least response time, and power of two
//! choices' comparison) share: the [`Ranked`] contract, from which their [`Pick`] follows, the
//! tie-rotating [`best_unseen`] scan, and the in-flight-per-weight load order.

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::candidates::{Pick, Seen};
use super::selector_input::Members;

/// A strategy that ranks all backends on every pick: its first candidate is the best backend
/// for a fresh ticket (which rotates ties), each further one the best not yet yielded.
pub trait Ranked {
    /// The backends ranked.
    fn members(&self) -> &Members;
    /// The shared ticket counter that rotates ties between requests.
    fn ticket(&self) -> &AtomicUsize;
    /// The best backend not in `seen`, ties broken by `turn`.
    fn best(&self, turn: usize, seen: &Seen) -> Option<usize>;
}

impl<R: Ranked> Pick for R {
    /// The request's ticket, which rotates ties.
    type Cursor = usize;

    fn members(&self) -> &Members {
        Ranked::members(self)
    }

    fn first(&self, _key: &[u8]) -> (usize, usize) {
        let turn = self.ticket().fetch_add(1, Ordering::Relaxed);
        (self.best(turn, &Seen::EMPTY).unwrap_or(0), turn)
    }

    fn further(&self, turn: &mut usize, seen: &Seen) -> Option<usize> {
        self.best(*turn, seen)
    }
}

/// Backend `i`'s load as compared by [`by_load`]: in-flight requests and weight.
pub fn load(members: &Members, i: usize) -> (u64, u64) {
    (members.state(i).stats.in_flight(), members.weight(i))
}

/// Orders loads by `in_flight / weight`, compared as `a.in_flight × b.weight` against
/// `b.in_flight × a.weight` (exact: no division, no floats).
pub fn by_load(a: &(u64, u64), b: &(u64, u64)) -> CmpOrdering {
    (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1)))
}

/// The best backend not in `seen` by `cmp` of `key`s (lowest first). Ties rotate: `turn` (the
/// request's ticket) picks which of the equally best backends, in address order, wins, so
/// consecutive requests take them in turn. Two O(n) passes when there is a tie, one otherwise.
pub fn best_unseen<K: Copy>(
    n: usize,
    turn: usize,
    seen: &Seen,
    key: impl Fn(usize) -> K,
    cmp: impl Fn(&K, &K) -> CmpOrdering,
) -> Option<usize> {
    let mut best: Option<(usize, K)> = None;
    let mut ties = 0;
    for i in (0..n).filter(|&i| !seen.contains(i)) {
        let k = key(i);
        match best.map(|(_, b)| cmp(&k, &b)) {
            None | Some(CmpOrdering::Less) => (best, ties) = (Some((i, k)), 1),
            Some(CmpOrdering::Equal) => ties += 1,
            Some(CmpOrdering::Greater) => {}
        }
    }
    let (first, b) = best?;
    if ties < 2 {
        return Some(first);
    }
    // Loads may have changed since the first pass: fall back to its winner.
    (0..n)
        .filter(|&i| !seen.contains(i) && cmp(&key(i), &b) == CmpOrdering::Equal)
        .nth(turn % ties)
        .or(Some(first))
}
