//! Every promise holds for every input the types allow (issue 18): a `u32`
//! re-delivery limit over several ladders, any `Duration`, a hook that
//! blocks, a per-task cancel after a group cancel, a group born cancelled,
//! waits on one's own group, panicking keys, idle timers, spawn locations.
//!
//! Each test failed (or hung, caught by [`watchdog`]) before its fix.

mod common;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use cancel_scope::{
    Backoff, CancelReason, CancelScope, ShutdownPolicy, TaskError, TaskGroup, TaskMap, TaskOutcome,
};

use common::{multi_thread, paused_runtime as paused, watchdog};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A policy with 1 ms re-delivery rungs (constant spacing).
fn every_ms(grace: Duration, max_redeliveries: u32) -> ShutdownPolicy {
    ShutdownPolicy {
        grace,
        max_redeliveries,
        backoff: Backoff {
            initial: ms(1),
            max: ms(1),
            multiplier: 1,
        },
        abort_grace: ms(100),
    }
}

// ===== 1: the re-delivery limit is per task, for every u32 =====

/// Above 16 bits: two ladders over one ignoring task (its handle's, then
/// the group's) re-deliver to it exactly `limit` times in all.
#[test]
fn a_limit_above_16_bits_caps_one_task_over_two_ladders() {
    const LIMIT: u32 = 70_000;
    paused().block_on(async {
        // 75,000 rungs per ladder fit under the grace: without a per-task
        // cap the two ladders would make about 150,000.
        let group = TaskGroup::builder()
            .policy(every_ms(Duration::from_secs(75), LIMIT))
            .build();
        let task = group.spawn_with_scope(|_ignored| std::future::pending::<()>());
        tokio::task::yield_now().await;
        task.cancel();
        tokio::time::sleep(ms(1)).await;
        let report = group.shutdown().await;
        assert_eq!(group.stats().redeliveries, u64::from(LIMIT), "{report}");
        assert_eq!(group.stats().escalations, 1);
        assert!(group.is_empty());
    });
}

/// The same for a key: `begin_cancel`, then the map's `shutdown`.
#[test]
fn a_limit_above_16_bits_caps_one_key_over_two_ladders() {
    const LIMIT: u32 = 66_000;
    paused().block_on(async {
        let map = TaskMap::with_policy(every_ms(Duration::from_secs(70), LIMIT));
        map.spawn_with_scope("k", |_ignored| std::future::pending::<()>());
        tokio::task::yield_now().await;
        assert!(map.begin_cancel(&"k"));
        tokio::time::sleep(ms(1)).await;
        map.shutdown().await;
        assert_eq!(map.stats().redeliveries, u64::from(LIMIT));
        assert!(map.is_empty());
    });
}

// ===== 2: a per-task cancel runs that task's ladder in any state =====

/// An ignoring task whose hook (it runs on a thread of its own) reports
/// through `ran`.
fn stubborn_with_hook(
    group: &TaskGroup,
) -> (
    cancel_scope::TaskHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (tx, ran) = tokio::sync::oneshot::channel();
    let task = group
        .build_task()
        .name("stubborn")
        .on_escalate(move || {
            let _ = tx.send(());
        })
        .spawn_with_scope(|_ignored| std::future::pending::<()>());
    (task, ran)
}

#[test]
fn a_handle_cancel_after_a_group_cancel_escalates_the_task() {
    watchdog(|| {
        paused().block_on(async {
            let group = TaskGroup::builder()
                .policy(ShutdownPolicy {
                    grace: ms(100),
                    ..Default::default()
                })
                .build();
            let (task, hook_ran) = stubborn_with_hook(&group);
            tokio::task::yield_now().await;
            group.cancel(); // delivered: woken, polled, parked again
            tokio::time::sleep(ms(1)).await;
            task.cancel();
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(group.stats().escalations, 1);
            assert!(group.is_empty());
            assert_eq!(task.await.unwrap_err(), TaskError::Aborted);
            hook_ran.await.expect("the hook ran");
        })
    });
}

