//! [`TaskHandle`]: an owned permission to await one tracked task, as tokio's
//! `JoinHandle`, that can also cancel or abort that task alone.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};

use tokio::task::JoinHandle;

use super::error::{TaskError, panic_message};
use super::meta::TrackedCell;
use crate::registry::TaskId;

// ===== impl TaskHandle =====

/// An owned permission to await a tracked task's result, like tokio's
/// `JoinHandle`.
///
/// Awaiting it gives `Ok(output)` or a [`TaskError`]. Dropping it *detaches*:
/// the task keeps running and stays tracked by its group (it does not cancel).
/// The output of a finished task is kept only until this handle takes it or is
/// dropped; the group itself keeps nothing of an ended task.
///
/// # Cancel safety
///
/// Awaiting is cancel safe: dropping the `await` keeps the result for a later
/// one.
pub struct TaskHandle<T> {
    id: TaskId,
    join: JoinHandle<Result<T, TaskError>>,
    // Weak: a handle keeps neither the task's data (its hook may own a
    // transport) nor, through it, anything else alive; an ended task's cell
    // may be gone. The handle reaches its tracker through the task itself
    // (see `cancel`), so a spawn writes no reference count of the tracker's
    // for the handle.
    cell: Weak<TrackedCell>,
}

impl<T> TaskHandle<T> {
    pub(crate) fn new(
        id: TaskId,
        join: JoinHandle<Result<T, TaskError>>,
        cell: Weak<TrackedCell>,
    ) -> Self {
        TaskHandle { id, join, cell }
    }

    /// The task's id.
    #[must_use]
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Aborts the task: its future is dropped at its next await (at once if it
    /// is idle), its entry pruned, and this handle resolves to
    /// [`TaskError::Aborted`] unless it finished first. Like tokio's
    /// `JoinHandle::abort`, this cannot stop a task that blocks its thread.
    ///
    /// A task with its own scope (a cooperative or keyed task) has that scope
    /// cancelled right before its future is dropped, so a scoped child
    /// process it owns ([`TaskMap::spawn_with_process`]) is torn down, its
    /// whole process group with it, instead of being left an orphan.
    ///
    /// [`TaskMap::spawn_with_process`]: crate::TaskMap::spawn_with_process
    pub fn abort(&self) {
        self.join.abort();
    }

    /// Cancels this task, and only this one: its scope is cancelled (a task
    /// from [`spawn`](crate::TaskGroup::spawn) is dropped at its next await, a
    /// cooperative one sees its scope cancelled) and it is woken once; its
    /// ladder (re-delivery, escalation with its hook, the stuck verdict) runs
    /// in the background, by the policy of its group or map, as
    /// [`TaskMap::begin_cancel`] does for a key. Returns at once; works from
    /// any thread, inside a runtime or not.
    ///
    /// This holds whatever state the task is in: not yet delivered to, or
    /// already reached by its group's cancel (or an enclosing scope's
    /// deadline) and parked again since, in which case it is woken once more
    /// (the bound of [`ShutdownPolicy::max_redeliveries`](crate::ShutdownPolicy::max_redeliveries)
    /// counts that wake). A ladder that already runs over the task (its
    /// group's `shutdown`, its key's) goes on; no second one starts.
    ///
    /// The ladder starts at the task's next poll, which the wake brings (the
    /// task's own poll knows its tracker: the handle holds only a weak
    /// reference to the task). A task that blocks its worker thread inside a
    /// poll is not reached until that poll returns; use
    /// [`TaskMap::begin_cancel_task`](crate::TaskMap::begin_cancel_task)
    /// for a keyed task whose escalation hook must run meanwhile.
    ///
    /// The handle names this task, not whatever runs under its key later: a
    /// newer task under the same key is never touched. A no-op once the task
    /// has ended.
    ///
    /// [`TaskMap::begin_cancel`]: crate::TaskMap::begin_cancel
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskError, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let one = group.spawn(std::future::pending::<()>());
    /// let other = group.spawn(std::future::pending::<()>());
    /// one.cancel();
    /// assert!(matches!(one.await, Err(TaskError::Cancelled(_))));
    /// assert!(!other.is_finished()); // the group and its other tasks go on
    /// assert_eq!(group.len(), 1);
    /// # }
    /// ```
    pub fn cancel(&self) {
        let Some(cell) = self.cell.upgrade() else {
            return; // ended, and nothing refers to it any more
        };
        // The request is a bit on the task's cell, seen by the task's next
        // poll: a plain task ends there as cancelled; a task with a scope of
        // its own has it cancelled here, and its next poll starts the ladder
        // (re-delivery, escalation, stuck) from inside the task, where the
        // tracker is at hand.
        if !cell.request_cancel() {
            return; // ended, or already requested
        }
        if let Some(scope) = &cell.meta.scope {
            scope.cancel();
        }
        // The first delivery, or, for a task that another cancel (its group's,
        // an enclosing scope's deadline) already reached and that parked
        // since, one more wake: either way the poll that starts its ladder.
        cell.deliver_or_schedule();
    }

    /// Whether the task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(Pin::new(&mut self.join).poll(cx)) {
            Ok(result) => result,
            // Panics are caught inside the task; this one escaped our wrapper.
            Err(e) if e.is_panic() => Err(TaskError::Panicked(panic_message(&*e.into_panic()))),
            Err(_) => Err(TaskError::Aborted),
        })
    }
}

impl<T> Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("finished", &self.join.is_finished())
            .finish()
    }
}
