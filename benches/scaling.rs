//! Issue 12: how the crate scales with worker threads, side by side with
//! tokio's `JoinSet` / `tokio::spawn` and tokio-util's `TaskTracker` /
//! `CancellationToken`.
//!
//! Rows (`SCALING_ROWS`, comma-separated; default all):
//!
//! 1. `spawn`: one spawner task (an accept loop) spawns N trivial tasks, then
//!    waits for all: `TaskGroup` (`join`), `JoinSet` (drain `join_next`),
//!    `TaskTracker` (`close` + `wait`), `tokio::spawn` + awaiting the handles.
//!    ns/task.
//! 2. `many`: the same N tasks from one spawner task per worker, all into one
//!    shared group / tracker / `Mutex<JoinSet>` (per-spawner handle lists for
//!    bare `tokio::spawn`). current_thread has one worker, so one spawner
//!    task, still through the shared path.
//!    ns/task.
//! 3. `fanout`: W waiters, each in its own task, park on cancellation; one
//!    cancel; time until the last has woken and finished. Shapes: a child per
//!    waiter (`scope.child()` / `token.child_token()`) and all waiters on the
//!    root; each awaits the borrowed `cancelled()`. Set-up is not timed.
//!    ns/waiter.
//! 4. `pingpong`: two tasks bounce a number over two capacity-1 tokio mpsc
//!    channels, spawned by a `TaskGroup`, bare `tokio::spawn`, or a
//!    `JoinSet`: the per-wake tax of a tracked task. ns/round trip.
//! 5. `memory`: N tasks parked on a 128-byte future; live heap bytes (from a
//!    counting global allocator) and RSS bytes per task, one child process
//!    per sample (RSS never shrinks within a process). current_thread.
//! 6. `is_cancelled`: T OS threads (T = the largest worker count of the
//!    sweep) call `is_cancelled` on one shared scope / token, root and child.
//!    ns/call per thread (wall time of the slowest thread / calls).
//! 7. `stuck`: one task ignores cancellation for 2 s; process CPU
//!    (`CLOCK_PROCESS_CPUTIME_ID`) of `TaskGroup::shutdown` with the default
//!    ladder against the floor, `CancellationToken::cancel` once + await
//!    (approach of `stuck_cpu.rs`). Goal: ≤ 2× the floor. µs of CPU.
//!
//! Rows 1–4 run on current_thread and on multi_thread runtimes of every
//! worker count of `SCALING_WORKERS` (default `1,2,4,8,16`); rows 6 and 7 on
//! the largest one. Within a cell (scenario × workers) the contenders are
//! interleaved in this one process: each runs once to warm up, then each
//! round runs every contender once, starting one further along each round,
//! so ratios see the same noise. The table shows the median over
//! `SCALING_ROUNDS` (default 5) rounds, min–max, and the ratio of medians
//! against the anchor (`JoinSet` for spawn and memory rows, with
//! `TaskTracker` in its own column; `CancellationToken` for fan-out and
//! `is_cancelled`; bare `tokio::spawn` for ping-pong; cancel-once for stuck).
//! Every sample also goes to `target/scaling.csv` (`SCALING_CSV`), which
//! `benches/plot_scaling.py` turns into a figure.
//!
//! Timed parts run inside a spawned task (a worker), not on the `block_on`
//! thread, since that is where servers spawn and cancel.
//!
//! Other knobs: `SCALING_N` (tasks, default 200000), `SCALING_WAITERS`
//! (default `10000,200000`), `SCALING_PINGPONG` (round trips, default
//! 100000), `SCALING_CALLS` (`is_cancelled` calls per thread, default
//! 2000000), `SCALING_STUCK_MS` (default 2000; a shorter stall runs fewer
//! ladder rungs, so it is for trying the bench out only).
//!
//! `cargo bench --bench scaling`

#[allow(dead_code)] // each bench uses a subset of the helpers
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cancel_scope::{CancelScope, TaskGroup};
use common::{CancelTree, StuckProbe, process_cpu, rss_bytes, stubborn, until_first_poll};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// ===== configuration =====

