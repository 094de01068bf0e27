//! Least connections: fewest requests in flight per unit of weight.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use pingora_load_balancing::Backend;

use super::members::Members;
use super::walk::Seen;
use super::walk::{pick_selection, ranked_pick};

/// Least connections, weighted (nginx's and HAProxy's `least_conn`/`leastconn`): the backend
/// with the lowest `in_flight / weight` wins, compared exactly as
/// `a.in_flight × b.weight < b.in_flight × a.weight`. Ties rotate: each request takes a shared
/// ticket, which picks one of the equally loaded best backends in turn. Further candidates are the next best not yet tried. A pick is one
/// atomic add and one O(n) scan of the live in-flight counters.
#[derive(Debug)]
pub struct LeastConnections {
    members: Members,
    ticket: AtomicUsize,
}

impl LeastConnections {
    /// A selector over `backends`.
    pub fn new(backends: &BTreeSet<Backend>) -> Self {
        Self {
            members: Members::new(backends),
            ticket: AtomicUsize::new(0),
        }
    }

    fn best(&self, turn: usize, seen: &Seen) -> Option<usize> {
        let m = &self.members;
        best_unseen(m.len(), turn, seen, |i| load(m, i), by_load)
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

pick_selection!(LeastConnections);

ranked_pick!(LeastConnections);

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Strategy;

    #[tokio::test]
    async fn picks_the_least_loaded_per_weight() {
        let lb = Lb::new(Strategy::LeastConnections, &[1, 1, 1]).await;
        // Equal load: ties rotate.
        assert_eq!(lb.names(6, b"", &[]), "abcabc");
        let _a = lb.load(0, 2);
        let _c = lb.load(2, 1);
        assert_eq!(lb.names(4, b"", &[]), "bbbb");
        assert_eq!(
            lb.names(3, b"", &[1]),
            "ccc",
            "next best when b is rejected"
        );
        // Following the load as it changes: each pick holds its request open.
        let lb = Lb::new(Strategy::LeastConnections, &[1, 1, 1]).await;
        let _held = [lb.load(0, 3), lb.load(1, 1)];
        let mut guards = Vec::new();
        let mut picks = String::new();
        for _ in 0..5 {
            let i = lb.picked(b"", &[]);
            picks.push(letter(i));
            guards.push(lb.load(i, 1));
        }
        assert_eq!(picks, "ccbcb", "c (0), then b and c tie at 1 and 2");
        assert_eq!(lb.in_flight(), [3, 3, 3]);
    }

    #[tokio::test]
    async fn weight_scales_the_load() {
        let lb = Lb::new(Strategy::LeastConnections, &[2, 1]).await;
        let _a = lb.load(0, 2);
        let _b = lb.load(1, 1);
        assert_eq!(
            lb.names(4, b"", &[]),
            "abab",
            "2 at weight 2 ties with 1 at weight 1"
        );
        let _a2 = lb.load(0, 1);
        assert_eq!(lb.names(4, b"", &[]), "bbbb");
    }
}
