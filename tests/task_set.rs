//! TaskSet behaviour: completion order, ids, what `len` counts, the
//! unconstrained `try_join_next`, `join_all`, `cancel_on_error`, abort, the
//! ladder as teardown, drop.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cancel_scope::{CancelScope, ShutdownPolicy, TaskError, TaskSet};
use common::{multi_thread, watchdog};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Sets its flag when dropped: observes a future being dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ===== joining =====

#[tokio::test(start_paused = true)]
async fn outputs_come_in_completion_order() {
    let mut set = TaskSet::new();
    for n in [3, 1, 2] {
        set.spawn(async move {
            tokio::time::sleep(secs(n)).await;
            n
        });
    }
    let mut order = Vec::new();
    while let Some(joined) = set.join_next().await {
        order.push(joined.unwrap());
    }
    assert_eq!(order, [1, 2, 3]);
    assert!(set.is_empty());
    assert!(set.join_next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn join_next_with_id_ids_match_the_abort_handles() {
    let mut set = TaskSet::new();
    let mut spawned = Vec::new();
    for n in 0..5u64 {
        let handle = set.spawn(async move {
            tokio::time::sleep(secs(5 - n)).await;
            n
        });
        spawned.push((handle.id(), n));
    }
    let failing = set.spawn(async { panic!("bad frame") }).id();
    let mut joined = Vec::new();
    let mut failed = Vec::new();
    while let Some(next) = set.join_next_with_id().await {
        match next {
            Ok(pair) => joined.push(pair),
            Err((id, error)) => failed.push((id, error)),
        }
    }
    joined.sort();
    spawned.sort();
    assert_eq!(joined, spawned);
    assert_eq!(
        failed,
        [(failing, TaskError::Panicked("bad frame".to_owned()))]
    );
}

#[tokio::test(start_paused = true)]
async fn len_counts_ended_but_unjoined_tasks() {
    let mut set = TaskSet::new();
    set.spawn(async { 1 });
    set.spawn(async { 2 });
    set.spawn(async {
        tokio::time::sleep(secs(10)).await;
        3
    });
    assert_eq!(set.len(), 3);
    tokio::time::sleep(secs(1)).await;
    // Two ended (their futures are gone), none joined.
    assert_eq!(set.stats().completed, 2);
    assert_eq!(set.stats().tracked, 1);
    assert_eq!(set.len(), 3);
    set.join_next().await.unwrap().unwrap();
    assert_eq!(set.len(), 2);
    set.join_next().await.unwrap().unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.join_next().await.unwrap().unwrap(), 3);
    assert_eq!(set.len(), 0);
    assert!(set.is_empty());
}

#[tokio::test(start_paused = true)]
async fn join_next_is_cancel_safe() {
    let mut set = TaskSet::new();
    set.spawn(async {
        tokio::time::sleep(secs(5)).await;
        "late"
    });
    for _ in 0..3 {
        let early = tokio::time::timeout(secs(1), set.join_next()).await;
        assert!(early.is_err());
    }
    assert_eq!(set.len(), 1);
    assert_eq!(set.join_next().await.unwrap().unwrap(), "late");
}

#[tokio::test(start_paused = true)]
async fn try_join_next_is_none_until_a_task_ends() {
    let mut set = TaskSet::new();
    assert!(set.try_join_next().is_none(), "empty");
    let id = set
        .spawn(async {
            tokio::time::sleep(secs(1)).await;
            7
        })
        .id();
    assert!(set.try_join_next().is_none(), "not polled yet");
    tokio::task::yield_now().await;
    assert!(set.try_join_next().is_none(), "sleeping");
    assert_eq!(set.len(), 1);
    tokio::time::sleep(secs(2)).await;
    assert_eq!(set.try_join_next_with_id(), Some(Ok((id, 7))));
    assert!(set.try_join_next().is_none());
    assert!(set.is_empty());
}

/// Without `unconstrained`, each handle's poll spends tokio's coop budget
/// (128 per task poll) and the loop would stop at the budget.
#[tokio::test(start_paused = true)]
async fn try_join_next_drains_a_thousand_ended_tasks_in_one_loop_inside_a_task() {
    let drained = tokio::spawn(async {
        let mut set = TaskSet::new();
        for i in 0..1_000u64 {
            set.spawn(async move { i });
        }
        while set.stats().completed < 1_000 {
            tokio::task::yield_now().await;
        }
        let mut sum = 0;
        let mut count = 0;
        while let Some(joined) = set.try_join_next() {
            sum += joined.unwrap();
            count += 1;
        }
        assert!(set.is_empty());
        (count, sum)
    })
    .await
    .unwrap();
    assert_eq!(drained, (1_000, (0..1_000).sum()));
}

#[tokio::test(start_paused = true)]
async fn join_all_returns_every_output_in_completion_order() {
    let mut set = TaskSet::new();
    for n in [30, 10, 20] {
        set.spawn(async move {
            tokio::time::sleep(secs(n)).await;
            n
        });
    }
    assert_eq!(set.join_all().await, [10, 20, 30]);
}

#[tokio::test(start_paused = true)]
async fn join_all_re_raises_a_panic_with_its_message() {
    let mut set = TaskSet::new();
    set.spawn(async { 1 });
    set.spawn(async {
        tokio::time::sleep(secs(1)).await;
        panic!("bad frame {}", 7)
    });
    let error = tokio::spawn(set.join_all()).await.unwrap_err();
    assert!(error.is_panic());
    let payload = error.into_panic();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("bad frame 7")
    );
}

