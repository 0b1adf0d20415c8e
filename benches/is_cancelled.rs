//! Issue 5, bench 3: `is_cancelled`, uncontended and with 2 threads hammering
//! the same scope at once, against `CancellationToken::is_cancelled`.
//!
//! Also a scope with a deadline (one clock read more per call), since that is
//! the other path of our `is_cancelled`.
//!
//! "hammer2" reports wall time per call while two threads each make `iters`
//! calls on the same object concurrently (so ns per call per thread).
//!
//! `cargo bench --bench is_cancelled`

use std::hint::black_box;
use std::time::{Duration, Instant};

use cancel_scope::CancelScope;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;

/// `iters` calls on each of two threads at once; wall time of the slower.
fn hammer2<T: Sync>(obj: &T, iters: u64, f: impl Fn(&T) -> bool + Sync) -> Duration {
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f(black_box(obj)));
            }
            start.elapsed()
        };
        let other = s.spawn(run);
        let mine = run();
        mine.max(other.join().expect("hammer thread"))
    })
}

fn bench(c: &mut Criterion) {
    // The deadline variant needs tokio's clock, so a runtime context.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();

    let scope = CancelScope::new();
    let deadline_scope = CancelScope::new().with_timeout(Duration::from_secs(3600));
    let token = CancellationToken::new();
    // Children too: the common case is a per-task child polled in a loop.
    let scope_child = scope.child();
    let token_child = token.child_token();

    let mut g = c.benchmark_group("is_cancelled");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    g.bench_function(BenchmarkId::new("uncontended", "CancelScope"), |b| {
        b.iter(|| black_box(&scope).is_cancelled())
    });
    g.bench_function(
        BenchmarkId::new("uncontended", "CancelScope+deadline"),
        |b| b.iter(|| black_box(&deadline_scope).is_cancelled()),
    );
    g.bench_function(BenchmarkId::new("uncontended", "CancelScope-child"), |b| {
        b.iter(|| black_box(&scope_child).is_cancelled())
    });
    g.bench_function(BenchmarkId::new("uncontended", "CancellationToken"), |b| {
        b.iter(|| black_box(&token).is_cancelled())
    });
    g.bench_function(
        BenchmarkId::new("uncontended", "CancellationToken-child"),
        |b| b.iter(|| black_box(&token_child).is_cancelled()),
    );

    g.bench_function(BenchmarkId::new("hammer2", "CancelScope"), |b| {
        b.iter_custom(|iters| hammer2(&scope, iters, CancelScope::is_cancelled))
    });
    g.bench_function(BenchmarkId::new("hammer2", "CancelScope+deadline"), |b| {
        b.iter_custom(|iters| hammer2(&deadline_scope, iters, CancelScope::is_cancelled))
    });
    g.bench_function(BenchmarkId::new("hammer2", "CancellationToken"), |b| {
        b.iter_custom(|iters| hammer2(&token, iters, CancellationToken::is_cancelled))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
