//! Session leases on `TaskMap` (issue 21, item 1): idle and ready deadlines
//! per key, generation-safe across reconnects, one driver per map, nothing
//! left once the last task ends. Paused clock throughout; counts, not wall
//! times. The proptest model at the end checks random programs of spawns,
//! touches, ready marks, ends, replacements and clock steps against a
//! reference model.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cancel_scope::{CancelScope, ShutdownPolicy, TaskError, TaskMap};
use common::alive_tasks;
use tokio::time::sleep;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// A ladder on a 100 ms grace, re-deliveries 1 ms doubling.
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

fn idle_map(idle: Duration) -> TaskMap<u32> {
    TaskMap::builder().idle_timeout(idle).build()
}

/// A session that waits for its scope and returns the cancel message.
fn session(
    map: &TaskMap<u32>,
    key: u32,
) -> cancel_scope::TaskHandle<Option<cancel_scope::CancelMessage>> {
    map.spawn_with_scope(key, |scope: CancelScope| async move {
        scope.cancelled().await;
        scope.cancel_message()
    })
}

/// Lets every task that is ready at this instant run (the driver, the
/// tasks it cancelled).
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

async fn message_of(h: cancel_scope::TaskHandle<Option<cancel_scope::CancelMessage>>) -> String {
    h.await
        .expect("the session returns")
        .expect("cancelled with a message")
        .as_str()
        .to_owned()
}

// ===== idle =====

