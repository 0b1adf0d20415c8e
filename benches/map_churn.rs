//! Issue 5, bench 7: per-key task churn over 100k keys, `TaskMap` against a
//! hand-rolled `HashMap<u64, JoinHandle<()>>` (abort + remove by hand) and
//! tokio-util's `JoinMap` (feature `join-map`; no `tokio_unstable` needed as
//! of tokio-util 0.7.20).
//!
//! Three phases, each timed alone (the phases before it run untimed):
//! - `spawn`: a parked task under each of 100k new keys;
//! - `replace`: a new task under each existing key (the old one cancelled),
//!   until every old task's future is gone;
//! - `cancel`: tear down each key in turn, waiting for its task to end
//!   (`TaskMap::cancel(&k).await`; `remove` + `abort` + await the handle;
//!   `JoinMap::abort` + `join_next`).
//!
//! Criterion's "time" reads as **ns per key** (see `common::per_item`).
//! current_thread runtime.
//!
//! Session leases (issue 21), `map_churn/current_thread/lease/*`, 100k keys:
//! - `spawn`: a parked task under each new key, on a map without leases
//!   and on one with an idle timeout (1 h: nothing expires);
//! - `touch`: one `touch` per key on the leased map (and, as a reference,
//!   on the map without leases, where it is a registry lookup);
//! - `expire`: a zero idle timeout expires every key; the time from the
//!   spawns' end until every task is gone, per key, against the same
//!   teardown started by hand (`begin_cancel` per key) on a map without
//!   leases.
//!
//! `cargo bench --bench map_churn`

#[allow(dead_code)] // each bench uses a subset of the helpers
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cancel_scope::TaskMap;
use common::{Flavor, per_item};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::task::JoinMap;

const KEYS: u64 = 100_000;

/// Futures of `Parked` dropped so far: how every variant knows its cancelled
/// tasks are really gone.
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// A session that waits forever; only cancellation ends it.
struct Parked;

impl Future for Parked {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

async fn until_dropped(target: usize) {
    while DROPPED.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Spawn,
    Replace,
    Cancel,
}

/// The operations every contender offers.
trait Churn {
    fn new() -> Self;
    fn spawn(&mut self, key: u64);
    async fn cancel(&mut self, key: u64);
}

impl Churn for TaskMap<u64> {
    fn new() -> Self {
        TaskMap::new()
    }
    fn spawn(&mut self, key: u64) {
        drop(TaskMap::spawn(self, key, Parked));
    }
    async fn cancel(&mut self, key: u64) {
        TaskMap::cancel(self, &key).await.expect("key present");
    }
}

impl Churn for HashMap<u64, JoinHandle<()>> {
    fn new() -> Self {
        HashMap::new()
    }
    fn spawn(&mut self, key: u64) {
        if let Some(old) = self.insert(key, tokio::spawn(Parked)) {
            old.abort();
        }
    }
    async fn cancel(&mut self, key: u64) {
        let h = self.remove(&key).expect("key present");
        h.abort();
        let _ = h.await;
    }
}

impl Churn for JoinMap<u64, ()> {
    fn new() -> Self {
        JoinMap::new()
    }
    fn spawn(&mut self, key: u64) {
        JoinMap::spawn(self, key, Parked);
    }
    async fn cancel(&mut self, key: u64) {
        assert!(self.abort(&key));
        // The aborted task is the only one that can finish: reap it.
        let (k, _) = self.join_next().await.expect("a task");
        debug_assert_eq!(k, key);
    }
}

/// One full spawn / replace / cancel round; returns the time of `phase`.
fn round<M: Churn>(rt: &Runtime, phase: Phase) -> Duration {
    rt.block_on(async {
        let base = DROPPED.load(Ordering::Relaxed);
        let mut map = M::new();
        let t = Instant::now();
        for k in 0..KEYS {
            map.spawn(k);
        }
        let spawn = t.elapsed();
        // Let every task start (so a replace cancels a polled, parked task).
        tokio::task::yield_now().await;

        let t = Instant::now();
        for k in 0..KEYS {
            map.spawn(k);
        }
        until_dropped(base + KEYS as usize).await;
        let replace = t.elapsed();
        tokio::task::yield_now().await;

        let t = Instant::now();
        for k in 0..KEYS {
            map.cancel(k).await;
        }
        let cancel = t.elapsed();
        assert_eq!(DROPPED.load(Ordering::Relaxed), base + 2 * KEYS as usize);
        drop(map);
        match phase {
            Phase::Spawn => spawn,
            Phase::Replace => replace,
            Phase::Cancel => cancel,
        }
    })
}

fn bench(c: &mut Criterion) {
    let rt = Flavor::CurrentThread.runtime();
    for (phase_name, phase) in [
        ("spawn", Phase::Spawn),
        ("replace", Phase::Replace),
        ("cancel", Phase::Cancel),
    ] {
        let mut g = c.benchmark_group(format!("map_churn/current_thread/{phase_name}"));
        // A round is 300k task operations: few, flat samples.
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_secs(1));
        type Round = fn(&Runtime, Phase) -> Duration;
        let contenders: [(&str, Round); 3] = [
            ("TaskMap", round::<TaskMap<u64>>),
            ("HashMap+JoinHandle", round::<HashMap<u64, JoinHandle<()>>>),
            ("JoinMap", round::<JoinMap<u64, ()>>),
        ];
        for (name, f) in contenders {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    let total: Duration = (0..iters).map(|_| f(&rt, phase)).sum();
                    per_item(total, KEYS as usize)
                });
            });
        }
        g.finish();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeasePhase {
    Spawn,
    Touch,
    Expire,
}

