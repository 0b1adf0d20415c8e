//! What a spawn gives back and how it is configured: [`TaskHandle`],
//! [`TaskError`], [`SpawnError`], the [`Stats`] counters, and the per-task data
//! the tracker keeps (`TaskMeta`). Imports nothing of the tracker: the tracker
//! and the builder import this.

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::registry::{TaskCell, TaskId};
use crate::scope::{CancelReason, CancelScope, Cancelled};

/// An escalation hook: runs once, on a thread of its own, when a task ignored
/// cancellation for the whole grace period, as the task is aborted.
pub(crate) type Hook = Box<dyn FnOnce() + Send + 'static>;

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
    cell: Weak<Cell>,
}

impl<T> TaskHandle<T> {
    pub(crate) fn new(
        id: TaskId,
        join: JoinHandle<Result<T, TaskError>>,
        cell: Weak<Cell>,
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

// ===== errors =====

/// Why a tracked task produced no output.
///
/// Only [`Cancelled`](Self::Cancelled) means the task observed a cancel scope.
/// An abort (tokio's `JoinError::is_cancelled()`: [`TaskHandle::abort`],
/// escalation, runtime shutdown) is [`Aborted`](Self::Aborted) here.
///
/// # Examples
///
/// ```
/// use cancel_scope::{CancelReason, TaskError, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::new();
/// let task = group.spawn(std::future::pending::<()>());
/// group.cancel_with("client went away");
/// match task.await {
///     Err(TaskError::Cancelled(c)) => {
///         assert_eq!(c.reason(), CancelReason::Requested);
///         assert_eq!(c.message(), Some("client went away"));
///     }
///     other => panic!("expected a cancel, got {other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// Its scope was cancelled and its future dropped at an await point; the
    /// [`Cancelled`] carries the reason and message of that cancel, as the
    /// error of [`CancelScope::run`] does.
    Cancelled(Cancelled),
    /// It was aborted ([`TaskHandle::abort`], escalation, or runtime shutdown).
    Aborted,
    /// Its future panicked; the panic message (`&str` or `String` payloads;
    /// otherwise `"Box<dyn Any>"`).
    Panicked(String),
}

impl TaskError {
    /// The reason of the cancel, for [`Cancelled`](Self::Cancelled); `None`
    /// otherwise.
    #[must_use]
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        match self {
            TaskError::Cancelled(c) => Some(c.reason()),
            _ => None,
        }
    }

    /// The message of the cancel (see
    /// [`CancelScope::cancel_with`](crate::CancelScope::cancel_with)), for
    /// [`Cancelled`](Self::Cancelled) with one; `None` otherwise.
    #[must_use]
    pub fn cancel_message(&self) -> Option<&str> {
        match self {
            TaskError::Cancelled(c) => c.message(),
            _ => None,
        }
    }
}

impl From<Cancelled> for TaskError {
    fn from(c: Cancelled) -> Self {
        TaskError::Cancelled(c)
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Cancelled(c) => {
                match c.reason() {
                    CancelReason::Requested => f.write_str("task was cancelled")?,
                    CancelReason::Deadline => f.write_str("task was cancelled by a deadline")?,
                }
                match c.message() {
                    Some(m) => write!(f, ": {m}"),
                    None => Ok(()),
                }
            }
            TaskError::Aborted => f.write_str("task was aborted"),
            TaskError::Panicked(msg) => write!(f, "task panicked: {msg}"),
        }
    }
}

// No `source()`: `Display` already says everything `Cancelled` would.
impl std::error::Error for TaskError {}

/// Why a `try_spawn` failed. Nothing was tracked or leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnError {
    /// Called outside a tokio runtime.
    NoRuntime,
    /// The group or map is closed: [`close`](crate::TaskGroup::close) or
    /// [`shutdown`](crate::TaskGroup::shutdown) was called, or its last
    /// handle was dropped (as spawning into a closed Trio nursery).
    Closed,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::NoRuntime => f.write_str(
                "no tokio runtime: spawn tracked tasks from inside a runtime \
                 (within #[tokio::main], Runtime::block_on or Handle::enter)",
            ),
            SpawnError::Closed => f.write_str(
                "the group or map is closed (close() or shutdown() was called): spawn \
                 before closing it, or use a new group for new work",
            ),
        }
    }
}

impl std::error::Error for SpawnError {}

// ===== stats =====

