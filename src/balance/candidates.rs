//! The candidate iterator every strategy shares ([`PickIter`] over a [`Pick`] strategy), and
//! [`advance`], the ticket rotation round robin and weighted round robin take further
//! candidates from.
//!
//! A strategy makes the first pick allocation-free; only when that candidate is rejected does the
//! iterator allocate a small bitset of the backends already yielded, ask the strategy for further
//! candidates that are not in it and, when the strategy has none left, scan all backends in
//! order after the first. Every backend is yielded exactly once, then `None`.

use std::sync::Arc;

use pingora_load_balancing::selection::BackendIter;
use pingora_load_balancing::Backend;

use std::sync::atomic::{AtomicUsize, Ordering};

use super::selector_input::Members;

/// Backends already yielded by one iterator: empty (no allocation) until the second candidate.
#[derive(Debug, Default)]
pub struct Seen {
    words: Vec<u64>,
}

impl Seen {
    /// A set that contains nothing and never allocates.
    pub const EMPTY: Seen = Seen { words: Vec::new() };

    /// True if backend `i` was yielded.
    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn insert(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    fn activate(&mut self, n: usize, first: usize) {
        if self.words.is_empty() {
            self.words = vec![0; n.div_ceil(64).max(1)];
            self.insert(first);
        }
    }
}

/// A strategy as [`PickIter`] drives it.
pub trait Pick {
    /// Per-request state kept between candidates.
    type Cursor;

    /// The backends picked from.
    fn members(&self) -> &Members;

    /// The first candidate for `key` and the state for further ones; only called with at least
    /// one backend.
    fn first(&self, key: &[u8]) -> (usize, Self::Cursor);

    /// The next candidate not in `seen`, or `None` when the strategy has no preference left (the
    /// iterator then scans the remaining backends in order).
    fn further(&self, cursor: &mut Self::Cursor, seen: &Seen) -> Option<usize>;
}

/// Candidates of one request, in a strategy's order of preference.
pub struct PickIter<S: Pick> {
    selector: Arc<S>,
    /// `None` when there is no backend.
    cursor: Option<S::Cursor>,
    first: usize,
    yielded: usize,
    seen: Seen,
    /// Backends scanned since the strategy ran out of candidates (`None` before).
    scanned: Option<usize>,
}

impl<S: Pick> PickIter<S> {
    /// Starts a request: makes the first pick.
    pub fn new(selector: &Arc<S>, key: &[u8]) -> Self {
        let (first, cursor) = if selector.members().is_empty() {
            (0, None)
        } else {
            let (first, cursor) = selector.first(key);
            (first, Some(cursor))
        };
        Self {
            selector: selector.clone(),
            cursor,
            first,
            yielded: 0,
            seen: Seen::default(),
            scanned: None,
        }
    }

    fn next_index(&mut self) -> Option<usize> {
        let cursor = self.cursor.as_mut()?;
        let n = self.selector.members().len();
        if self.yielded == 0 {
            return Some(self.first);
        }
        if self.yielded >= n {
            return None;
        }
        self.seen.activate(n, self.first);
        if self.scanned.is_none() {
            match self.selector.further(cursor, &self.seen) {
                Some(i) if i < n && !self.seen.contains(i) => return Some(i),
                _ => self.scanned = Some(0),
            }
        }
        let scanned = self.scanned.get_or_insert(0);
        while *scanned < n {
            let i = (self.first + 1 + *scanned) % n;
            *scanned += 1;
            if !self.seen.contains(i) {
                return Some(i);
            }
        }
        None
    }
}

impl<S: Pick> BackendIter for PickIter<S> {
    fn next(&mut self) -> Option<&Backend> {
        let i = self.next_index()?;
        self.seen.insert(i);
        self.yielded += 1;
        Some(self.selector.members().backend(i))
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
