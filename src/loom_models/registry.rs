//! Models of tracked entries (`registry/`): pruning, done-task skipping,
//! keyed replacement, re-delivery only to a task parked after its delivery,
//! and generation-checked join waiters (with its negative control).

use std::task::{Poll, Waker};

use loom::future::block_on;
use loom::sync::atomic::AtomicBool;
use loom::thread;
use std::sync::Arc as StdArc;

use super::{CountingWaker, Seen, check};
use crate::registry::{Inserted, Registry, TaskCell, TaskOutcome};
use crate::sync::{Arc, Ordering};

/// A canceller's pass, as the deliverer and a re-delivery rung: snapshot,
/// then one delivery and one counted re-delivery per task in it. Asserts that
/// nothing is claimed for a task already seen ended; returns whether the
/// snapshot was empty and how many wakes were claimed.
fn canceller_pass(registry: &Registry<(), ()>, ended: &AtomicBool, limit: u32) -> (bool, usize) {
    let ended_before = ended.load(Ordering::SeqCst);
    let snapshot = registry.pending();
    assert!(
        !ended_before || snapshot.is_empty(),
        "an ended task is in a snapshot"
    );
    let mut claimed = 0;
    for c in &snapshot {
        let ended_now = ended.load(Ordering::SeqCst);
        let delivered = c.schedule();
        assert!(!(ended_now && delivered), "delivered to an ended task");
        let ended_now = ended.load(Ordering::SeqCst);
        let redelivered = c.redeliver(limit);
        assert!(!(ended_now && redelivered), "re-delivered to an ended task");
        claimed += usize::from(delivered) + usize::from(redelivered);
    }
    (snapshot.is_empty(), claimed)
}

/// Proves done-task skipping and single pruning (properties 2 and 3): a task
/// that ends while two cancellers (two ladders) snapshot, deliver and
/// re-deliver is pruned exactly once, is absent from any snapshot taken after
/// it ended, and never has a wake claimed for it once it has ended (registry
/// invariant 1); since it is polled once, one wake at most is claimed in all
/// (coalescing, invariant 2) and the re-delivery cap holds across ladders
/// (invariant 3).
#[test]
fn cancel_races_task_completion() {
    const LIMIT: u32 = 1;
    let seen = Seen::new(&[
        "ended_before_snapshot",
        "woken_before_end",
        "in_snapshot_but_skipped",
    ]);
    let tally = seen.clone();
    check("cancel_races_task_completion", &seen, move || {
        tally.iteration();
        let registry = Arc::new(Registry::<(), ()>::new(false));
        let mut guard = Registry::insert(&registry, (), None).guard;
        let cell = guard.cell().clone();
        let counting = CountingWaker::new(Waker::noop());
        let ended = Arc::new(AtomicBool::new(false));
        let task = {
            let ended = ended.clone();
            let waker = Waker::from(counting.clone());
            thread::spawn(move || {
                // One poll, in which the task completes.
                guard.cell().begin_poll(&waker);
                guard.outcome = TaskOutcome::Completed;
                drop(guard);
                // SeqCst pairs with the cancellers' loads: one that reads
                // `true` runs after the prune in every order loom tries.
                ended.store(true, Ordering::SeqCst);
            })
        };
        let other_ladder = {
            let (registry, ended) = (registry.clone(), ended.clone());
            thread::spawn(move || canceller_pass(&registry, &ended, LIMIT).1)
        };

        let (empty, claimed_here) = canceller_pass(&registry, &ended, LIMIT);
        tally.hit(match (empty, claimed_here) {
            (true, _) => "ended_before_snapshot",
            (false, 0) => "in_snapshot_but_skipped",
            (false, _) => "woken_before_end",
        });
        task.join().unwrap();
        let claimed = claimed_here + other_ladder.join().unwrap();

        // Coalescing: the task was polled once, so one wake at most.
        assert!(
            claimed <= 1,
            "{claimed} wakes claimed for a task polled once"
        );
        assert!(cell.redeliveries() <= LIMIT);
        assert!(cell.is_ended());
        assert_eq!(cell.outcome(), Some(TaskOutcome::Completed));
        assert!(!cell.redeliver(LIMIT + 1) && !cell.schedule());
        // Pruned exactly once.
        assert_eq!(registry.len(), 0);
        let t = registry.task_counts();
        assert_eq!(t.completed, 1);
        assert_eq!(t.cancelled + t.aborted + t.panicked, 0);
        assert_eq!(
            registry.poll_ended(&cell, Waker::noop(), &mut None),
            Poll::Ready(())
        );
    });
}