#[test]
fn a_handle_cancel_after_a_parent_deadline_escalates_the_task() {
    watchdog(|| {
        paused().block_on(async {
            let parent = CancelScope::new().with_timeout(ms(10));
            let group = TaskGroup::builder()
                .scope(parent.clone())
                .policy(ShutdownPolicy {
                    grace: ms(100),
                    ..Default::default()
                })
                .build();
            let (task, hook_ran) = stubborn_with_hook(&group);
            tokio::time::sleep(ms(20)).await;
            assert_eq!(group.scope().reason(), Some(CancelReason::Deadline));
            task.cancel();
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(group.stats().escalations, 1);
            assert!(group.is_empty());
            hook_ran.await.expect("the hook ran");
        })
    });
}

// ===== 3: a group born cancelled reports its tasks =====

#[test]
fn a_report_counts_the_tasks_of_a_group_born_cancelled() {
    paused().block_on(async {
        let scope = CancelScope::new();
        scope.cancel();
        let group = TaskGroup::with_scope(scope);
        for _ in 0..5 {
            group.spawn(std::future::pending::<()>());
        }
        group.join().await.unwrap();
        assert_eq!(group.stats().cancelled, 5);
        let report = group.shutdown().await;
        assert_eq!(report.cancelled, 5, "{report}");
    });
}

// ===== 4: every Duration saturates =====

#[test]
fn a_duration_max_grace_never_panics_and_the_map_stays_consistent() {
    paused().block_on(async {
        let map = TaskMap::with_policy(ShutdownPolicy {
            grace: Duration::MAX,
            abort_grace: Duration::MAX,
            backoff: Backoff {
                initial: Duration::MAX,
                max: Duration::MAX,
                multiplier: u32::MAX,
            },
            max_redeliveries: u32::MAX,
        });
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        map.spawn_with_scope(1, |_ignored| async move {
            let _ = finished.await;
        });
        tokio::task::yield_now().await;
        // `Duration::MAX` means never: a day later the ladder still waits.
        let day = Duration::from_secs(86_400);
        assert!(tokio::time::timeout(day, map.cancel(&1)).await.is_err());
        assert!(map.contains_key(&1));
        assert_eq!(map.len(), 1);
        assert!(tokio::time::timeout(day, map.shutdown()).await.is_err());
        finish.send(()).unwrap();
        // Found before its end was polled: the ladder reports that end.
        assert_eq!(map.cancel(&1).await, Some(TaskOutcome::Completed));
        assert!(map.is_empty());
        assert_eq!(map.stats().completed, 1);
    });
}

#[test]
fn a_zero_policy_and_a_duration_max_abort_grace_are_valid_rungs() {
    paused().block_on(async {
        let group = TaskGroup::builder()
            .policy(ShutdownPolicy {
                grace: Duration::ZERO,
                abort_grace: Duration::MAX,
                backoff: Backoff {
                    initial: Duration::ZERO,
                    max: Duration::ZERO,
                    multiplier: 0,
                },
                max_redeliveries: u32::MAX,
            })
            .build();
        group.spawn_with_scope(|_ignored| std::future::pending::<()>());
        tokio::task::yield_now().await;
        let report = group.shutdown().await;
        assert_eq!((report.escalations, report.aborted), (1, 1), "{report}");
    });
}

// ===== 5: a hook that blocks holds neither the ladder nor the runtime =====