/// One lease round: 100k keys spawned on a map with (`leased`) or without
/// leases; returns the time of `phase`.
fn lease_round(rt: &Runtime, leased: bool, phase: LeasePhase) -> Duration {
    rt.block_on(async {
        let base = DROPPED.load(Ordering::Relaxed);
        let idle = match phase {
            LeasePhase::Expire => Duration::ZERO,
            _ => Duration::from_secs(3600),
        };
        let map: TaskMap<u64> = if leased {
            TaskMap::builder().idle_timeout(idle).build()
        } else {
            TaskMap::new()
        };
        let t = Instant::now();
        for k in 0..KEYS {
            drop(map.spawn(k, Parked));
        }
        let spawn = t.elapsed();
        let took = match phase {
            LeasePhase::Spawn => spawn,
            LeasePhase::Touch => {
                let t = Instant::now();
                for k in 0..KEYS {
                    assert!(map.touch(std::hint::black_box(&k)));
                }
                t.elapsed()
            }
            LeasePhase::Expire => {
                let t = Instant::now();
                if !leased {
                    for k in 0..KEYS {
                        map.begin_cancel(&k);
                    }
                }
                until_dropped(base + KEYS as usize).await;
                t.elapsed()
            }
        };
        if phase != LeasePhase::Expire {
            map.shutdown().await;
        }
        assert_eq!(DROPPED.load(Ordering::Relaxed), base + KEYS as usize);
        if leased && phase == LeasePhase::Expire {
            assert_eq!(map.stats().idle_expired, KEYS);
        }
        took
    })
}

fn bench_lease(c: &mut Criterion) {
    let rt = Flavor::CurrentThread.runtime();
    for (phase_name, phase) in [
        ("spawn", LeasePhase::Spawn),
        ("touch", LeasePhase::Touch),
        ("expire", LeasePhase::Expire),
    ] {
        let mut g = c.benchmark_group(format!("map_churn/current_thread/lease/{phase_name}"));
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_secs(1));
        for (name, leased) in [("TaskMap", false), ("TaskMap+lease", true)] {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    let total: Duration = (0..iters).map(|_| lease_round(&rt, leased, phase)).sum();
                    per_item(total, KEYS as usize)
                });
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench, bench_lease);

/// `MAP_CHURN_PROFILE=<contender>` runs one round (all three phases) without
/// criterion and prints each phase, so that `valgrind --tool=callgrind` sees
/// only the contender's work.
fn profile(name: &str) {
    let rt = Flavor::CurrentThread.runtime();
    if let Some(phase) = name.strip_prefix("lease-") {
        // `MAP_CHURN_PROFILE=lease-touch` (or `lease-expire`, `lease-spawn`):
        // the leased map's phase alone.
        let phase = match phase {
            "spawn" => LeasePhase::Spawn,
            "touch" => LeasePhase::Touch,
            "expire" => LeasePhase::Expire,
            other => panic!("unknown lease phase {other}"),
        };
        let took = lease_round(&rt, true, phase);
        println!("{name}: {:?} per key", per_item(took, KEYS as usize));
        return;
    }
    let f: fn(&Runtime, Phase) -> Duration = match name {
        "TaskMap" => round::<TaskMap<u64>>,
        "HashMap+JoinHandle" => round::<HashMap<u64, JoinHandle<()>>>,
        "JoinMap" => round::<JoinMap<u64, ()>>,
        other => panic!("unknown contender {other}"),
    };
    // The phase argument only picks what is returned; the round runs all three.
    let took = f(&rt, Phase::Cancel);
    println!(
        "{name}: cancel phase {:?} per key",
        per_item(took, KEYS as usize)
    );
}

fn main() {
    common::criterion_or_profile("MAP_CHURN_PROFILE", profile, benches);
}
