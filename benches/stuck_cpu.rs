//! Issue 5, bench 5: one task ignores cancellation for 2 s. How much CPU does
//! the canceller burn meanwhile, and how often is the task woken?
//!
//! - `TaskGroup::shutdown` (our ladder, default policy: 1 delivery, then up to
//!   2 re-deliveries, at 1 s and 3 s, escalation only at 5 s);
//! - the anti-pattern: cancel, then `yield_now` and re-deliver (wake the task
//!   again) until it ends;
//! - the floor: `CancellationToken::cancel` once and await the handle.
//!
//! The task is a 2 s sleep that ignores its scope/token and counts its polls;
//! it stores its waker so the busy loop can re-deliver to it. Runtime: multi
//! thread, 2 workers. Process CPU is `getrusage(RUSAGE_SELF)` user + system
//! (and `CLOCK_PROCESS_CPUTIME_ID` for ns resolution), taken around the
//! teardown only. Not a criterion bench: it prints its own table (median of
//! `REPS` runs).
//!
//! `cargo bench --bench stuck_cpu`

#[allow(dead_code)] // each bench uses a subset of the helpers
mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cancel_scope::{ShutdownPolicy, TaskGroup};
use common::{
    Flavor, StuckProbe, context_switches, median, process_cpu, rusage_cpu, stubborn,
    until_first_poll,
};
use tokio_util::sync::CancellationToken;

const STUCK_FOR: Duration = Duration::from_secs(2);
const REPS: usize = 3;

#[derive(Debug, Clone, Copy)]
struct Sample {
    cpu_rusage: Duration,
    cpu_clock: Duration,
    wall: Duration,
    /// Polls of the task after its first one: the wakeups it saw.
    task_wakeups: u64,
    /// Wakes the canceller issued (library deliveries + re-deliveries, or the
    /// busy loop's re-wakes).
    wakes_issued: u64,
    context_switches: u64,
}

/// Runs `teardown` around process gauges. It returns the wakes it issued.
async fn measure<F: Future<Output = u64>>(probe: &StuckProbe, teardown: F) -> Sample {
    let polls0 = probe.polls.load(Ordering::Relaxed);
    let (r0, c0, cs0, t0) = (
        rusage_cpu(),
        process_cpu(),
        context_switches(),
        Instant::now(),
    );
    let wakes_issued = teardown.await;
    let (r1, c1, cs1, t1) = (
        rusage_cpu(),
        process_cpu(),
        context_switches(),
        Instant::now(),
    );
    Sample {
        cpu_rusage: r1 - r0,
        cpu_clock: c1 - c0,
        wall: t1 - t0,
        task_wakeups: probe.polls.load(Ordering::Relaxed) - polls0,
        wakes_issued,
        context_switches: cs1 - cs0,
    }
}

/// `max_redeliveries: None` is the default policy (8); `Some(0)` isolates
/// the cost of the first delivery from that of the re-delivery rungs.
async fn ladder(max_redeliveries: Option<u32>) -> Sample {
    let probe = Arc::new(StuckProbe::default());
    let mut policy = ShutdownPolicy::default(); // grace 5 s > 2 s
    if let Some(n) = max_redeliveries {
        policy.max_redeliveries = n;
    }
    let group = TaskGroup::builder().policy(policy).build();
    let p = probe.clone();
    drop(group.spawn_with_scope(move |_ignored| stubborn(p, STUCK_FOR)));
    until_first_poll(&probe).await;
    measure(&probe, async {
        let report = group.shutdown().await;
        assert!(report.is_clean(), "the task ends on its own: {report}");
        report.deliveries + report.redeliveries
    })
    .await
}

async fn busy_loop() -> Sample {
    let probe = Arc::new(StuckProbe::default());
    let token = CancellationToken::new();
    let handle = tokio::spawn(stubborn(probe.clone(), STUCK_FOR));
    until_first_poll(&probe).await;
    measure(&probe, async {
        let mut wakes = 0;
        // The anti-pattern: re-deliver on every tick until the task is gone.
        while !handle.is_finished() {
            token.cancel();
            if let Some(w) = probe.waker.lock().expect("probe lock").as_ref() {
                w.wake_by_ref();
                wakes += 1;
            }
            tokio::task::yield_now().await;
        }
        wakes
    })
    .await
}

async fn cancel_once() -> Sample {
    let probe = Arc::new(StuckProbe::default());
    let token = CancellationToken::new();
    let handle = tokio::spawn(stubborn(probe.clone(), STUCK_FOR));
    until_first_poll(&probe).await;
    measure(&probe, async {
        token.cancel();
        handle.await.expect("no panic");
        0
    })
    .await
}

fn med(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut xs: Vec<f64> = samples.iter().map(f).collect();
    median(&mut xs)
}

fn main() {
    let rt = Flavor::MultiThread2.runtime();
    let mut rows: Vec<(&str, Vec<Sample>)> = vec![
        ("TaskGroup::shutdown (ladder)", Vec::new()),
        ("TaskGroup::shutdown, max_redeliveries 0", Vec::new()),
        ("yield_now re-delivery loop", Vec::new()),
        ("CancellationToken cancel once + await", Vec::new()),
    ];
    for _ in 0..REPS {
        rows[0].1.push(rt.block_on(ladder(None)));
        rows[1].1.push(rt.block_on(ladder(Some(0))));
        rows[2].1.push(rt.block_on(busy_loop()));
        rows[3].1.push(rt.block_on(cancel_once()));
    }
    println!(
        "stuck_cpu: one task ignores cancellation for {STUCK_FOR:?}; multi_thread, 2 workers; \
         median of {REPS}"
    );
    println!(
        "| canceller | CPU s (getrusage) | CPU s (clock) | cores busy | wall s | task wakeups | wakes issued | ctx switches |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, s) in &rows {
        let cpu = med(s, |x| x.cpu_rusage.as_secs_f64());
        let clock = med(s, |x| x.cpu_clock.as_secs_f64());
        let wall = med(s, |x| x.wall.as_secs_f64());
        println!(
            "| {name} | {cpu:.6} | {clock:.6} | {:.4} | {wall:.3} | {:.0} | {:.0} | {:.0} |",
            clock / wall,
            med(s, |x| x.task_wakeups as f64),
            med(s, |x| x.wakes_issued as f64),
            med(s, |x| x.context_switches as f64),
        );
    }
    let ours = med(&rows[0].1, |x| x.cpu_clock.as_secs_f64());
    let busy = med(&rows[2].1, |x| x.cpu_clock.as_secs_f64());
    let ours_ru = med(&rows[0].1, |x| x.cpu_rusage.as_secs_f64());
    let busy_ru = med(&rows[2].1, |x| x.cpu_rusage.as_secs_f64());
    let floor = med(&rows[3].1, |x| x.cpu_clock.as_secs_f64());
    println!(
        "ratio ladder / busy loop: {:.2e} (clock), {:.2e} (getrusage); target <= 1.00e-4",
        ours / busy,
        ours_ru / busy_ru
    );
    // What no canceller can beat here: one cancel and one wake at the end.
    println!(
        "ratio cancel-once floor / busy loop: {:.2e}; ladder cost per re-delivery rung: {:.1} us",
        floor / busy,
        (ours - med(&rows[1].1, |x| x.cpu_clock.as_secs_f64())) * 1e6 / 8.0
    );
    for (name, s) in &rows {
        println!("raw {name}: {s:?}");
    }
}
