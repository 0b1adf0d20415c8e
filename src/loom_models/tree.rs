//! Models of the cancel scope tree (`scope/tree.rs`), through the real
//! `CancelScope` handles and their `cancelled()` future.

use std::future::Future;
use std::pin::pin;
use std::task::{Poll, Waker};

use loom::future::block_on;
use loom::thread;

use super::{CountingWaker, Seen, check};
use crate::scope::tree::{self, TimerStep};
use crate::{CancelReason, CancelScope};

/// Polls `scope.cancelled()` until it resolves; returns whether the first poll
/// already saw the cancel (`true`) or had to register and be woken (`false`).
/// A lost wakeup leaves the waiter parked forever, which loom reports as a
/// deadlock.
fn wait_cancelled(scope: &CancelScope) -> bool {
    let mut fut = pin!(scope.cancelled());
    let mut first = None;
    block_on(std::future::poll_fn(|cx| {
        let r = fut.as_mut().poll(cx);
        first.get_or_insert(r.is_ready());
        r
    }));
    first.expect("polled at least once")
}

/// Level-triggered: a fresh waiter on a cancelled scope resolves on its first
/// poll (property 5).
fn assert_resolves_at_once(scope: &CancelScope) {
    let mut fut = pin!(scope.cancelled());
    let mut cx = std::task::Context::from_waker(Waker::noop());
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(()));
}

/// Proves property 4 (no lost wakeup): waiters on a scope and on its child,
/// registering concurrently at any moment relative to the parent's `cancel()`,
/// both observe the cancel.
#[test]
fn cancel_races_waiter_registration() {
    let seen = Seen::new(&["registered_then_woken", "saw_cancel_at_first_poll"]);
    let tally = seen.clone();
    check("cancel_races_waiter_registration", &seen, move || {
        tally.iteration();
        let root = CancelScope::new();
        let child = root.child();
        let canceller = {
            let root = root.clone();
            thread::spawn(move || root.cancel())
        };
        let other_waiter = {
            let root = root.clone();
            thread::spawn(move || wait_cancelled(&root))
        };
        let saw_first = wait_cancelled(&child);
        tally.hit(if saw_first {
            "saw_cancel_at_first_poll"
        } else {
            "registered_then_woken"
        });
        canceller.join().unwrap();
        other_waiter.join().unwrap();
        assert_eq!(child.reason(), Some(CancelReason::Requested));
        assert_eq!(tree::waiter_count(root.node()), 0);
        // The cancel drained the waiter list (tree invariant 2).
        assert_eq!(tree::waiter_count(child.node()), 0);
        assert_resolves_at_once(&child);
    });
}

/// Proves that a shielded scope, made at any moment relative to its parent's
/// cancel, is never cancelled by it (nor is its own child), while a plain
/// child made at the same moment always is (tree invariant 3).
#[test]
fn shield_races_parent_cancel() {
    let seen = Seen::new(&["child_made_before_cancel", "child_made_after_cancel"]);
    let tally = seen.clone();
    check("shield_races_parent_cancel", &seen, move || {
        tally.iteration();
        let root = CancelScope::new();
        let canceller = {
            let root = root.clone();
            thread::spawn(move || root.cancel())
        };
        let shield = root.shielded_child();
        let inner = shield.child();
        let plain = root.child();
        tally.hit(if plain.is_cancelled() {
            "child_made_after_cancel"
        } else {
            "child_made_before_cancel"
        });
        // Born cancelled or cancelled by the walk: either way it resolves.
        wait_cancelled(&plain);
        canceller.join().unwrap();
        assert_eq!(plain.reason(), Some(CancelReason::Requested));
        assert!(
            !shield.is_cancelled(),
            "a shield was cancelled by its parent"
        );
        assert!(
            !inner.is_cancelled(),
            "a shield's child was cancelled from above"
        );
        // The shield still works as a scope of its own.
        shield.cancel();
        assert_eq!(inner.reason(), Some(CancelReason::Requested));
        assert_resolves_at_once(&inner);
    });
}

/// Proves the first reason wins and stays: a deadline that passes (the
/// `with_deadline(now)` path, as the deadline timer's own cancel) racing an
/// explicit cancel of the same scope leaves one reason, seen by both racers,
/// by every later read, and by the child the cancel walks down to.
#[test]
fn deadline_races_cancel() {
    let seen = Seen::new(&["deadline_first", "cancel_first"]);
    let tally = seen.clone();
    check("deadline_races_cancel", &seen, move || {
        tally.iteration();
        let root = CancelScope::new();
        let child = root.child();
        let timer = {
            let root = root.clone();
            thread::spawn(move || {
                let root = root.with_deadline(tokio::time::Instant::now());
                root.reason()
            })
        };
        let did = tree::cancel(root.node(), CancelReason::Requested);
        let seen_here = root.reason();
        let seen_there = timer.join().unwrap();
        let winner = root.reason().expect("cancelled");
        tally.hit(match winner {
            CancelReason::Deadline => "deadline_first",
            _ => "cancel_first",
        });
        assert_eq!(did, winner == CancelReason::Requested);
        assert_eq!(
            seen_here,
            Some(winner),
            "the reason changed after the first cancel"
        );
        assert_eq!(
            seen_there,
            Some(winner),
            "the reason changed after the first cancel"
        );
        assert_eq!(child.reason(), Some(winner), "the child got another reason");
        // Later cancels change nothing.
        assert!(!tree::cancel(root.node(), CancelReason::Deadline));
        assert_eq!(root.reason(), Some(winner));
    });
}