#[tokio::test(start_paused = true)]
async fn join_all_panics_naming_an_aborted_task() {
    let mut set = TaskSet::new();
    let aborted = set.spawn(std::future::pending::<u32>());
    aborted.abort();
    let error = tokio::spawn(set.join_all()).await.unwrap_err();
    let payload = error.into_panic();
    let message = payload.downcast_ref::<String>().unwrap();
    assert!(
        message.contains(&aborted.id().to_string()) && message.contains("aborted"),
        "{message}"
    );
}

// ===== failures =====

#[tokio::test(start_paused = true)]
async fn a_panic_cancels_nothing_by_default() {
    let mut set = TaskSet::new();
    set.spawn(async { panic!("one") });
    set.spawn(async {
        tokio::time::sleep(secs(1)).await;
        "survivor"
    });
    assert!(matches!(
        set.join_next().await,
        Some(Err(TaskError::Panicked(_)))
    ));
    assert_eq!(set.join_next().await.unwrap().unwrap(), "survivor");
    assert!(!set.scope().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn cancel_on_panic_cancels_the_rest() {
    let mut set = TaskSet::builder().cancel_on_panic(true).build();
    let panicking = set.spawn(async { panic!("bad frame") }).id();
    set.spawn(std::future::pending::<()>());
    assert!(matches!(
        set.join_next().await,
        Some(Err(TaskError::Panicked(_)))
    ));
    let sibling = set.join_next().await.unwrap().unwrap_err();
    let expected = format!("{panicking} panicked: bad frame");
    assert_eq!(sibling.cancel_message(), Some(expected.as_str()));
}

#[tokio::test(start_paused = true)]
async fn cancel_on_error_cancels_the_others_with_a_message() {
    let mut set = TaskSet::<Result<u32, &str>>::builder()
        .cancel_on_error()
        .build();
    set.spawn(async { Ok(1) }); // an Ok cancels nothing
    let failing = set.spawn(async {
        tokio::time::sleep(secs(1)).await;
        Err("upstream refused")
    });
    for _ in 0..3 {
        set.spawn(async {
            tokio::time::sleep(secs(3600)).await;
            Ok(2)
        });
    }
    set.spawn_with_scope(|scope| async move {
        scope.cancelled().await;
        Ok(3) // a cooperative task ends by itself
    });
    assert_eq!(set.join_next().await.unwrap().unwrap(), Ok(1));
    assert!(!set.scope().is_cancelled());
    assert_eq!(
        set.join_next_with_id().await,
        Some(Ok((failing.id(), Err("upstream refused"))))
    );
    let expected = format!("{} returned an error (cancel_on_error)", failing.id());
    assert_eq!(
        set.scope().cancel_message().as_deref(),
        Some(expected.as_str())
    );
    let mut cancelled = 0;
    let mut cooperative = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Err(error) => {
                assert_eq!(error.cancel_message(), Some(expected.as_str()));
                cancelled += 1;
            }
            Ok(output) => cooperative.push(output),
        }
    }
    assert_eq!(cancelled, 3);
    assert_eq!(cooperative, [Ok(3)]);
    let stats = set.stats();
    assert_eq!(stats.cancelled, 3, "{stats:?}");
    assert_eq!(stats.completed, 3, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_on_error_watches_spawn_with_scope_and_panics() {
    let mut set = TaskSet::<Result<(), String>>::builder()
        .cancel_on_error()
        .build();
    let failing = set.spawn_with_scope(|_scope| async { Err("no route".to_owned()) });
    set.spawn(std::future::pending());
    set.join_next().await.unwrap().unwrap().unwrap_err();
    let sibling = set.join_next().await.unwrap().unwrap_err();
    let expected = format!("{} returned an error (cancel_on_error)", failing.id());
    assert_eq!(sibling.cancel_message(), Some(expected.as_str()));

    // It also cancels on a panic.
    let mut set = TaskSet::<Result<(), String>>::builder()
        .cancel_on_error()
        .build();
    set.spawn(async { panic!("bad frame") });
    set.spawn(std::future::pending());
    set.join_next().await.unwrap().unwrap_err();
    let sibling = set.join_next().await.unwrap().unwrap_err();
    assert!(
        sibling
            .cancel_message()
            .unwrap()
            .ends_with("panicked: bad frame"),
        "{sibling}"
    );
}

/// On a multi-thread runtime a failing task may end before its spawner
/// learns its id; the message names the task either way.
#[test]
fn cancel_on_error_names_the_task_on_a_multi_thread_runtime() {
    watchdog(|| {
        multi_thread(2).block_on(async {
            for _ in 0..200 {
                let mut set = TaskSet::<Result<(), ()>>::builder()
                    .cancel_on_error()
                    .build();
                let failing = set.spawn(async { Err(()) });
                set.scope().cancelled().await;
                let expected = format!("{} returned an error (cancel_on_error)", failing.id());
                assert_eq!(
                    set.scope().cancel_message().as_deref(),
                    Some(expected.as_str())
                );
                assert_eq!(set.join_next().await, Some(Ok(Err(()))));
            }
        });
    });
}

#[tokio::test(start_paused = true)]
async fn abort_all_gives_aborted() {
    let mut set = TaskSet::new();
    for _ in 0..3 {
        set.spawn(std::future::pending::<u32>());
    }
    set.spawn_with_scope(|_scope| std::future::pending::<u32>());
    set.spawn(async { 9 });
    tokio::task::yield_now().await; // the last one ends first
    set.abort_all();
    assert_eq!(set.len(), 5);
    let mut aborted = 0;
    let mut outputs = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Err(TaskError::Aborted) => aborted += 1,
            Ok(output) => outputs.push(output),
            Err(other) => panic!("expected an abort, got {other}"),
        }
    }
    assert_eq!((aborted, outputs), (4, vec![9]));
    assert_eq!(set.stats().aborted, 4);
}