const ROWS: [&str; 7] = [
    "spawn",
    "many",
    "fanout",
    "pingpong",
    "memory",
    "is_cancelled",
    "stuck",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}: {s:?} does not parse"))
        })
        .collect()
}

#[derive(Debug)]
struct Config {
    n: usize,
    waiters: Vec<usize>,
    /// current_thread first, then the multi_thread worker counts.
    workers: Vec<Workers>,
    rows: Vec<String>,
    rounds: usize,
    round_trips: usize,
    calls: u64,
    stuck_for: Duration,
    csv: PathBuf,
}

impl Config {
    fn from_env() -> Self {
        let rows: Vec<String> = env_list("SCALING_ROWS", &ROWS.join(","));
        for r in &rows {
            assert!(
                ROWS.contains(&r.as_str()),
                "SCALING_ROWS: unknown row {r:?}; rows are {ROWS:?}"
            );
        }
        let mut workers = vec![Workers::Current];
        workers.extend(
            env_list::<usize>("SCALING_WORKERS", "1,2,4,8,16")
                .into_iter()
                .map(|w| {
                    assert!(w > 0, "SCALING_WORKERS: worker counts start at 1");
                    Workers::Multi(w)
                }),
        );
        let rounds = env_or("SCALING_ROUNDS", 5);
        assert!(rounds > 0, "SCALING_ROUNDS must be at least 1");
        Config {
            n: env_or("SCALING_N", 200_000),
            waiters: env_list("SCALING_WAITERS", "10000,200000"),
            workers,
            rows,
            rounds,
            round_trips: env_or("SCALING_PINGPONG", 100_000),
            calls: env_or("SCALING_CALLS", 2_000_000),
            stuck_for: Duration::from_millis(env_or("SCALING_STUCK_MS", 2_000)),
            csv: std::env::var_os("SCALING_CSV").map_or_else(
                || {
                    // `cargo bench` runs in the package root.
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/scaling.csv")
                },
                PathBuf::from,
            ),
        }
    }

    fn wants(&self, row: &str) -> bool {
        self.rows.iter().any(|r| r == row)
    }

    /// The largest multi_thread runtime of the sweep (rows 6 and 7).
    fn widest(&self) -> Workers {
        self.workers
            .iter()
            .copied()
            .max_by_key(|w| w.threads())
            .expect("current_thread is always there")
    }
}

#[derive(Debug, Clone, Copy)]
enum Workers {
    Current,
    Multi(usize),
}

impl Workers {
    fn label(self) -> String {
        match self {
            Workers::Current => "current_thread".to_owned(),
            Workers::Multi(n) => n.to_string(),
        }
    }

    /// Threads that run tasks: one for current_thread.
    fn threads(self) -> usize {
        match self {
            Workers::Current => 1,
            Workers::Multi(n) => n,
        }
    }