/// A cancel with a message racing a plain cancel of the same scope leaves one
/// (reason, message) pair (invariants 1 and 7): each racer reads the winner's
/// at the root; a child read during the race is either not cancelled yet or
/// already has the winner's message (the message is published with the flag);
/// after both, the child has it too.
#[test]
fn cancel_with_races_cancel() {
    let seen = Seen::new(&["message_first", "plain_first"]);
    let tally = seen.clone();
    check("cancel_with_races_cancel", &seen, move || {
        tally.iteration();
        let root = CancelScope::new();
        let child = root.child();
        // The message is read after the flag was seen: seeing the flag must
        // mean seeing the winner's message (the two reads are not one step,
        // so reading the message first could see a cancel the flag read missed).
        let snapshot = |s: &CancelScope| {
            let reason = s.reason();
            (reason, reason.and_then(|_| s.cancel_message()))
        };
        let other = {
            let root = root.clone();
            let child = child.clone();
            thread::spawn(move || {
                root.cancel_with("a");
                (snapshot(&root), snapshot(&child))
            })
        };
        root.cancel();
        let here = (snapshot(&root), snapshot(&child));
        let there = other.join().unwrap();
        let winner = snapshot(&root);
        tally.hit(match winner.1 {
            Some(_) => "message_first",
            None => "plain_first",
        });
        assert_eq!(winner.0, Some(CancelReason::Requested));
        for (at_root, at_child) in [here, there] {
            assert_eq!(at_root, winner, "a racer read another message");
            assert!(
                at_child == (None, None) || at_child == winner,
                "the child's message disagrees with its flag: {at_child:?}"
            );
        }
        assert_eq!(snapshot(&child), winner);
    });
}

/// A deadline far enough away that it never fires in a model.
const FAR: i64 = 1 << 50;

/// The deadline timer task, as `deadline_timer` (`scope/timer.rs`) drives it
/// minus the sleep: polls `timer_poll` until it says `Stop`. A wake it misses
/// leaves it parked forever, which loom reports as a deadlock.
fn run_timer(node: &tree::Node) {
    block_on(std::future::poll_fn(|cx| {
        match tree::timer_poll(node, cx.waker()) {
            TimerStep::Stop => Poll::Ready(()),
            TimerStep::SleepUntil(at) => {
                assert_eq!(at, FAR);
                Poll::Pending
            }
        }
    }));
}

/// Proves tree invariant 9 (the timer follows its waiters): the last armed
/// waiter leaving races a new waiter arming, while the timer task polls.
/// Either the new waiter finds the old timer still running and keeps it, or
/// that timer stopped first and the new waiter starts another; never both,
/// never none: while a waiter is armed a timer runs, and once the last one
/// has left the timer ends.
#[test]
fn disarm_races_rearm() {
    let seen = Seen::new(&["timer_kept", "timer_restarted"]);
    let tally = seen.clone();
    check("disarm_races_rearm", &seen, move || {
        tally.iteration();
        let scope = CancelScope::new();
        let node = scope.node().clone();
        assert!(!tree::tighten_deadline(&node, FAR), "nobody waits yet");
        // The first waiter arms and starts the timer.
        assert!(tree::arm_timer(&node));
        let timer = {
            let node = node.clone();
            thread::spawn(move || run_timer(&node))
        };
        let leaving = {
            let node = node.clone();
            thread::spawn(move || tree::disarm_timer(&node))
        };
        // The second waiter arms while the first leaves.
        let start = tree::arm_timer(&node);
        assert!(tree::timer_running(&node), "an armed waiter with no timer");
        leaving.join().unwrap();
        assert!(
            tree::timer_running(&node),
            "the timer stopped under a waiter"
        );
        if start {
            tally.hit("timer_restarted");
            // The old timer said `Stop` before the arm: it has ended.
            timer.join().unwrap();
            // The new one sleeps while the waiter is armed, and is woken to
            // stop when it leaves.
            let wakes = CountingWaker::new(Waker::noop());
            let waker = Waker::from(wakes.clone());
            assert_eq!(tree::timer_poll(&node, &waker), TimerStep::SleepUntil(FAR));
            tree::disarm_timer(&node);
            assert_eq!(wakes.wakes(), 1, "the last disarm did not wake the timer");
            assert_eq!(tree::timer_poll(&node, &waker), TimerStep::Stop);
        } else {
            tally.hit("timer_kept");
            tree::disarm_timer(&node);
            // The kept timer is woken and stops.
            timer.join().unwrap();
        }
        assert!(!tree::timer_running(&node));
        assert_eq!(tree::armed_count(&node), 0);
        assert!(!scope.is_cancelled(), "no deadline fired");
    });
}
