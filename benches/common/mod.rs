//! What the benches share: short measurements, a set of backends and the client keys hashing
//! strategies pick by.

use std::collections::BTreeSet;
use std::time::Duration;

use criterion::Criterion;

use fulcrum::backend::{BackendServer, BackendState};
use pingora_load_balancing::Backend;

/// Client keys cycled through by the benches.
pub const KEYS: usize = 1024;

/// `n` backends `b0`, `b1`, ... on distinct loopback addresses, weights 1 to 3.
pub fn backends(n: usize) -> BTreeSet<Backend> {
    (0..n)
        .map(|i| {
            let ip = format!("http://127.0.{}.{}:8080", i / 250, 1 + i % 250);
            let server = BackendServer::new(format!("b{i}"), ip).with_weight(1 + i as u32 % 3);
            BackendState::validated(server)
                .map(|s| s.to_backend())
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

/// [`KEYS`] distinct client IPv4 addresses, as the hashing strategies see them.
pub fn keys() -> Vec<[u8; 4]> {
    (0..KEYS as u32)
        .map(|i| {
            0x0a00_0000u32
                .wrapping_add(i.wrapping_mul(2_654_435_761))
                .to_be_bytes()
        })
        .collect()
}

/// Short runs (1 s warm-up, 20 samples in 2 s): enough to compare, quick on a shared machine.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}
