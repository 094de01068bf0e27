//! IP hash: the client's address picks the backend.

use std::collections::BTreeSet;

use pingora_load_balancing::Backend;

use super::candidates::{Pick, Seen};
use super::hash::stable_hash;
use super::selector_input::Members;
use super::weighted_draw::Cumulative;
use crate::rng::{mix, GOLDEN_GAMMA};

/// Alternative backends derived from the key before falling back to the address-order scan.
const REHASHES: u64 = 4;

/// IP hash (nginx's `ip_hash`, weighted like its `hash` directive): the key, the client IP's 4
/// or 16 bytes, is hashed with a stable hash (FNV-1a 64, then SplitMix64's finalizer) and lands
/// on a backend with probability proportional to its weight. The same key goes to the same
/// backend, on every Fulcrum instance, for as long as that backend is admitted.
///
/// If it is rejected, further candidates are derived from the key alone (the hash rehashed with
/// a counter, a few times, then every backend in address order after the first), so the keys of
/// a rejected backend spread over the others by weight and no other key moves.
#[derive(Debug)]
pub struct IpHash {
    members: Members,
    weights: Cumulative,
}

impl IpHash {
    /// A selector over `backends`.
    pub fn new(backends: &BTreeSet<Backend>) -> Self {
        let members = Members::new(backends);
        Self {
            weights: Cumulative::new(&members),
            members,
        }
    }
}

/// A request's key hash and how many rehashes it used.
#[derive(Debug)]
pub struct KeyCursor {
    hash: u64,
    round: u64,
}

impl Pick for IpHash {
    type Cursor = KeyCursor;

    fn members(&self) -> &Members {
        &self.members
    }

    fn first(&self, key: &[u8]) -> (usize, KeyCursor) {
        let hash = stable_hash(key);
        (self.weights.pick(hash), KeyCursor { hash, round: 0 })
    }

    fn further(&self, cursor: &mut KeyCursor, seen: &Seen) -> Option<usize> {
        while cursor.round < REHASHES {
            cursor.round += 1;
            let i = self
                .weights
                .pick(mix(cursor.hash ^ cursor.round.wrapping_mul(GOLDEN_GAMMA)));
            if !seen.contains(i) {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::test_support::*;
    use super::super::Strategy;

    fn ip(i: u32) -> [u8; 4] {
        Ipv4Addr::from(0x0a00_0000 + i * 7919).octets()
    }

    #[tokio::test]
    async fn same_ip_same_backend_and_an_even_spread() {
        let lb = Lb::new(Strategy::IpHash, &[1, 1, 1]).await;
        let first: Vec<usize> = (0..1000).map(|i| lb.picked(&ip(i), &[])).collect();
        for _ in 0..3 {
            let again: Vec<usize> = (0..1000).map(|i| lb.picked(&ip(i), &[])).collect();
            assert_eq!(again, first);
        }
        let mut counts = [0; 3];
        first.iter().for_each(|&i| counts[i] += 1);
        assert!(counts.iter().all(|&c| c > 200), "{counts:?}");
        let v6 = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(lb.pick(&v6, &[]), lb.pick(&v6, &[]));

        // A rejected backend: its keys move (spread over both others), the rest stay.
        let mut moved_to = [0; 3];
        for (i, &was) in first.iter().enumerate() {
            let now = lb.picked(&ip(i as u32), &[1]);
            if was == 1 {
                moved_to[now] += 1;
            } else {
                assert_eq!(now, was, "key {i} moved");
            }
        }
        assert_eq!(moved_to[1], 0);
        assert!(moved_to[0] > 100 && moved_to[2] > 100, "{moved_to:?}");
    }

    #[tokio::test]
    async fn weights_scale_the_share() {
        let lb = Lb::new(Strategy::IpHash, &[3, 1]).await;
        let mut counts = [0; 2];
        (0..4000).for_each(|i| counts[lb.picked(&ip(i), &[])] += 1);
        assert!((2800..3200).contains(&counts[0]), "{counts:?}");
    }
}
