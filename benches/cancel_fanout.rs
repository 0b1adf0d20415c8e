//! Issue 5, bench 2: 10k tasks wait on cancellation; time from `cancel()`
//! until every task has observed it, `CancelScope` against tokio-util's
//! `CancellationToken`.
//!
//! Two shapes: each task waits on its own child of the root (the usual
//! per-request shape, and the reference figure of issue 5), and all tasks
//! wait on the one root. Set-up (spawning, every task parked) is not timed.
//!
//! Criterion's "time" reads as **ns per task** (see `common::per_item`).
//!
//! `cargo bench --bench cancel_fanout`

#[allow(dead_code)] // each bench uses a subset of the helpers
mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cancel_scope::CancelScope;
use common::{CancelTree, Flavor, per_item};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const N: usize = 10_000;

/// What both libraries offer for this bench: a root to cancel, and per task a
/// future that resolves on cancellation.
trait Canceller: CancelTree + Clone + Send + Sync + 'static {
    fn wait(self) -> impl Future<Output = ()> + Send + 'static;
}

impl Canceller for CancelScope {
    fn wait(self) -> impl Future<Output = ()> + Send + 'static {
        self.cancelled_owned()
    }
}

impl Canceller for CancellationToken {
    fn wait(self) -> impl Future<Output = ()> + Send + 'static {
        self.cancelled_owned()
    }
}

/// One round: park `N` tasks on (children of) a root, cancel it, and time
/// until the last task has seen it.
fn round<C: Canceller>(rt: &Runtime, per_task_child: bool) -> Duration {
    rt.block_on(async {
        let root = C::root();
        let parked = Arc::new(AtomicUsize::new(0));
        let remaining = Arc::new(AtomicUsize::new(N));
        let done = Arc::new(Notify::new());
        for _ in 0..N {
            let token = if per_task_child {
                root.child()
            } else {
                root.clone()
            };
            let (parked, remaining, done) = (parked.clone(), remaining.clone(), done.clone());
            tokio::spawn(async move {
                let mut wait = std::pin::pin!(token.wait());
                // Poll once by hand so the waiter is registered before the
                // main task goes on: the timed part is delivery only.
                std::future::poll_fn(|cx| {
                    if wait.as_mut().poll(cx).is_ready() {
                        return std::task::Poll::Ready(());
                    }
                    parked.fetch_add(1, Ordering::Release);
                    std::task::Poll::Pending
                })
                .await;
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    done.notify_one();
                }
            });
        }
        while parked.load(Ordering::Acquire) < N {
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        root.cancel();
        done.notified().await;
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    for flavor in Flavor::ALL {
        let rt = flavor.runtime();
        for (shape, per_task_child) in [("child_per_task", true), ("shared_root", false)] {
            let mut g = c.benchmark_group(format!("cancel_fanout/{}/{shape}", flavor.name()));
            g.sampling_mode(SamplingMode::Flat)
                .sample_size(20)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            g.bench_function(BenchmarkId::from_parameter("CancelScope"), |b| {
                b.iter_custom(|iters| {
                    let total: Duration = (0..iters)
                        .map(|_| round::<CancelScope>(&rt, per_task_child))
                        .sum();
                    per_item(total, N)
                });
            });
            g.bench_function(BenchmarkId::from_parameter("CancellationToken"), |b| {
                b.iter_custom(|iters| {
                    let total: Duration = (0..iters)
                        .map(|_| round::<CancellationToken>(&rt, per_task_child))
                        .sum();
                    per_item(total, N)
                });
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);

/// `CANCEL_FANOUT_PROFILE=CancelScope|CancellationToken` runs the
/// child-per-task round twice on current_thread without criterion, so that
/// `valgrind --tool=callgrind` sees only that library's work.
fn profile(name: &str) {
    let rt = Flavor::CurrentThread.runtime();
    let f: fn(&Runtime, bool) -> Duration = match name {
        "CancelScope" => round::<CancelScope>,
        "CancellationToken" => round::<CancellationToken>,
        other => panic!("unknown contender {other}"),
    };
    f(&rt, true);
    let took = f(&rt, true);
    println!("{name}: {:?} per task", per_item(took, N));
}

fn main() {
    common::criterion_or_profile("CANCEL_FANOUT_PROFILE", profile, benches);
}
