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

#[test]
fn runtime_shutdown_with_tasks_alive_prunes_every_entry() {
    let group = TaskGroup::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..100 {
            group.spawn(std::future::pending::<()>());
        }
        group.spawn_with_scope(|_s| std::future::pending::<()>());
        tokio::task::yield_now().await;
        assert_eq!(group.len(), 101);
    });
    drop(rt);
    assert_eq!(group.len(), 0);
    assert_eq!(group.stats().aborted, 101);
}

#[test]
fn spawning_outside_a_runtime_names_the_fix_and_tracks_nothing() {
    let group = TaskGroup::new();
    assert_eq!(
        group.try_spawn(async {}).unwrap_err(),
        cancel_scope::SpawnError::NoRuntime
    );
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(group.spawn(async {}));
    }))
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("inside a runtime"), "{message}");
    assert_eq!(group.len(), 0);
    assert_eq!(group.stats().spawned, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_handle_detaches_without_cancelling() {
    let group = TaskGroup::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    drop(group.spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(7).unwrap();
    }));
    assert_eq!(group.len(), 1);
    assert_eq!(rx.await.unwrap(), 7);
    group.join().await.unwrap();
    assert_eq!(group.stats().completed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_hook_is_caught_and_the_task_still_aborted() {
    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_millis(10),
            ..Default::default()
        })
        .build();
    let handle = group
        .build_task()
        .on_escalate(|| panic!("hook failed"))
        .spawn_with_scope(|_s| std::future::pending::<()>());
    tokio::task::yield_now().await;
    let report = group.shutdown().await;
    assert_eq!((report.escalations, report.aborted), (1, 1), "{report}");
    assert!(report.is_clean());
    assert_eq!(handle.await.unwrap_err(), TaskError::Aborted);
}

#[tokio::test(start_paused = true)]
async fn cancel_on_panic_can_be_turned_off() {
    let group = TaskGroup::builder().cancel_on_panic(false).build();
    let sibling = group.spawn(async { 1 });
    let _ = group.spawn(async { panic!("only me") }).await;
    assert!(!group.scope().is_cancelled());
    assert_eq!(sibling.await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_parent_scope_cancels_the_group_but_not_the_other_way() {
    let parent = cancel_scope::CancelScope::new();
    let group = TaskGroup::with_scope(parent.clone());
    let h = group.spawn(std::future::pending::<()>());
    tokio::task::yield_now().await;
    parent.cancel();
    assert!(matches!(h.await, Err(TaskError::Cancelled(_))));
    assert_eq!(group.stats().deliveries, 1);

    let parent = cancel_scope::CancelScope::new();
    let group = TaskGroup::with_scope(parent.clone());
    group.shutdown().await;
    drop(group);
    assert!(!parent.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_group_deadline_cancels_its_tasks() {
    let scope = cancel_scope::CancelScope::new().with_timeout(Duration::from_secs(2));
    let group = TaskGroup::with_scope(scope);
    let start = tokio::time::Instant::now();
    let h = group.spawn(std::future::pending::<()>());
    let err = h.await.unwrap_err();
    assert_eq!(
        err.cancel_reason(),
        Some(cancel_scope::CancelReason::Deadline)
    );
    assert_eq!(err.cancel_message(), None);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn tasks_spawned_after_cancel_start_cancelled() {
    let group = TaskGroup::new();
    group.cancel();
    let polled = Arc::new(AtomicUsize::new(0));
    let p = polled.clone();
    let h = group.spawn(async move {
        p.fetch_add(1, Ordering::SeqCst);
    });
    assert!(matches!(h.await, Err(TaskError::Cancelled(_))));
    assert_eq!(polled.load(Ordering::SeqCst), 0, "never polled");
}

// Spawning after `shutdown` is refused (the group is closed): see
// tests/session.rs.

#[tokio::test(start_paused = true)]
async fn dropping_the_group_cancels_without_blocking() {
    let base = alive_tasks();
    let group = TaskGroup::new();
    let h = group.spawn(std::future::pending::<()>());
    tokio::task::yield_now().await;
    drop(group);
    assert!(matches!(h.await, Err(TaskError::Cancelled(_))));
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(start_paused = true)]
async fn abort_through_the_handle_prunes_the_entry() {
    let group = TaskGroup::new();
    let h = group.spawn(std::future::pending::<()>());
    tokio::task::yield_now().await;
    h.abort();
    assert_eq!(h.await.unwrap_err(), TaskError::Aborted);
    assert_eq!(group.len(), 0);
    assert_eq!(group.stats().aborted, 1);
}

/// What the inner future sees of the library's wakes: one poll for the
/// first delivery and one per re-delivery. Escalation's wake brings a poll
/// that ends the task without polling the inner future, so it cannot show
/// here; the whole bound (`max_redeliveries + 3` wakes, every kind counted)
/// is checked with a counting waker in `registry/tests.rs`'s
/// `every_library_wake_of_a_cell_is_bounded_by_the_limit_plus_three`.
#[tokio::test(start_paused = true)]
async fn an_ignoring_task_is_polled_once_for_its_delivery_and_once_per_redelivery() {
    for max in [0u32, 1, 3, 8] {
        // Re-deliveries 100 ms apart, so all of them fit in the grace.
        let policy = ShutdownPolicy {
            max_redeliveries: max,
            backoff: cancel_scope::Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(100),
                multiplier: 1,
            },
            ..Default::default()
        };
        let group = TaskGroup::builder().policy(policy).build();
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        // Ignores its scope and never wakes itself: every poll after the
        // first is a wake by the library.
        group.spawn_with_scope(move |_s| PollCounter::new(p, std::future::pending::<()>()));
        tokio::task::yield_now().await;
        let report = group.shutdown().await;
        let wakeups = polls.load(Ordering::SeqCst) - 1;
        assert_eq!(
            wakeups,
            1 + max as usize,
            "max_redeliveries = {max}: {report}"
        );
        assert_eq!(report.redeliveries, u64::from(max));
        assert_eq!((report.escalations, report.aborted), (1, 1));
        // Bounded: the ladder took exactly grace, then abort ended the task.
        assert_eq!(report.elapsed, policy.grace);
    }
}

#[test]
fn join_next_loses_no_end_even_before_the_first_call() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let group = TaskGroup::builder().collect_outcomes(true).build();
        let mut ids = Vec::new();
        for i in 0..200u64 {
            ids.push(group.spawn(async move { i }).id());
        }
        // Let most of them finish before anyone asks.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut seen = Vec::new();
        while let Some((id, outcome)) = group.join_next().await {
            assert_eq!(outcome, cancel_scope::TaskOutcome::Completed);
            seen.push(id);
        }
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids);
    });
}