/// A snapshot of a group's or map's counters. All counters are totals since
/// creation except `stuck` and `tracked`, which are current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks spawned.
    pub spawned: u64,
    /// Tasks whose future returned.
    pub completed: u64,
    /// Tasks dropped at an await after cancellation.
    pub cancelled: u64,
    /// Tasks aborted or dropped without finishing.
    pub aborted: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks now alive that a ladder reported stuck.
    pub stuck: u64,
    /// Tasks now alive that are being torn down (marked closing by a
    /// shutdown, a per-key cancel or a key replacement).
    pub closing: u64,
    /// Wakes made by first deliveries of cancellation.
    pub deliveries: u64,
    /// Wakes made by re-deliveries (at most `max_redeliveries` per task).
    pub redeliveries: u64,
    /// Tasks escalated (hook run, abort requested).
    pub escalations: u64,
    /// Scoped child processes whose teardown (or exit) was reaped by their
    /// group (feature `process`).
    pub processes: u64,
    /// Tasks whose future is alive now (`len()`).
    pub tracked: u64,
}

// ===== spawn options and per-task data =====

/// What a spawn needs besides the future.
pub(crate) struct TaskOptions<K> {
    pub(crate) key: Option<K>,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) hook: Option<Hook>,
    /// The task reaps a scoped child process (counted in reports).
    pub(crate) owns_process: bool,
}

/// How a spawned future reacts to cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Dropped at its next poll once its scope is cancelled.
    Drop,
    /// Handed its scope; it decides.
    Cooperative,
}

/// The tokio layer's data in each task cell.
pub(crate) struct TaskMeta {
    /// When the task was spawned, on tokio's clock (paused or not), in the
    /// scope tree's ticks (nanoseconds from a process-wide base, see
    /// `scope/clock.rs`): 8 bytes instead of an `Instant`'s 16, so the
    /// cell keeps its size with the location beside.
    spawned_at: i64,
    /// Where the task was spawned: the caller of the public spawn function
    /// (`#[track_caller]` all the way down), for reports.
    pub(crate) location: &'static Location<'static>,
    /// The task's own scope when it has one (keyed or cooperative tasks).
    pub(crate) scope: Option<CancelScope>,
    /// What only some tasks have, boxed so a plain task's cell stays small
    /// (bytes per pending task).
    pub(crate) extra: Option<Box<TaskExtra>>,
}

/// The rarer parts of a task's data: a name, an escalation hook, a child
/// process.
pub(crate) struct TaskExtra {
    pub(crate) name: Option<Arc<str>>,
    /// The task's span, when a subscriber wanted one at its spawn.
    pub(crate) span: Option<tracing::Span>,
    pub(crate) hook: Mutex<Option<Hook>>,
    /// The task reaps a scoped child process; its completion counts one.
    pub(crate) owns_process: bool,
}

impl TaskMeta {
    pub(crate) fn new(
        spawned_at: Instant,
        location: &'static Location<'static>,
        scope: Option<CancelScope>,
        name: Option<Arc<str>>,
        hook: Option<Hook>,
        owns_process: bool,
        span: Option<tracing::Span>,
    ) -> Self {
        let extra =
            (name.is_some() || hook.is_some() || owns_process || span.is_some()).then(|| {
                Box::new(TaskExtra {
                    name,
                    span,
                    hook: Mutex::new(hook),
                    owns_process,
                })
            });
        let spawned_at = crate::scope::to_ticks(spawned_at);
        TaskMeta {
            spawned_at,
            location,
            scope,
            extra,
        }
    }

    /// Time since the task was spawned, on tokio's clock.
    pub(crate) fn age(&self) -> Duration {
        Instant::now().saturating_duration_since(crate::scope::from_ticks(self.spawned_at))
    }

    #[inline]
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.extra.as_ref().and_then(|e| e.span.as_ref())
    }

    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        self.extra.as_ref().and_then(|e| e.name.as_ref())
    }

    /// Takes the escalation hook, if any (once).
    pub(crate) fn take_hook(&self) -> Option<Hook> {
        let extra = self.extra.as_ref()?;
        extra.hook.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub(crate) fn owns_process(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.owns_process)
    }
}

pub(crate) type Cell = TaskCell<TaskMeta>;

/// The message of a panic payload (`&str` or `String`; otherwise
/// `"Box<dyn Any>"`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}
