//! Least connections: fewest requests in flight per unit of weight.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use pingora_load_balancing::Backend;

use super::candidates::Seen;
use super::ranking::{best_unseen, by_load, load, Ranked};
use super::selector_input::Members;

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
}

impl Ranked for LeastConnections {
    fn members(&self) -> &Members {
        &self.members
    }

    fn ticket(&self) -> &AtomicUsize {
        &self.ticket
    }

    fn best(&self, turn: usize, seen: &Seen) -> Option<usize> {
        let m = &self.members;
        best_unseen(m.len(), turn, seen, |i| load(m, i), by_load)
    }
}

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
