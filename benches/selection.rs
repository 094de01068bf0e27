//! Cost of one backend pick, for every strategy at 3, 100 and 1,000 backends: through pingora's
//! `LoadBalancer::select_with` (the call the proxy makes, with an accept-all closure) and the
//! raw selector (`iter(key).next()`). Hashing strategies get a different client IP each pick.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::backend::{BackendServer, BackendState};
use fulcrum::balance::{max_iterations, BalanceConfig, Balancer, Strategy};
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};

const SIZES: [usize; 3] = [3, 100, 1000];
const KEYS: usize = 1024;

fn backends(n: usize) -> BTreeSet<Backend> {
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

fn keys() -> Vec<[u8; 4]> {
    (0..KEYS as u32)
        .map(|i| (0x0a00_0000 + i * 2_654_435_761).to_be_bytes())
        .collect()
}

fn config(strategy: Strategy) -> BalanceConfig {
    BalanceConfig { strategy, seed: 1 }
}

fn select_with(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let keys = keys();
    let mut group = c.benchmark_group("select_with");
    for strategy in Strategy::ALL {
        for n in SIZES {
            let lb = LoadBalancer::<Balancer>::from_backends_with_config(
                Backends::new(discovery::Static::new(backends(n))),
                Some(config(strategy)),
            );
            runtime
                .block_on(lb.update())
                .unwrap_or_else(|e| panic!("{e}"));
            let steps = max_iterations(n);
            let mut k = 0;
            group.bench_function(BenchmarkId::new(strategy.as_str(), n), |b| {
                b.iter(|| {
                    k = (k + 1) % KEYS;
                    black_box(lb.select_with(black_box(&keys[k]), steps, |_, _| true))
                })
            });
        }
    }
    group.finish();
}

fn raw_iter(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("iter_next");
    for strategy in Strategy::ALL {
        for n in SIZES {
            let selector = Arc::new(Balancer::build_with_config(&backends(n), &config(strategy)));
            let mut k = 0;
            group.bench_function(BenchmarkId::new(strategy.as_str(), n), |b| {
                b.iter(|| {
                    k = (k + 1) % KEYS;
                    let mut iter = selector.iter(black_box(&keys[k]));
                    black_box(iter.next().map(|b| b.weight))
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = select_with, raw_iter
}
criterion_main!(benches);
