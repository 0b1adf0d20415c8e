//! tokio's `JoinSet` contracts (its `tests/task_join_set.rs`), restated for
//! [`TaskSet`]: a port of a `JoinSet` program keeps every behaviour it relied
//! on. Where the two differ on purpose, the test says so: a set's drop
//! cancels (then the ladder aborts) instead of aborting at once, and an abort
//! is `TaskError::Aborted`, not tokio's `is_cancelled()`.

use std::collections::HashSet;
use std::time::Duration;

use cancel_scope::{TaskError, TaskSet};
use tokio::sync::oneshot;

#[tokio::test(start_paused = true)]
async fn len_counts_spawned_tasks_and_detach_all_forgets_them() {
    let mut set = TaskSet::new();
    for i in 0..10usize {
        set.spawn(async move { i });
        assert_eq!(set.len(), i + 1);
    }
    set.detach_all();
    assert_eq!(set.len(), 0);
    assert!(set.join_next().await.is_none());

    for round in 0..2 {
        for i in 0..10usize {
            set.spawn(async move {
                tokio::time::sleep(Duration::from_secs(i as u64)).await;
                i
            });
        }
        let mut seen = [false; 10];
        while let Some(i) = set.join_next().await {
            seen[i.unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s), "round {round}");
        assert!(set.join_next().await.is_none());
    }
}

#[tokio::test]
async fn dropping_the_set_ends_its_tasks() {
    let mut set = TaskSet::new();
    let mut ends = Vec::new();
    for _ in 0..16 {
        let (tx, rx) = oneshot::channel::<()>();
        ends.push(rx);
        set.spawn(async move {
            std::future::pending::<()>().await;
            drop(tx);
        });
    }
    drop(set);
    for rx in ends {
        // The future was dropped (cancelled at its await), its sender with it.
        assert!(rx.await.is_err());
    }
}

#[tokio::test]
async fn spawning_and_joining_alternately_keeps_len_exact() {
    let mut set = TaskSet::new();
    set.spawn(async {});
    set.spawn(async {});
    assert_eq!(set.len(), 2);
    for _ in 0..16 {
        set.join_next().await.unwrap().unwrap();
        assert_eq!(set.len(), 1);
        set.spawn(async {});
        assert_eq!(set.len(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn aborting_through_the_handles_spawn_returns() {
    let mut set = TaskSet::new();
    for i in 0..16u64 {
        let abort = set.spawn(async move {
            tokio::time::sleep(Duration::from_secs(i)).await;
            i
        });
        if i % 2 == 1 {
            abort.abort();
        }
    }
    let (mut aborted, mut completed) = (0, 0);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(i) => {
                assert_eq!(i % 2, 0);
                completed += 1;
            }
            Err(e) => {
                assert!(matches!(e, TaskError::Aborted), "{e:?}");
                aborted += 1;
            }
        }
    }
    assert_eq!((aborted, completed), (8, 8));
}

#[test]
fn a_task_on_a_runtime_that_is_gone_joins_as_aborted() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    };
    let mut set = TaskSet::new();
    {
        let gone = runtime();
        set.spawn_on(async { 1 }, gone.handle());
        drop(gone);
    }
    let joined = runtime().block_on(set.join_next()).unwrap();
    assert!(matches!(joined, Err(TaskError::Aborted)), "{joined:?}");
}

#[tokio::test]
async fn join_all_gives_every_output() {
    let mut set = TaskSet::new();
    for _ in 0..5 {
        set.spawn(async { 1 });
    }
    assert_eq!(set.join_all().await, [1; 5]);
}

#[tokio::test(start_paused = true)]
async fn join_all_re_raises_the_first_panic_and_ends_the_rest() {
    let mut set = TaskSet::new();
    let (tx, mut rx) = oneshot::channel();
    set.spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.send(()).unwrap();
    });
    set.spawn(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        panic!("one second in");
    });
    let err = tokio::spawn(set.join_all()).await.unwrap_err();
    assert!(err.is_panic());
    assert!(rx.try_recv().is_err(), "the other task never finished");
}