#[tokio::test(start_paused = true)]
async fn an_idle_session_expires_after_idle_timeout_with_its_message() {
    let map = idle_map(10 * S);
    let h = session(&map, 1);
    sleep(10 * S - MS).await;
    settle().await;
    assert!(!h.is_finished(), "not before its deadline");
    assert_eq!(map.stats().idle_expired, 0);
    sleep(MS).await;
    settle().await;
    assert!(h.is_finished());
    assert_eq!(message_of(h).await, "idle timeout");
    let stats = map.stats();
    assert_eq!((stats.idle_expired, stats.ready_expired), (1, 0));
    assert_eq!(map.len(), 0);
    assert_eq!(map.lease_queue_len(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn touch_postpones_the_idle_deadline() {
    let map = idle_map(10 * S);
    let h = session(&map, 1);
    sleep(8 * S).await;
    assert!(map.touch(&1));
    sleep(9 * S).await; // 17 s: 9 s after the touch
    settle().await;
    assert!(!h.is_finished());
    assert!(map.touch(&1)); // 17 s: due at 27 s
    sleep(10 * S - MS).await;
    settle().await;
    assert!(!h.is_finished());
    assert_eq!(map.stats().idle_expired, 0);
    sleep(MS).await;
    settle().await;
    assert_eq!(message_of(h).await, "idle timeout");
    assert_eq!(map.stats().idle_expired, 1);
    assert!(!map.touch(&1), "the key is gone");
}

#[tokio::test(start_paused = true)]
async fn a_plain_spawn_is_dropped_with_the_message_in_its_error() {
    let map = idle_map(S);
    let h = map.spawn(1, std::future::pending::<()>());
    sleep(2 * S).await;
    match h.await {
        Err(TaskError::Cancelled(why)) => assert_eq!(why.message(), Some("idle timeout")),
        other => panic!("{other:?}"),
    }
    assert_eq!(map.stats().idle_expired, 1);
}

// ===== ready =====

#[tokio::test(start_paused = true)]
async fn a_session_not_marked_ready_expires_with_its_message() {
    let map: TaskMap<u32> = TaskMap::builder().ready_timeout(5 * S).build();
    let h = session(&map, 1);
    sleep(5 * S - MS).await;
    settle().await;
    assert!(!h.is_finished());
    sleep(MS).await;
    settle().await;
    assert_eq!(message_of(h).await, "not ready in time");
    let stats = map.stats();
    assert_eq!((stats.idle_expired, stats.ready_expired), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn mark_ready_stops_the_ready_deadline_and_then_only_idle_applies() {
    // Ready only: a marked session lives on.
    let map: TaskMap<u32> = TaskMap::builder().ready_timeout(5 * S).build();
    let h = session(&map, 1);
    sleep(S).await;
    assert!(map.mark_ready(&1));
    assert!(map.mark_ready(&1), "idempotent");
    sleep(3600 * S).await;
    settle().await;
    assert!(!h.is_finished());
    assert_eq!(map.stats().ready_expired, 0);
    assert_eq!(map.lease_queue_len(), (1, 0), "no deadline left queued");

    // Both: marked ready at 1 s, the idle deadline (20 s) still applies.
    let map: TaskMap<u32> = TaskMap::builder()
        .ready_timeout(5 * S)
        .idle_timeout(20 * S)
        .build();
    let h = session(&map, 1);
    sleep(S).await;
    assert!(map.mark_ready(&1));
    sleep(19 * S - MS).await;
    settle().await;
    assert!(!h.is_finished());
    sleep(MS).await;
    settle().await;
    assert_eq!(message_of(h).await, "idle timeout");
    let stats = map.stats();
    assert_eq!((stats.idle_expired, stats.ready_expired), (1, 0));
}

// ===== unknown, closing, unleased =====

#[tokio::test(start_paused = true)]
async fn touch_and_mark_ready_answer_false_for_unknown_closing_or_unconfigured() {
    let map: TaskMap<u32> = TaskMap::builder()
        .idle_timeout(10 * S)
        .ready_timeout(10 * S)
        .policy(short())
        .build();
    assert!(!map.touch(&7));
    assert!(!map.mark_ready(&7));

    // A closing key: a task that ignores its scope, being cancelled.
    let released = Arc::new(AtomicBool::new(false));
    let r = released.clone();
    map.spawn_with_scope(1, move |_ignored| async move {
        while !r.load(Ordering::SeqCst) {
            sleep(MS).await;
        }
    });
    assert!(map.begin_cancel(&1));
    assert!(map.is_closing(&1));
    assert!(!map.touch(&1));
    assert!(!map.mark_ready(&1));
    released.store(true, Ordering::SeqCst);

    // An idle-only map: mark_ready is false, touch answers.
    let idle_only = idle_map(10 * S);
    session(&idle_only, 1);
    assert!(idle_only.touch(&1));
    assert!(!idle_only.mark_ready(&1));

    // A map without leases: touch answers, changes nothing; mark_ready false.
    let plain: TaskMap<u32> = TaskMap::new();
    let h = session(&plain, 1);
    assert!(plain.touch(&1));
    assert!(!plain.touch(&2));
    assert!(!plain.mark_ready(&1));
    sleep(3600 * S).await;
    assert!(!h.is_finished());
    assert_eq!(plain.lease_queue_len(), (0, 0));
}

// ===== generations =====

#[tokio::test(start_paused = true)]
async fn a_replaced_tasks_timer_never_cancels_the_new_task() {
    let map = idle_map(10 * S);
    let a = session(&map, 1);
    sleep(10 * S - MS).await; // just before A's deadline
    let b = session(&map, 1); // reconnect: B's lease starts now
    let b_id = b.id();
    settle().await;
    assert!(a.is_finished(), "A was replaced");
    sleep(2 * MS).await; // past A's deadline
    settle().await;
    assert!(!b.is_finished());
    assert_eq!(map.task_id(&1), Some(b_id));
    assert_eq!(map.stats().idle_expired, 0);
    assert!(map.touch(&1), "the key's touch reaches B"); // B: due 20 s - 1 ms + 10 s... from now
    sleep(10 * S - MS).await;
    settle().await;
    assert!(!b.is_finished());
    sleep(MS).await;
    settle().await;
    assert_eq!(message_of(b).await, "idle timeout");
    assert_eq!(map.stats().idle_expired, 1);
    assert_eq!(map.lease_queue_len(), (0, 0));
}

// ===== edges of Duration =====

#[tokio::test(start_paused = true)]
async fn zero_timeouts_expire_at_once() {
    let map = idle_map(Duration::ZERO);
    let h = session(&map, 1);
    assert_eq!(message_of(h).await, "idle timeout");
    assert_eq!(map.stats().idle_expired, 1);

    let map: TaskMap<u32> = TaskMap::builder().ready_timeout(Duration::ZERO).build();
    let h = session(&map, 1);
    assert_eq!(message_of(h).await, "not ready in time");
    assert_eq!(map.stats().ready_expired, 1);
    assert_eq!(map.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn duration_max_never_expires_and_never_panics() {
    let map: TaskMap<u32> = TaskMap::builder()
        .idle_timeout(Duration::MAX)
        .ready_timeout(Duration::MAX)
        .build();
    let h = session(&map, 1);
    assert_eq!(map.lease_queue_len(), (1, 0), "no deadline to queue");
    sleep(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    assert!(map.touch(&1));
    assert!(map.mark_ready(&1));
    settle().await;
    assert!(!h.is_finished());
    let stats = map.stats();
    assert_eq!((stats.idle_expired, stats.ready_expired), (0, 0));

    // Long, representable timeouts: queued, far away, no panic either.
    let map: TaskMap<u32> = TaskMap::builder()
        .idle_timeout(Duration::from_secs(u64::MAX / 1_000_000_000))
        .ready_timeout(Duration::from_secs(100 * 365 * 24 * 3600))
        .build();
    let h = session(&map, 1);
    sleep(3600 * S).await;
    assert!(map.touch(&1));
    assert!(!h.is_finished());
}

// ===== scale, and nothing left behind =====

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_leases_expire_exactly_once_each() {
    const N: u32 = 100_000;
    let started = std::time::Instant::now();
    let map = idle_map(S);
    for k in 0..N {
        drop(map.spawn(k, std::future::pending::<()>()));
    }
    assert_eq!(map.len(), N as usize);
    sleep(2 * S).await;
    while !map.is_empty() {
        tokio::task::yield_now().await;
    }
    let stats = map.stats();
    assert_eq!(stats.idle_expired, u64::from(N));
    assert_eq!(stats.cancelled, u64::from(N));
    assert_eq!(stats.ready_expired, 0);
    assert_eq!(map.lease_queue_len(), (0, 0));
    // More time changes nothing: each lease expired once.
    sleep(3600 * S).await;
    assert_eq!(map.stats(), stats);
    eprintln!("100k leases: {:?} wall", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn after_the_last_task_ends_no_timer_or_driver_is_left() {
    let map = idle_map(10 * S);
    let base = alive_tasks(); // the test itself
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = map.spawn(1, async move {
        let _ = rx.await;
    });
    settle().await;
    assert_eq!(alive_tasks(), base + 2, "the task and the driver");
    tx.send(()).unwrap();
    h.await.unwrap();
    settle().await;
    assert_eq!(map.lease_queue_len(), (0, 0));
    assert_eq!(
        alive_tasks(),
        base,
        "the driver stopped with the last lease"
    );
    let before = map.stats();
    sleep(3600 * S).await;
    assert_eq!(map.stats(), before);
    assert_eq!(before.idle_expired, 0);

    // And a later spawn starts a driver again.
    let h = session(&map, 2);
    sleep(11 * S).await;
    assert_eq!(message_of(h).await, "idle timeout");
    settle().await;
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(start_paused = true)]
async fn an_expired_task_that_ignores_cancellation_goes_through_the_ladder() {
    let map: TaskMap<u32> = TaskMap::builder().idle_timeout(S).policy(short()).build();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let h = map
        .build_task(1)
        .name("deaf")
        .on_escalate(move || drop(tx.take()))
        .spawn_with_scope(|_ignored| async move {
            let _ = rx.await; // only the hook ends it
            // A parked loop that wakes on each delivery and goes on.
        });
    sleep(S).await;
    settle().await;
    assert!(map.is_closing(&1));
    assert_eq!(map.stats().idle_expired, 1);
    sleep(S).await;
    settle().await;
    assert!(h.is_finished());
    let stats = map.stats();
    assert_eq!(stats.deliveries, 1);
    assert!(stats.redeliveries >= 1, "{stats:?}");
    assert_eq!(stats.escalations, 1);
    assert_eq!(stats.idle_expired, 1);
    assert_eq!(map.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn every_spawn_path_of_a_leased_map_gets_a_lease() {
    let map = idle_map(S);
    let mut handles = Vec::new();
    handles.push(map.spawn(1, std::future::pending::<()>()));
    handles.push(map.try_spawn(2, std::future::pending::<()>()).unwrap());
    handles.push(map.spawn_with_scope(3, |s| async move { s.cancelled().await }));
    handles.push(
        map.try_spawn_with_scope(4, |s| async move { s.cancelled().await })
            .unwrap(),
    );
    handles.push(
        map.build_task(5)
            .name("b")
            .spawn(std::future::pending::<()>()),
    );
    handles.push(map.build_task(6).spawn_on(
        std::future::pending::<()>(),
        &tokio::runtime::Handle::current(),
    ));
    handles.push(map.build_task(7).spawn_blocking_with_scope(|s| {
        while !s.is_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }));
    // A blocking task inhibits the paused clock's auto-advance: move it by
    // hand, then wait (really) for the blocking closure to see its cancel.
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let h = map.build_task(8).spawn_local(std::future::pending::<()>());
            tokio::time::advance(2 * S).await;
            while !map.is_empty() {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(h.await.is_err());
        })
        .await;
    // Dropped ones err; cooperative ones return once they see their scope.
    let ok: Vec<bool> = futures::future::join_all(handles)
        .await
        .into_iter()
        .map(|r| r.is_ok())
        .collect();
    assert_eq!(ok, [false, false, true, true, false, false, true]);
    assert_eq!(map.stats().idle_expired, 8);
    assert_eq!(map.lease_queue_len(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_map_under_a_parent_scope_is_cancelled_with_it() {
    let parent = CancelScope::new();
    let map: TaskMap<u32> = TaskMap::builder()
        .scope(parent.clone())
        .idle_timeout(10 * S)
        .build();
    let h = session(&map, 1);
    parent.cancel_with("server stopping");
    assert_eq!(message_of(h).await, "server stopping");
    assert_eq!(map.stats().idle_expired, 0);
    assert_eq!(map.lease_queue_len(), (0, 0));
}

/// `spawn_with_process` goes through `TaskBuilder::try_spawn_with_scope`:
/// its session gets a lease too, and the expiry tears its child down. Real
/// clock (a child process's exit is real).
#[cfg(all(unix, feature = "process"))]
#[tokio::test]
async fn a_session_with_a_process_expires_and_takes_its_child_along() {
    let map: TaskMap<u32> = TaskMap::builder()
        .idle_timeout(Duration::from_millis(100))
        .build();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", "sleep 100"]);
    let h = map
        .spawn_with_process(
            1,
            cmd,
            cancel_scope::ProcessPolicy::default(),
            |scope, mut child| async move {
                tokio::select! {
                    _ = scope.cancelled() => scope.cancel_message(),
                    _ = child.wait() => None,
                }
            },
        )
        .unwrap();
    assert_eq!(message_of(h).await, "idle timeout");
    assert_eq!(map.stats().idle_expired, 1);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !map.is_empty() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the session and its reaper end");
    assert_eq!(map.lease_queue_len(), (0, 0));
}

// ===== the model =====

mod model {
    use std::collections::HashMap;
    use std::time::Duration;

    use cancel_scope::{CancelScope, TaskId, TaskMap};
    use proptest::prelude::*;
    use tokio::sync::oneshot;

    const KEYS: u8 = 3;

    #[derive(Debug, Clone)]
    enum Op {
        Spawn(u8),
        Touch(u8),
        MarkReady(u8),
        Advance(u8),
        End(u8),
        Replace(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0..KEYS;
        prop_oneof![
            2 => key.clone().prop_map(Op::Spawn),
            3 => key.clone().prop_map(Op::Touch),
            2 => key.clone().prop_map(Op::MarkReady),
            4 => (0u8..40).prop_map(Op::Advance),
            1 => key.clone().prop_map(Op::End),
            2 => key.prop_map(Op::Replace),
        ]
    }

    fn timeout() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(0)),
            4 => (1u64..60).prop_map(Some),
        ]
    }

    /// The reference: per key, its newest task as the model sees it.
    #[derive(Debug)]
    struct Task {
        id: TaskId,
        spawned: u64,
        last: u64,
        ready: bool,
        end: Option<oneshot::Sender<()>>,
    }

    #[derive(Debug, Default)]
    struct Model {
        now: u64,
        idle: Option<u64>,
        ready: Option<u64>,
        keys: HashMap<u8, Task>,
        idle_expired: u64,
        ready_expired: u64,
    }

    impl Model {
        /// The first deadline of `t` and which, as the library decides
        /// (the earlier; `ready` at a tie).
        fn deadline(&self, t: &Task) -> Option<(u64, bool)> {
            let ready = self
                .ready
                .filter(|_| !t.ready)
                .map(|d| (t.spawned + d, true));
            let idle = self.idle.map(|d| (t.last + d, false));
            match (ready, idle) {
                (Some(r), Some(i)) => Some(if r.0 <= i.0 { r } else { i }),
                (r, i) => r.or(i),
            }
        }

        fn expire_due(&mut self) {
            let due: Vec<(u8, bool)> = self
                .keys
                .iter()
                .filter_map(|(k, t)| {
                    let (at, ready) = self.deadline(t)?;
                    (at <= self.now).then_some((*k, ready))
                })
                .collect();
            for (k, ready) in due {
                self.keys.remove(&k);
                if ready {
                    self.ready_expired += 1;
                } else {
                    self.idle_expired += 1;
                }
            }
        }
    }

    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    fn spawn(map: &TaskMap<u8>, model: &mut Model, k: u8) {
        let (tx, rx) = oneshot::channel::<()>();
        let h = map.spawn_with_scope(k, move |scope: CancelScope| async move {
            tokio::select! {
                _ = scope.cancelled() => {}
                _ = rx => {}
            }
        });
        model.keys.insert(
            k,
            Task {
                id: h.id(),
                spawned: model.now,
                last: model.now,
                ready: false,
                end: Some(tx),
            },
        );
    }

    async fn run(idle: Option<u64>, ready: Option<u64>, ops: Vec<Op>) {
        let mut b = TaskMap::builder();
        if let Some(d) = idle {
            b = b.idle_timeout(Duration::from_millis(d));
        }
        if let Some(d) = ready {
            b = b.ready_timeout(Duration::from_millis(d));
        }
        let map: TaskMap<u8> = b.build();
        let mut model = Model {
            idle,
            ready,
            ..Default::default()
        };
        for op in ops {
            match op {
                Op::Spawn(k) | Op::Replace(k) => {
                    if matches!(op, Op::Spawn(_)) && model.keys.contains_key(&k) {
                        continue;
                    }
                    spawn(&map, &mut model, k);
                }
                Op::Touch(k) => {
                    let live = model.keys.get_mut(&k);
                    let expect = live.is_some();
                    if let Some(t) = live {
                        t.last = model.now;
                    }
                    assert_eq!(map.touch(&k), expect, "touch({k})");
                }
                Op::MarkReady(k) => {
                    let expect = model.ready.is_some() && model.keys.contains_key(&k);
                    if let (true, Some(t)) = (expect, model.keys.get_mut(&k)) {
                        t.ready = true;
                    }
                    assert_eq!(map.mark_ready(&k), expect, "mark_ready({k})");
                }
                Op::End(k) => {
                    if let Some(mut t) = model.keys.remove(&k) {
                        let _ = t.end.take().unwrap().send(());
                    }
                }
                Op::Advance(ms) => {
                    // Step by step, so each deadline passes at its instant
                    // and the model sees touches in between never happen.
                    for _ in 0..ms {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        model.now += 1;
                        settle().await;
                        model.expire_due();
                    }
                }
            }
            // Zero timeouts and replaced tasks settle at this instant.
            settle().await;
            model.expire_due();
            let stats = map.stats();
            assert_eq!(
                (stats.idle_expired, stats.ready_expired),
                (model.idle_expired, model.ready_expired),
                "expiries at {} ms after {op:?}",
                model.now
            );
            for k in 0..KEYS {
                assert_eq!(
                    map.task_id(&k),
                    model.keys.get(&k).map(|t| t.id),
                    "key {k} at {} ms after {op:?}",
                    model.now
                );
            }
            assert_eq!(map.len(), model.keys.len(), "after {op:?}");
        }
        // Everything ends: nothing is left queued.
        for (_, mut t) in model.keys.drain() {
            let _ = t.end.take().unwrap().send(());
        }
        settle().await;
        assert_eq!(map.len(), 0);
        assert_eq!(map.lease_queue_len(), (0, 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A lease racing touches, ready marks, ends and replacements on the
        /// paused clock: expiries happen exactly when the model says, and an
        /// old generation's deadline never reaches the newer task under its
        /// key (`task_id` stays the model's).
        #[test]
        fn leases_follow_the_model(
            idle in timeout(),
            ready in timeout(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(run(idle, ready, ops));
        }
    }
}