/// Proves keyed replacement (property 3, registry invariant 4): when a new
/// task takes a key while the old task under it ends, the key maps to the new
/// task from its insert on, and the old task's end never removes it; the
/// retiring ladder's `poll_ended` on the old task, parked at any moment
/// relative to that end, is woken by it (no lost wakeup).
#[test]
fn replace_races_old_completion() {
    let seen = Seen::new(&["replaced_live_task", "old_task_ended_first"]);
    let tally = seen.clone();
    check("replace_races_old_completion", &seen, move || {
        tally.iteration();
        let registry = Arc::new(Registry::<(), u8>::new(false));
        let old = Registry::insert(&registry, (), Some(7)).guard;
        let old_cell = old.cell().clone();
        let old_task = thread::spawn(move || drop(old));

        let Inserted {
            guard: new,
            replaced,
        } = Registry::insert(&registry, (), Some(7));
        let mapped = registry.get(&7).expect("the new task is under its key");
        assert!(Arc::ptr_eq(&mapped, new.cell()));
        match &replaced {
            Some(r) => {
                assert!(Arc::ptr_eq(r, &old_cell));
                tally.hit("replaced_live_task");
                // As `begin_cancel`: wait for the old task's end, parked.
                let mut slot = None;
                block_on(std::future::poll_fn(|cx| {
                    registry.poll_ended(r, cx.waker(), &mut slot)
                }));
                assert!(slot.is_none(), "a ready poll_ended left its registration");
            }
            None => tally.hit("old_task_ended_first"),
        }
        old_task.join().unwrap();

        let mapped = registry
            .get(&7)
            .expect("the old task's end removed the new one");
        assert!(Arc::ptr_eq(&mapped, new.cell()));
        assert_eq!(registry.len(), 1);
        assert!(old_cell.is_ended());
        drop(new);
        assert!(registry.get(&7).is_none());
        assert_eq!(registry.len(), 0);
    });
}

/// One re-delivery rung; returns whether it claimed a wake and whether the
/// task's poll had begun when it looked.
fn rung(
    cell: &TaskCell<()>,
    began: &AtomicBool,
    returned: &AtomicBool,
    limit: u32,
) -> (bool, bool) {
    let woke = cell.redeliver(limit);
    // The claim's Acquire pairs with the Release of `PARKED`, which follows
    // the store of `returned` in the task's program order.
    assert!(
        !woke || returned.load(Ordering::SeqCst),
        "re-delivered to a task whose poll had not returned"
    );
    (woke, began.load(Ordering::SeqCst))
}