#[tokio::test(start_paused = true)]
async fn abort_all_ends_pending_tasks_and_keeps_finished_outputs() {
    let mut set = TaskSet::new();
    for _ in 0..5 {
        set.spawn(std::future::pending::<()>());
    }
    for _ in 0..5 {
        set.spawn(tokio::time::sleep(Duration::from_secs(1)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    set.abort_all();
    assert_eq!(set.len(), 10);
    let (mut ok, mut aborted) = (0, 0);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(()) => ok += 1,
            Err(TaskError::Aborted) => aborted += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, aborted), (5, 5));
    assert!(set.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn join_next_yields_to_the_runtime_when_the_coop_budget_runs_out() {
    use futures_util::FutureExt;
    const TASKS: u32 = 1000;
    static DONE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
    let mut set = TaskSet::new();
    for _ in 0..TASKS {
        set.spawn(async { DONE.add_permits(1) });
    }
    drop(DONE.acquire_many(TASKS).await.unwrap());
    let (mut joined, mut yields) = (0, 0);
    loop {
        match set.join_next().now_or_never() {
            Some(Some(result)) => {
                result.unwrap();
                joined += 1;
            }
            Some(None) => break,
            None => {
                yields += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    assert_eq!(joined, TASKS);
    assert!(yields >= 1, "join_next never stopped at the budget");
}

#[tokio::test(flavor = "current_thread")]
async fn try_join_next_takes_every_ended_task_at_once() {
    const TASKS: usize = 1000;
    let (tx, rx) = tokio::sync::watch::channel(());
    let mut set = TaskSet::new();
    let mut spawned = HashSet::new();
    for _ in 0..TASKS {
        let mut rx = rx.clone();
        spawned.insert(set.spawn(async move { rx.changed().await.unwrap() }).id());
    }
    drop(rx);
    assert!(set.try_join_next_with_id().is_none());
    tx.send_replace(());
    tx.closed().await; // every task ended
    let mut joined = HashSet::new();
    while let Some(next) = set.try_join_next_with_id() {
        let (id, ()) = next.unwrap();
        joined.insert(id);
    }
    assert_eq!(joined, spawned);
    assert!(set.try_join_next().is_none());
}

#[tokio::test]
async fn extend_and_collect_spawn_every_future() {
    let mut set: TaskSet<_> = (0..5).map(|i| async move { i }).collect();
    set.extend((5..10).map(|i| async move { i }));
    assert_eq!(set.len(), 10);
    let mut seen = Vec::new();
    while let Some(i) = set.join_next().await {
        seen.push(i.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "current_thread")]
async fn local_tasks_join_inside_their_local_set() {
    let local = tokio::task::LocalSet::new();
    let mut set = TaskSet::new();
    for i in 0..8usize {
        let not_send = std::rc::Rc::new(i);
        if i % 2 == 0 {
            set.spawn_local_on(async move { *not_send }, &local);
        } else {
            local
                .run_until(async {
                    set.spawn_local(async move { *not_send });
                })
                .await;
        }
    }
    let mut seen = local
        .run_until(async {
            let mut seen = Vec::new();
            while let Some(i) = set.join_next().await {
                seen.push(i.unwrap());
            }
            seen
        })
        .await;
    seen.sort_unstable();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_a_set_of_local_tasks_ends_them_inside_the_local_set() {
    let local = tokio::task::LocalSet::new();
    let mut set = TaskSet::new();
    let mut ends = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = oneshot::channel::<()>();
        ends.push(rx);
        set.spawn_local_on(
            async move {
                std::future::pending::<()>().await;
                drop(tx);
            },
            &local,
        );
    }
    local
        .run_until(async move {
            tokio::task::yield_now().await;
            drop(set);
            for rx in ends {
                assert!(rx.await.is_err());
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_tasks_on_a_handle_join_like_the_rest() {
    let handle = tokio::runtime::Handle::current();
    let mut set = TaskSet::new();
    set.spawn_blocking_on(|| 1, &handle);
    set.spawn_blocking(|| 2);
    set.spawn(async { 3 });
    let mut seen = set.join_all().await;
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3]);
}
