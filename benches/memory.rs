//! Issue 5, bench 6: memory.
//!
//! 1. Bytes per tracked *pending* task: RSS delta (and live heap delta, from
//!    a counting allocator) over 100k parked tasks whose future is 128 B, for
//!    `TaskGroup` (plain and with a per-task scope), `JoinSet`, `TaskTracker`
//!    (plain and with a child `CancellationToken` per task, the comparable
//!    shape), and bare `tokio::spawn`.
//! 2. RSS and live heap after 1M spawn/complete cycles against a warmed-up
//!    baseline: nothing may be retained once tasks have pruned themselves.
//!
//! RSS only grows in a process (freed memory stays in malloc's arenas), so
//! every variant runs in a fresh child process (this binary re-executed with
//! `--variant NAME`); the parent prints the table.
//!
//! `cargo bench --bench memory`

#[allow(dead_code)] // each bench uses a subset of the helpers
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use cancel_scope::TaskGroup;
use common::rss_bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// ===== live heap bytes =====

/// Counts live heap bytes, so the per-task figure does not depend on page
/// granularity or on what malloc keeps cached.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: defers to `System` and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

// ===== the tasks =====

const PENDING: usize = 100_000;
const CYCLES: usize = 1_000_000;
const BATCH: usize = 1_000;

static POLLED: AtomicUsize = AtomicUsize::new(0);

/// A 128-byte future that never completes (it is only ever dropped).
struct Parked {
    _state: [u64; 16],
}

impl Parked {
    fn new() -> Self {
        Parked { _state: [7; 16] }
    }
}

impl Future for Parked {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        POLLED.fetch_add(1, Ordering::Relaxed);
        Poll::Pending
    }
}

/// Lets every spawned task reach its first poll (where wakers get stored).
async fn until_polled(n: usize) {
    while POLLED.load(Ordering::Relaxed) < n {
        tokio::task::yield_now().await;
    }
}

/// Spawns `PENDING` parked tasks with `spawn` after `warm` warm-up ones, and
/// returns (RSS delta, heap delta) per task. The set-up object stays alive.
async fn pending_per_task(mut spawn: impl FnMut()) -> (f64, f64) {
    // Warm-up: lazily built runtime and library state is not per-task cost.
    for _ in 0..BATCH {
        spawn();
    }
    until_polled(BATCH).await;
    let (rss0, heap0) = (rss_bytes(), live());
    for _ in 0..PENDING {
        spawn();
    }
    until_polled(BATCH + PENDING).await;
    let (rss1, heap1) = (rss_bytes(), live());
    (
        (rss1 as f64 - rss0 as f64) / PENDING as f64,
        (heap1 - heap0) as f64 / PENDING as f64,
    )
}

/// Runs `CYCLES` spawn/complete cycles in batches with `batch`, after a
/// warm-up of 10 batches; returns (rss0, heap0, rss1, heap1).
async fn cycles(mut batch: impl AsyncFnMut()) -> (u64, i64, u64, i64) {
    for _ in 0..10 {
        batch().await;
    }
    let (rss0, heap0) = (rss_bytes(), live());
    for _ in 0..CYCLES / BATCH {
        batch().await;
    }
    (rss0, heap0, rss_bytes(), live())
}

async fn trivial() {
    std::hint::black_box(());
}

fn run_variant(name: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let pending = match name {
            "pending/TaskGroup" => {
                let g = TaskGroup::new();
                Some(pending_per_task(|| drop(g.spawn(Parked::new()))).await)
            }
            "pending/TaskGroup+scope" => {
                let g = TaskGroup::new();
                // The task keeps its scope, as a cooperative task does.
                let spawn = || {
                    drop(g.spawn_with_scope(|scope| async move {
                        let _keep = scope;
                        Parked::new().await
                    }))
                };
                Some(pending_per_task(spawn).await)
            }
            "pending/JoinSet" => {
                let mut set = JoinSet::new();
                Some(pending_per_task(|| drop(set.spawn(Parked::new()))).await)
            }
            "pending/TaskTracker" => {
                let t = TaskTracker::new();
                Some(pending_per_task(|| drop(t.spawn(Parked::new()))).await)
            }
            "pending/TaskTracker+child token" => {
                let t = TaskTracker::new();
                let root = CancellationToken::new();
                let spawn = || {
                    let fut = root.child_token().run_until_cancelled_owned(Parked::new());
                    drop(t.spawn(fut));
                };
                Some(pending_per_task(spawn).await)
            }
            "pending/tokio::spawn" => {
                Some(pending_per_task(|| drop(tokio::spawn(Parked::new()))).await)
            }
            _ => None,
        };
        if let Some((rss, heap)) = pending {
            return format!("{rss:.1} {heap:.1}");
        }
        let (rss0, heap0, rss1, heap1) = match name {
            "cycles/TaskGroup" => {
                let g = TaskGroup::new();
                cycles(async || {
                    for _ in 0..BATCH {
                        drop(g.spawn(trivial()));
                    }
                    g.join().await.expect("no panic");
                })
                .await
            }
            "cycles/JoinSet" => {
                let mut set = JoinSet::new();
                cycles(async || {
                    for _ in 0..BATCH {
                        set.spawn(trivial());
                    }
                    while set.join_next().await.is_some() {}
                })
                .await
            }
            "cycles/TaskTracker" => {
                let t = TaskTracker::new();
                cycles(async || {
                    for _ in 0..BATCH {
                        drop(t.spawn(trivial()));
                    }
                    t.close();
                    t.wait().await;
                    t.reopen();
                })
                .await
            }
            other => panic!("unknown variant {other}"),
        };
        format!("{rss0} {heap0} {rss1} {heap1}")
    })
}

const PENDING_VARIANTS: [&str; 6] = [
    "pending/TaskGroup",
    "pending/TaskGroup+scope",
    "pending/JoinSet",
    "pending/TaskTracker",
    "pending/TaskTracker+child token",
    "pending/tokio::spawn",
];
const CYCLE_VARIANTS: [&str; 3] = ["cycles/TaskGroup", "cycles/JoinSet", "cycles/TaskTracker"];

fn child(name: &str) -> Vec<f64> {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["--variant", name])
        .output()
        .expect("run variant");
    assert!(out.status.success(), "{name}: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        println!("{}", run_variant(&args[i + 1]));
        return;
    }
    println!("memory: {PENDING} pending tasks (128 B future), current_thread; one process per row");
    println!("| tracker | RSS B/task | heap B/task |");
    println!("| --- | ---: | ---: |");
    for name in PENDING_VARIANTS {
        let v = child(name);
        println!("| {} | {:.0} | {:.0} |", &name[8..], v[0], v[1]);
    }
    println!();
    println!("memory: {CYCLES} spawn/complete cycles in batches of {BATCH}, after a warm-up");
    println!(
        "| tracker | RSS baseline KiB | RSS after KiB | RSS change | heap baseline B | heap after B |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for name in CYCLE_VARIANTS {
        let v = child(name);
        println!(
            "| {} | {:.0} | {:.0} | {:+.2}% | {:.0} | {:.0} |",
            &name[7..],
            v[0] / 1024.0,
            v[2] / 1024.0,
            (v[2] - v[0]) / v[0] * 100.0,
            v[1],
            v[3]
        );
    }
}
