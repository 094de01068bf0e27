//! Consistent hashing on a Ketama ring.

use std::collections::BTreeSet;
use std::sync::Arc;

use pingora_load_balancing::selection::consistent::{
    KetamaConfig, KetamaHashing, OwnedNodeIterator,
};
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;

use super::candidates::{Pick, Seen};
use super::hash::stable_hash;
use super::selector_input::Members;
use crate::rng::scale;

/// Points per unit of weight on pingora's default (v1) Ketama ring.
const POINTS_PER_WEIGHT: usize = 160;

/// Consistent hashing (Karger et al., "Consistent Hashing and Random Trees", 1997), in its
/// Ketama form (last.fm's libketama, as in nginx's `hash ... consistent`): every backend owns
/// `160 × weight` points on a ring of 32-bit hashes, and a key goes to the owner of the first
/// point at or after the key's CRC32. Adding or removing one of N backends moves only about 1/N
/// of the keys, the ones whose points changed owner. The ring is pingora's
/// [`KetamaHashing`] with [`KetamaConfig::default`]; the key is whatever bytes the proxy
/// passes (the client IP, or a header, cookie or path).
///
/// If the key's backend is rejected, the next candidates are the next distinct owners along
/// the ring (so a rejected backend's keys spread over the others, each key always to the same
/// one). The ring walk is bounded (`32 n + 64` points, one lap at most); backends it did not
/// reach follow in address order.
pub struct ConsistentHashing {
    members: Members,
    ring: Arc<KetamaHashing>,
    walk_budget: usize,
}

impl std::fmt::Debug for ConsistentHashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistentHashing")
            .field("members", &self.members)
            .field("walk_budget", &self.walk_budget)
            .finish_non_exhaustive()
    }
}

impl ConsistentHashing {
    /// Builds the ring over `backends`.
    pub fn new(backends: &BTreeSet<Backend>) -> Self {
        let members = Members::new(backends);
        let ring_points = backends
            .iter()
            .fold(0_usize, |sum, b| sum.saturating_add(b.weight))
            .saturating_mul(POINTS_PER_WEIGHT);
        Self {
            walk_budget: members
                .len()
                .saturating_mul(32)
                .saturating_add(64)
                .min(ring_points),
            ring: Arc::new(KetamaHashing::build_with_config(
                backends,
                &KetamaConfig::default(),
            )),
            members,
        }
    }
}

/// A request's position on the ring and the ring points it may still walk.
pub struct RingCursor {
    ring: OwnedNodeIterator,
    budget: usize,
}

impl Pick for ConsistentHashing {
    type Cursor = RingCursor;

    fn members(&self) -> &Members {
        &self.members
    }

    fn first(&self, key: &[u8]) -> (usize, RingCursor) {
        let mut ring = self.ring.iter(key);
        let first = ring
            .next()
            .and_then(|b| self.members.index_of(b))
            // No ring (no backend has an IP address): hash onto the list instead.
            .unwrap_or_else(|| scale(stable_hash(key), self.members.len() as u64) as usize);
        let budget = self.walk_budget;
        (first, RingCursor { ring, budget })
    }

    fn further(&self, cursor: &mut RingCursor, seen: &Seen) -> Option<usize> {
        while cursor.budget > 0 {
            cursor.budget -= 1;
            let i = cursor.ring.next().and_then(|b| self.members.index_of(b))?;
            if !seen.contains(i) {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::test_support::*;
    use super::super::{PickIter, Strategy};
    use super::*;

    fn owners(set: &BTreeSet<Backend>, keys: u32) -> Vec<u16> {
        let ch = Arc::new(ConsistentHashing::new(set));
        (0..keys)
            .map(|k| {
                let b = PickIter::new(&ch, format!("user-{k}").as_bytes())
                    .next()
                    .cloned();
                b.map(|b| port(&b)).unwrap_or(0)
            })
            .collect()
    }

    #[test]
    fn adding_or_removing_one_backend_moves_about_one_nth() {
        let (five, _) = backend_set(&[1; 5]);
        let (six, _) = backend_set(&[1; 6]);
        let added = six.iter().map(port).max().unwrap_or(0);
        let (before, after) = (owners(&five, 10_000), owners(&six, 10_000));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                moved += 1;
                assert_eq!(*a, added, "a key moved between two old backends");
            }
        }
        let share = f64::from(moved) / 10_000.0;
        assert!((0.10..0.25).contains(&share), "5 -> 6 moved {share}");
        // Rebuilding gives the same ring.
        assert_eq!(owners(&five, 10_000), before);
    }

    #[tokio::test]
    async fn same_key_same_backend_and_failover_along_the_ring() {
        let lb = Lb::new(Strategy::ConsistentHashing, &[1, 1, 1, 1]).await;
        let keys: Vec<String> = (0..2000)
            .map(|k| format!("10.1.{}.{}", k / 256, k % 256))
            .collect();
        let first: Vec<usize> = keys.iter().map(|k| lb.picked(k.as_bytes(), &[])).collect();
        let mut counts = [0; 4];
        first.iter().for_each(|&i| counts[i] += 1);
        assert!(counts.iter().all(|&c| c > 300), "{counts:?}");
        let mut moved_to = [0; 4];
        for (k, &was) in keys.iter().zip(&first) {
            let now = lb.picked(k.as_bytes(), &[2]);
            assert_eq!(now, lb.picked(k.as_bytes(), &[2]));
            if was == 2 {
                moved_to[now] += 1;
            } else {
                assert_eq!(now, was);
            }
        }
        assert_eq!(moved_to[2], 0);
        assert!(
            moved_to.iter().filter(|&&c| c > 0).count() == 3,
            "{moved_to:?}"
        );
    }
}
