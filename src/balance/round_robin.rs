//! Round robin: strict rotation over the admitted backends.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_load_balancing::Backend;

use super::candidates::{advance, Pick, Seen};
use super::selector_input::Members;

/// Round robin, the classic rotation (as in nginx's and HAProxy's `roundrobin` with equal
/// weights): requests take turns over the backends in address order; weights are ignored.
///
/// One shared ticket counter orders all requests. A request's first candidate is
/// `backends[ticket % n]`; each further candidate (the previous one was rejected) takes a new
/// ticket, so a rejected backend's turn passes to the next backend and the rotation over the
/// admitted ones stays strict: with `b` of `a b c` down, picks go `a c a c`.
#[derive(Debug)]
pub struct RoundRobin {
    members: Members,
    ticket: AtomicUsize,
}

impl RoundRobin {
    /// A rotation over `backends`, starting at the first.
    pub fn new(backends: &BTreeSet<Backend>) -> Self {
        Self {
            members: Members::new(backends),
            ticket: AtomicUsize::new(0),
        }
    }
}

impl Pick for RoundRobin {
    type Cursor = ();

    fn members(&self) -> &Members {
        &self.members
    }

    fn first(&self, _key: &[u8]) -> (usize, ()) {
        let t = self.ticket.fetch_add(1, Ordering::Relaxed);
        (t % self.members.len(), ())
    }

    fn further(&self, _: &mut (), seen: &Seen) -> Option<usize> {
        advance(&self.ticket, self.members.len(), |p| p, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Strategy;

    #[tokio::test]
    async fn rotates_strictly_over_admitted_backends() {
        let lb = Lb::new(Strategy::RoundRobin, &[1, 5, 1]).await;
        let picks: Vec<usize> = (0..300).map(|_| lb.picked(b"", &[])).collect();
        let want: Vec<usize> = (0..300).map(|i| i % 3).collect();
        assert_eq!(picks, want, "weights are ignored, rotation is exact");

        let lb = Lb::new(Strategy::RoundRobin, &[1, 1, 1]).await;
        assert_eq!(lb.names(12, b"", &[1]), "acacacacacac");
        assert_eq!(lb.names(6, b"", &[0, 1]), "cccccc");
        let lb = Lb::new(Strategy::RoundRobin, &[1; 5]).await;
        assert_eq!(lb.names(12, b"", &[1, 2]), "adeadeadeade");
    }
}