#[test]
fn a_blocking_hook_holds_neither_the_ladder_nor_the_runtime() {
    watchdog(|| {
        paused().block_on(async {
            let group = TaskGroup::builder()
                .policy(ShutdownPolicy {
                    grace: ms(100),
                    abort_grace: ms(100),
                    ..Default::default()
                })
                .build();
            let (release, released) = mpsc::channel::<()>();
            let returned = Arc::new(AtomicBool::new(false));
            let flag = returned.clone();
            group
                .build_task()
                .on_escalate(move || {
                    let _ = released.recv(); // blocks until the test says
                    flag.store(true, Ordering::SeqCst);
                })
                .spawn_with_scope(|_ignored| std::future::pending::<()>());
            // Another task of the same (current_thread) runtime.
            let ticks = Arc::new(AtomicUsize::new(0));
            let counter = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ms(10)).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
            tokio::task::yield_now().await;
            let report = group.shutdown().await;
            assert!(report.elapsed <= ms(200), "{report}");
            assert_eq!(report.escalations, 1);
            assert_eq!(report.aborted, 1, "aborted at once, not after the hook");
            assert_eq!(report.hooks_running, 1, "{report}");
            assert!(
                ticks.load(Ordering::SeqCst) >= 10,
                "the runtime kept running"
            );
            assert!(!returned.load(Ordering::SeqCst));
            release.send(()).unwrap();
            ticker.abort();
        });
    });
}

/// A task that blocks its worker inside a poll is reported stuck, with its
/// spawn site and its hook still running.
#[test]
fn a_stuck_report_names_the_spawn_site_and_a_running_hook() {
    watchdog(|| {
        multi_thread(2).block_on(async {
            let group = TaskGroup::builder()
                .policy(ShutdownPolicy {
                    grace: ms(20),
                    abort_grace: ms(20),
                    ..Default::default()
                })
                .build();
            let (release_hook, hook_released) = mpsc::channel::<()>();
            let (release_task, task_released) = mpsc::channel::<()>();
            let (entered, in_poll) = mpsc::channel::<()>();
            let builder = group.build_task().name("blocker").on_escalate(move || {
                let _ = hook_released.recv();
            });
            let line = line!() + 1;
            let _task = builder.spawn_with_scope(|_ignored| async move {
                entered.send(()).unwrap();
                let _ = task_released.recv(); // blocks its worker
            });
            tokio::task::spawn_blocking(move || in_poll.recv().unwrap())
                .await
                .unwrap();
            let report = group.shutdown().await;
            assert_eq!(report.stuck.len(), 1, "{report}");
            let stuck = &report.stuck[0];
            assert_eq!(stuck.location.file(), file!());
            assert_eq!(stuck.location.line(), line);
            assert!(stuck.hook_running);
            assert!(report.to_string().contains(file!()), "{report}");
            release_hook.send(()).unwrap();
            release_task.send(()).unwrap();
        });
    });
}

// ===== 6: waiting on one's own group =====

#[test]
fn join_from_a_task_of_the_same_group_panics_naming_the_mistake() {
    paused().block_on(async {
        let group = TaskGroup::new();
        let same = group.clone();
        let task = group.spawn(async move { same.join().await });
        let err = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("a clear panic, never a hang")
            .unwrap_err();
        let TaskError::Panicked(message) = err else {
            panic!("expected a panic, got {err:?}");
        };
        assert!(message.contains("TaskGroup::join"), "{message}");
        assert!(message.contains("same group"), "{message}");
    });
}

#[test]
fn shutdown_from_a_task_of_the_same_group_or_map_panics_naming_the_mistake() {
    paused().block_on(async {
        let group = TaskGroup::new();
        let same = group.clone();
        let task = group.spawn_with_scope(|_| async move { same.shutdown().await });
        let err = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a clear panic, never a hang")
            .unwrap_err();
        assert!(
            matches!(&err, TaskError::Panicked(m) if m.contains("TaskGroup::shutdown")),
            "{err:?}"
        );
        assert_eq!(group.stats().escalations, 0);

        let map = TaskMap::new();
        let same = map.clone();
        let task = map.spawn_with_scope(1, |_| async move { same.shutdown().await });
        let err = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a clear panic, never a hang")
            .unwrap_err();
        assert!(
            matches!(&err, TaskError::Panicked(m) if m.contains("TaskMap::shutdown")),
            "{err:?}"
        );
    });
}

/// From outside the group (another runtime task) both still work.
#[test]
fn join_and_shutdown_from_a_plain_task_still_work() {
    paused().block_on(async {
        let group = TaskGroup::new();
        group.spawn(async {});
        let same = group.clone();
        tokio::spawn(async move { same.join().await })
            .await
            .unwrap()
            .unwrap();
        let same = group.clone();
        let report = tokio::spawn(async move { same.shutdown().await })
            .await
            .unwrap();
        assert!(report.is_clean());
    });
}

