//! What every selector is built from ([`Members`]): the backends in address order, their live state and their
//! weights.

use std::collections::BTreeSet;
use std::sync::Arc;

use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_load_balancing::Backend;

use crate::backend::{state_of, BackendServer, BackendSpec, BackendState, MAX_WEIGHT};

/// The backends of one selector build, indexed `0..len()` in the set's (address) order.
#[derive(Debug)]
pub struct Members {
    backends: Box<[Backend]>,
    states: Box<[Arc<BackendState>]>,
    weights: Box<[u64]>,
}

impl Members {
    /// Collects `set`, with each backend's state (a fresh one if it carries none) and its
    /// weight, clamped to `1..=MAX_WEIGHT`.
    pub fn new(set: &BTreeSet<Backend>) -> Self {
        Self {
            backends: set.iter().cloned().collect(),
            states: set.iter().map(state_or_default).collect(),
            weights: set
                .iter()
                .map(|b| b.weight.clamp(1, MAX_WEIGHT as usize) as u64)
                .collect(),
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// True when there is no backend.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Backend `i`.
    pub fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }

    /// Live state of backend `i`.
    pub fn state(&self, i: usize) -> &BackendState {
        &self.states[i]
    }

    /// Weight of backend `i` (at least 1).
    pub fn weight(&self, i: usize) -> u64 {
        self.weights[i]
    }

    /// All weights divided by their greatest common divisor.
    pub fn reduced_weights(&self) -> Vec<u64> {
        let g = self.weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        self.weights.iter().map(|w| w / g).collect()
    }

    /// Position of `backend` (compared by address and weight, like the set).
    pub fn index_of(&self, backend: &Backend) -> Option<usize> {
        self.backends.binary_search(backend).ok()
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The state a backend carries, or a fresh default one for a backend built without it (e.g. by
/// `Backend::new`), so that every selector works on any backend set.
pub fn state_or_default(backend: &Backend) -> Arc<BackendState> {
    if let Some(state) = state_of(backend) {
        return state.clone();
    }
    let addr = match &backend.addr {
        PingoraAddr::Inet(addr) => *addr,
        _ => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let weight = backend.weight.clamp(1, MAX_WEIGHT as usize) as u32;
    let server =
        BackendServer::new(backend.addr.to_string(), format!("http://{addr}")).with_weight(weight);
    BackendState::new(BackendSpec::unchecked(server, addr), None)
}
