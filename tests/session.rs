//! Session safety (issue 11): per-task cancel by handle and by id, shareable
//! group and map handles, the closed state, and reports that count what
//! happened since the cancel.

mod common;

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cancel_scope::{
    CancelReason, CancelScope, ShutdownPolicy, SpawnError, TaskError, TaskGroup, TaskMap,
    TaskOutcome,
};
use common::alive_tasks;
use tokio::sync::{mpsc, oneshot};
use tokio::task::yield_now;

fn short() -> ShutdownPolicy {
    ShutdownPolicy {
        grace: Duration::from_millis(100),
        abort_grace: Duration::from_millis(50),
        ..Default::default()
    }
}

/// A task that ignores its scope and ends only when its hook closes what it
/// waits on (a blocking `pubsub.listen()`).
fn stubborn<K>(builder: cancel_scope::TaskBuilder<'_, K>) -> cancel_scope::TaskHandle<()>
where
    K: Eq + std::hash::Hash + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (tx, rx) = oneshot::channel::<()>();
    let mut tx = Some(tx);
    builder
        .on_escalate(move || drop(tx.take()))
        .spawn_with_scope(|_ignored| async move {
            let _ = rx.await;
        })
}

// ===== per-task control =====

#[tokio::test(start_paused = true)]
async fn handle_cancel_ends_only_its_own_plain_task() {
    let group = TaskGroup::new();
    let one = group.spawn(pending::<()>());
    let other = group.spawn(pending::<()>());
    yield_now().await;
    one.cancel();
    let err = one.await.unwrap_err();
    assert_eq!(
        err.cancel_reason(),
        Some(CancelReason::Requested),
        "{err:?}"
    );
    assert_eq!(err.cancel_message(), None);
    assert!(!group.scope().is_cancelled(), "the group goes on");
    assert_eq!(group.len(), 1);
    assert!(!other.is_finished());
    assert_eq!(group.stats().cancelled, 1);
    assert_eq!(group.stats().deliveries, 1, "one wake, for the one task");
}