    fn runtime(self) -> Runtime {
        let mut b = match self {
            Workers::Current => Builder::new_current_thread(),
            Workers::Multi(n) => {
                let mut b = Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        b.enable_all().build().expect("tokio runtime")
    }
}

/// Runs `fut` as a spawned task (on a worker for multi_thread) and returns
/// what it measured.
fn on_worker<F>(rt: &Runtime, fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(rt.spawn(fut)).expect("bench task")
}

fn per_item_ns(took: Duration, n: usize) -> f64 {
    took.as_nanos() as f64 / n as f64
}

// ===== cells and the table =====

/// One contender of a cell: its name and one measurement.
type Contender<'a> = (&'static str, Box<dyn Fn() -> f64 + 'a>);

/// One scenario at one worker count, every contender's samples.
#[derive(Debug)]
struct Cell {
    scenario: String,
    workers: String,
    unit: &'static str,
    anchor: &'static str,
    /// A second reference shown in its own column (TaskTracker).
    second: Option<&'static str>,
    samples: Vec<(&'static str, Vec<f64>)>,
}

impl Cell {
    fn median_of(&self, contender: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(name, _)| *name == contender)
            .map(|(_, xs)| median(xs))
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// Round-robin: one unrecorded run of each contender (if `warm_up`), then
/// `rounds` rounds, each running every contender once, starting one further
/// along each round so no contender always follows the same one.
fn measure(
    rounds: usize,
    warm_up: bool,
    contenders: &[Contender<'_>],
) -> Vec<(&'static str, Vec<f64>)> {
    if warm_up {
        for (_, f) in contenders {
            f();
        }
    }
    let k = contenders.len();
    let mut out: Vec<(&'static str, Vec<f64>)> = contenders
        .iter()
        .map(|(name, _)| (*name, Vec::with_capacity(rounds)))
        .collect();
    for r in 0..rounds {
        for j in 0..k {
            let i = (r + j) % k;
            out[i].1.push((contenders[i].1)());
        }
    }
    out
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn table(cells: &[Cell]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | workers | contender | median | spread (min–max) | unit | ratio vs anchor | vs TaskTracker |\n",
    );
    s.push_str("| --- | --- | --- | ---: | ---: | --- | ---: | ---: |\n");
    for cell in cells {
        let anchor = cell.median_of(cell.anchor).expect("anchor measured");
        let second = cell.second.and_then(|c| cell.median_of(c));
        for (name, xs) in &cell.samples {
            let m = median(xs);
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let vs_second = second.map_or(String::new(), |t| format!("{:.2}×", m / t));
            let _ = writeln!(
                s,
                "| {} | {} | {}{} | {} | {}–{} | {} | {:.2}× | {} |",
                cell.scenario,
                cell.workers,
                name,
                if *name == cell.anchor {
                    " (anchor)"
                } else {
                    ""
                },
                fmt_num(m),
                fmt_num(lo),
                fmt_num(hi),
                cell.unit,
                m / anchor,
                vs_second,
            );
        }
    }
    s
}

fn write_csv(path: &PathBuf, cells: &[Cell]) -> std::io::Result<()> {
    let mut s = String::from("scenario,workers,contender,round,value,unit\n");
    for cell in cells {
        for (name, xs) in &cell.samples {
            for (round, x) in xs.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{}",
                    cell.scenario, cell.workers, name, round, x, cell.unit
                );
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, s)
}

// ===== rows 1 and 2: spawn + join =====

/// A trivial task: the cost measured is the library's, not the work's.
async fn trivial(i: u64) -> u64 {
    black_box(i)
}

/// `n` task numbers split into `parts` contiguous ranges.
fn split(n: usize, parts: usize) -> impl Iterator<Item = std::ops::Range<u64>> {
    let (n, parts) = (n as u64, parts as u64);
    (0..parts).map(move |p| p * n / parts..(p + 1) * n / parts)
}

/// Who spawns: the timed task itself (an accept loop), or `k` spawner tasks
/// sharing one group / tracker / `Mutex<JoinSet>`.
#[derive(Debug, Clone, Copy)]
enum Spawners {
    One,
    Shared(usize),
}

async fn spawn_group(n: usize, spawners: Spawners) -> Duration {
    let start = Instant::now();
    let group = TaskGroup::new();
    match spawners {
        Spawners::One => {
            for i in 0..n as u64 {
                // The handle is dropped: the group tracks the task, as `JoinSet` does.
                drop(group.spawn(trivial(i)));
            }
        }
        Spawners::Shared(k) => {
            let spawning: Vec<_> = split(n, k)
                .map(|range| {
                    let group = group.clone();
                    tokio::spawn(async move {
                        for i in range {
                            drop(group.spawn(trivial(i)));
                        }
                    })
                })
                .collect();
            for s in spawning {
                s.await.expect("spawner");
            }
        }
    }
    group.join().await.expect("no panic");
    start.elapsed()
}

async fn spawn_join_set(n: usize, spawners: Spawners) -> Duration {
    let start = Instant::now();
    let mut set = JoinSet::new();
    match spawners {
        Spawners::One => {
            for i in 0..n as u64 {
                set.spawn(trivial(i));
            }
        }
        Spawners::Shared(k) => {
            // What users do to spawn into one JoinSet from many tasks; the
            // owner drains it once the spawners are done.
            let shared = Arc::new(Mutex::new(set));
            let spawning: Vec<_> = split(n, k)
                .map(|range| {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        for i in range {
                            shared.lock().expect("join set lock").spawn(trivial(i));
                        }
                    })
                })
                .collect();
            for s in spawning {
                s.await.expect("spawner");
            }
            set = std::mem::take(&mut *shared.lock().expect("join set lock"));
        }
    }
    while let Some(r) = set.join_next().await {
        black_box(r.expect("no panic"));
    }
    start.elapsed()
}

async fn spawn_tracker(n: usize, spawners: Spawners) -> Duration {
    let start = Instant::now();
    let tracker = TaskTracker::new();
    match spawners {
        Spawners::One => {
            for i in 0..n as u64 {
                drop(tracker.spawn(trivial(i)));
            }
        }
        Spawners::Shared(k) => {
            let spawning: Vec<_> = split(n, k)
                .map(|range| {
                    let tracker = tracker.clone();
                    tokio::spawn(async move {
                        for i in range {
                            drop(tracker.spawn(trivial(i)));
                        }
                    })
                })
                .collect();
            for s in spawning {
                s.await.expect("spawner");
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    start.elapsed()
}

async fn spawn_handles(n: usize, spawners: Spawners) -> Duration {
    async fn spawn_and_await(range: std::ops::Range<u64>) {
        let handles: Vec<_> = range.map(|i| tokio::spawn(trivial(i))).collect();
        for h in handles {
            black_box(h.await.expect("no panic"));
        }
    }
    let start = Instant::now();
    match spawners {
        Spawners::One => spawn_and_await(0..n as u64).await,
        // Each spawner awaits its own handles: nothing is shared.
        Spawners::Shared(k) => {
            let spawning: Vec<_> = split(n, k)
                .map(|range| tokio::spawn(spawn_and_await(range)))
                .collect();
            for s in spawning {
                s.await.expect("spawner");
            }
        }
    }
    start.elapsed()
}

fn spawn_cell(cfg: &Config, w: Workers, many: bool) -> Cell {
    let rt = w.runtime();
    let n = cfg.n;
    // One spawner per worker; current_thread's one worker gets one spawner
    // task, still through the shared path.
    let spawners = if many {
        Spawners::Shared(w.threads())
    } else {
        Spawners::One
    };
    type SpawnFn = fn(usize, Spawners) -> Pin<Box<dyn Future<Output = Duration> + Send>>;
    let variants: [(&'static str, SpawnFn); 4] = [
        ("TaskGroup", |n, s| Box::pin(spawn_group(n, s))),
        ("JoinSet", |n, s| Box::pin(spawn_join_set(n, s))),
        ("TaskTracker", |n, s| Box::pin(spawn_tracker(n, s))),
        ("tokio::spawn+handles", |n, s| Box::pin(spawn_handles(n, s))),
    ];
    let contenders: Vec<Contender<'_>> = variants
        .into_iter()
        .map(|(name, f)| -> Contender<'_> {
            let rt = &rt;
            (
                name,
                Box::new(move || per_item_ns(on_worker(rt, f(n, spawners)), n)),
            )
        })
        .collect();
    Cell {
        scenario: if many { "spawn_many" } else { "spawn_one" }.to_owned(),
        workers: w.label(),
        unit: "ns/task",
        anchor: "JoinSet",
        second: Some("TaskTracker"),
        samples: measure(cfg.rounds, true, &contenders),
    }
}

// ===== row 3: cancel fan-out =====

/// What both trees offer the fan-out: a root, children, a cancel, and a
/// borrowed future that resolves on cancellation.
trait Waitable: CancelTree + Clone + Send + Sync + 'static {
    fn wait(&self) -> impl Future<Output = ()> + Send + '_;
}

impl Waitable for CancelScope {
    fn wait(&self) -> impl Future<Output = ()> + Send + '_ {
        self.cancelled()
    }
}

impl Waitable for CancellationToken {
    fn wait(&self) -> impl Future<Output = ()> + Send + '_ {
        self.cancelled()
    }
}

/// Parks `waiters` tasks on (children of) a root, cancels it, and times until
/// the last task has seen it and finished.
async fn fanout<C: Waitable>(waiters: usize, child_per_waiter: bool) -> Duration {
    let root = C::root();
    let parked = Arc::new(AtomicUsize::new(0));
    let remaining = Arc::new(AtomicUsize::new(waiters));
    let done = Arc::new(Notify::new());
    for _ in 0..waiters {
        let token = if child_per_waiter {
            root.child()
        } else {
            root.clone()
        };
        let (parked, remaining, done) = (parked.clone(), remaining.clone(), done.clone());
        tokio::spawn(async move {
            {
                let mut wait = pin!(token.wait());
                // Poll once by hand so the waiter is registered before the
                // clock starts: the timed part is delivery only.
                std::future::poll_fn(|cx| {
                    if wait.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    parked.fetch_add(1, Ordering::Release);
                    Poll::Pending
                })
                .await;
            }
            drop(token);
            if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                done.notify_one();
            }
        });
    }
    while parked.load(Ordering::Acquire) < waiters {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    root.cancel();
    done.notified().await;
    start.elapsed()
}

fn fanout_cell(cfg: &Config, w: Workers, waiters: usize, child_per_waiter: bool) -> Cell {
    let rt = &w.runtime();
    let contenders: Vec<Contender<'_>> = vec![
        (
            "CancelScope",
            Box::new(move || {
                let took = on_worker(rt, fanout::<CancelScope>(waiters, child_per_waiter));
                per_item_ns(took, waiters)
            }),
        ),
        (
            "CancellationToken",
            Box::new(move || {
                let took = on_worker(rt, fanout::<CancellationToken>(waiters, child_per_waiter));
                per_item_ns(took, waiters)
            }),
        ),
    ];
    let shape = if child_per_waiter { "child" } else { "shared" };
    Cell {
        scenario: format!("fanout_{shape}/{waiters}"),
        workers: w.label(),
        unit: "ns/waiter",
        anchor: "CancellationToken",
        second: None,
        samples: measure(cfg.rounds, true, &contenders),
    }
}

// ===== row 4: ping-pong =====

/// Sends `round_trips` numbers and waits for each to come back; times the loop.
async fn ping(round_trips: usize, tx: mpsc::Sender<u64>, mut rx: mpsc::Receiver<u64>) -> Duration {
    let start = Instant::now();
    for i in 0..round_trips as u64 {
        tx.send(i).await.expect("pong alive");
        black_box(rx.recv().await.expect("pong alive"));
    }
    start.elapsed()
}

/// Echoes until `ping` hangs up.
async fn pong(mut rx: mpsc::Receiver<u64>, tx: mpsc::Sender<u64>) -> Duration {
    while let Some(x) = rx.recv().await {
        if tx.send(x).await.is_err() {
            break;
        }
    }
    Duration::ZERO
}

type PingPong = (
    Pin<Box<dyn Future<Output = Duration> + Send>>,
    Pin<Box<dyn Future<Output = Duration> + Send>>,
);

fn ping_pong(round_trips: usize) -> PingPong {
    let (tx1, rx1) = mpsc::channel(1);
    let (tx2, rx2) = mpsc::channel(1);
    (
        Box::pin(ping(round_trips, tx1, rx2)),
        Box::pin(pong(rx1, tx2)),
    )
}

async fn pingpong_group(round_trips: usize) -> Duration {
    let (a, b) = ping_pong(round_trips);
    let group = TaskGroup::new();
    let took = group.spawn(a);
    drop(group.spawn(b));
    let took = took.await.expect("no panic");
    group.join().await.expect("no panic");
    took
}

async fn pingpong_spawn(round_trips: usize) -> Duration {
    let (a, b) = ping_pong(round_trips);
    let (a, b) = (tokio::spawn(a), tokio::spawn(b));
    let took = a.await.expect("no panic");
    b.await.expect("no panic");
    took
}

async fn pingpong_join_set(round_trips: usize) -> Duration {
    let (a, b) = ping_pong(round_trips);
    let mut set = JoinSet::new();
    set.spawn(a);
    set.spawn(b);
    let mut took = Duration::ZERO;
    while let Some(r) = set.join_next().await {
        took = took.max(r.expect("no panic"));
    }
    took
}

fn pingpong_cell(cfg: &Config, w: Workers) -> Cell {
    let rt = &w.runtime();
    let rt_n = cfg.round_trips;
    type PingFn = fn(usize) -> Pin<Box<dyn Future<Output = Duration> + Send>>;
    let variants: [(&'static str, PingFn); 3] = [
        ("TaskGroup", |n| Box::pin(pingpong_group(n))),
        ("tokio::spawn", |n| Box::pin(pingpong_spawn(n))),
        ("JoinSet", |n| Box::pin(pingpong_join_set(n))),
    ];
    let contenders: Vec<Contender<'_>> = variants
        .into_iter()
        .map(|(name, f)| -> Contender<'_> {
            (
                name,
                Box::new(move || per_item_ns(on_worker(rt, f(rt_n)), rt_n)),
            )
        })
        .collect();
    Cell {
        scenario: "pingpong".to_owned(),
        workers: w.label(),
        unit: "ns/round trip",
        anchor: "tokio::spawn",
        second: None,
        samples: measure(cfg.rounds, true, &contenders),
    }
}

// ===== row 5: bytes per pending task =====

/// Counts live heap bytes once `COUNTING` is set (only in the memory child
/// processes), so the timed rows pay one relaxed load per allocation, not a
/// contended read-modify-write.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: defers to `System` and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static POLLED: AtomicUsize = AtomicUsize::new(0);

/// A 128-byte future that never completes (it is only ever dropped).
struct Parked {
    _state: [u64; 16],
}

impl Future for Parked {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        POLLED.fetch_add(1, Ordering::Relaxed);
        Poll::Pending
    }
}

fn parked() -> Parked {
    Parked { _state: [7; 16] }
}

/// Lets every spawned task reach its first poll (where wakers get stored).
async fn until_polled(n: usize) {
    while POLLED.load(Ordering::Relaxed) < n {
        tokio::task::yield_now().await;
    }
}

const MEMORY_WARM_UP: usize = 1_000;

/// Spawns `n` parked tasks with `spawn` after a warm-up, and returns (heap
/// delta, RSS delta) per task. The tracker stays alive.
async fn pending_per_task(n: usize, mut spawn: impl FnMut()) -> (f64, f64) {
    // Lazily built runtime and library state is not per-task cost.
    for _ in 0..MEMORY_WARM_UP {
        spawn();
    }
    until_polled(MEMORY_WARM_UP).await;
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    for _ in 0..n {
        spawn();
    }
    until_polled(MEMORY_WARM_UP + n).await;
    let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    (
        (heap1 - heap0) as f64 / n as f64,
        (rss1 as f64 - rss0 as f64) / n as f64,
    )
}

const MEMORY_CONTENDERS: [&str; 4] = ["TaskGroup", "JoinSet", "TaskTracker", "tokio::spawn"];

/// Body of a memory child process: prints "heap_per_task rss_per_task".
fn memory_child(name: &str, n: usize) {
    COUNTING.store(true, Ordering::Relaxed);
    let rt = Workers::Current.runtime();
    let (heap, rss) = rt.block_on(async {
        match name {
            "TaskGroup" => {
                let g = TaskGroup::new();
                pending_per_task(n, || drop(g.spawn(parked()))).await
            }
            "JoinSet" => {
                let mut set = JoinSet::new();
                pending_per_task(n, || drop(set.spawn(parked()))).await
            }
            "TaskTracker" => {
                let t = TaskTracker::new();
                pending_per_task(n, || drop(t.spawn(parked()))).await
            }
            "tokio::spawn" => pending_per_task(n, || drop(tokio::spawn(parked()))).await,
            other => panic!("unknown memory contender {other}"),
        }
    });
    println!("{heap} {rss}");
    // The parked tasks are never woken: skip the runtime's teardown.
    std::mem::forget(rt);
}

fn memory_sample(name: &str, n: usize) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["--memory-child", name, &n.to_string()])
        .output()
        .expect("run memory child");
    assert!(out.status.success(), "{name}: {out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    (v[0], v[1])
}

fn memory_cells(cfg: &Config) -> [Cell; 2] {
    // One child per sample; its RSS figure is kept for the second cell.
    let rss: Vec<Mutex<Vec<f64>>> = MEMORY_CONTENDERS
        .iter()
        .map(|_| Mutex::new(Vec::new()))
        .collect();
    let contenders: Vec<Contender<'_>> = MEMORY_CONTENDERS
        .iter()
        .zip(&rss)
        .map(|(&name, rss)| -> Contender<'_> {
            (
                name,
                Box::new(move || {
                    let (heap, r) = memory_sample(name, cfg.n);
                    rss.lock().expect("rss samples").push(r);
                    heap
                }),
            )
        })
        .collect();
    let heap = measure(cfg.rounds, false, &contenders);
    drop(contenders);
    let rss = MEMORY_CONTENDERS
        .iter()
        .zip(rss)
        .map(|(name, r)| (*name, r.into_inner().expect("rss samples")))
        .collect();
    let cell = |scenario: &str, unit, samples| Cell {
        scenario: scenario.to_owned(),
        workers: Workers::Current.label(),
        unit,
        anchor: "JoinSet",
        second: Some("TaskTracker"),
        samples,
    };
    [
        cell("pending_heap", "B/task", heap),
        cell("pending_rss", "B/task", rss),
    ]
}