/// Proves registry invariant 3's `PARKED` rule (Trio: one abort attempt per
/// blocking call): two ladders' re-delivery rungs race the poll that follows
/// the first delivery. When that poll ends the task, no rung ever claims a
/// wake, whether it runs before the poll, in the middle of it or after the
/// end; when the poll parks again, a rung claims one only after the poll
/// returned, and one at most however many ladders run.
fn redelivery_races_poll(ends: bool, seen: &Seen) {
    const LIMIT: u32 = 2;
    seen.iteration();
    let registry = Arc::new(Registry::<(), ()>::new(false));
    let mut guard = Registry::insert(&registry, (), None).guard;
    let cell = guard.cell().clone();
    // Polled once and parked, then the first delivery wakes it.
    assert!(!cell.begin_poll(Waker::noop()).delivered);
    assert!(cell.deliver());
    let began = Arc::new(AtomicBool::new(false));
    let returned = Arc::new(AtomicBool::new(false));
    let task = {
        let (began, returned) = (began.clone(), returned.clone());
        thread::spawn(move || {
            let start = guard.cell().begin_poll(Waker::noop());
            began.store(true, Ordering::SeqCst);
            assert!(start.delivered);
            if ends {
                guard.outcome = TaskOutcome::Cancelled;
                drop(guard);
                None
            } else {
                returned.store(true, Ordering::SeqCst);
                guard.cell().parked_after_delivery();
                // The task is parked, not ended: its guard lives on.
                Some(guard)
            }
        })
    };
    let other = {
        let (cell, began, returned) = (cell.clone(), began.clone(), returned.clone());
        thread::spawn(move || rung(&cell, &began, &returned, LIMIT).0)
    };
    let (woke_here, began_seen) = rung(&cell, &began, &returned, LIMIT);
    let parked = task.join().unwrap();
    let claims = usize::from(woke_here) + usize::from(other.join().unwrap());
    // Either ladder's rung may be the one that finds the task parked.
    seen.hit(match (claims > 0, began_seen) {
        (true, _) => "rung_after_park",
        (false, false) => "rung_before_poll",
        (false, true) => "rung_during_or_after_poll",
    });
    if ends {
        assert_eq!(
            claims, 0,
            "a task that ended at its delivery was re-delivered to"
        );
        assert!(cell.is_ended());
        assert_eq!(registry.len(), 0);
    } else {
        assert!(claims <= 1, "{claims} re-deliveries for one park");
        assert_eq!(cell.redeliveries() as usize, claims);
        drop(parked);
        assert_eq!(registry.len(), 0);
    }
}

#[test]
fn redelivery_races_the_poll_that_ends_the_task() {
    let seen = Seen::new(&["rung_before_poll", "rung_during_or_after_poll"]);
    let tally = seen.clone();
    check(
        "redelivery_races_the_poll_that_ends_the_task",
        &seen,
        move || redelivery_races_poll(true, &tally),
    );
}

#[test]
fn redelivery_races_the_poll_that_parks_again() {
    let seen = Seen::new(&[
        "rung_before_poll",
        "rung_during_or_after_poll",
        "rung_after_park",
    ]);
    let tally = seen.clone();
    check(
        "redelivery_races_the_poll_that_parks_again",
        &seen,
        move || redelivery_races_poll(false, &tally),
    );
}

/// Proves that a join waiter's stale key never costs a later waiter its
/// wakeup (tokio-util's `notify_many`): waiter A parks on idleness; one thread
/// ends the task (the registry goes idle, A is woken), respawns one and parks
/// waiter B; A re-polls at any moment, before the idle, between it and B's
/// registration, or after it (B then holds the slab slot A's key points at).
/// When the respawned task ends, B is woken, and A is done or woken too.
fn join_waiters(seen: &Seen) {
    seen.iteration();
    let registry = Arc::new(Registry::<(), ()>::new(false));
    let first = Registry::insert(&registry, (), None).guard;
    let (wa, wb) = (
        CountingWaker::new(Waker::noop()),
        CountingWaker::new(Waker::noop()),
    );
    let (wa_waker, wb_waker) = (Waker::from(wa.clone()), Waker::from(wb.clone()));
    let mut a_key = None;
    assert!(registry.poll_idle(&wa_waker, &mut a_key).is_pending());
    let idle_seen = Arc::new(AtomicBool::new(false));
    let b_parked = Arc::new(AtomicBool::new(false));
    let other = {
        let (registry, idle_seen, b_parked) =
            (registry.clone(), idle_seen.clone(), b_parked.clone());
        thread::spawn(move || {
            drop(first);
            idle_seen.store(true, Ordering::SeqCst);
            let respawned = Registry::insert(&registry, (), None).guard;
            let mut b_key = None;
            assert!(registry.poll_idle(&wb_waker, &mut b_key).is_pending());
            b_parked.store(true, Ordering::SeqCst);
            (respawned, b_key, wb_waker)
        })
    };
    let b_first = b_parked.load(Ordering::SeqCst);
    let a_again = registry.poll_idle(&wa_waker, &mut a_key);
    let idle_after = idle_seen.load(Ordering::SeqCst);
    let (respawned, mut b_key, _wb_waker) = other.join().unwrap();
    seen.hit(match (b_first, idle_after) {
        (true, _) => "a_repolled_after_b_parked",
        (false, false) => "a_repolled_before_the_idle",
        (false, true) => "a_repolled_around_b",
    });
    drop(respawned);
    assert_eq!(wb.wakes(), 1, "B's registration was lost to A's stale key");
    if a_again.is_pending() {
        assert!(wa.wakes() >= 1, "A re-registered and was never woken");
    }
    registry.release_idle(&mut a_key);
    registry.release_idle(&mut b_key);
    drop(wa_waker);
    assert_eq!(
        StdArc::strong_count(&wa),
        1,
        "A's waker is still registered"
    );
}

