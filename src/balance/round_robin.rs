//! Round robin: strict rotation over the admitted backends.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_load_balancing::Backend;

use super::members::Members;
use super::walk::pick_selection;
use super::walk::{Pick, Seen};

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

pick_selection!(RoundRobin);

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

/// How far past a ticket [`advance`] looks for a backend not yet yielded.
const MAX_WALK: usize = 1 << 14;
/// Tickets [`advance`] takes before it settles for an unclaimed position.
const CLAIM_ATTEMPTS: usize = 3;

/// The next candidate of a rotation over a cyclic sequence of `period` positions (`at` maps a
/// position to a backend), for a request whose earlier candidates, `seen`, were rejected.
///
/// Takes a new ticket. If its position holds a backend already yielded, looks ahead for the
/// first position that does not and claims the skipped positions with one compare-exchange of the
/// ticket counter, so the next request continues after them: skipped turns are consumed exactly
/// as if a ticket had been taken for each, and the admitted backends keep their share. If other
/// requests took tickets meanwhile, retries with a new ticket a few times, then uses the position
/// found without claiming. `None` when no position within reach holds an unseen backend.
pub fn advance(
    ticket: &AtomicUsize,
    period: usize,
    at: impl Fn(usize) -> usize,
    seen: &Seen,
) -> Option<usize> {
    for attempt in 1..=CLAIM_ATTEMPTS {
        let t = ticket.fetch_add(1, Ordering::Relaxed);
        let i = at(t % period);
        if !seen.contains(i) {
            return Some(i);
        }
        let k =
            (1..period.min(MAX_WALK)).find(|&k| !seen.contains(at(t.wrapping_add(k) % period)))?;
        let claimed = ticket
            .compare_exchange(
                t.wrapping_add(1),
                t.wrapping_add(k + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if claimed || attempt == CLAIM_ATTEMPTS {
            return Some(at(t.wrapping_add(k) % period));
        }
    }
    None
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