// ===== row 6: is_cancelled from every thread =====

/// `calls` calls on each of `threads` threads at once, on one shared object;
/// ns per call per thread, from the slowest thread's wall time.
fn hammer<T: Sync>(obj: &T, threads: usize, calls: u64, f: fn(&T) -> bool) -> f64 {
    let barrier = std::sync::Barrier::new(threads);
    let slowest = std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..calls {
                black_box(f(black_box(obj)));
            }
            start.elapsed()
        };
        let others: Vec<_> = (1..threads).map(|_| s.spawn(run)).collect();
        let mine = run();
        others
            .into_iter()
            .map(|h| h.join().expect("hammer thread"))
            .fold(mine, Duration::max)
    });
    slowest.as_nanos() as f64 / calls as f64
}

fn is_cancelled_cells(cfg: &Config) -> [Cell; 2] {
    let threads = cfg.widest().threads();
    let (scope, token) = (CancelScope::new(), CancellationToken::new());
    // The common case: a per-task child, checked in a loop.
    let (scope_child, token_child) = (scope.child(), token.child_token());
    let cell = |scenario: &str, s: &CancelScope, t: &CancellationToken| {
        let contenders: Vec<Contender<'_>> = vec![
            (
                "CancelScope",
                Box::new(|| hammer(s, threads, cfg.calls, CancelScope::is_cancelled)),
            ),
            (
                "CancellationToken",
                Box::new(|| hammer(t, threads, cfg.calls, CancellationToken::is_cancelled)),
            ),
        ];
        Cell {
            scenario: scenario.to_owned(),
            workers: format!("{threads} threads"),
            unit: "ns/call",
            anchor: "CancellationToken",
            second: None,
            samples: measure(cfg.rounds, true, &contenders),
        }
    };
    [
        cell("is_cancelled", &scope, &token),
        cell("is_cancelled_child", &scope_child, &token_child),
    ]
}

