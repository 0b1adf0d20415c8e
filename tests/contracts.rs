//! The peers' contracts (tokio-util's `TaskTracker` / `JoinMap`, tokio's
//! `JoinSet`, Trio's one abort attempt per blocking call) translated to this
//! crate's API: no lost wakeup, no waker or key dropped under a lock, panic-safe
//! keys, coop budget, no re-delivery to a task mid-poll, shared shutdowns.
//!
//! Tests that could deadlock run under [`watchdog`], so a regression fails in
//! seconds instead of hanging CI.

mod common;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use cancel_scope::{CancelScope, ShutdownPolicy, TaskGroup, TaskMap, TaskOutcome};

use common::{paused_runtime as current_thread, watchdog};

/// A waker that counts its wakes and, when dropped or woken, calls `reenter`
/// (which takes one of the crate's locks: `len()`, `child()`).
struct Probe {
    wakes: AtomicUsize,
    reenter: Box<dyn Fn() + Send + Sync>,
}

impl Probe {
    fn new(reenter: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Probe {
            wakes: AtomicUsize::new(0),
            reenter: Box::new(reenter),
        })
    }

    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Wake for Probe {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        (self.reenter)();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        (self.reenter)();
    }
}

/// A probe whose drop and wake call `group.len()` (the registry's lock).
fn len_probe(group: &Arc<TaskGroup>) -> Arc<Probe> {
    let g = Arc::downgrade(group);
    Probe::new(move || {
        if let Some(g) = g.upgrade() {
            let _ = g.len();
        }
    })
}

fn poll_with<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

/// Lets the runtime run every ready task.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

// ===== 1. lost wakeup: a woken waiter's stale key =====

/// tokio-util's `notify_many` / `no_notify_on_respawn_if_open`: waiter A is
/// woken by idleness but re-polls only after a respawn and after a fresh
/// waiter B registered; B must still be woken when the group goes idle again.
#[test]
fn join_waiter_woken_but_not_repolled_never_steals_a_later_registration() {
    watchdog(|| {
        current_thread().block_on(async {
            let group = TaskGroup::new();
            let (wa, wb) = (Probe::new(|| {}), Probe::new(|| {}));
            let (wa_waker, wb_waker) = (Waker::from(wa.clone()), Waker::from(wb.clone()));

            let (tx1, rx1) = tokio::sync::oneshot::channel::<()>();
            group.spawn(async move {
                let _ = rx1.await;
            });
            let mut a = Box::pin(group.join());
            assert!(poll_with(a.as_mut(), &wa_waker).is_pending());

            tx1.send(()).unwrap();
            settle().await;
            assert!(group.is_empty());
            assert_eq!(wa.wakes(), 1, "A is woken when the group goes idle");

            // Respawn, then B registers before A re-polls.
            let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
            group.spawn(async move {
                let _ = rx2.await;
            });
            let mut b = Box::pin(group.join());
            assert!(poll_with(b.as_mut(), &wb_waker).is_pending());
            // A saw the group idle: it stays done (as TaskTracker::wait).
            assert!(poll_with(a.as_mut(), &wa_waker).is_ready());

            tx2.send(()).unwrap();
            settle().await;
            assert_eq!(
                wb.wakes(),
                1,
                "B was lost: its registration was overwritten"
            );
            assert!(poll_with(b.as_mut(), &wb_waker).is_ready());
        });
    });
}

