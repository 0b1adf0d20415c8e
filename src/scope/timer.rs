//! The deadline timer: the one tokio task per scope deadline that somebody
//! waits on. It sleeps until the deadline, cancels the scope, and ends early
//! when the scope is cancelled or detached or its last armed waiter leaves
//! (tree invariant 9).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use super::clock::from_ticks;
use super::tree::{self, CancelReason, Node, TimerStep};
use crate::sync::Arc;

// ===== deadline timer =====

/// Starts the timer task that `tree::arm_timer` / `tree::pin_timer` said to
/// start.
#[track_caller]
pub(super) fn spawn_timer(node: Arc<Node>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(deadline_timer(node));
        }
        Err(_) => {
            // No task will clear the claim: give it back first, so that a
            // waiter inside a runtime can start the timer later.
            tree::timer_not_started(&node);
            panic!(
                "cancel_scope: a CancelScope deadline is being waited on outside a tokio runtime; \
             deadlines need tokio's time driver: await the scope inside a runtime built with \
             `enable_time()` (as `#[tokio::main]` does)"
            )
        }
    }
}

/// The one timer of a scope with a deadline that somebody waits on. Holds the
/// node (not a handle, so the scope can still detach) and ends on fire, cancel,
/// detach, or when its last armed waiter leaves (tree invariant 9): after that
/// nothing of the scope is scheduled.
async fn deadline_timer(node: Arc<Node>) {
    let mut sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        loop {
            match tree::timer_poll(&node, cx.waker()) {
                TimerStep::Stop => return Poll::Ready(()),
                TimerStep::SleepUntil(ticks) => {
                    let at = from_ticks(ticks);
                    let sleep = match &mut sleep {
                        Some(s) => {
                            if s.deadline() != at {
                                s.as_mut().reset(at);
                            }
                            s
                        }
                        none => none.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Fired: cancel, then the next `timer_poll` says Stop.
                    tree::cancel(&node, CancelReason::Deadline);
                }
            }
        }
    })
    .await;
}