#[test]
fn the_abort_handle_works_from_another_thread() {
    watchdog(|| {
        multi_thread(2).block_on(async {
            let mut set = TaskSet::new();
            let handle = set.spawn(std::future::pending::<()>());
            let id = handle.id();
            std::thread::spawn(move || handle.abort()).join().unwrap();
            assert_eq!(
                set.join_next_with_id().await,
                Some(Err((id, TaskError::Aborted)))
            );
        });
    });
}

// ===== teardown =====

#[tokio::test(start_paused = true)]
async fn shutdown_counts_cancelled_escalates_an_ignorer_and_discards_outputs() {
    let mut set = TaskSet::builder()
        .policy(ShutdownPolicy {
            grace: secs(2),
            ..Default::default()
        })
        .build();
    set.spawn(async { 0 }); // ended before the shutdown, never joined
    for _ in 0..10 {
        set.spawn(async {
            tokio::time::sleep(secs(3600)).await;
            1
        });
    }
    let ignorer_polls = Arc::new(AtomicUsize::new(0));
    let polls = ignorer_polls.clone();
    set.spawn_with_scope(move |_ignored| {
        common::PollCounter::new(polls, std::future::pending::<u32>())
    });
    tokio::task::yield_now().await;
    assert_eq!(set.len(), 12);

    let start = tokio::time::Instant::now();
    let report = set.shutdown().await;
    // The report counts what ended since the cancel.
    assert_eq!(report.completed, 0, "{report}");
    assert_eq!(report.cancelled, 10, "{report}");
    assert_eq!(report.escalations, 1, "{report}");
    assert_eq!(report.aborted, 1, "{report}");
    assert!(report.is_clean(), "{report}");
    assert!(start.elapsed() >= secs(2), "the ignorer had its grace");
    // One first poll, the delivery, at most `max_redeliveries` re-deliveries.
    assert!(ignorer_polls.load(Ordering::SeqCst) <= 4);
    assert_eq!(set.stats().completed, 1);
    assert_eq!(set.len(), 0, "the ended tasks' outputs were discarded");
    assert!(set.try_join_next().is_none());
}