/// The same race on `join_next`: A is woken by an end that C takes; B
/// registers; A re-polls with its stale key. The next end must wake B.
#[test]
fn join_next_waiter_with_a_stale_key_never_steals_a_later_registration() {
    watchdog(|| {
        current_thread().block_on(async {
            let group = TaskGroup::builder().collect_outcomes(true).build();
            let (wa, wb) = (Probe::new(|| {}), Probe::new(|| {}));
            let (wa_waker, wb_waker) = (Waker::from(wa.clone()), Waker::from(wb.clone()));
            let (tx1, rx1) = tokio::sync::oneshot::channel::<()>();
            let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
            let (tx3, rx3) = tokio::sync::oneshot::channel::<()>();
            let first = group.spawn(async move { drop(rx1.await) }).id();
            let second = group.spawn(async move { drop(rx2.await) }).id();
            group.spawn(async move { drop(rx3.await) });

            let mut a = Box::pin(group.join_next());
            assert!(poll_with(a.as_mut(), &wa_waker).is_pending());
            tx1.send(()).unwrap();
            settle().await;
            assert_eq!(wa.wakes(), 1);
            // C takes that end before A re-polls.
            assert_eq!(
                group.join_next().await,
                Some((first, TaskOutcome::Completed))
            );
            let mut b = Box::pin(group.join_next());
            assert!(poll_with(b.as_mut(), &wb_waker).is_pending());
            assert!(poll_with(a.as_mut(), &wa_waker).is_pending());

            tx2.send(()).unwrap();
            settle().await;
            assert_eq!(wb.wakes(), 1, "B was lost: A's stale key overwrote it");
            assert_eq!(wa.wakes(), 2);
            assert_eq!(
                poll_with(b.as_mut(), &wb_waker),
                Poll::Ready(Some((second, TaskOutcome::Completed)))
            );
            drop(tx3);
        });
    });
}

// ===== 2. a waker dropped under the registry lock =====