// ===== row 7: CPU while a task ignores cancellation =====

/// Process CPU (µs) spent while `teardown` runs.
async fn cpu_us(teardown: impl Future<Output = ()>) -> f64 {
    let c0 = process_cpu();
    teardown.await;
    (process_cpu() - c0).as_nanos() as f64 / 1e3
}

async fn stuck_ladder(stuck_for: Duration) -> f64 {
    let probe = Arc::new(StuckProbe::default());
    let group = TaskGroup::new(); // default policy: grace 5 s > 2 s
    let p = probe.clone();
    drop(group.spawn_with_scope(move |_ignored| stubborn(p, stuck_for)));
    until_first_poll(&probe).await;
    cpu_us(async {
        let report = group.shutdown().await;
        assert!(report.is_clean(), "the task ends on its own: {report}");
    })
    .await
}

async fn stuck_cancel_once(stuck_for: Duration) -> f64 {
    let probe = Arc::new(StuckProbe::default());
    let token = CancellationToken::new();
    let handle = tokio::spawn(stubborn(probe.clone(), stuck_for));
    until_first_poll(&probe).await;
    cpu_us(async {
        token.cancel();
        handle.await.expect("no panic");
    })
    .await
}

fn stuck_cell(cfg: &Config) -> Cell {
    let w = cfg.widest();
    let rt = &w.runtime();
    let stuck_for = cfg.stuck_for;
    let contenders: Vec<Contender<'_>> = vec![
        (
            "TaskGroup::shutdown (default ladder)",
            Box::new(move || on_worker(rt, stuck_ladder(stuck_for))),
        ),
        (
            "cancel once + await",
            Box::new(move || on_worker(rt, stuck_cancel_once(stuck_for))),
        ),
    ];
    Cell {
        scenario: format!("stuck_cpu/{}ms", stuck_for.as_millis()),
        workers: w.label(),
        unit: "µs CPU",
        anchor: "cancel once + await",
        second: None,
        samples: measure(cfg.rounds, false, &contenders),
    }
}

