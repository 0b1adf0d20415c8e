//! The tracked future: the user's future with its registry guard inside, so
//! that whatever ends the future (completion, panic, cancel, abort, runtime
//! shutdown) prunes its entry. Its poll starts with the cell's `begin_poll`
//! (registry invariant 2), ends a task whose cancellation it sees, and
//! records the outcome the guard reports.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Tracker;
use crate::registry::{EntryGuard, TaskOutcome, Watch};
use crate::scope::Cancelled;
use crate::task::{TaskError, TaskMeta, TrackedCell, panic_message};

// ===== the task being polled =====

thread_local! {
    /// The tracker of the tracked task whose poll runs on this thread (its
    /// `Arc<Tracker>`'s address), 0 outside one: how `join` and `shutdown`
    /// tell that they are awaited by a task of their own group, which could
    /// only wait for itself.
    pub(super) static POLLING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Restores [`POLLING`] when a poll ends, by return or by unwinding.
pub(super) struct PollingGuard(usize);

impl PollingGuard {
    #[inline]
    pub(super) fn enter(tracker: usize) -> Self {
        PollingGuard(POLLING.with(|p| p.replace(tracker)))
    }
}

impl Drop for PollingGuard {
    #[inline]
    fn drop(&mut self) {
        POLLING.with(|p| p.set(self.0));
    }
}

// ===== the tracked future =====

pin_project_lite::pin_project! {
    /// The user's future as spawned: prune guard, poll bookkeeping, cancel
    /// check, panic capture.
    pub(crate) struct Tracked<F, K>
    where
        K: Eq,
        K: Hash,
        K: Clone,
    {
        #[pin]
        pub(super) fut: F,
        // Dropped with the future, whatever ends it: prune on completion.
        // Holds the task's one reference to its tracker.
        pub(super) guard: EntryGuard<TaskMeta, K, Arc<Tracker<K>>>,
    }
    impl<F, K> PinnedDrop for Tracked<F, K>
    where
        K: Eq,
        K: Hash,
        K: Clone,
    {
        fn drop(this: Pin<&mut Self>) {
            // Dropped without a verdict (abort, escalation, runtime shutdown):
            // cancel the task's own scope before its future is dropped, so
            // what the future owns under that scope (a scoped child process)
            // is torn down with it instead of being left behind as an orphan.
            let this = this.project();
            if this.guard.outcome == TaskOutcome::Aborted {
                if let Some(scope) = &this.guard.cell().meta.scope {
                    scope.cancel();
                }
            }
        }
    }
}

impl<F, K> Future for Tracked<F, K>
where
    F: Future,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    type Output = Result<F::Output, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (shared, cell, outcome) = this.guard.parts();
        let _entered = cell.meta.span().map(tracing::Span::enter);
        let _polling = PollingGuard::enter(Arc::as_ptr(shared) as *const () as usize);
        let start = cell.begin_poll(cx.waker());
        let watch = start.watch;
        if start.escalated {
            // Escalated: end now, as an abort would, once the task's linger
            // (a feature layer's teardown, if it set one) is done. A panic
            // in it ends the task as aborted too.
            let lingered = catch_unwind(AssertUnwindSafe(|| cell.meta.poll_linger(cx)));
            if matches!(lingered, Ok(Poll::Pending)) {
                return Poll::Pending;
            }
            return Poll::Ready(Err(TaskError::Aborted));
        }
        if start.cancel_requested && !start.closing {
            // `TaskHandle::cancel`, first seen: counted here; a task that
            // decides for itself gets its ladder from here.
            shared.take_cancel_request(cell, watch == Watch::Nothing);
        }
        let cancelled = match watch {
            // A plain group task has no scope of its own: a cancel of this
            // task alone (`TaskHandle::cancel`, or a ladder that marked it
            // closing) ends it here (then the group's scope, not cancelled,
            // reads as `Requested`, no message).
            Watch::Tracker => {
                (shared.scope.is_cancelled() || start.cancel_requested || start.closing)
                    .then(|| Cancelled::of(&shared.scope))
            }
            Watch::Own => cell
                .meta
                .scope
                .as_ref()
                .filter(|s| s.is_cancelled())
                .map(Cancelled::of),
            // A blocking closure is never polled as a future.
            Watch::Nothing | Watch::Blocking => None,
        };
        if let Some(cancelled) = cancelled {
            *outcome = TaskOutcome::Cancelled;
            return Poll::Ready(Err(TaskError::Cancelled(cancelled)));
        }

        let fut = this.fut;
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => {
                if start.delivered {
                    // Parked again after seeing the cancellation: from now
                    // on (until its next poll) the ladder may re-deliver.
                    cell.parked_after_delivery();
                }
                Poll::Pending
            }
            Ok(Poll::Ready(v)) => {
                *outcome = TaskOutcome::Completed;
                Poll::Ready(Ok(v))
            }
            Err(payload) => {
                *outcome = TaskOutcome::Panicked;
                Poll::Ready(Err(shared.task_panicked(cell, &*payload)))
            }
        }
    }
}
impl<K> Tracker<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// A task's code panicked: records the first panic for `join`, cancels
    /// the tracker's scope if it cancels on panic (the siblings' `Cancelled`
    /// says why, as `cancel_with`), and gives the task's error.
    pub(super) fn task_panicked(
        &self,
        cell: &TrackedCell,
        payload: &(dyn std::any::Any + Send),
    ) -> TaskError {
        let message = panic_message(payload);
        tracing::debug!(task = %cell.id, panic = %message, "tracked task panicked");
        self.record_panic(&message);
        if self.cancel_on_panic {
            let why = match cell.meta.name() {
                Some(name) => format!("{} {:?} panicked: {message}", cell.id, &**name),
                None => format!("{} panicked: {message}", cell.id),
            };
            self.scope.cancel_with(why);
        }
        TaskError::Panicked(message)
    }
}

#[cfg(test)]
mod tests {
    /// Bytes per pending task (issue 12): what a tracked task adds to the
    /// user's future stays within 24 bytes, so a 128-byte future's task stays
    /// in tokio's 256-byte cell class (tokio aligns task cells to 128 bytes on
    /// x86_64), and the shared cell within 72 (its `Arc` allocation, 88 bytes,
    /// takes malloc's 96-byte chunk).
    #[test]
    fn a_tracked_future_adds_24_bytes_and_the_cell_is_72() {
        type F = [u64; 16];
        struct Sized128(#[allow(dead_code)] F);
        impl std::future::Future for Sized128 {
            type Output = ();
            fn poll(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<()> {
                std::task::Poll::Pending
            }
        }
        let tracked = std::mem::size_of::<super::Tracked<Sized128, ()>>();
        assert!(tracked <= 128 + 24, "Tracked adds {} bytes", tracked - 128);
        let cell = std::mem::size_of::<crate::task::TrackedCell>();
        assert!(cell <= 72, "the cell is {cell} bytes");
    }
}
