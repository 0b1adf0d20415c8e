//! Waiting on a scope: [`Waiter`], the one registration in a scope's waiter
//! list that every waiting future uses, and the futures built on it,
//! [`WaitCancelled`], [`WaitCancelledOwned`] and [`Run`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::handle::is_cancelled;
use super::timer::spawn_timer;
use super::tree::{self, NO_DEADLINE, Node};
use super::{CancelScope, Cancelled};
use crate::sync::Arc;

// ===== waiting =====

/// One registration in a scope's waiter list, shared by every future that
/// waits on a scope.
///
/// A `poll` that registers on a scope with a deadline arms the deadline's
/// timer once (counted at the deadline's origin, tree invariant 9), and
/// `release` disarms it: the timer lives while some armed waiter is left. A
/// waiter that is only dropped keeps its arm, so the timer then lives until
/// the deadline fires or the scope is cancelled or detached (as
/// `CancelScope::token`'s registration, which outlives its `Waiter`, needs).
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    slot: Option<usize>,
    /// The waker stored in the slot, to skip the lock when it is unchanged.
    registered: Option<Waker>,
    /// The node whose timer this waiter armed, until `release`.
    armed: Option<Arc<Node>>,
}

impl Waiter {
    pub(crate) fn poll(&mut self, node: &Arc<Node>, waker: &Waker) -> Poll<()> {
        if is_cancelled(node) {
            self.release(node);
            return Poll::Ready(());
        }
        if self.slot.is_some() && self.registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return Poll::Pending;
        }
        // Cloned here, before the node's lock (see `crate::sync::lock`).
        match tree::register(node, waker.clone(), &mut self.slot) {
            Err(()) => {
                self.release(node);
                Poll::Ready(())
            }
            Ok(deadline) => {
                self.registered = Some(waker.clone());
                if deadline != NO_DEADLINE && self.armed.is_none() {
                    if let Some(origin) = tree::deadline_origin(node) {
                        // Invariant 9: counted at the origin until `release`;
                        // remembered before a spawn that may panic.
                        let start = tree::arm_timer(&origin);
                        self.armed = Some(origin.clone());
                        if start {
                            spawn_timer(origin);
                        }
                    }
                }
                Poll::Pending
            }
        }
    }

    /// Deregisters, and disarms the timer this waiter armed (the last such
    /// waiter's release ends it, tree invariant 9). A later `poll` registers
    /// and arms again.
    pub(crate) fn release(&mut self, node: &Node) {
        self.registered = None;
        tree::deregister(node, &mut self.slot);
        if let Some(origin) = self.armed.take() {
            tree::disarm_timer(&origin);
        }
    }
}

/// Future returned by [`CancelScope::cancelled`].
///
/// (It pins nothing, so it is `Unpin` and a plain struct.)
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct WaitCancelled<'a> {
    pub(super) scope: &'a CancelScope,
    pub(super) waiter: Waiter,
}

impl Future for WaitCancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.waiter.poll(&this.scope.node, cx.waker())
    }
}

impl Drop for WaitCancelled<'_> {
    fn drop(&mut self) {
        self.waiter.release(&self.scope.node);
    }
}

/// Future returned by [`CancelScope::cancelled_owned`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct WaitCancelledOwned {
    // Field order: the waiter deregisters from the node in `Drop`, before the
    // scope handle goes.
    pub(super) scope: CancelScope,
    pub(super) waiter: Waiter,
}

impl WaitCancelledOwned {
    /// The scope this future waits on.
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        &self.scope
    }
}

impl Future for WaitCancelledOwned {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.waiter.poll(&this.scope.node, cx.waker())
    }
}

impl Drop for WaitCancelledOwned {
    fn drop(&mut self) {
        self.waiter.release(&self.scope.node);
    }
}

pin_project_lite::pin_project! {
    /// Future returned by [`CancelScope::run`].
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct Run<'a, F> {
        pub(super) wait: WaitCancelled<'a>,
        // Set to `None` on cancellation, so the inner future is dropped at once,
        // not when `Run` itself is.
        #[pin]
        pub(super) fut: Option<F>,
    }
}

impl<F: Future> Future for Run<'_, F> {
    type Output = Result<F::Output, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let scope = this.wait.scope;
        if let Some(fut) = this.fut.as_mut().as_pin_mut() {
            // Cancellation first: a cancelled scope never polls `fut` again.
            if !is_cancelled(&scope.node) {
                if let Poll::Ready(v) = fut.poll(cx) {
                    this.fut.set(None);
                    return Poll::Ready(Ok(v));
                }
                if Pin::new(&mut *this.wait).poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.fut.set(None);
        }
        Poll::Ready(Err(Cancelled::of(scope)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_waiter_arms_its_deadline_origin_once_until_released() {
        let parent = CancelScope::new().with_timeout(Duration::from_secs(60));
        let child = parent.child();
        let mut waiter = Waiter::default();
        let waker = Waker::noop();
        for round in 0..2 {
            assert!(waiter.poll(&child.node, waker).is_pending());
            assert!(waiter.poll(&child.node, waker).is_pending());
            assert_eq!(tree::armed_count(&parent.node), 1, "round {round}");
            assert_eq!(tree::armed_count(&child.node), 0, "armed at the origin");
            waiter.release(&child.node);
            assert_eq!(tree::armed_count(&parent.node), 0, "round {round}");
        }
    }
}