#[test]
fn shutdown_keeps_stuck_tasks_in_the_set() {
    watchdog(|| {
        multi_thread(2).block_on(async {
            let mut set = TaskSet::builder()
                .policy(ShutdownPolicy {
                    grace: Duration::from_millis(20),
                    abort_grace: Duration::from_millis(20),
                    ..Default::default()
                })
                .build();
            for _ in 0..5 {
                set.spawn(async {
                    tokio::time::sleep(secs(3600)).await;
                    "cancelled"
                });
            }
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (entered, in_poll) = std::sync::mpsc::channel::<()>();
            let line = line!() + 1; // #[track_caller] down to the report
            let blocker = set.spawn_with_scope(|_ignored| async move {
                entered.send(()).unwrap();
                let _ = released.recv(); // blocks its worker: no abort reaches it
                "blocker"
            });
            tokio::task::spawn_blocking(move || in_poll.recv().unwrap())
                .await
                .unwrap();

            let report = set.shutdown().await;
            assert_eq!(report.cancelled, 5, "{report}");
            assert_eq!(report.stuck.len(), 1, "{report}");
            assert_eq!(report.stuck[0].id, blocker.id());
            assert_eq!(report.stuck[0].location.file(), file!());
            assert_eq!(report.stuck[0].location.line(), line);
            assert_eq!(set.len(), 1, "only the stuck task is left");
            assert_eq!(set.stats().stuck, 1);

            release.send(()).unwrap();
            // Escalated while in its poll: joined as aborted or with its
            // output, whichever tokio records.
            let id = match set.join_next_with_id().await.unwrap() {
                Ok((id, _)) | Err((id, _)) => id,
            };
            assert_eq!(id, blocker.id());
            assert!(set.is_empty());
        });
    });
}

#[tokio::test(start_paused = true)]
async fn dropping_the_set_cancels_its_tasks() {
    let outer = CancelScope::new();
    let mut set = TaskSet::builder().scope(outer.clone()).build();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    set.spawn(async move {
        let _flag = flag;
        std::future::pending::<()>().await;
    });
    let (saw_cancel, cleanup) = tokio::sync::oneshot::channel();
    set.spawn_with_scope(|scope| async move {
        scope.cancelled().await;
        let _ = saw_cancel.send(());
    });
    let scope = set.scope().clone();
    tokio::task::yield_now().await;
    assert!(!dropped.load(Ordering::SeqCst));

    drop(set);
    assert!(scope.is_cancelled());
    assert!(
        !outer.is_cancelled(),
        "the enclosing scope is not cancelled"
    );
    cleanup.await.expect("the cooperative task saw the cancel");
    tokio::task::yield_now().await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the plain task's future was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn an_enclosing_scope_cancels_the_set() {
    let outer = CancelScope::new();
    let mut set = TaskSet::builder().scope(outer.clone()).build();
    set.spawn(std::future::pending::<()>());
    outer.cancel_with("server stopping");
    let error = set.join_next().await.unwrap().unwrap_err();
    assert_eq!(error.cancel_message(), Some("server stopping"));
}

#[test]
fn debug_shows_len_and_group() {
    let set = TaskSet::<u8>::default();
    let shown = format!("{set:?}");
    assert!(shown.starts_with("TaskSet { len: 0, group: "), "{shown}");
    let builder = TaskSet::<Result<(), ()>>::builder().cancel_on_error();
    assert!(format!("{builder:?}").contains("cancel_on_error: true"));
}

// ===== the other spawn kinds =====

#[tokio::test(start_paused = true)]
async fn blocking_local_and_on_handle_tasks_join_in_the_same_set() {
    let mut set: TaskSet<&'static str> = TaskSet::new();
    set.spawn_blocking(|| "blocking");
    set.spawn_on(async { "on" }, &tokio::runtime::Handle::current());
    let local = tokio::task::LocalSet::new();
    let mut seen = local
        .run_until(async {
            let not_send = std::rc::Rc::new("local");
            set.spawn_local(async move { *not_send });
            let mut seen = Vec::new();
            while let Some(out) = set.join_next().await {
                seen.push(out.unwrap());
            }
            seen
        })
        .await;
    seen.sort_unstable();
    assert_eq!(seen, ["blocking", "local", "on"]);
    assert_eq!(set.stats().completed, 3);
}

#[tokio::test(start_paused = true)]
async fn a_blocking_error_cancels_the_rest_under_cancel_on_error() {
    let mut set: TaskSet<Result<u32, String>> = TaskSet::builder().cancel_on_error().build();
    let waiting = set.spawn(async {
        std::future::pending::<()>().await;
        Ok(1)
    });
    let failing = set.spawn_blocking(|| Err("disk full".to_owned()));
    let mut errors = 0;
    let mut cancelled = None;
    while let Some(joined) = set.join_next_with_id().await {
        match joined {
            Ok((id, Err(_))) => {
                assert_eq!(id, failing.id());
                errors += 1;
            }
            Err((id, TaskError::Cancelled(c))) => {
                assert_eq!(id, waiting.id());
                cancelled = c.message().map(str::to_owned);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(errors, 1);
    let message = cancelled.expect("the waiting task was cancelled");
    assert!(message.contains(&failing.id().to_string()), "{message}");
}
