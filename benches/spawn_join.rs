//! Issue 5, bench 1: spawn N trivial tasks and wait for all of them, with
//! `TaskGroup` against what users would write instead: `JoinSet`,
//! `TaskTracker` (counts only, no per-task cancellation) and plain
//! `tokio::spawn` + awaiting every handle.
//!
//! Criterion's "time" reads as **ns per task** (see `common::per_item`).
//!
//! `cargo bench --bench spawn_join`

#[allow(dead_code)] // each bench uses a subset of the helpers
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cancel_scope::TaskGroup;
use common::{Flavor, per_item};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

/// A trivial task: the cost measured is the library's, not the work's.
async fn trivial(i: u64) -> u64 {
    black_box(i)
}

fn task_group(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let group = TaskGroup::new();
        for i in 0..n as u64 {
            // The handle is dropped: the group tracks the task, as `JoinSet` does.
            drop(group.spawn(trivial(i)));
        }
        group.join().await.expect("no panic");
        start.elapsed()
    })
}

fn join_set(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..n as u64 {
            set.spawn(trivial(i));
        }
        while let Some(r) = set.join_next().await {
            black_box(r.expect("no panic"));
        }
        start.elapsed()
    })
}

fn task_tracker(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let tracker = TaskTracker::new();
        for i in 0..n as u64 {
            drop(tracker.spawn(trivial(i)));
        }
        tracker.close();
        tracker.wait().await;
        start.elapsed()
    })
}

fn spawn_handles(rt: &Runtime, n: usize) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..n as u64).map(|i| tokio::spawn(trivial(i))).collect();
        for h in handles {
            black_box(h.await.expect("no panic"));
        }
        start.elapsed()
    })
}

type Variant = (&'static str, fn(&Runtime, usize) -> Duration);

const VARIANTS: [Variant; 4] = [
    ("TaskGroup", task_group),
    ("JoinSet", join_set),
    ("TaskTracker", task_tracker),
    ("spawn+handles", spawn_handles),
];

fn bench(c: &mut Criterion) {
    for flavor in Flavor::ALL {
        let rt = flavor.runtime();
        for n in [10_000usize, 100_000] {
            let mut g = c.benchmark_group(format!("spawn_join/{}/{n}", flavor.name()));
            // One iteration is already 10^4..10^5 tasks: few, flat samples
            // keep the whole suite in minutes.
            g.sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(if n > 10_000 { 4 } else { 2 }));
            // Interleaved in one run, so the ratios see the same noise.
            for (name, f) in VARIANTS {
                g.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter_custom(|iters| {
                        let total: Duration = (0..iters).map(|_| f(&rt, n)).sum();
                        per_item(total, n)
                    });
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);

/// `SPAWN_JOIN_PROFILE=<variant> [SPAWN_JOIN_N=n]` runs one variant once on a
/// current_thread runtime, without criterion, so that
/// `valgrind --tool=callgrind` sees only the library's work (issue 5 asks for
/// a profile of every missed target).
fn profile(variant: &str) {
    let n = std::env::var("SPAWN_JOIN_N").map_or(10_000, |v| v.parse().expect("SPAWN_JOIN_N"));
    let (_, f) = VARIANTS
        .into_iter()
        .find(|(name, _)| *name == variant)
        .unwrap_or_else(|| panic!("unknown variant {variant}"));
    let rt = Flavor::CurrentThread.runtime();
    // Once to warm lazily built state (slab capacity, runtime queues), once measured.
    f(&rt, n);
    let took = f(&rt, n);
    println!("{variant}: {n} tasks, {:?} per task", per_item(took, n));
}

fn main() {
    common::criterion_or_profile("SPAWN_JOIN_PROFILE", profile, benches);
}
