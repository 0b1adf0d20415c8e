//! TaskMap behaviour: one live task per key, replacement, per-key ladders,
//! closing and stuck keys.

mod common;

use std::time::Duration;

use cancel_scope::{ShutdownPolicy, TaskMap, TaskOutcome};
use common::alive_tasks;
use tokio::sync::oneshot;

/// A ladder on a 100 ms grace, its re-deliveries 1 ms doubling (they fit in
/// it, unlike the default 1 s).
fn short() -> ShutdownPolicy {
    ShutdownPolicy {
        grace: Duration::from_millis(100),
        abort_grace: Duration::from_millis(50),
        backoff: cancel_scope::Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(50),
            multiplier: 2,
        },
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_one_key_leaves_the_others() {
    let map = TaskMap::new();
    for k in 0..10u32 {
        map.spawn(k, std::future::pending::<()>());
    }
    tokio::task::yield_now().await;
    assert_eq!(map.cancel(&3).await, Some(TaskOutcome::Cancelled));
    assert_eq!(map.len(), 9);
    assert!(!map.contains_key(&3) && map.contains_key(&4));
    assert_eq!(map.cancel(&3).await, None);
    assert_eq!(map.stats().redeliveries, 0);
}

#[tokio::test(start_paused = true)]
async fn replacing_a_key_cancels_the_old_task_and_keeps_the_new() {
    let map = TaskMap::new();
    let old = map.spawn("s", std::future::pending::<()>());
    let new = map.spawn("s", async { 5 });
    assert_eq!(map.len(), 2, "the old task is still winding down");
    assert!(matches!(
        old.await,
        Err(cancel_scope::TaskError::Cancelled(_))
    ));
    assert_eq!(new.await.unwrap(), 5);
    assert_eq!(map.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_old_task_ending_late_never_removes_the_new_entry() {
    let map = TaskMap::with_policy(ShutdownPolicy {
        grace: Duration::from_secs(60),
        ..Default::default()
    });
    // The old task ignores its scope and ends only when told to.
    let (end_old, old_rx) = oneshot::channel::<()>();
    let old = map.spawn_with_scope("k", |_scope| async move {
        let _ = old_rx.await;
    });
    tokio::task::yield_now().await;
    let _new = map.spawn("k", std::future::pending::<()>());
    tokio::task::yield_now().await;
    assert_eq!(map.len(), 2);
    end_old.send(()).unwrap();
    old.await.unwrap();
    assert_eq!(map.len(), 1);
    assert!(
        map.contains_key(&"k"),
        "the new task is still under the key"
    );
    assert!(!map.is_closing(&"k"));
}

#[tokio::test(start_paused = true)]
async fn closing_is_marked_before_delivery_and_cleared_by_the_end() {
    let map = TaskMap::with_policy(short());
    let (tx, rx) = oneshot::channel::<()>();
    let mut tx = Some(tx);
    map.build_task(1)
        .on_escalate(move || drop(tx.take()))
        .spawn_with_scope(|scope| async move {
            // Observes its scope only to prove it was cancelled first.
            let _ = rx.await;
            assert!(scope.is_cancelled());
        });
    tokio::task::yield_now().await;
    let closing = map.begin_cancel(&1);
    assert!(closing && map.is_closing(&1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!map.contains_key(&1) && !map.is_closing(&1));
    assert_eq!(map.stats().escalations, 1);
    assert_eq!(map.stats().panicked, 0, "the task saw its scope cancelled");
    assert!(!map.begin_cancel(&1));
}

#[test]
fn a_blocked_task_is_stuck_then_prunes_itself() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let map = TaskMap::with_policy(short());
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        map.spawn_with_scope("blocker", move |_scope| async move {
            let _ = started_tx.send(());
            // Blocks its worker thread: no abort can reach it.
            blocked.recv().unwrap();
        });
        started.await.unwrap();
        assert_eq!(map.cancel(&"blocker").await, Some(TaskOutcome::Stuck));
        assert_eq!(map.stuck_keys(), vec!["blocker"]);
        assert_eq!(map.stats().stuck, 1);
        assert_eq!(map.len(), 1, "a stuck task is still counted");
        release.send(()).unwrap();
        while !map.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(map.stuck_keys().is_empty());
        assert_eq!(map.stats().stuck, 0);
    });
}

#[tokio::test(start_paused = true)]
async fn shutdown_report_partitions_every_task() {
    let map = TaskMap::with_policy(short());
    map.spawn(0, async {});
    map.spawn(1, std::future::pending::<()>());
    map.spawn(2, async { panic!("session 2 failed") });
    map.spawn_with_scope(3, |_s| std::future::pending::<()>()); // ignores: aborted at grace
    tokio::task::yield_now().await;
    // A panicking session does not cancel the others in a map.
    assert!(!map.scope().is_cancelled());
    assert_eq!(map.len(), 2);
    let report = map.shutdown().await;
    assert_eq!(
        (
            report.completed,
            report.cancelled,
            report.aborted,
            report.panicked
        ),
        (0, 1, 1, 0),
        "{report}"
    );
    assert!(report.is_clean());
    let stats = map.stats();
    assert_eq!(
        (
            stats.completed,
            stats.cancelled,
            stats.aborted,
            stats.panicked
        ),
        (1, 1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_future_dropped_midway_still_finishes_the_teardown() {
    let base = alive_tasks();
    let map = TaskMap::with_policy(short());
    map.spawn_with_scope(9, |_s| std::future::pending::<()>());
    tokio::task::yield_now().await;
    // Poll `cancel` once, then drop it.
    let _ = tokio::time::timeout(Duration::from_millis(1), map.cancel(&9)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(map.is_empty(), "the ladder ran on without the caller");
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_map_tears_down_in_the_background() {
    let base = alive_tasks();
    let map = TaskMap::with_policy(short());
    let h = map.spawn_with_scope("x", |_s| std::future::pending::<()>());
    map.spawn("y", std::future::pending::<()>());
    tokio::task::yield_now().await;
    drop(map);
    assert_eq!(h.await.unwrap_err(), cancel_scope::TaskError::Aborted);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(alive_tasks(), base, "nothing of the map is left running");
}

#[test]
fn begin_cancel_works_outside_a_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let map = TaskMap::with_policy(short());
    rt.block_on(async {
        map.spawn(1u64, std::future::pending::<()>());
        map.spawn_with_scope(2u64, |_s| std::future::pending::<()>());
        tokio::task::yield_now().await;
    });
    // As from a response body's Drop, on a thread with no runtime.
    assert!(map.begin_cancel(&1));
    assert!(map.begin_cancel(&2));
    assert_eq!(map.stats().closing, 2);
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    assert!(map.is_empty());
    let stats = map.stats();
    assert_eq!((stats.closing, stats.cancelled, stats.aborted), (0, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn every_cancel_path_together_delivers_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let policy = ShutdownPolicy {
        max_redeliveries: 2,
        ..short()
    };
    let parent = cancel_scope::CancelScope::new();
    let map = TaskMap::with_scope_and_policy(parent.clone(), policy);
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    map.spawn_with_scope("k", move |_s| {
        common::PollCounter::new(p, std::future::pending::<()>())
    });
    tokio::task::yield_now().await;
    // A parent scope, two per-key cancels and a shutdown, all at once.
    parent.cancel();
    tokio::task::yield_now().await;
    let (a, b, report) = tokio::join!(map.cancel(&"k"), map.cancel(&"k"), map.shutdown());
    assert_eq!(
        (a, b),
        (Some(TaskOutcome::Aborted), Some(TaskOutcome::Aborted))
    );
    assert!(report.is_clean(), "{report}");
    let library_wakeups = polls.load(Ordering::SeqCst) - 1;
    assert_eq!(
        library_wakeups,
        1 + 2,
        "one delivery, then max_redeliveries"
    );
    assert_eq!(map.stats().deliveries, 1);
}
