//! TaskGroup behaviour: prune on completion, delivery counts, the ladder.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cancel_scope::{ShutdownPolicy, TaskError, TaskGroup};
use common::{PollCounter, alive_tasks};

#[tokio::test(start_paused = true)]
async fn ten_thousand_tasks_cancel_with_zero_redeliveries() {
    let group = TaskGroup::new();
    for _ in 0..10_000 {
        group.spawn(std::future::pending::<()>());
    }
    // Let every task reach its first await.
    tokio::task::yield_now().await;
    assert_eq!(group.len(), 10_000);
    let report = group.shutdown().await;
    assert_eq!(report.cancelled, 10_000);
    assert_eq!(report.redeliveries, 0);
    assert_eq!(report.escalations, 0);
    assert!(report.is_clean());
    assert_eq!(group.len(), 0);
    let stats = group.stats();
    assert_eq!(stats.spawned, 10_000);
    assert_eq!(stats.cancelled, 10_000);
    // One wake each at most; tasks never polled yet are already scheduled.
    assert!(stats.deliveries <= 10_000, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn never_polled_tasks_are_not_woken_twice() {
    let group = TaskGroup::new();
    for _ in 0..100 {
        group.spawn(std::future::pending::<()>());
    }
    // No yield: none was polled, all are scheduled; delivery wakes none.
    let report = group.shutdown().await;
    assert_eq!(report.deliveries, 0);
    assert_eq!(report.redeliveries, 0);
    assert_eq!(report.cancelled, 100);
}

#[tokio::test(start_paused = true)]
async fn task_ignoring_cancellation_gets_bounded_wakeups_then_escalation() {
    let policy = ShutdownPolicy::default();
    let group = TaskGroup::builder().policy(policy).build();
    let polls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let p = polls.clone();
    group
        .build_task()
        .name("ignorer")
        .on_escalate(move || drop(tx.take()))
        .spawn_with_scope(move |_scope| {
            PollCounter::new(p, async move {
                let _ = rx.await;
            })
        });
    tokio::task::yield_now().await;
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    let report = group.shutdown().await;
    let wakeups = polls.load(Ordering::SeqCst) - 1;
    // The escalation hook closes the channel: that is one more (non-library) wake.
    assert!(
        wakeups <= 1 + policy.max_redeliveries as usize + 1,
        "{wakeups} wakeups: {report}"
    );
    assert_eq!(report.redeliveries, u64::from(policy.max_redeliveries));
    assert_eq!(report.escalations, 1);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.elapsed, policy.grace);
    assert_eq!(group.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_leaves_no_library_task_behind() {
    let base = alive_tasks();
    let group = TaskGroup::new();
    for i in 0..50u64 {
        group.spawn(tokio::time::sleep(Duration::from_millis(i)));
    }
    let report = group.shutdown().await;
    assert!(report.is_clean());
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(start_paused = true)]
async fn panic_surfaces_through_handle_and_join_and_cancels_group() {
    let group = TaskGroup::new();
    let sibling = group.spawn(std::future::pending::<()>());
    let bad = group.spawn(async { panic!("boom") });
    assert_eq!(bad.await.unwrap_err(), TaskError::Panicked("boom".into()));
    assert!(group.scope().is_cancelled());
    assert!(matches!(sibling.await, Err(TaskError::Cancelled(_))));
    assert_eq!(group.join().await, Err(TaskError::Panicked("boom".into())));
    assert_eq!(group.join().await, Ok(()));
    assert_eq!(group.len(), 0);
    assert_eq!(group.stats().panicked, 1);
}
