//! Cost of one backend pick, for every strategy at 3, 100 and 1,000 backends: through pingora's
//! `LoadBalancer::select_with` (the call the proxy makes, with an accept-all closure) and the
//! raw selector (`iter(key).next()`). Hashing strategies get a different client IP each pick.

use std::hint::black_box;
use std::sync::Arc;

use common::{backends, keys, KEYS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::balance::{max_iterations, BalanceConfig, Balancer, Strategy};
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::{discovery, Backends, LoadBalancer};

mod common;

const SIZES: [usize; 3] = [3, 100, 1000];

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
    config = common::criterion();
    targets = select_with, raw_iter
}
criterion_main!(benches);
