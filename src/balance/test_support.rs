//! Helpers for the selection tests: backends on fixed ports, a pingora `LoadBalancer` driven as
//! the proxy drives it, and load and latency set by hand.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};

use super::{max_iterations, BalanceConfig, Balancer, Strategy};
use crate::backend::{BackendServer, BackendState, InFlightGuard};

/// Port of backend 0; backend `i` listens on `BASE_PORT + i`, so address order is index order.
pub const BASE_PORT: u16 = 20001;

/// Backends with these weights, and their states.
pub fn backend_set(weights: &[u32]) -> (BTreeSet<Backend>, Vec<Arc<BackendState>>) {
    let states: Vec<Arc<BackendState>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let url = format!("http://127.0.0.1:{}", BASE_PORT as usize + i);
            BackendState::validated(BackendServer::new(format!("b{i}"), url).with_weight(w))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    (states.iter().map(|s| s.to_backend()).collect(), states)
}

/// A backend's port.
pub fn port(backend: &Backend) -> u16 {
    match &backend.addr {
        PingoraAddr::Inet(a) => a.port(),
        _ => panic!("not an inet backend"),
    }
}

/// A backend's index.
pub fn index(backend: &Backend) -> usize {
    usize::from(port(backend) - BASE_PORT)
}

/// Backend `i`'s name in expected sequences: `a`, `b`, ...
pub fn letter(i: usize) -> char {
    char::from(b'a' + i as u8)
}

/// A pingora load balancer over [`backend_set`], selecting with [`Balancer`].
pub struct Lb {
    pub lb: LoadBalancer<Balancer>,
    pub states: Vec<Arc<BackendState>>,
}

impl Lb {
    pub async fn new(strategy: Strategy, weights: &[u32]) -> Self {
        let (set, states) = backend_set(weights);
        let cfg = BalanceConfig { strategy, seed: 42 };
        let lb = LoadBalancer::<Balancer>::from_backends_with_config(
            Backends::new(discovery::Static::new(set)),
            Some(cfg),
        );
        lb.update().await.unwrap_or_else(|e| panic!("{e}"));
        Self { lb, states }
    }

    /// One selection exactly as the proxy makes it, rejecting backends `reject`.
    pub fn pick(&self, key: &[u8], reject: &[usize]) -> Option<usize> {
        let n = self.states.len();
        self.lb
            .select_with(key, max_iterations(n), |b, _| !reject.contains(&index(b)))
            .map(|b| index(&b))
    }

    /// [`Self::pick`], which must find a backend.
    pub fn picked(&self, key: &[u8], reject: &[usize]) -> usize {
        self.pick(key, reject)
            .unwrap_or_else(|| panic!("no backend for {key:?} rejecting {reject:?}"))
    }

    /// `count` picks as letters.
    pub fn names(&self, count: usize, key: &[u8], reject: &[usize]) -> String {
        (0..count)
            .map(|_| self.pick(key, reject).map_or('-', letter))
            .collect()
    }

    /// Every backend offered to an accept closure that rejects all, in order.
    pub fn offered(&self, key: &[u8]) -> Vec<usize> {
        let offered = RefCell::new(Vec::new());
        let got = self
            .lb
            .select_with(key, max_iterations(self.states.len()), |b, _| {
                offered.borrow_mut().push(index(b));
                false
            });
        assert!(got.is_none());
        offered.into_inner()
    }

    /// Holds `k` requests in flight to backend `i` while the guards live.
    pub fn load(&self, i: usize, k: usize) -> Vec<InFlightGuard> {
        (0..k)
            .map(|_| InFlightGuard::new(self.states[i].clone()))
            .collect()
    }

    /// Every backend's in-flight count.
    pub fn in_flight(&self) -> Vec<u64> {
        self.states.iter().map(|s| s.stats.in_flight()).collect()
    }

    /// Records a latency sample of `ms` milliseconds for backend `i`.
    pub fn latency(&self, i: usize, ms: u64) {
        self.states[i]
            .stats
            .record_latency(Duration::from_millis(ms));
    }
}
