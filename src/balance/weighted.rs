//! Smooth weighted round robin, nginx's algorithm.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_load_balancing::Backend;

use super::candidates::{advance, Pick, Seen};
use super::selector_input::Members;

/// Smooth weighted round robin, nginx's algorithm (`ngx_http_upstream_get_peer`, 2012): each
/// backend gets `weight` of every `sum(weights)` picks, spread out instead of in runs. Weights
/// 5, 1, 1 give `a a b a c a a`; 3, 2, 1 give `a b a c b a`.
///
/// nginx keeps a current weight per backend; every pick adds each backend's weight to its
/// current weight, takes the backend with the highest (the first on ties) and subtracts the
/// total from it. The sequence repeats every `sum(weights)` picks, so one period (after dividing
/// the weights by their gcd) is computed at build time and a shared ticket counter walks it: a
/// pick is one atomic add and one table read. A rejected candidate passes its turn on, as in
/// [`RoundRobin`](super::round_robin::RoundRobin), so the admitted backends keep their
/// proportions.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    members: Members,
    sequence: Box<[u32]>,
    ticket: AtomicUsize,
}

impl WeightedRoundRobin {
    /// Precomputes one period of the rotation over `backends`.
    pub fn new(backends: &BTreeSet<Backend>) -> Self {
        let members = Members::new(backends);
        let sequence = smooth_sequence(&members.reduced_weights()).into_boxed_slice();
        Self {
            members,
            sequence,
            ticket: AtomicUsize::new(0),
        }
    }

    /// One period of picks, as backend indexes.
    pub fn sequence(&self) -> &[u32] {
        &self.sequence
    }
}

/// One period (`sum(weights)` picks) of nginx's smooth weighted round robin.
fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let weights: Vec<i64> = weights.iter().map(|&w| w as i64).collect();
    let mut current = vec![0_i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        // The highest current weight; the first one on ties, like nginx.
        let best = (1..current.len()).fold(0, |b, i| if current[i] > current[b] { i } else { b });
        current[best] -= total as i64;
        sequence.push(best as u32);
    }
    sequence
}

impl Pick for WeightedRoundRobin {
    type Cursor = ();

    fn members(&self) -> &Members {
        &self.members
    }

    fn first(&self, _key: &[u8]) -> (usize, ()) {
        let t = self.ticket.fetch_add(1, Ordering::Relaxed);
        (self.sequence[t % self.sequence.len()] as usize, ())
    }

    fn further(&self, _: &mut (), seen: &Seen) -> Option<usize> {
        let sequence = &self.sequence;
        advance(&self.ticket, sequence.len(), |p| sequence[p] as usize, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Strategy;
    use super::*;

    #[test]
    fn computes_nginx_sequences() {
        let cases: &[(&[u64], &str)] = &[
            (&[5, 1, 1], "aabacaa"),
            (&[3, 2, 1], "abacba"),
            (&[1, 1, 1], "abc"),
            (&[2, 1], "aba"),
            (&[2, 1, 1], "abca"),
            (&[4, 2, 2], "abca"), // divided by the gcd first
            (&[1], "a"),
        ];
        for (weights, want) in cases {
            let members = [weights.iter().map(|&w| w as u32).collect::<Vec<_>>()];
            let set = backend_set(&members[0]).0;
            let wrr = WeightedRoundRobin::new(&set);
            let got: String = wrr.sequence().iter().map(|&i| letter(i as usize)).collect();
            assert_eq!(&got, want, "{weights:?}");
        }
    }

    #[tokio::test]
    async fn is_smooth_and_exact_over_each_period() {
        let lb = Lb::new(Strategy::WeightedRoundRobin, &[5, 1, 1]).await;
        assert_eq!(lb.names(14, b"", &[]), "aabacaaaabacaa");

        let lb = Lb::new(Strategy::WeightedRoundRobin, &[3, 2, 1]).await;
        assert_eq!(lb.names(12, b"", &[]), "abacbaabacba");
        let mut counts = [0; 3];
        for period in 0..100 {
            let mut in_period = [0; 3];
            for _ in 0..6 {
                in_period[lb.picked(b"", &[])] += 1;
            }
            assert_eq!(in_period, [3, 2, 1], "period {period}");
            for (c, p) in counts.iter_mut().zip(in_period) {
                *c += p;
            }
        }
        assert_eq!(counts, [300, 200, 100]);
    }

    #[tokio::test]
    async fn rejected_backends_pass_their_turn_on() {
        // a (weight 5) down: b and c alternate, as their weights are equal.
        let lb = Lb::new(Strategy::WeightedRoundRobin, &[5, 1, 1]).await;
        assert_eq!(lb.names(8, b"", &[0]), "bcbcbcbc");
        // c down from 3, 2, 1: a and b keep 3:2.
        let lb = Lb::new(Strategy::WeightedRoundRobin, &[3, 2, 1]).await;
        let mut counts = [0; 3];
        for _ in 0..500 {
            counts[lb.picked(b"", &[2])] += 1;
        }
        assert_eq!(counts, [300, 200, 0]);
    }
}