// ===== main =====

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        let n = args[i + 2].parse().expect("task count");
        memory_child(&args[i + 1], n);
        return;
    }
    let cfg = Config::from_env();
    let started = Instant::now();
    let mut cells: Vec<Cell> = Vec::new();
    let mut done = |cell: Cell| {
        eprintln!(
            "scaling: {} / {} done ({:.1} s)",
            cell.scenario,
            cell.workers,
            started.elapsed().as_secs_f64()
        );
        cells.push(cell);
    };
    for &w in &cfg.workers {
        if cfg.wants("spawn") {
            done(spawn_cell(&cfg, w, false));
        }
        if cfg.wants("many") {
            done(spawn_cell(&cfg, w, true));
        }
        if cfg.wants("fanout") {
            for &waiters in &cfg.waiters {
                for child_per_waiter in [true, false] {
                    done(fanout_cell(&cfg, w, waiters, child_per_waiter));
                }
            }
        }
        if cfg.wants("pingpong") {
            done(pingpong_cell(&cfg, w));
        }
    }
    if cfg.wants("memory") {
        memory_cells(&cfg).into_iter().for_each(&mut done);
    }
    if cfg.wants("is_cancelled") {
        is_cancelled_cells(&cfg).into_iter().for_each(&mut done);
    }
    if cfg.wants("stuck") {
        done(stuck_cell(&cfg));
    }

    // Scenario-major order reads better than the sweep order it ran in.
    let order = |c: &Cell| {
        let key = c.scenario.split('/').next().unwrap_or("");
        let rank = [
            "spawn_one",
            "spawn_many",
            "fanout_child",
            "fanout_shared",
            "pingpong",
        ]
        .iter()
        .position(|s| *s == key)
        .unwrap_or(usize::MAX);
        (rank, c.scenario.clone())
    };
    cells.sort_by_key(order); // stable: worker order kept within a scenario

    println!(
        "scaling: N={} tasks, waiters {:?}, {} round trips, {} rounds per cell \
         (interleaved round-robin), {:.0} s in all",
        cfg.n,
        cfg.waiters,
        cfg.round_trips,
        cfg.rounds,
        started.elapsed().as_secs_f64()
    );
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "machine: {cpus} CPUs available; worker counts above that are oversubscribed \
         and say nothing about scaling"
    );
    println!(
        "anchors: JoinSet (spawn, memory; TaskTracker in its own column), \
         CancellationToken (fan-out, is_cancelled), tokio::spawn (ping-pong), \
         cancel once + await (stuck)"
    );
    println!();
    print!("{}", table(&cells));
    for cell in &cells {
        let ours = cell.samples.first().map(|(name, _)| *name);
        let goal = if cell.scenario.starts_with("stuck_cpu") {
            Some(("≤ 2× floor", 2.0))
        } else if cell.scenario.starts_with("is_cancelled") {
            Some(("no regression: ≤ 1.1× CancellationToken", 1.1))
        } else {
            None
        };
        if let (Some(ours), Some((what, limit))) = (ours, goal) {
            let ratio = cell.median_of(ours).expect("measured")
                / cell.median_of(cell.anchor).expect("measured");
            println!(
                "goal {} ({what}): {ratio:.2}× — {}",
                cell.scenario,
                if ratio <= limit { "met" } else { "missed" }
            );
        }
    }
    match write_csv(&cfg.csv, &cells) {
        Ok(()) => println!("raw samples: {}", cfg.csv.display()),
        Err(e) => eprintln!("scaling: could not write {}: {e}", cfg.csv.display()),
    }
}
