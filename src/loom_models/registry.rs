//! Models of tracked entries (`registry.rs`): pruning, done-task skipping and
//! keyed replacement.

use std::task::{Poll, Waker};

use loom::future::block_on;
use loom::sync::atomic::AtomicBool;
use loom::thread;

use super::{CountingWaker, Seen, check};
use crate::registry::{Registry, TaskOutcome};
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
        let (mut guard, _) = Registry::insert(&registry, (), None);
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
        let c = &registry.counters;
        assert_eq!(c.completed.load(Ordering::Relaxed), 1);
        let others = c.cancelled.load(Ordering::Relaxed)
            + c.aborted.load(Ordering::Relaxed)
            + c.panicked.load(Ordering::Relaxed);
        assert_eq!(others, 0);
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
        let (old, _) = Registry::insert(&registry, (), Some(7));
        let old_cell = old.cell().clone();
        let old_task = thread::spawn(move || drop(old));

        let (new, replaced) = Registry::insert(&registry, (), Some(7));
        let mapped = registry.get(&7).expect("the new task is under its key");
        assert!(Arc::ptr_eq(&mapped, new.cell()));
        match &replaced {
            Some(r) => {
                assert!(Arc::ptr_eq(r, &old_cell));
                tally.hit("replaced_live_task");
                // As `retire`: wait for the old task's end, parked.
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