#[tokio::test(start_paused = true)]
async fn handle_cancel_hands_a_cooperative_task_its_cancelled_scope() {
    let group = TaskGroup::new();
    let one = group.spawn_with_scope(|scope| async move {
        scope.cancelled().await;
        "cleaned up"
    });
    let other = group.spawn_with_scope(|scope| async move {
        scope.cancelled().await;
        "other"
    });
    yield_now().await;
    one.cancel();
    assert_eq!(one.await.unwrap(), "cleaned up");
    assert!(!other.is_finished());
    assert_eq!(group.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn handle_cancel_runs_the_tasks_ladder_in_the_background() {
    let group = TaskGroup::builder().policy(short()).build();
    let h = stubborn(group.build_task().name("listener"));
    let bystander = group.spawn(pending::<()>());
    yield_now().await;
    h.cancel(); // returns at once
    assert_eq!(group.stats().escalations, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.is_finished(), "escalated at grace, by its own ladder");
    assert_eq!(group.stats().escalations, 1);
    assert!(!bystander.is_finished());
    assert_eq!(group.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_an_ended_task_is_a_no_op() {
    let group = TaskGroup::new();
    let done = group.spawn(async { 42 });
    while !done.is_finished() {
        yield_now().await;
    }
    done.cancel();
    done.cancel();
    assert_eq!(group.stats().deliveries, 0);
    assert_eq!(done.await.unwrap(), 42);
    // And once the group itself is gone.
    let late = group.spawn(async {});
    drop(group);
    late.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_old_handle_never_touches_the_newer_task_under_its_key() {
    let map = TaskMap::with_policy(short());
    let old = map.spawn(1, pending::<()>());
    let new = map.spawn(1, pending::<()>());
    old.cancel();
    let new_id = new.id();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(old.is_finished());
    assert_eq!(map.task_id(&1), Some(new_id));
    assert!(!map.is_closing(&1));
    assert!(!new.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_under_the_same_key_survives_the_old_connections_teardown() {
    let sessions = TaskMap::with_policy(short());
    // The old session is slow to go: only its escalation hook ends it.
    let old = stubborn(sessions.build_task(7));
    let old_id = old.id();
    yield_now().await;

    // The client disconnects: its guard starts the teardown of its own task.
    assert!(sessions.begin_cancel_task(&7, old_id));
    assert!(sessions.is_closing(&7));

    // It reconnects at once, while the old session is still being torn down.
    let new = sessions.spawn_with_scope(7, |scope| async move {
        scope.cancelled().await;
        "new session ended"
    });
    let new_id = new.id();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.task_id(&7), Some(new_id));

    // The old connection's guard fires again (a second drop path, a retry):
    // its id is stale, nothing happens to the new session.
    assert!(!sessions.begin_cancel_task(&7, old_id));
    assert_eq!(sessions.cancel_task(&7, old_id).await, None);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(old.is_finished(), "the old session was torn down");
    assert!(!new.is_finished(), "the new session survived");
    assert!(!sessions.is_closing(&7));
    assert_eq!(sessions.keys(), vec![7]);
    assert_eq!(sessions.len(), 1);

    // Its own id does reach it.
    assert_eq!(
        sessions.cancel_task(&7, new_id).await,
        Some(TaskOutcome::Completed)
    );
    assert_eq!(new.await.unwrap(), "new session ended");
    assert!(sessions.is_empty());
    assert!(sessions.keys().is_empty());
}

#[tokio::test(start_paused = true)]
async fn unknown_keys_and_ids_are_no_ops() {
    let map: TaskMap<u32> = TaskMap::new();
    let h = map.spawn(1, pending::<()>());
    assert_eq!(map.task_id(&2), None);
    assert!(!map.begin_cancel_task(&2, h.id()));
    assert_eq!(map.cancel_task(&2, h.id()).await, None);
    let other = map.spawn(3, async {});
    // The right key with another task's id.
    assert!(!map.begin_cancel_task(&1, other.id()));
    assert!(!map.is_closing(&1));
    assert_eq!(map.stats().deliveries, 0);
    let mut keys = map.keys();
    keys.sort_unstable();
    assert_eq!(keys, vec![1, 3]);
}

// ===== shareable handles =====

#[tokio::test(start_paused = true)]
async fn clones_share_one_group_and_only_the_last_drop_cancels() {
    let group = TaskGroup::new();
    let clone = group.clone();
    let h = clone.spawn(pending::<()>());
    assert_eq!(group.len(), 1);
    drop(clone);
    yield_now().await;
    assert!(!group.scope().is_cancelled());
    assert!(!group.is_closed());
    assert!(!h.is_finished());

    let last = group.clone();
    drop(group);
    assert!(!last.scope().is_cancelled());
    let scope = last.scope().clone();
    drop(last);
    assert!(scope.is_cancelled(), "the last handle's drop cancels");
    let err = h.await.unwrap_err();
    assert!(matches!(err, TaskError::Cancelled(_)), "{err:?}");
    assert_eq!(err.cancel_reason(), Some(CancelReason::Requested));
}

#[tokio::test(start_paused = true)]
async fn an_accept_loop_spawns_connections_into_a_clone() {
    let base = alive_tasks();
    let group = TaskGroup::new();
    let (conns, mut accept) = mpsc::channel::<u32>(8);
    let spawner = group.clone();
    group.spawn(async move {
        while let Some(n) = accept.recv().await {
            spawner.spawn(async move {
                pending::<()>().await;
                n
            });
        }
    });
    for n in 0..3 {
        conns.send(n).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(group.len(), 4);
    let report = group.shutdown().await;
    assert_eq!(report.cancelled, 4);
    assert!(group.is_empty());
    yield_now().await;
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(start_paused = true)]
async fn map_clones_share_one_map() {
    let map: TaskMap<&str> = TaskMap::new();
    let clone = map.clone();
    clone.spawn("a", pending::<()>());
    assert!(map.contains_key(&"a"));
    drop(clone);
    yield_now().await;
    assert!(map.contains_key(&"a"), "dropping a clone cancels nothing");
    assert!(!map.scope().is_cancelled());
    let scope = map.scope().clone();
    drop(map);
    assert!(scope.is_cancelled());
}

// ===== the closed state =====

#[tokio::test(start_paused = true)]
async fn a_closed_group_refuses_spawns_and_keeps_its_tasks() {
    let group = TaskGroup::new();
    let running = group.spawn(async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        1
    });
    assert!(!group.is_closed());
    group.close();
    group.close(); // idempotent
    assert!(group.is_closed());
    assert_eq!(group.try_spawn(async {}).unwrap_err(), SpawnError::Closed);
    let called = Arc::new(AtomicBool::new(false));
    let c = called.clone();
    let refused = group.try_spawn_with_scope(move |_| {
        c.store(true, Ordering::SeqCst);
        async {}
    });
    assert_eq!(refused.unwrap_err(), SpawnError::Closed);
    assert!(!called.load(Ordering::SeqCst), "f is not called");
    assert_eq!(group.len(), 1);
    assert_eq!(group.stats().spawned, 1);
    assert!(!group.scope().is_cancelled(), "close does not cancel");
    assert_eq!(running.await.unwrap(), 1);
    assert!(SpawnError::Closed.to_string().contains("close"));
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "try_spawn")]
async fn spawning_into_a_closed_group_panics_naming_try_spawn() {
    let group = TaskGroup::new();
    group.close();
    group.spawn(async {});
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_so_a_late_cooperative_task_is_refused() {
    let group = TaskGroup::new();
    group.spawn(pending::<()>());
    group.shutdown().await;
    assert!(group.is_closed());
    // Before, this task ran after the ladder was over, with no teardown.
    let late = group.try_spawn_with_scope(|_ignored| pending::<()>());
    assert_eq!(late.unwrap_err(), SpawnError::Closed);
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_closed_map_refuses_spawns_and_leaves_the_key_alone() {
    let map = TaskMap::new();
    let h = map.spawn("k", pending::<()>());
    map.close();
    assert!(map.is_closed());
    assert_eq!(
        map.try_spawn("k", async {}).unwrap_err(),
        SpawnError::Closed
    );
    assert_eq!(map.task_id(&"k"), Some(h.id()), "the old task is untouched");
    assert!(!map.is_closing(&"k"));
    map.shutdown().await;
    assert!(map.is_empty());
}

// ===== reports =====

#[tokio::test(start_paused = true)]
async fn the_report_counts_tasks_that_ended_before_shutdown_was_called() {
    // As the graceful_shutdown example: a signal cancels the root scope, the
    // server drains, and only then does the group's shutdown run.
    let root = CancelScope::new();
    let group = TaskGroup::builder()
        .scope(root.clone())
        .policy(short())
        .build();
    group.spawn(pending::<()>()); // cancellable
    group.spawn_with_scope(|scope| async move {
        scope.cancelled().await;
        tokio::time::sleep(Duration::from_millis(10)).await; // cleanup
    });
    stubborn(group.build_task());
    yield_now().await;

    root.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(group.len(), 1, "two of three ended before the shutdown");

    let report = group.shutdown().await;
    assert_eq!(report.cancelled, 1, "{report}");
    assert_eq!(report.completed, 1, "{report}");
    assert_eq!(report.aborted, 1, "{report}");
    assert_eq!(report.escalations, 1, "{report}");
    assert_eq!(report.deliveries, 3, "{report}");
    assert!(report.is_clean());
}

#[test]
fn stuck_keys_print_once_escaped() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let map = TaskMap::with_policy(short());
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        map.build_task("blocker")
            .name("listener")
            .spawn_with_scope(move |_scope| async move {
                let _ = started_tx.send(());
                // Blocks its worker thread: no abort can reach it.
                blocked.recv().unwrap();
            });
        started.await.unwrap();
        let report = map.shutdown().await;
        assert_eq!(report.stuck.len(), 1);
        assert_eq!(report.stuck[0].key.as_deref(), Some("\"blocker\""));
        let line = report.stuck[0].to_string();
        assert!(line.contains(r#"key="blocker""#), "{line}");
        assert!(line.contains(r#"name="listener""#), "{line}");
        assert!(!report.to_string().contains('\\'), "{report}");
        release.send(()).unwrap();
        while !map.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}
