//! Issue 5, bench 4: build a scope tree and cancel it, `CancelScope` against
//! `CancellationToken` child tokens. Two shapes: deep (a chain of 1,000
//! levels) and wide (one root, 10,000 children). No waiters: this is the cost
//! of the tree itself.
//!
//! `create_cancel` times building + cancelling (the handles are dropped
//! outside the timed part); `create_cancel_drop` also times dropping every
//! handle, which is where detaching from the parent happens.
//!
//! Criterion's "time" is per whole tree.
//!
//! `cargo bench --bench tree`

#[allow(dead_code)]
mod common;

use std::hint::black_box;
use std::time::Duration;

use cancel_scope::CancelScope;
use common::CancelTree;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

const DEEP: usize = 1_000;
const WIDE: usize = 10_000;

/// A chain: every node is the child of the previous one. The handles are
/// returned so the caller decides whether dropping them is timed.
fn deep<T: CancelTree>() -> Vec<T> {
    let mut nodes = Vec::with_capacity(DEEP + 1);
    nodes.push(T::root());
    for i in 0..DEEP {
        let next = nodes[i].child();
        nodes.push(next);
    }
    nodes[0].cancel();
    nodes
}

fn wide<T: CancelTree>() -> Vec<T> {
    let mut nodes = Vec::with_capacity(WIDE + 1);
    nodes.push(T::root());
    for _ in 0..WIDE {
        let next = nodes[0].child();
        nodes.push(next);
    }
    nodes[0].cancel();
    nodes
}

fn bench(c: &mut Criterion) {
    type Shape = (
        &'static str,
        fn() -> Vec<CancelScope>,
        fn() -> Vec<CancellationToken>,
    );
    let shapes: [Shape; 2] = [
        ("deep_1000", deep::<CancelScope>, deep::<CancellationToken>),
        ("wide_10000", wide::<CancelScope>, wide::<CancellationToken>),
    ];
    for (shape, ours, theirs) in shapes {
        let mut g = c.benchmark_group(format!("tree/{shape}"));
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(30);
        g.bench_function(BenchmarkId::new("create_cancel", "CancelScope"), |b| {
            b.iter_with_large_drop(ours)
        });
        g.bench_function(
            BenchmarkId::new("create_cancel", "CancellationToken"),
            |b| b.iter_with_large_drop(theirs),
        );
        g.bench_function(BenchmarkId::new("create_cancel_drop", "CancelScope"), |b| {
            b.iter(|| drop(black_box(ours())))
        });
        g.bench_function(
            BenchmarkId::new("create_cancel_drop", "CancellationToken"),
            |b| b.iter(|| drop(black_box(theirs()))),
        );
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
