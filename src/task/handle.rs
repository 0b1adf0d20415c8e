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

    /// The task's cell, weakly (for the lease layer of a map).
    pub(crate) fn cell(&self) -> &Weak<TrackedCell> {
        &self.cell
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
        cancel_one(&self.cell);
    }

    /// A handle that can abort or cancel this task but not await it: `Clone`,
    /// `Send` and `Sync`, as tokio's `JoinHandle::abort_handle`.
    #[must_use]
    pub fn abort_handle(&self) -> TaskAbortHandle {
        TaskAbortHandle {
            id: self.id,
            abort: self.join.abort_handle(),
            cell: self.cell.clone(),
        }
    }

    /// This handle, made to abort the task when dropped, as tokio-util's
    /// `AbortOnDropHandle`: for a task whose result nobody else wants once
    /// its owner is gone. Awaiting it is awaiting this handle.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let guard = group.spawn(std::future::pending::<()>()).abort_on_drop();
    /// drop(guard);
    /// group.join().await.unwrap(); // the task was aborted, and pruned
    /// assert_eq!(group.stats().aborted, 1);
    /// # }
    /// ```
    #[must_use = "dropping an AbortOnDropHandle aborts the task at once"]
    pub fn abort_on_drop(self) -> AbortOnDropHandle<T> {
        AbortOnDropHandle { handle: self }
    }

    /// Whether the task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

/// [`TaskHandle::cancel`]'s work, shared with [`TaskAbortHandle::cancel`].
fn cancel_one(cell: &Weak<TrackedCell>) {
    let Some(cell) = cell.upgrade() else {
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
    if let Some(begin_ladder) = cell.meta.begin_ladder() {
        // A blocking closure: never polled, so its ladder starts here.
        begin_ladder(&cell);
        return;
    }
    // The first delivery, or, for a task that another cancel (its group's,
    // an enclosing scope's deadline) already reached and that parked
    // since, one more wake: either way the poll that starts its ladder.
    cell.deliver_or_schedule();
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

// ===== impl TaskAbortHandle =====

/// Aborts or cancels one tracked task without awaiting it; from
/// [`TaskHandle::abort_handle`], or [`TaskSet::spawn`](crate::TaskSet::spawn).
/// `Clone`, `Send` and `Sync`, as tokio's `AbortHandle`, so a supervisor can
/// keep one per task while the task's output goes elsewhere.
///
/// # Examples
///
/// ```
/// use cancel_scope::{TaskError, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::new();
/// let handle = group.spawn(std::future::pending::<()>());
/// let abort = handle.abort_handle();
/// std::thread::spawn(move || abort.abort()).join().unwrap();
/// assert!(matches!(handle.await, Err(TaskError::Aborted)));
/// # }
/// ```
#[derive(Clone)]
pub struct TaskAbortHandle {
    id: TaskId,
    abort: tokio::task::AbortHandle,
    cell: Weak<TrackedCell>,
}

impl TaskAbortHandle {
    /// The task's id.
    #[must_use]
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// As [`TaskHandle::abort`]: the task's future is dropped at its next
    /// await, with no grace. A blocking closure that has started cannot be
    /// aborted (as tokio's); one not yet started never runs.
    pub fn abort(&self) {
        self.abort.abort();
    }

    /// As [`TaskHandle::cancel`]: this task alone is cancelled, and its
    /// ladder runs by its group's policy.
    pub fn cancel(&self) {
        cancel_one(&self.cell);
    }

    /// Whether the task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.abort.is_finished()
    }
}

impl Debug for TaskAbortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskAbortHandle")
            .field("id", &self.id)
            .field("finished", &self.abort.is_finished())
            .finish()
    }
}

// ===== impl AbortOnDropHandle =====

/// A [`TaskHandle`] that aborts its task when dropped, as tokio-util's
/// `AbortOnDropHandle`; from [`TaskHandle::abort_on_drop`]. Awaiting it
/// gives the task's result, as the handle does.
///
/// # Cancel safety
///
/// Awaiting is cancel safe; dropping the handle (not the `await`) aborts.
#[must_use = "dropping an AbortOnDropHandle aborts the task at once"]
pub struct AbortOnDropHandle<T> {
    handle: TaskHandle<T>,
}

impl<T> AbortOnDropHandle<T> {
    /// The task's id.
    #[must_use]
    pub fn id(&self) -> TaskId {
        self.handle.id()
    }

    /// Aborts the task now; see [`TaskHandle::abort`].
    pub fn abort(&self) {
        self.handle.abort();
    }

    /// Cancels the task alone; see [`TaskHandle::cancel`].
    pub fn cancel(&self) {
        self.handle.cancel();
    }

    /// Whether the task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// A clonable [`TaskAbortHandle`] for the same task.
    #[must_use]
    pub fn abort_handle(&self) -> TaskAbortHandle {
        self.handle.abort_handle()
    }
}

impl<T> Drop for AbortOnDropHandle<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl<T> Future for AbortOnDropHandle<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle).poll(cx)
    }
}

impl<T> Debug for AbortOnDropHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AbortOnDropHandle")
            .field(&self.handle)
            .finish()
    }
}
