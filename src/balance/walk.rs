//! The iterator every strategy but consistent hashing's shares.
//!
//! A strategy makes the first pick allocation-free; only when that candidate is rejected does the
//! iterator allocate a small bitset of the backends already yielded, ask the strategy for further
//! candidates that are not in it and, when the strategy has none left, scan all backends in
//! order after the first. Every backend is yielded exactly once, then `None`.

use std::sync::Arc;

use pingora_load_balancing::selection::BackendIter;
use pingora_load_balancing::Backend;

use super::members::Members;

/// Implements pingora's `BackendSelection` for a [`Pick`] strategy: built from the backend set
/// with `Self::new(backends)` (or `Self::new(backends, seed)` for the `seeded` ones, whose
/// `Config` is the random seed), iterated with [`PickIter`].
macro_rules! pick_selection {
    ($strategy:ty) => {
        impl pingora_load_balancing::selection::BackendSelection for $strategy {
            type Iter = $crate::balance::walk::PickIter<Self>;
            type Config = ();

            fn build(
                backends: &std::collections::BTreeSet<pingora_load_balancing::Backend>,
            ) -> Self {
                Self::new(backends)
            }

            fn iter(self: &std::sync::Arc<Self>, key: &[u8]) -> Self::Iter {
                $crate::balance::walk::PickIter::new(self, key)
            }
        }
    };
    ($strategy:ty, seeded) => {
        impl pingora_load_balancing::selection::BackendSelection for $strategy {
            type Iter = $crate::balance::walk::PickIter<Self>;
            type Config = u64;

            fn build_with_config(
                backends: &std::collections::BTreeSet<pingora_load_balancing::Backend>,
                seed: &u64,
            ) -> Self {
                Self::new(backends, *seed)
            }

            fn build(
                backends: &std::collections::BTreeSet<pingora_load_balancing::Backend>,
            ) -> Self {
                Self::new(backends, 0)
            }

            fn iter(self: &std::sync::Arc<Self>, key: &[u8]) -> Self::Iter {
                $crate::balance::walk::PickIter::new(self, key)
            }
        }
    };
}
pub(crate) use pick_selection;

/// Implements [`Pick`] for a strategy that ranks all backends on every call (least connections,
/// least response time): `self.members`, a shared `self.ticket` that rotates ties, and
/// `self.best(turn, seen)` returning the best backend not yet seen.
macro_rules! ranked_pick {
    ($strategy:ty) => {
        impl $crate::balance::walk::Pick for $strategy {
            /// The request's ticket, which rotates ties.
            type Cursor = usize;

            fn members(&self) -> &$crate::balance::members::Members {
                &self.members
            }

            fn first(&self, _key: &[u8]) -> (usize, usize) {
                let turn = self
                    .ticket
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let best = self.best(turn, &$crate::balance::walk::Seen::EMPTY);
                (best.unwrap_or(0), turn)
            }

            fn further(
                &self,
                turn: &mut usize,
                seen: &$crate::balance::walk::Seen,
            ) -> Option<usize> {
                self.best(*turn, seen)
            }
        }
    };
}
pub(crate) use ranked_pick;

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
