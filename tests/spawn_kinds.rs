//! Every kind of task a `JoinSet` / `TaskTracker` user spawns (blocking,
//! local, on another runtime's handle) keeps the ladder's guarantees
//! (DESIGN property 10): tracked until its code returns, delivered once,
//! escalated, reported; and the small surface around them (`try_join_next`,
//! `abort_all`, abort handles, `TaskMap::abort`).
//!
//! A blocking task on a paused current-thread runtime stops tokio's clock
//! from advancing by itself while it runs, so these tests move the clock with
//! `tokio::time::advance` and run the ladder as a task beside them.

mod common;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use cancel_scope::{
    ShutdownPolicy, SpawnError, TaskAbortHandle, TaskError, TaskGroup, TaskMap, TaskOutcome,
};

fn policy() -> ShutdownPolicy {
    ShutdownPolicy {
        grace: Duration::from_secs(2),
        abort_grace: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Lets the runtime run what is ready, without moving the clock.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Waits (on real time, a few ms at most) until `cond` holds: a blocking
/// closure runs on a pool thread.
async fn until(cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

// ===== spawn_blocking =====

#[tokio::test(start_paused = true)]
async fn a_blocking_task_is_tracked_until_its_closure_returns() {
    let group = TaskGroup::new();
    let (release, wait) = mpsc::channel::<()>();
    let task = group.spawn_blocking(move || {
        wait.recv().unwrap();
        7
    });
    assert_eq!(group.len(), 1);
    settle().await;
    assert_eq!(group.len(), 1, "still running: still tracked");
    assert!(!task.is_finished());
    release.send(()).unwrap();
    assert_eq!(task.await.unwrap(), 7);
    assert!(group.is_empty());
    let stats = group.stats();
    assert_eq!((stats.spawned, stats.completed), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_blocking_task_past_grace_is_escalated_then_reported_stuck_and_prunes_itself_later() {
    let group = TaskGroup::builder().policy(policy()).build();
    let (release, wait) = mpsc::channel::<()>();
    let started = Arc::new(AtomicBool::new(false));
    let hooked = Arc::new(AtomicUsize::new(0));
    let (s, h) = (started.clone(), hooked.clone());
    let task = group
        .build_task()
        .name("export")
        .on_escalate(move || {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .spawn_blocking(move || {
            s.store(true, Ordering::SeqCst);
            wait.recv().unwrap();
        });
    until(|| started.load(Ordering::SeqCst)).await;

    let ladder = tokio::spawn({
        let group = group.clone();
        async move { group.shutdown().await }
    });
    settle().await;
    let stats = group.stats();
    assert_eq!(stats.deliveries, 1, "delivered once");
    tokio::time::advance(Duration::from_millis(2_001)).await;
    settle().await;
    until(|| hooked.load(Ordering::SeqCst) == 1).await;
    assert_eq!(group.stats().escalations, 1);
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let report = ladder.await.unwrap();

    assert_eq!(report.stuck.len(), 1, "{report:?}");
    assert_eq!(report.stuck[0].name.as_deref(), Some("export"));
    assert_eq!(report.escalations, 1);
    assert_eq!(
        report.redeliveries, 0,
        "a blocking task is never re-delivered to"
    );
    assert_eq!(
        report.completed + report.cancelled + report.aborted,
        0,
        "never counted as ended while it runs: {report:?}"
    );
    assert_eq!(group.len(), 1);

    release.send(()).unwrap();
    task.await.unwrap();
    assert!(group.is_empty(), "pruned when the closure returned");
    let stats = group.stats();
    assert_eq!((stats.completed, stats.stuck), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_blocking_task_with_a_scope_stops_when_the_group_is_cancelled() {
    let group = TaskGroup::builder().policy(policy()).build();
    let units = Arc::new(AtomicUsize::new(0));
    let u = units.clone();
    let task = group.spawn_blocking_with_scope(move |scope| {
        while !scope.is_cancelled() {
            u.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
        }
        scope.cancel_message().map(|m| m.to_string())
    });
    until(|| units.load(Ordering::SeqCst) > 0).await;
    group.cancel_with("draining");
    assert_eq!(task.await.unwrap().as_deref(), Some("draining"));
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.completed, 1);
    assert_eq!(group.stats().deliveries, 1);
}

#[tokio::test(start_paused = true)]
async fn a_blocking_task_cancelled_before_it_starts_never_runs() {
    let group = TaskGroup::new();
    group.cancel_with("gone");
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let task = group.spawn_blocking(move || r.store(true, Ordering::SeqCst));
    let err = task.await.unwrap_err();
    assert_eq!(err.cancel_message(), Some("gone"));
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(group.stats().cancelled, 1);
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancelling_one_blocking_task_cancels_its_scope_and_runs_its_ladder() {
    let group = TaskGroup::builder().policy(policy()).build();
    let hooked = Arc::new(AtomicUsize::new(0));
    let (release, wait) = mpsc::channel::<()>();
    let h = hooked.clone();
    let saw = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (s, st) = (saw.clone(), started.clone());
    let task = group
        .build_task()
        .on_escalate(move || {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = release.send(());
        })
        .spawn_blocking_with_scope(move |scope| {
            st.store(true, Ordering::SeqCst);
            // Ignores its scope until the hook releases it.
            wait.recv().unwrap();
            s.store(scope.is_cancelled(), Ordering::SeqCst);
        });
    let other = group.spawn(std::future::pending::<()>());
    // Running: an escalation before the closure starts would skip it (it is
    // aborted before it runs), which is another test's case.
    until(|| started.load(Ordering::SeqCst)).await;
    task.cancel();
    settle().await;
    assert_eq!(group.stats().deliveries, 1);
    tokio::time::advance(Duration::from_millis(2_001)).await;
    until(|| task.is_finished()).await;
    task.await.unwrap();
    assert_eq!(
        hooked.load(Ordering::SeqCst),
        1,
        "its own ladder escalated it"
    );
    assert!(saw.load(Ordering::SeqCst), "its scope was cancelled");
    assert!(!other.is_finished(), "the group goes on");
    assert_eq!(group.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_blocking_task_gives_its_panic_and_cancels_the_group() {
    let group = TaskGroup::new();
    let task = group.spawn_blocking(|| panic!("disk on fire"));
    assert!(matches!(task.await, Err(TaskError::Panicked(m)) if m == "disk on fire"));
    assert!(group.scope().is_cancelled());
    assert_eq!(group.stats().panicked, 1);
    assert!(matches!(group.join().await, Err(TaskError::Panicked(m)) if m == "disk on fire"));
}

#[test]
fn spawn_blocking_outside_a_runtime_errs_and_tracks_nothing() {
    let group = TaskGroup::new();
    let err = group.build_task().try_spawn_blocking(|| ()).unwrap_err();
    assert_eq!(err, SpawnError::NoRuntime);
    assert!(group.is_empty());
    assert_eq!(group.stats().spawned, 0);
}

// ===== spawn_local =====

#[tokio::test(start_paused = true)]
async fn a_local_task_is_dropped_at_its_await_by_the_ladder() {
    let group = TaskGroup::builder().policy(policy()).build();
    let local = tokio::task::LocalSet::new();
    let report = local
        .run_until(async {
            let shared = Rc::new(5); // !Send
            let task = group.spawn_local(async move {
                std::future::pending::<()>().await;
                drop(shared);
            });
            assert_eq!(group.len(), 1);
            let report = group.shutdown().await;
            assert!(matches!(task.await, Err(TaskError::Cancelled(_))));
            report
        })
        .await;
    assert_eq!(report.cancelled, 1);
    assert!(report.is_clean());
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_local_task_that_ignores_its_scope_is_re_delivered_to_and_escalated() {
    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            max_redeliveries: 2,
            ..policy()
        })
        .build();
    let local = tokio::task::LocalSet::new();
    let hooked = Arc::new(AtomicUsize::new(0));
    let h = hooked.clone();
    local
        .run_until(async {
            let task = group
                .build_task()
                .on_escalate(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                })
                .spawn_local_with_scope(|_scope| async {
                    let _not_send = Rc::new(());
                    loop {
                        // Parks and ignores every wake.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                });
            let report = group.shutdown().await;
            assert!(matches!(task.await, Err(TaskError::Aborted)));
            assert_eq!(report.escalations, 1);
            assert_eq!(report.aborted, 1);
            assert!(report.redeliveries <= 2);
            assert!(report.is_clean(), "{report:?}");
        })
        .await;
    until(|| hooked.load(Ordering::SeqCst) == 1).await;
}

// ===== spawn_on =====

#[test]
fn spawn_on_works_from_a_plain_thread_and_is_tracked() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let group = TaskGroup::new();
    assert_eq!(
        group.try_spawn(async {}).unwrap_err(),
        SpawnError::NoRuntime
    );
    let task = group.spawn_on(async { 6 * 7 }, rt.handle());
    let pending = group.spawn_on(std::future::pending::<()>(), rt.handle());
    assert_eq!(group.len(), 2);
    assert_eq!(rt.block_on(task).unwrap(), 42);
    let report = rt.block_on(group.shutdown());
    assert_eq!(report.cancelled, 1);
    assert!(rt.block_on(pending).is_err());
    assert!(group.is_empty());
    assert_eq!(
        group
            .build_task()
            .try_spawn_on(async {}, rt.handle())
            .unwrap_err(),
        SpawnError::Closed
    );
}

// ===== try_join_next =====

#[tokio::test(start_paused = true)]
async fn try_join_next_takes_a_thousand_ended_tasks_in_one_loop() {
    let group = TaskGroup::builder().collect_outcomes(true).build();
    assert_eq!(group.try_join_next(), None);
    let ids: Vec<_> = (0..1000).map(|_| group.spawn(async {}).id()).collect();
    group.join().await.unwrap();
    // Inside a task whose coop budget (128) the drain would exhaust were it
    // budgeted.
    let drained = tokio::spawn({
        let group = group.clone();
        async move {
            let mut taken = Vec::new();
            while let Some((id, outcome)) = group.try_join_next() {
                assert_eq!(outcome, TaskOutcome::Completed);
                taken.push(id);
            }
            taken
        }
    })
    .await
    .unwrap();
    assert_eq!(drained, ids, "all 1,000, oldest end first");
    assert_eq!(group.try_join_next(), None);
    assert_eq!(group.join_next().await, None);
}

#[tokio::test(start_paused = true)]
async fn try_join_next_is_none_while_tasks_run_and_shares_the_queue_with_join_next() {
    let group = TaskGroup::builder().collect_outcomes(true).build();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let waiting = group.spawn(async move { rx.await.unwrap() }).id();
    settle().await;
    assert_eq!(group.try_join_next(), None);
    let quick = group.spawn(async {}).id();
    settle().await;
    assert_eq!(group.try_join_next(), Some((quick, TaskOutcome::Completed)));
    tx.send(()).unwrap();
    assert_eq!(
        group.join_next().await,
        Some((waiting, TaskOutcome::Completed))
    );
    assert_eq!(group.try_join_next(), None);
}

#[test]
#[should_panic(expected = "collect_outcomes(true)")]
fn try_join_next_without_collected_outcomes_panics_naming_the_fix() {
    let _ = TaskGroup::new().try_join_next();
}

// ===== abort_all, abort handles, TaskMap::abort =====

#[tokio::test(start_paused = true)]
async fn abort_all_aborts_every_task_at_once_without_hooks() {
    let group = TaskGroup::builder().policy(policy()).build();
    let hooked = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..5 {
        let h = hooked.clone();
        handles.push(
            group
                .build_task()
                .on_escalate(move || {
                    h.fetch_add(1, Ordering::SeqCst);
                })
                .spawn_with_scope(|_scope| std::future::pending::<()>()),
        );
    }
    settle().await;
    group.abort_all();
    group.join().await.unwrap();
    for handle in handles {
        assert!(matches!(handle.await, Err(TaskError::Aborted)));
    }
    let stats = group.stats();
    assert_eq!((stats.aborted, stats.escalations), (5, 0));
    assert_eq!(hooked.load(Ordering::SeqCst), 0);
    assert!(!group.is_closed() && !group.scope().is_cancelled());
    // The group goes on.
    assert_eq!(group.spawn(async { 1 }).await.unwrap(), 1);
}

#[test]
fn abort_all_stops_a_queued_blocking_closure_but_not_a_running_one() {
    // One blocking thread: the second closure waits in the pool's queue.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        let group = TaskGroup::new();
        let (release, wait) = mpsc::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let running = group.spawn_blocking(move || {
            s.store(true, Ordering::SeqCst);
            wait.recv().unwrap();
            "done"
        });
        until(|| started.load(Ordering::SeqCst)).await;
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let queued = group.spawn_blocking(move || r.store(true, Ordering::SeqCst));
        group.abort_all();
        settle().await;
        assert_eq!(
            group.len(),
            2,
            "blocking code cannot be aborted, nor dequeued"
        );
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), "done");
        assert!(matches!(queued.await, Err(TaskError::Aborted)));
        assert!(!ran.load(Ordering::SeqCst), "the queued closure never ran");
        assert!(group.is_empty());
        let stats = group.stats();
        assert_eq!((stats.completed, stats.aborted), (1, 1));
    });
}

#[tokio::test(start_paused = true)]
async fn an_abort_handle_is_clone_send_sync_and_aborts_or_cancels_its_task() {
    fn assert_send_sync<T: Clone + Send + Sync + 'static>() {}
    assert_send_sync::<TaskAbortHandle>();

    let group = TaskGroup::new();
    let one = group.spawn(std::future::pending::<()>());
    let abort = one.abort_handle();
    assert_eq!(abort.id(), one.id());
    assert!(!abort.is_finished());
    let clone = abort.clone();
    std::thread::spawn(move || clone.abort()).join().unwrap();
    assert!(matches!(one.await, Err(TaskError::Aborted)));
    assert!(abort.is_finished());

    let two = group.spawn(std::future::pending::<()>());
    two.abort_handle().cancel();
    assert!(matches!(two.await, Err(TaskError::Cancelled(_))));
    assert_eq!(group.stats().aborted, 1);
    assert_eq!(group.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn abort_on_drop_aborts_when_dropped_and_awaits_like_the_handle() {
    let group = TaskGroup::new();
    let answer = group.spawn(async { 42 }).abort_on_drop();
    assert_eq!(answer.await.unwrap(), 42);

    let guard = group.spawn(std::future::pending::<()>()).abort_on_drop();
    assert!(!guard.is_finished());
    assert_eq!(group.len(), 1);
    drop(guard);
    group.join().await.unwrap();
    assert_eq!(group.stats().aborted, 1);
    assert!(group.is_empty());
}

#[tokio::test(start_paused = true)]
async fn task_map_abort_aborts_the_key_and_tears_its_scope_down() {
    let map = TaskMap::new();
    let scope_seen = Arc::new(AtomicBool::new(false));
    let seen = scope_seen.clone();
    let session = map.spawn_with_scope("alice", move |scope| async move {
        let _guard = scope.clone();
        struct OnDrop(cancel_scope::CancelScope, Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.1.store(self.0.is_cancelled(), Ordering::SeqCst);
            }
        }
        let _probe = OnDrop(scope, seen);
        std::future::pending::<()>().await
    });
    let other = map.spawn("bob", std::future::pending::<()>());
    settle().await;
    assert!(map.abort(&"alice"));
    assert!(matches!(session.await, Err(TaskError::Aborted)));
    assert!(
        scope_seen.load(Ordering::SeqCst),
        "its scope was cancelled as it dropped"
    );
    assert!(!map.contains_key(&"alice"));
    assert!(!map.abort(&"carol"));
    assert!(!other.is_finished());
    assert_eq!(map.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn task_map_try_spawn_with_scope_errs_on_a_closed_map_without_calling_f() {
    let map: TaskMap<u32> = TaskMap::new();
    let old = map
        .try_spawn_with_scope(1, |s| async move { s.cancelled().await })
        .unwrap();
    map.close();
    let called = Arc::new(AtomicBool::new(false));
    let c = called.clone();
    let err = map
        .try_spawn_with_scope(1, move |_| {
            c.store(true, Ordering::SeqCst);
            async {}
        })
        .unwrap_err();
    assert_eq!(err, SpawnError::Closed);
    assert!(!called.load(Ordering::SeqCst));
    assert!(!old.is_finished(), "the task under the key is left alone");
    assert_eq!(map.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_shows_a_blocking_task_as_blocking_and_cancelled_after_a_cancel() {
    use cancel_scope::TaskState;
    let group = TaskGroup::new();
    let (release, wait) = mpsc::channel::<()>();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let blocking = group.spawn_blocking_with_scope(move |_scope| {
        s.store(true, Ordering::SeqCst);
        wait.recv().unwrap();
    });
    let plain = group.spawn(std::future::pending::<()>());
    until(|| started.load(Ordering::SeqCst)).await;
    let infos = group.snapshot();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].id, blocking.id());
    assert!(infos[0].blocking);
    assert!(!infos[1].blocking);
    assert_eq!(infos[0].location.file(), file!());
    assert_eq!(infos[0].state, TaskState::Running);
    group.cancel();
    settle().await;
    let infos = group.snapshot();
    assert_eq!(infos.len(), 1, "the plain task ended at its await");
    assert_eq!(infos[0].state, TaskState::Cancelled);
    assert!(plain.await.is_err());
    release.send(()).unwrap();
    blocking.await.unwrap();
    assert!(group.snapshot().is_empty());
}