// ===== 7: a panic's cancel says why =====

#[test]
fn a_panic_cancels_the_siblings_with_a_message_naming_the_task() {
    paused().block_on(async {
        let group = TaskGroup::new();
        let sibling = group.spawn(std::future::pending::<()>());
        let parser = group
            .build_task()
            .name("parser")
            .spawn(async { panic!("bad frame") });
        let id = parser.id();
        let err = sibling.await.unwrap_err();
        assert_eq!(err.cancel_reason(), Some(CancelReason::Requested));
        let expected = format!("{id} \"parser\" panicked: bad frame");
        assert_eq!(err.cancel_message(), Some(expected.as_str()));
        let unnamed = TaskGroup::new();
        let sibling = unnamed.spawn(std::future::pending::<()>());
        let id = unnamed.spawn(async { panic!("oops") }).id();
        let expected = format!("{id} panicked: oops");
        assert_eq!(
            sibling.await.unwrap_err().cancel_message(),
            Some(expected.as_str())
        );
    });
}

// ===== 8: a panicking Hash never corrupts the key index =====

/// Panics in `Hash` while its value equals `PANIC_ON`.
static PANIC_ON: AtomicU32 = AtomicU32::new(u32::MAX);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Touchy(u32);

impl Hash for Touchy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if PANIC_ON.load(Ordering::SeqCst) == self.0 {
            panic!("Touchy({}) refuses to hash", self.0);
        }
        self.0.hash(state);
    }
}

#[test]
fn a_key_whose_hash_panics_while_its_task_ends_leaves_the_index_consistent() {
    paused().block_on(async {
        let map: TaskMap<Touchy> = TaskMap::new();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let seven = map.spawn(Touchy(7), async move {
            let _ = finished.await;
        });
        let eight = map.spawn(Touchy(8), std::future::pending::<()>()).id();
        PANIC_ON.store(7, Ordering::SeqCst);
        finish.send(()).unwrap();
        // The end of task 7 removes its entry without hashing the key.
        assert!(seven.await.is_ok());
        PANIC_ON.store(u32::MAX, Ordering::SeqCst);
        assert_eq!(map.len(), 1);
        assert_eq!(map.task_id(&Touchy(7)), None);
        let nine = map.spawn(Touchy(9), std::future::pending::<()>()).id();
        assert_eq!(map.task_id(&Touchy(7)), None, "the freed slot is 9's now");
        assert_eq!(map.task_id(&Touchy(8)), Some(eight));
        assert_eq!(map.task_id(&Touchy(9)), Some(nine));
        // A panicking lookup fails that one call and changes nothing.
        PANIC_ON.store(9, Ordering::SeqCst);
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            map.contains_key(&Touchy(9))
        }));
        assert!(failed.is_err());
        PANIC_ON.store(u32::MAX, Ordering::SeqCst);
        assert_eq!(map.task_id(&Touchy(9)), Some(nine));
        let mut keys = map.keys();
        keys.sort_by_key(|k| k.0);
        assert_eq!(keys, [Touchy(8), Touchy(9)]);
    });
}

// ===== 10: an idle group keeps no timer =====

#[test]
fn an_idle_group_under_a_deadline_keeps_no_timer() {
    paused().block_on(async {
        let baseline = common::alive_tasks();
        let scope = CancelScope::new().with_timeout(Duration::from_secs(3600));
        let group = TaskGroup::with_scope(scope.clone());
        for _ in 0..10 {
            group.spawn(async {});
        }
        group.join().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(common::alive_tasks(), baseline, "no timer while idle");
        // A new task re-arms the deadline, which still cancels it.
        let late = group.spawn(std::future::pending::<()>());
        let err = late.await.unwrap_err();
        assert_eq!(err.cancel_reason(), Some(CancelReason::Deadline));
        assert_eq!(group.stats().deliveries, 1);
    });
}