/// tokio's `replace_parent_waker_drops_outside_lock`: re-polling a pending
/// `join()` with a new waker drops the old one, whose `drop` calls back into
/// the group.
#[test]
fn replaced_join_waker_is_dropped_outside_the_lock() {
    watchdog(|| {
        current_thread().block_on(async {
            let group = Arc::new(TaskGroup::builder().collect_outcomes(true).build());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            group.spawn(async move { drop(rx.await) });
            let calls = Arc::new(AtomicUsize::new(0));
            let reentrant = |group: &Arc<TaskGroup>, calls: &Arc<AtomicUsize>| {
                let (g, c): (Weak<TaskGroup>, _) = (Arc::downgrade(group), calls.clone());
                Waker::from(Probe::new(move || {
                    if let Some(g) = g.upgrade() {
                        let _ = g.len();
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                }))
            };
            {
                let mut join = Box::pin(group.join());
                assert!(poll_with(join.as_mut(), &reentrant(&group, &calls)).is_pending());
                // The registry now holds the only clone of the first waker:
                // replacing it drops it.
                assert!(poll_with(join.as_mut(), &reentrant(&group, &calls)).is_pending());
                let mut next = Box::pin(group.join_next());
                assert!(poll_with(next.as_mut(), &reentrant(&group, &calls)).is_pending());
                assert!(poll_with(next.as_mut(), &reentrant(&group, &calls)).is_pending());
            } // both futures dropped: their registrations go, outside the lock
            assert!(calls.load(Ordering::SeqCst) >= 4, "the probes ran");
            tx.send(()).unwrap();
            settle().await;
            assert!(group.is_empty());
        });
    });
}

/// The wakes of an idle group call back into the group (the wake runs after
/// the lock, as the drop does).
#[test]
fn join_waker_that_reenters_on_wake_is_woken_outside_the_lock() {
    watchdog(|| {
        current_thread().block_on(async {
            let group = Arc::new(TaskGroup::new());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            group.spawn(async move { drop(rx.await) });
            let probe = len_probe(&group);
            let waker = Waker::from(probe.clone());
            let mut join = Box::pin(group.join());
            assert!(poll_with(join.as_mut(), &waker).is_pending());
            tx.send(()).unwrap();
            settle().await;
            assert_eq!(probe.wakes(), 1);
            assert!(poll_with(join.as_mut(), &waker).is_ready());
        });
    });
}

// ===== 3. a waker dropped under a scope's lock =====

/// Dropping a pending `cancelled()` drops the node's last clone of its waker;
/// that waker's `drop` makes a child of the same scope (the node's lock).
#[test]
fn dropped_wait_cancelled_drops_its_waker_outside_the_node_lock() {
    watchdog(|| {
        let scope = Arc::new(CancelScope::new());
        let children = Arc::new(AtomicUsize::new(0));
        let reentrant = || {
            let (s, c) = (Arc::downgrade(&scope), children.clone());
            Waker::from(Probe::new(move || {
                if let Some(s) = s.upgrade() {
                    drop(s.child());
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }))
        };
        {
            let mut wait = Box::pin(scope.cancelled());
            assert!(poll_with(wait.as_mut(), &reentrant()).is_pending());
            // Replaced registration: the old waker is dropped.
            assert!(poll_with(wait.as_mut(), &reentrant()).is_pending());
        } // deregistered: the last waker is dropped
        assert!(children.load(Ordering::SeqCst) >= 2);
        // And woken by a cancel: the wake re-enters too.
        let mut wait = Box::pin(scope.cancelled());
        assert!(poll_with(wait.as_mut(), &reentrant()).is_pending());
        scope.cancel();
        assert!(poll_with(wait.as_mut(), Waker::noop()).is_ready());
    });
}

// ===== 4. keys whose Drop panics or re-enters =====

/// A key whose `Drop` panics while `ARMED` (tokio-util's `duplicate_keys_drop`)
/// or calls back into its map (`len()`).
#[derive(Debug)]
struct Key {
    id: u32,
    armed: Arc<AtomicBool>,
    map: Arc<Mutex<Weak<TaskMap<Key>>>>,
}

impl Clone for Key {
    fn clone(&self) -> Self {
        Key {
            id: self.id,
            armed: self.armed.clone(),
            map: self.map.clone(),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        let map = self.map.lock().unwrap().upgrade();
        if let Some(map) = map {
            let _ = map.len(); // deadlocks if a key is dropped under the lock
        }
        if self.armed.load(Ordering::SeqCst) && !std::thread::panicking() {
            panic!("drop called for key {}", self.id);
        }
    }
}

#[test]
fn replacing_a_key_whose_drop_panics_cancels_the_old_task_and_keeps_the_map_consistent() {
    watchdog(|| {
        current_thread().block_on(async {
            let armed = Arc::new(AtomicBool::new(false));
            let weak = Arc::new(Mutex::new(Weak::new()));
            let key = |id| Key {
                id,
                armed: armed.clone(),
                map: weak.clone(),
            };
            let map = Arc::new(TaskMap::<Key>::new());
            *weak.lock().unwrap() = Arc::downgrade(&map);

            let (send, recv) = tokio::sync::oneshot::channel::<()>();
            map.spawn(key(1), async move { drop(recv.await) });
            let (hold, held) = tokio::sync::oneshot::channel::<()>();
            settle().await;

            armed.store(true, Ordering::SeqCst);
            // The spawn may panic (tokio-util's contract allows it); the old
            // task must be cancelled and the map consistent either way.
            let replaced = std::panic::catch_unwind(AssertUnwindSafe(|| {
                map.spawn(key(1), async move { drop(held.await) });
            }));
            settle().await;
            assert!(send.is_closed(), "the old task was not cancelled");
            let probe = key(1);
            assert!(map.contains_key(&probe), "the new task is under its key");
            assert!(!map.is_closing(&probe));
            assert_eq!(map.len(), 1);
            std::mem::forget(probe);
            armed.store(false, Ordering::SeqCst);
            if let Err(p) = replaced {
                // Only a key's drop may have panicked.
                let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(msg.contains("drop called for key"), "{msg}");
            }

            drop(hold);
            settle().await;
            assert_eq!(map.len(), 0);
            assert!(!map.contains_key(&key(1)));
            assert_eq!(map.stats().tracked, 0);
        });
    });
}

#[test]
fn keys_are_dropped_outside_the_lock() {
    watchdog(|| {
        current_thread().block_on(async {
            let armed = Arc::new(AtomicBool::new(false));
            let weak = Arc::new(Mutex::new(Weak::new()));
            let key = |id| Key {
                id,
                armed: armed.clone(),
                map: weak.clone(),
            };
            let map = Arc::new(TaskMap::<Key>::with_policy(ShutdownPolicy {
                grace: Duration::from_millis(10),
                ..Default::default()
            }));
            *weak.lock().unwrap() = Arc::downgrade(&map);
            for id in 0..4 {
                map.spawn(key(id), std::future::pending::<()>());
            }
            // Replacement, per-key cancel, stuck query and shutdown each let
            // go of keys; each `Key::drop` calls `map.len()`.
            map.spawn(key(0), std::future::pending::<()>());
            assert_eq!(map.cancel(&key(1)).await, Some(TaskOutcome::Cancelled));
            assert!(map.stuck_keys().is_empty());
            let report = map.shutdown().await;
            assert!(report.is_clean());
            assert_eq!(map.len(), 0);
        });
    });
}

// ===== 5. coop budget =====

/// As tokio's `JoinSet::join_next`: draining 1,000 ended tasks yields to the
/// runtime, so another task runs before the loop ends.
#[tokio::test(flavor = "current_thread")]
async fn join_next_spends_the_coop_budget() {
    let group = TaskGroup::builder().collect_outcomes(true).build();
    for _ in 0..1_000 {
        group.spawn(async {});
    }
    while !group.is_empty() {
        tokio::task::yield_now().await;
    }
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    tokio::spawn(async move { r.store(true, Ordering::SeqCst) });
    let mut ran_during_loop = false;
    for _ in 0..1_000 {
        assert!(group.join_next().await.is_some());
        ran_during_loop |= ran.load(Ordering::SeqCst);
    }
    assert!(ran_during_loop, "join_next never yielded to the runtime");
    assert_eq!(group.join_next().await, None);
}

// ===== 6. no re-delivery to a task mid-poll, under real contention =====

/// Spins for `us` microseconds when dropped: widens the window in which a task
/// is inside the poll that ends it.
struct SlowDrop(u64);

impl Drop for SlowDrop {
    fn drop(&mut self) {
        let until = std::time::Instant::now() + Duration::from_micros(self.0);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

/// Trio's rule: only a task polled after its delivery that parked again is
/// re-delivered to. 10,000 tasks that end at their first delivery (some slowly,
/// inside that poll) on a loaded 2-worker runtime, a busy runtime beside it,
/// and a 1 ms back-off: zero re-deliveries.
#[test]
fn tasks_ending_at_their_first_delivery_get_no_redelivery_under_contention() {
    let busy = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..2 {
        let stop = stop.clone();
        busy.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
                tokio::task::yield_now().await;
            }
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let group = TaskGroup::builder()
            .policy(ShutdownPolicy {
                grace: Duration::from_secs(20),
                ..Default::default()
            })
            .build();
        for i in 0..10_000u64 {
            if i % 2 == 0 {
                let slow = SlowDrop(if i % 20 == 0 { 200 } else { 0 });
                group.spawn(async move {
                    let _slow = slow;
                    std::future::pending::<()>().await
                });
            } else {
                group.spawn_with_scope(move |scope| async move {
                    scope.cancelled().await;
                    drop(SlowDrop(if i % 21 == 0 { 200 } else { 0 }));
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        group.shutdown().await
    });
    stop.store(true, Ordering::Relaxed);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.completed + report.cancelled, 10_000, "{report}");
    assert_eq!(report.redeliveries, 0, "{report}");
    assert_eq!(report.escalations, 0, "{report}");
}

// ===== 7. shared shutdowns, drop off-runtime, abort grace =====

#[tokio::test(start_paused = true)]
async fn concurrent_shutdowns_count_each_task_once() {
    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_millis(100),
            ..Default::default()
        })
        .build();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    group
        .build_task()
        .on_escalate(move || drop(tx.take()))
        .spawn_with_scope(|_ignored| async move { drop(rx.await) });
    group.spawn(std::future::pending::<()>());
    tokio::task::yield_now().await;
    let (a, b) = tokio::join!(group.shutdown(), group.shutdown());
    assert_eq!(a, b, "the second call returns the first call's report");
    assert_eq!(a.escalations, 1);
    assert_eq!(a.completed + a.aborted + a.cancelled, 2, "{a}");
    assert_eq!(group.stats().escalations, 1);
    // A later call runs a ladder of its own, over nothing new: it counts
    // the same two tasks (since the scope's first cancel), each once.
    let later = group.shutdown().await;
    assert_eq!(later.escalations, 1, "{later}");
    assert_eq!(
        later.completed + later.aborted + later.cancelled,
        2,
        "{later}"
    );
}

/// Dropping a group on a thread with no runtime context still runs its ladder
/// (on the runtime its tasks run on): the stubborn task is escalated.
#[test]
fn dropping_a_group_off_runtime_still_escalates() {
    watchdog(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let escalated = Arc::new(AtomicBool::new(false));
        // The hook runs on a thread of its own, beside the abort.
        let (hook_done_tx, hook_done) = mpsc::channel::<()>();
        let (group, ended) = rt.block_on(async {
            let group = TaskGroup::builder()
                .policy(ShutdownPolicy {
                    grace: Duration::from_millis(20),
                    ..Default::default()
                })
                .build();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
            let mut tx = Some(tx);
            let e = escalated.clone();
            let hook_done = hook_done_tx.clone();
            group
                .build_task()
                .on_escalate(move || {
                    e.store(true, Ordering::SeqCst);
                    drop(tx.take());
                    let _ = hook_done.send(());
                })
                .spawn_with_scope(|_ignored| async move {
                    let _ = rx.await;
                    let _ = ended_tx.send(());
                });
            (group, ended)
        });
        std::thread::spawn(move || drop(group)).join().unwrap();
        rt.block_on(async {
            // The hook closes the task's channel; the abort then drops it (so
            // `ended` closes without a value).
            let _ = tokio::time::timeout(Duration::from_secs(10), ended)
                .await
                .expect("the stubborn task was never escalated");
        });
        hook_done
            .recv_timeout(Duration::from_secs(10))
            .expect("the hook ran");
        assert!(escalated.load(Ordering::SeqCst));
    });
}

/// `abort_grace: 0`: an escalated task gets one scheduling round to end as
/// aborted before it is called stuck.
#[tokio::test(start_paused = true)]
async fn zero_abort_grace_gives_the_abort_a_scheduling_round() {
    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_millis(10),
            abort_grace: Duration::ZERO,
            ..Default::default()
        })
        .build();
    group.spawn_with_scope(|_ignored| std::future::pending::<()>());
    tokio::task::yield_now().await;
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.aborted, 1);
    assert_eq!(report.escalations, 1);
    assert!(group.is_empty());
}

// ===== re-entrant wakers on the tracked task itself =====

/// A group whose `join` waker re-enters it on wake (calls `len()`) while a
/// shutdown delivers to its tasks: no deadlock, one wake per task, one wake
/// of the waiter.
#[test]
fn cancel_delivery_wakes_each_task_once_with_reentrant_inner_wakes() {
    watchdog(|| {
        current_thread().block_on(async {
            let group = Arc::new(TaskGroup::new());
            let polls = Arc::new(AtomicUsize::new(0));
            for _ in 0..10 {
                let p = polls.clone();
                group.spawn(common::PollCounter::new(p, std::future::pending::<()>()));
            }
            settle().await;
            assert_eq!(polls.load(Ordering::SeqCst), 10);
            let probe = len_probe(&group);
            let waker = Waker::from(probe.clone());
            let mut join = Box::pin(group.join());
            assert!(poll_with(join.as_mut(), &waker).is_pending());
            let report = group.shutdown().await;
            assert_eq!(report.cancelled, 10);
            assert_eq!(report.deliveries, 10);
            assert_eq!(report.redeliveries, 0);
            assert_eq!(probe.wakes(), 1);
            assert!(poll_with(join.as_mut(), &waker).is_ready());
        });
    });
}
