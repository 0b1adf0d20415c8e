//! What a spawn gives back and how it is configured: [`TaskHandle`],
//! [`TaskError`], [`TaskBuilder`], [`SpawnError`], and the [`Stats`] counters.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::task::JoinHandle;

use crate::registry::TaskId;
use crate::scope::{CancelReason, CancelScope, Cancelled};
use crate::tracker::{Mode, Shared, panic_message};

/// An escalation hook: runs once, when a task ignored cancellation for the
/// whole grace period, right before the task is aborted.
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
}

impl<T> TaskHandle<T> {
    pub(crate) fn new(id: TaskId, join: JoinHandle<Result<T, TaskError>>) -> Self {
        TaskHandle { id, join }
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
    pub fn abort(&self) {
        self.join.abort();
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
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::NoRuntime => f.write_str(
                "no tokio runtime: spawn tracked tasks from inside a runtime \
                 (within #[tokio::main], Runtime::block_on or Handle::enter)",
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

// ===== impl TaskBuilder =====

/// Configures one task before spawning it: a name (for logs and stuck
/// reports) and an escalation hook. From [`TaskGroup::build_task`] or
/// [`TaskMap::build_task`].
///
/// [`TaskGroup::build_task`]: crate::TaskGroup::build_task
/// [`TaskMap::build_task`]: crate::TaskMap::build_task
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::{ShutdownPolicy, TaskGroup};
/// use tokio::sync::mpsc;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::builder()
///     .policy(ShutdownPolicy { grace: Duration::from_secs(1), ..Default::default() })
///     .build();
/// let (tx, mut rx) = mpsc::channel::<String>(8);
/// // A task that ignores its scope, like a blocking `pubsub.listen()` loop:
/// // only closing its transport ends it.
/// let mut tx = Some(tx);
/// group
///     .build_task()
///     .name("listener")
///     .on_escalate(move || drop(tx.take())) // close the transport
///     .spawn_with_scope(|_scope| async move { while rx.recv().await.is_some() {} });
/// let report = group.shutdown().await;
/// assert_eq!(report.escalations, 1);
/// assert!(report.is_clean());
/// # }
/// ```
#[must_use = "a TaskBuilder does nothing until spawned"]
pub struct TaskBuilder<'a, K: Eq + Hash + Clone = ()> {
    shared: &'a Arc<Shared<K>>,
    opts: TaskOptions<K>,
}

/// What a spawn needs besides the future.
pub(crate) struct TaskOptions<K> {
    pub(crate) key: Option<K>,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) hook: Option<Hook>,
    /// The task reaps a scoped child process (counted in reports).
    pub(crate) owns_process: bool,
}

impl<'a, K> TaskBuilder<'a, K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    pub(crate) fn new(shared: &'a Arc<Shared<K>>, key: Option<K>) -> Self {
        TaskBuilder {
            shared,
            opts: TaskOptions {
                key,
                name: None,
                hook: None,
                owns_process: false,
            },
        }
    }

    /// Marks the task as the one that reaps a scoped child process, so
    /// reports count the child (see `ShutdownReport::processes`).
    #[cfg_attr(not(all(unix, feature = "process")), allow(dead_code))]
    pub(crate) fn owns_process(mut self) -> Self {
        self.opts.owns_process = true;
        self
    }

    /// Names the task, for logs and [`StuckTask`](crate::StuckTask) reports.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// Sets the escalation hook: called once, if the task is still alive when
    /// grace runs out, right before it is aborted. Close the task's transport
    /// here (drop a subscription, shut a socket) so a task blocked on it ends.
    /// A panic in the hook is caught and logged; the abort still happens.
    pub fn on_escalate(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.opts.hook = Some(Box::new(hook));
        self
    }

    /// Spawns `fut`; it is dropped at its next await once its scope is
    /// cancelled. See [`TaskGroup::spawn`](crate::TaskGroup::spawn).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, with a message naming the fix; see
    /// [`try_spawn`](Self::try_spawn).
    #[track_caller]
    pub fn spawn<F>(self, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.try_spawn(fut) {
            Ok(handle) => handle,
            Err(e) => panic!("cancel_scope: cannot spawn: {e}"),
        }
    }

    /// As [`spawn`](Self::spawn), returning an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime; nothing is tracked.
    pub fn try_spawn<F>(self, fut: F) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.spawn(self.opts, Mode::Drop, |_| fut)
    }

    /// Spawns `f(scope)`: the task gets its own child scope and decides how to
    /// react to it (cooperative cancellation). See
    /// [`TaskGroup::spawn_with_scope`](crate::TaskGroup::spawn_with_scope).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, with a message naming the fix.
    #[track_caller]
    pub fn spawn_with_scope<F, Fut>(self, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        match self.try_spawn_with_scope(f) {
            Ok(handle) => handle,
            Err(e) => panic!("cancel_scope: cannot spawn: {e}"),
        }
    }

    /// As [`spawn_with_scope`](Self::spawn_with_scope), returning an error
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime; `f` is not called.
    pub fn try_spawn_with_scope<F, Fut>(self, f: F) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.shared.spawn(self.opts, Mode::Cooperative, |scope| {
            f(scope.expect("cooperative tasks get their own scope"))
        })
    }
}

impl<K: Eq + Hash + Clone + Debug> Debug for TaskBuilder<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("key", &self.opts.key)
            .field("name", &self.opts.name)
            .field("on_escalate", &self.opts.hook.is_some())
            .finish()
    }
}
