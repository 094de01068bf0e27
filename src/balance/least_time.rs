//! Least response time: lowest latency average × (in-flight + 1).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use pingora_load_balancing::Backend;

use super::candidates::Seen;
use super::ranking::{best_unseen, Ranked};
use super::selector_input::Members;

/// Least response time, after Finagle's latency-aware balancers (its EWMA "peak EWMA" cost,
/// Twitter, 2016) and nginx Plus's `least_time`: the backend with the lowest
/// `latency EWMA × (in_flight + 1)` wins, so a fast backend is preferred until the requests
/// queued on it make it as costly as a slower, idle one.
///
/// Backends without a latency sample yet are tried first (fewest in flight first), so a new
/// backend is measured at once. Ties rotate as in
/// [`LeastConnections`](super::least_conn::LeastConnections); further candidates are the next
/// best not yet tried. Weights are not used.
#[derive(Debug)]
pub struct LeastResponseTime {
    members: Members,
    ticket: AtomicUsize,
}

impl LeastResponseTime {
    /// A selector over `backends`.
    pub fn new(backends: &BTreeSet<Backend>) -> Self {
        Self {
            members: Members::new(backends),
            ticket: AtomicUsize::new(0),
        }
    }

    /// Backend `i`'s cost: unmeasured backends first (by in-flight), then by
    /// `EWMA nanoseconds × (in_flight + 1)`.
    fn cost(&self, i: usize) -> (bool, f64) {
        let stats = &self.members.state(i).stats;
        let in_flight = stats.in_flight() as f64;
        match stats.latency_ewma_nanos() {
            None => (false, in_flight),
            Some(ewma) => (true, ewma * (in_flight + 1.0)),
        }
    }
}

impl Ranked for LeastResponseTime {
    fn members(&self) -> &Members {
        &self.members
    }

    fn ticket(&self) -> &AtomicUsize {
        &self.ticket
    }

    fn best(&self, turn: usize, seen: &Seen) -> Option<usize> {
        let by_cost = |a: &(bool, f64), b: &(bool, f64)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1));
        best_unseen(self.members.len(), turn, seen, |i| self.cost(i), by_cost)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Strategy;

    #[tokio::test]
    async fn tries_unmeasured_first_then_lowest_cost() {
        let lb = Lb::new(Strategy::LeastResponseTime, &[1, 1, 1]).await;
        assert_eq!(lb.names(6, b"", &[]), "abcabc", "all unmeasured: rotate");
        lb.latency(0, 10);
        lb.latency(2, 30);
        assert_eq!(lb.names(3, b"", &[]), "bbb", "b has no sample yet");
        lb.latency(1, 20);
        assert_eq!(lb.names(3, b"", &[]), "aaa", "10ms is fastest");
        assert_eq!(lb.names(3, b"", &[0]), "bbb", "then 20ms");
        // In flight counts: a costs 10 × 3 = 30 > b's 20 × 1.
        let _a = lb.load(0, 2);
        assert_eq!(lb.names(2, b"", &[]), "bb");
        // 10 × 3 = 30 ties with c's 30 × 1 once b is out: they rotate.
        let got = lb.names(4, b"", &[1]);
        assert!(got == "acac" || got == "caca", "{got}");
        // An unmeasured backend with requests in flight still goes first, behind idle ones.
        let lb = Lb::new(Strategy::LeastResponseTime, &[1, 1, 1]).await;
        lb.latency(0, 1);
        let _b = lb.load(1, 5);
        assert_eq!(lb.names(2, b"", &[]), "cc");
        assert_eq!(lb.names(2, b"", &[2]), "bb");
        // Equal costs rotate.
        let lb = Lb::new(Strategy::LeastResponseTime, &[1, 1]).await;
        lb.latency(0, 5);
        lb.latency(1, 5);
        assert_eq!(lb.names(4, b"", &[]), "abab");
    }
}