#[tokio::test]
async fn outcomes_stream_reports_each_end_once() {
    use futures::StreamExt;
    let group = TaskGroup::builder().collect_outcomes(true).build();
    group.spawn(async {});
    group.spawn(std::future::pending::<()>());
    let mut ends = group.outcomes();
    assert_eq!(
        ends.next().await.unwrap().1,
        cancel_scope::TaskOutcome::Completed
    );
    group.cancel();
    assert_eq!(
        ends.next().await.unwrap().1,
        cancel_scope::TaskOutcome::Cancelled
    );
    assert_eq!(ends.next().await, None);
}

#[test]
fn join_next_without_collect_outcomes_names_the_fix() {
    let group = TaskGroup::new();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(group.join_next());
    }))
    .unwrap_err();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap();
    assert!(message.contains("collect_outcomes(true)"), "{message}");
}

// ===== cancel messages =====

#[tokio::test(start_paused = true)]
async fn a_cancelled_task_reports_the_scope_message() {
    let group = TaskGroup::new();
    let plain = group.spawn(std::future::pending::<()>());
    let seen = group.spawn_with_scope(|scope| async move {
        scope.cancelled().await;
        scope.cancel_message()
    });
    tokio::task::yield_now().await;
    group.scope().cancel_with("x");
    let err = plain.await.unwrap_err();
    assert_eq!(err.cancel_message(), Some("x"));
    assert_eq!(
        err.cancel_reason(),
        Some(cancel_scope::CancelReason::Requested)
    );
    assert_eq!(err.to_string(), "task was cancelled: x");
    match &err {
        TaskError::Cancelled(c) => assert_eq!(c.message(), Some("x")),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert_eq!(seen.await.unwrap().as_deref(), Some("x"));
    // Spawned after the cancel: never polled, same error.
    let late = group.spawn(async {});
    assert_eq!(late.await.unwrap_err(), err);
}

#[tokio::test(start_paused = true)]
async fn cancel_with_then_shutdown_keeps_the_message() {
    let group = TaskGroup::new();
    let h = group.spawn(std::future::pending::<()>());
    group.cancel_with(String::from("deploy"));
    let report = group.shutdown().await;
    assert_eq!(report.cancelled, 1);
    assert_eq!(h.await.unwrap_err().cancel_message(), Some("deploy"));
    // A plain cancel has no message, and the error says so.
    let group = TaskGroup::new();
    let h = group.spawn(std::future::pending::<()>());
    group.cancel();
    let err = h.await.unwrap_err();
    assert_eq!(err.cancel_message(), None);
    assert_eq!(err.to_string(), "task was cancelled");
    assert_eq!(TaskError::Aborted.cancel_message(), None);
}

#[tokio::test(start_paused = true)]
async fn a_map_task_reports_the_map_scope_message() {
    let map = cancel_scope::TaskMap::new();
    let h = map.spawn("alice", std::future::pending::<()>());
    map.scope().cancel_with("map closed");
    assert_eq!(h.await.unwrap_err().cancel_message(), Some("map closed"));
}

/// A `MakeWriter` that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test(start_paused = true)]
async fn ladder_warnings_carry_the_cancel_message() {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_secs(1),
            abort_grace: Duration::from_secs(1),
            ..Default::default()
        })
        .build();
    // Ignores its scope: escalated after the grace.
    group.spawn_with_scope(|_scope| std::future::pending::<()>());
    tokio::task::yield_now().await;
    group.cancel_with("deploy 42");
    let report = group.shutdown().await;
    assert_eq!(report.escalations, 1);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let escalated = text
        .lines()
        .find(|l| l.contains("escalating"))
        .expect("an escalation warning");
    assert!(
        escalated.contains("cancel_message=\"deploy 42\""),
        "{escalated}"
    );
    // Without a message the field is absent.
    let quiet = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_secs(1),
            ..Default::default()
        })
        .build();
    quiet.spawn_with_scope(|_scope| std::future::pending::<()>());
    tokio::task::yield_now().await;
    out.0.lock().unwrap().clear();
    quiet.shutdown().await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("escalating"), "{text}");
    assert!(!text.contains("cancel_message"), "{text}");
}