#[test]
fn join_waiters_survive_respawn() {
    let seen = Seen::new(&[
        "a_repolled_before_the_idle",
        "a_repolled_around_b",
        "a_repolled_after_b_parked",
    ]);
    let tally = seen.clone();
    check("join_waiters_survive_respawn", &seen, move || {
        join_waiters(&tally)
    });
}

/// The negative control's model: `join_waiters_survive_respawn` with the
/// generation checks off (a plain slab index, as before). It must fail; loom
/// aborts the process while unwinding out of a failed model, so
/// [`stale_join_key_is_caught`] runs it in a child process.
#[test]
#[ignore = "negative control: must fail; run by stale_join_key_is_caught in a child process"]
fn stale_join_key_model() {
    crate::wait_list::IGNORE_GENERATIONS.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = Seen::new(&[
        "a_repolled_before_the_idle",
        "a_repolled_around_b",
        "a_repolled_after_b_parked",
    ]);
    let tally = seen.clone();
    check("stale_join_key_model", &seen, move || join_waiters(&tally));
}

/// Negative control for `join_waiters_survive_respawn`: without generations
/// the model finds the overwritten registration.
#[test]
fn stale_join_key_is_caught() {
    super::negative_control(
        "loom_models::registry::stale_join_key_model",
        &["lost to A's stale key"],
    );
}

/// Proves that `TaskGroup::try_join_next` (`Registry::try_next_end`) racing a
/// task's end takes that end exactly once: a take that runs before the end
/// finds nothing, and the end is then in the log for the next take; one that
/// runs after takes it; never twice, never lost, and the task is pruned in
/// both orders.
#[test]
fn try_join_next_races_an_end() {
    let seen = Seen::new(&["taken_by_the_racing_take", "taken_after"]);
    let tally = seen.clone();
    check("try_join_next_races_an_end", &seen, move || {
        tally.iteration();
        let registry = Arc::new(Registry::<(), ()>::new(true));
        let mut guard = Registry::insert(&registry, (), None).guard;
        let id = guard.cell().id;
        let task = thread::spawn(move || {
            guard.outcome = TaskOutcome::Completed;
            drop(guard);
        });
        let racing = registry.try_next_end().expect("ends are recorded");
        task.join().unwrap();
        let after = registry.try_next_end().expect("ends are recorded");
        match (racing, after) {
            (Some(end), None) => {
                assert_eq!(end, (id, TaskOutcome::Completed));
                tally.hit("taken_by_the_racing_take");
            }
            (None, Some(end)) => {
                assert_eq!(end, (id, TaskOutcome::Completed));
                tally.hit("taken_after");
            }
            other => panic!("the end was taken {other:?}"),
        }
        assert_eq!(registry.try_next_end(), Some(None));
        assert_eq!(registry.len(), 0);
    });
}
