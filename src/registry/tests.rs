//! Unit tests of the registry core (the loom models check its orderings).

use std::task::Waker;

use super::state::*;
use super::*;
use crate::sync::Arc;

fn registry() -> Arc<Registry<(), &'static str>> {
    Arc::new(Registry::new(false))
}

#[test]
fn a_task_ending_while_delivery_is_in_flight_is_skipped() {
    let reg = registry();
    let guard = Registry::insert(&reg, (), None).guard;
    let snapshot = reg.pending(); // the canceller's view
    let cell = guard.cell().clone();
    cell.begin_poll(std::task::Waker::noop()); // polled: deliverable
    drop(guard); // ... but it ends before the canceller gets to it
    assert!(!snapshot[0].schedule(), "an ended task is never woken");
    assert!(!snapshot[0].redeliver(8));
    assert_eq!(cell.redeliveries(), 0);
    assert_eq!(reg.len(), 0);
    assert_eq!(cell.outcome(), Some(TaskOutcome::Aborted));
}

#[test]
fn a_scheduled_task_is_not_woken_again_and_redelivery_is_capped() {
    let reg = registry();
    let guard = Registry::insert(&reg, (), None).guard;
    let cell = guard.cell().clone();
    assert!(!cell.schedule(), "never polled: already scheduled");
    assert!(!cell.deliver(), "never polled: the delivery needs no wake");
    for round in 0..5 {
        let start = cell.begin_poll(std::task::Waker::noop());
        assert!(start.delivered);
        assert!(!cell.redeliver(3), "mid-poll: never re-delivered");
        cell.parked_after_delivery();
        assert_eq!(cell.redeliver(3), round < 3, "round {round}");
        assert!(!cell.redeliver(3), "woken, not polled since");
    }
    assert_eq!(cell.redeliveries(), 3);
}

#[test]
fn only_a_task_that_parked_after_the_delivery_is_redelivered_to() {
    let reg = registry();
    let guard = Registry::insert(&reg, (), None).guard;
    let cell = guard.cell().clone();
    // Polled and parked before any delivery.
    assert!(!cell.begin_poll(std::task::Waker::noop()).delivered);
    assert!(!cell.redeliver(8), "not delivered yet");
    assert!(cell.deliver());
    assert!(!cell.redeliver(8), "delivered, not polled since");
    // The poll that sees the cancel ends the task: never re-delivered.
    assert!(cell.begin_poll(std::task::Waker::noop()).delivered);
    assert!(!cell.redeliver(8), "in the poll that ends it");
    drop(guard);
    assert!(!cell.redeliver(8));
    assert_eq!(cell.redeliveries(), 0);
}

#[test]
fn every_library_wake_of_a_cell_is_bounded_by_the_limit_plus_three() {
    use std::sync::atomic::{AtomicUsize as StdAtomic, Ordering::SeqCst};
    use std::task::Wake;
    struct Count(StdAtomic);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    const LIMIT: u32 = 5;
    let count = std::sync::Arc::new(Count(StdAtomic::new(0)));
    let waker = Waker::from(count.clone());
    let reg = registry();
    let guard = Registry::insert(&reg, (), None).guard;
    let cell = guard.cell().clone();
    let park = || {
        let start = cell.begin_poll(&waker);
        if start.delivered {
            cell.parked_after_delivery();
        }
    };
    park();
    // Every kind of wake, each tried more often than it may happen.
    for _ in 0..3 {
        cell.deliver();
        park();
    }
    for _ in 0..3 {
        if cell.request_cancel() {
            cell.deliver_or_schedule();
        }
        park();
    }
    for _ in 0..(2 * LIMIT) {
        cell.redeliver(LIMIT);
        park();
    }
    for _ in 0..3 {
        if cell.mark_escalated() {
            cell.schedule();
        }
        park();
    }
    assert_eq!(cell.redeliveries(), LIMIT);
    assert_eq!(count.0.load(SeqCst), LIMIT as usize + 3);
}

#[test]
fn a_redelivery_count_holds_every_u32_and_leaves_the_flags_alone() {
    let near = Snapshot(
        Snapshot::new(Watch::Nothing).0 & !SCHEDULED
            | DELIVERED
            | PARKED
            | CLOSING
            | (u64::from(u32::MAX - 1) << REDELIVERY_SHIFT),
    );
    let at_max = near.redelivered(u32::MAX).expect("one below the limit");
    assert_eq!(at_max.redeliveries(), u32::MAX);
    assert!(at_max.is_scheduled() && !at_max.is_parked());
    assert!(at_max.is_closing() && at_max.is_delivered());
    assert_eq!(at_max.watch(), Watch::Nothing);
    // Parked again at the top: no limit lets the count wrap.
    let parked = Snapshot(at_max.0 & !SCHEDULED | PARKED);
    assert_eq!(parked.redelivered(u32::MAX), None);
    // A limit above 16 bits is a limit, not a wrap.
    let mid = Snapshot(PARKED | DELIVERED | (70_000 << REDELIVERY_SHIFT));
    assert_eq!(mid.redelivered(70_000), None);
    assert_eq!(
        mid.redelivered(70_001).map(Snapshot::redeliveries),
        Some(70_001)
    );
}

#[test]
fn every_watch_reads_back_as_written_and_leaves_the_flags_clear() {
    for watch in [Watch::Tracker, Watch::Own, Watch::Nothing, Watch::Blocking] {
        let s = Snapshot::new(watch);
        assert_eq!(s.watch(), watch);
        assert_eq!(s.0 & !WATCH_MASK, SCHEDULED, "{s:?}");
        let ended = s.ended(TaskOutcome::Panicked);
        assert_eq!(ended.watch(), watch);
        assert_eq!(ended.outcome(), Some(TaskOutcome::Panicked));
    }
}

#[test]
fn an_old_entry_never_removes_the_newer_one_under_its_key() {
    let reg = registry();
    let Inserted {
        guard: old,
        replaced,
    } = Registry::insert(&reg, (), Some("k"));
    assert!(replaced.is_none());
    let Inserted {
        guard: new,
        replaced,
    } = Registry::insert(&reg, (), Some("k"));
    assert_eq!(replaced.map(|c| c.id), Some(old.cell().id));
    drop(old);
    assert_eq!(reg.get(&"k").map(|c| c.id), Some(new.cell().id));
    drop(new);
    assert!(reg.get(&"k").is_none());
}

#[test]
fn idle_and_ended_waiters_are_woken_once_by_the_end() {
    use std::sync::atomic::AtomicUsize as StdAtomic;
    use std::task::Wake;
    struct Count(StdAtomic);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let count = std::sync::Arc::new(Count(StdAtomic::new(0)));
    let waker = std::task::Waker::from(count.clone());
    let reg = registry();
    let a = Registry::insert(&reg, (), None).guard;
    let b = Registry::insert(&reg, (), None).guard;
    let (mut idle, mut ended) = (None, None);
    assert!(reg.poll_idle(&waker, &mut idle).is_pending());
    assert!(reg.poll_ended(a.cell(), &waker, &mut ended).is_pending());
    let a_cell = a.cell().clone();
    drop(a);
    assert_eq!(
        count.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "ended"
    );
    assert!(reg.poll_ended(&a_cell, &waker, &mut ended).is_ready());
    drop(b);
    assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2, "idle");
    assert!(reg.poll_idle(&waker, &mut idle).is_ready());
    reg.release_idle(&mut idle);
    reg.release_ended(a_cell.id, &mut ended);
}
