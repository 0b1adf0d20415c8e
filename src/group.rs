//! [`TaskGroup`]: a set of tracked tasks under one cancel scope, torn down by
//! the shutdown ladder (Trio's nursery, anyio's task group).

use std::future::Future;
use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::Stream;

use crate::builder::TaskBuilder;
use crate::ladder::{ShutdownPolicy, ShutdownReport};
use crate::registry::{Registry, TaskId, TaskOutcome};
use crate::scope::CancelScope;
use crate::task::TaskInfo;
use crate::task::{SpawnError, Stats, TaskError, TaskHandle, TaskMeta};
use crate::tracker::{Tracker, TrackerHandle, Tracks, idle};
use crate::wait_list::WaitKey;

/// A group of tracked tasks sharing one cancel scope, as Trio's nursery.
///
/// **[`spawn`](Self::spawn) drops its future at the next await after the
/// group is cancelled**, so code after `scope.cancelled().await` inside it
/// never runs. A task that must clean up uses
/// [`spawn_with_scope`](Self::spawn_with_scope): it is handed its scope and
/// ends when it decides to (the ladder still escalates on it past grace).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use cancel_scope::TaskGroup;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::new();
/// let (dropped_cleanup, ran_cleanup) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
///
/// // `spawn`: dropped at its await; the line after it never runs.
/// let scope = group.scope().clone();
/// let flag = dropped_cleanup.clone();
/// group.spawn(async move {
///     scope.cancelled().await;
///     flag.store(true, Ordering::SeqCst); // never reached
/// });
///
/// // `spawn_with_scope`: the task sees the cancel and cleans up.
/// let flag = ran_cleanup.clone();
/// group.spawn_with_scope(|scope| async move {
///     scope.cancelled().await;
///     flag.store(true, Ordering::SeqCst); // runs
/// });
///
/// group.shutdown().await;
/// assert!(!dropped_cleanup.load(Ordering::SeqCst));
/// assert!(ran_cleanup.load(Ordering::SeqCst));
/// # }
/// ```
///
/// Every task spawned here is tracked until its future is gone, and removes
/// its own entry the moment it ends, however it ends (completion, panic,
/// cancellation, abort, runtime shutdown): [`len`](Self::len) is always the
/// number of live task futures, and nothing of an ended task is kept.
///
/// [`shutdown`](Self::shutdown) tears the group down in bounded time by the
/// ladder of its [`ShutdownPolicy`]: cancel and wake each task once, re-deliver
/// with timer back-off to tasks that were polled and did not end, escalate at
/// grace (hook, abort), report what is still alive as stuck. It never
/// busy-retries and leaves no timer behind once the tasks are gone.
///
/// A task that panics cancels the group (unless
/// [`cancel_on_panic(false)`](TaskGroupBuilder::cancel_on_panic)) with a
/// message naming it (`task#7 "parser" panicked: bad frame`, as
/// [`cancel_with`](Self::cancel_with)), which every sibling's
/// [`TaskError::Cancelled`] carries; its panic is returned by its handle and
/// by [`join`](Self::join).
///
/// # Handles
///
/// `TaskGroup` is a cheap handle (one `Arc`), `Clone` like tokio-util's
/// `TaskTracker`: clones share one group, so an accept loop and its
/// connection tasks can spawn into it without an `Arc` around it. Dropping a
/// clone does nothing; dropping the **last** handle closes the group (nothing
/// could spawn into it any more), cancels its scope and never blocks: inside a
/// runtime the ladder then finishes in the background and logs what stayed
/// stuck. Only these user handles count: tasks of the group and their
/// [`TaskHandle`]s do not keep it open.
///
/// # Closing
///
/// [`close`](Self::close) refuses new tasks (as tokio-util's
/// `TaskTracker::close`, and Trio's closed nursery) without cancelling the
/// running ones; [`shutdown`](Self::shutdown) closes first. Spawning into a
/// closed group panics (`spawn*`) or errs with [`SpawnError::Closed`]
/// (`try_spawn*`), and the process spawners return an error without starting
/// a child.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::TaskGroup;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::new();
/// let answer = group.spawn(async { 6 * 7 });
/// group.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
/// assert_eq!(answer.await.unwrap(), 42);
///
/// let report = group.shutdown().await; // the sleeper is dropped at its await
/// assert_eq!(report.cancelled, 1);
/// assert!(group.is_empty());
/// # }
/// ```
pub struct TaskGroup {
    handle: Arc<TrackerHandle<()>>,
}

impl TaskGroup {
    /// A group with its own root scope and the default policy.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A group running in a child of `scope`: cancelling `scope` (or reaching
    /// its deadline) cancels the group; dropping or shutting down the group
    /// does not cancel `scope`.
    #[must_use]
    pub fn with_scope(scope: CancelScope) -> Self {
        Self::builder().scope(scope).build()
    }

    /// Configures a group: policy, enclosing scope, panic behaviour.
    pub fn builder() -> TaskGroupBuilder {
        TaskGroupBuilder {
            policy: ShutdownPolicy::default(),
            cancel_on_panic: true,
            collect_outcomes: false,
            parent: None,
        }
    }

    /// The group's scope. Cancelling it is [`cancel`](Self::cancel); a child of
    /// it is cancelled with the group.
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        &self.tracker().scope
    }

    /// Spawns `fut` as a tracked task. Once the group's scope is cancelled the
    /// future is dropped at its next await (it is never polled again), and its
    /// handle resolves to [`TaskError::Cancelled`]: cleanup after an await
    /// never runs (see [`spawn_with_scope`](Self::spawn_with_scope) for a
    /// task that must clean up).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a [closed](Self::close) group, with a
    /// message naming the fix; use [`try_spawn`](Self::try_spawn) to get an
    /// error instead.
    #[track_caller]
    pub fn spawn<F>(&self, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.build_task().spawn(fut)
    }

    /// As [`spawn`](Self::spawn), returning an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a [closed](Self::close) group; nothing is
    /// tracked.
    #[track_caller]
    pub fn try_spawn<F>(&self, fut: F) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.build_task().try_spawn(fut)
    }

    /// Spawns `f(scope)` where `scope` is a fresh child of the group's scope:
    /// the task decides how to react to cancellation (finish its current item,
    /// clean up in a [shielded](CancelScope::shielded_child) scope, ...). The
    /// ladder still wakes it on cancellation, re-delivers, and escalates if it
    /// does not end within grace.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a [closed](Self::close) group, with a
    /// message naming the fix; use
    /// [`try_spawn_with_scope`](Self::try_spawn_with_scope) to get an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let worker = group.spawn_with_scope(|scope| async move {
    ///     let mut done = 0;
    ///     while !scope.is_cancelled() {
    ///         done += 1; // one unit of work
    ///         tokio::task::yield_now().await;
    ///     }
    ///     done // a clean, cooperative exit
    /// });
    /// tokio::task::yield_now().await;
    /// group.cancel();
    /// assert!(worker.await.unwrap() >= 1);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_with_scope<F, Fut>(&self, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.build_task().spawn_with_scope(f)
    }

    /// As [`spawn_with_scope`](Self::spawn_with_scope), returning an error
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a [closed](Self::close) group; `f` is not
    /// called.
    #[track_caller]
    pub fn try_spawn_with_scope<F, Fut>(&self, f: F) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.build_task().try_spawn_with_scope(f)
    }

    /// Runs the blocking closure `f` on tokio's blocking pool, as
    /// `tokio::task::spawn_blocking` (and `JoinSet::spawn_blocking`), tracked
    /// until it returns: [`len`](Self::len) counts it and
    /// [`shutdown`](Self::shutdown) waits for it, however long it runs.
    ///
    /// Blocking code cannot be aborted. A cancel that comes before `f` starts
    /// skips it ([`TaskError::Cancelled`]); once it runs, the group's ladder
    /// runs its escalation hook at `grace` and, if `f` has still not returned
    /// after `abort_grace`, reports it stuck (never counted as ended); it
    /// prunes itself when it returns. A closure that should stop early takes
    /// a scope: [`spawn_blocking_with_scope`](Self::spawn_blocking_with_scope).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a [closed](Self::close) group, with a
    /// message naming the fix; [`TaskBuilder::try_spawn_blocking`] returns an
    /// error instead. A panic in `f` is caught: its handle gives
    /// [`TaskError::Panicked`].
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let sum = group.spawn_blocking(|| (1..=100u64).sum::<u64>());
    /// assert_eq!(group.len(), 1); // tracked while it runs
    /// assert_eq!(sum.await.unwrap(), 5050);
    /// assert!(group.is_empty());
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_blocking<F, R>(&self, f: F) -> TaskHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.build_task().spawn_blocking(f)
    }

    /// Runs the blocking closure `f(scope)` on tokio's blocking pool with its
    /// own child scope of the group's, tracked until it returns. Cancelling
    /// the group (or [`TaskHandle::cancel`]) cancels `scope`, which `f` polls
    /// with the lock-free [`is_cancelled`](CancelScope::is_cancelled)
    /// between units of work: its delivery is that flag (a blocking task is
    /// never woken nor re-delivered to). Past grace, escalation runs the
    /// task's hook; what still runs after `abort_grace` is reported stuck,
    /// as for [`spawn_blocking`](Self::spawn_blocking). `f` runs even if
    /// `scope` is already cancelled when it starts: it decides.
    ///
    /// # Panics
    ///
    /// As [`spawn_blocking`](Self::spawn_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 1)]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let worker = group.spawn_blocking_with_scope(|scope| {
    ///     let mut rows = 0u64;
    ///     loop {
    ///         rows += 1; // one unit of blocking work
    ///         if scope.is_cancelled() {
    ///             return rows; // stop between units
    ///         }
    ///         std::thread::sleep(std::time::Duration::from_millis(1));
    ///     }
    /// });
    /// let report = group.shutdown().await; // cancels, waits for the closure
    /// assert!(report.is_clean());
    /// assert!(worker.await.unwrap() >= 1);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_blocking_with_scope<F, R>(&self, f: F) -> TaskHandle<R>
    where
        F: FnOnce(CancelScope) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.build_task().spawn_blocking_with_scope(f)
    }

    /// Spawns a `!Send` future on the current `LocalSet` (or local runtime),
    /// as `tokio::task::spawn_local` / `JoinSet::spawn_local`, tracked and
    /// torn down exactly as [`spawn`](Self::spawn): dropped at its next await
    /// once the group is cancelled, re-delivered to, escalated, reported.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a [closed](Self::close) group, with a
    /// message naming the fix ([`TaskBuilder::try_spawn_local`] returns an
    /// error instead); and, as tokio's `spawn_local`, outside a `LocalSet`
    /// or local runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let local = tokio::task::LocalSet::new();
    /// let seen = local
    ///     .run_until(async {
    ///         let shared = Rc::new(41); // !Send
    ///         group.spawn_local(async move { *shared + 1 }).await
    ///     })
    ///     .await;
    /// assert_eq!(seen.unwrap(), 42);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_local<F>(&self, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.build_task().spawn_local(fut)
    }

    /// As [`spawn_with_scope`](Self::spawn_with_scope), for a `!Send` future
    /// on the current `LocalSet` or local runtime; panics as
    /// [`spawn_local`](Self::spawn_local).
    #[track_caller]
    pub fn spawn_local_with_scope<F, Fut>(&self, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + 'static,
        Fut::Output: 'static,
    {
        self.build_task().spawn_local_with_scope(f)
    }

    /// Spawns a `!Send` future on `local`, which runs it whenever it is
    /// driven, as `LocalSet::spawn_local` and tokio-util's
    /// `TaskTracker::spawn_local_on`; otherwise as
    /// [`spawn_local`](Self::spawn_local).
    ///
    /// # Panics
    ///
    /// On a [closed](Self::close) group, or outside a runtime before the
    /// group's first spawn (its ladders need one); see
    /// [`TaskBuilder::try_spawn_local_on`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let local = tokio::task::LocalSet::new();
    /// let name = Rc::new("local"); // !Send
    /// let task = group.spawn_local_on(async move { name.len() }, &local);
    /// assert_eq!(local.run_until(task).await.unwrap(), 5);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_local_on<F>(&self, fut: F, local: &tokio::task::LocalSet) -> TaskHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.build_task().spawn_local_on(fut, local)
    }

    /// As [`spawn_blocking`](Self::spawn_blocking), on the blocking pool of
    /// the runtime of `handle`, from anywhere; as tokio-util's
    /// `TaskTracker::spawn_blocking_on`.
    ///
    /// # Panics
    ///
    /// On a [closed](Self::close) group; see
    /// [`TaskBuilder::try_spawn_blocking_on`].
    #[track_caller]
    pub fn spawn_blocking_on<F, R>(&self, f: F, handle: &tokio::runtime::Handle) -> TaskHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.build_task().spawn_blocking_on(f, handle)
    }

    /// Spawns `fut` on the runtime of `handle`, from anywhere: a plain
    /// thread, or a task of another runtime. As `Handle::spawn` and
    /// `JoinSet::spawn_on`; otherwise as [`spawn`](Self::spawn). The group's
    /// ladders run on the runtime of its first spawn (or the caller's).
    ///
    /// # Panics
    ///
    /// On a [closed](Self::close) group;
    /// [`TaskBuilder::try_spawn_on`] returns [`SpawnError::Closed`] instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskGroup;
    ///
    /// let rt = tokio::runtime::Runtime::new().unwrap();
    /// let group = TaskGroup::new();
    /// // From a plain thread, no runtime entered:
    /// let task = group.spawn_on(async { 6 * 7 }, rt.handle());
    /// assert_eq!(rt.block_on(task).unwrap(), 42);
    /// ```
    #[track_caller]
    pub fn spawn_on<F>(&self, fut: F, handle: &tokio::runtime::Handle) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.build_task().spawn_on(fut, handle)
    }

    /// A [`TaskBuilder`] to name the task or give it an escalation hook.
    pub fn build_task(&self) -> TaskBuilder<'_> {
        TaskBuilder::new(self.tracker(), None)
    }

    /// Tasks whose futures are still alive (stuck ones included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.tracker().len()
    }

    /// Whether no task is alive.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels the group's scope: every task is woken once and sees it. Does
    /// not wait; see [`shutdown`](Self::shutdown) for the bounded teardown.
    /// Does not [close](Self::close) the group: tasks spawned later start
    /// cancelled.
    pub fn cancel(&self) {
        self.tracker().scope.cancel();
    }

    /// Closes the group: every later spawn is refused
    /// ([`SpawnError::Closed`] from `try_spawn*`, a panic from `spawn*`, an
    /// error from the process spawners), while the tasks already running go
    /// on. Idempotent; a closed group never reopens. As tokio-util's
    /// `TaskTracker::close` and Trio's closed nursery.
    /// [`shutdown`](Self::shutdown) closes first; dropping the last handle
    /// closes too.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{SpawnError, TaskGroup};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let running = group.spawn(async { 1 });
    /// group.close();
    /// assert!(group.is_closed());
    /// assert_eq!(group.try_spawn(async { 2 }).unwrap_err(), SpawnError::Closed);
    /// assert_eq!(running.await.unwrap(), 1); // not cancelled
    /// # }
    /// ```
    pub fn close(&self) {
        self.tracker().close();
    }

    /// Whether the group is [closed](Self::close).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.tracker().is_closed()
    }

    /// As [`cancel`](Self::cancel), with a message that every task's
    /// [`TaskError::Cancelled`] and the ladder's warnings carry; see
    /// [`CancelScope::cancel_with`] (the first cancel wins). Call it before
    /// [`shutdown`](Self::shutdown) to give the teardown a message.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// let task = group.spawn(std::future::pending::<()>());
    /// group.cancel_with("draining for deploy");
    /// assert_eq!(task.await.unwrap_err().cancel_message(), Some("draining for deploy"));
    /// # }
    /// ```
    pub fn cancel_with(&self, message: impl Into<crate::CancelMessage>) {
        self.tracker().scope.cancel_with(message);
    }

    /// Waits until every task has ended, without cancelling anything.
    ///
    /// # Errors
    ///
    /// [`TaskError::Panicked`] with the first panic of a task since the last
    /// `join` (the record is taken, so a second `join` returns `Ok`).
    ///
    /// # Panics
    ///
    /// When awaited inside a task of this same group, which would wait for
    /// itself forever: the message names the mistake. Await it from the code
    /// that owns the group; inside a task, return to end it, or call
    /// [`cancel`](Self::cancel) / [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn join(&self) -> Result<(), TaskError> {
        self.tracker().assert_not_own_task("TaskGroup::join");
        idle(&self.tracker().registry).await;
        match self.tracker().take_panic() {
            Some(message) => Err(TaskError::Panicked(message)),
            None => Ok(()),
        }
    }

    /// Waits for the next task to end and returns its id and outcome, oldest
    /// end first; `None` once no task is alive and every end was taken. As
    /// tokio's `JoinSet::join_next`, but with outcomes instead of outputs (the
    /// output goes to the task's handle).
    ///
    /// # Panics
    ///
    /// If the group was not built with
    /// [`collect_outcomes(true)`](TaskGroupBuilder::collect_outcomes): ends
    /// before the first call would otherwise be lost, silently.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an end is taken only when this returns it.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskGroup, TaskOutcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder().collect_outcomes(true).build();
    /// let first = group.spawn(async {}).id();
    /// group.spawn(async { panic!("second") });
    /// assert_eq!(group.join_next().await, Some((first, TaskOutcome::Completed)));
    /// assert_eq!(group.join_next().await.unwrap().1, TaskOutcome::Panicked);
    /// assert_eq!(group.join_next().await, None);
    /// # }
    /// ```
    #[track_caller]
    pub fn join_next(&self) -> impl Future<Output = Option<(TaskId, TaskOutcome)>> + '_ {
        let mut outcomes = self.outcomes();
        std::future::poll_fn(move |cx| Pin::new(&mut outcomes).poll_next(cx))
    }

    /// Takes the oldest recorded end now, without waiting: `Some((id,
    /// outcome))`, or `None` if no task has ended since the last take (tasks
    /// may still be alive). As tokio's `JoinSet::try_join_next`; it is not
    /// async, so it spends no coop budget: a loop over 1,000 ended tasks
    /// takes all 1,000. Shares one queue with [`join_next`](Self::join_next).
    ///
    /// # Panics
    ///
    /// As [`join_next`](Self::join_next): the group must be built with
    /// [`collect_outcomes(true)`](TaskGroupBuilder::collect_outcomes).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskGroup, TaskOutcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::builder().collect_outcomes(true).build();
    /// assert_eq!(group.try_join_next(), None);
    /// let done = group.spawn(async {});
    /// let id = done.id();
    /// done.await.unwrap();
    /// assert_eq!(group.try_join_next(), Some((id, TaskOutcome::Completed)));
    /// assert_eq!(group.try_join_next(), None);
    /// # }
    /// ```
    #[track_caller]
    pub fn try_join_next(&self) -> Option<(TaskId, TaskOutcome)> {
        match self.tracker().registry.try_next_end() {
            Some(next) => next,
            None => no_outcomes("TaskGroup::try_join_next"),
        }
    }

    /// Aborts every live task now, with no grace: each future is dropped at
    /// its next poll (at once if it is idle) and its handle gives
    /// [`TaskError::Aborted`]; no hook runs. As tokio's `JoinSet::abort_all`.
    /// A blocking closure not yet started never runs; one that runs cannot be
    /// aborted and stays tracked until it returns. Does not close the group
    /// nor cancel its scope; returns at once (await [`join`](Self::join) to
    /// wait for the ends). Prefer [`shutdown`](Self::shutdown), which gives
    /// tasks their grace first.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskGroup;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// for _ in 0..3 {
    ///     group.spawn(std::future::pending::<()>());
    /// }
    /// group.abort_all();
    /// group.join().await.unwrap();
    /// assert_eq!(group.stats().aborted, 3);
    /// # }
    /// ```
    pub fn abort_all(&self) {
        let tracker = self.tracker();
        for cell in tracker.registry.pending() {
            tracker.abort(&cell);
        }
    }

    /// The ends of tasks as they come, as a [`Stream`] of `(TaskId,
    /// TaskOutcome)`; it finishes once no task is alive and every end was
    /// taken. Shares one queue with [`join_next`](Self::join_next).
    ///
    /// # Panics
    ///
    /// As [`join_next`](Self::join_next): the group must collect outcomes.
    #[track_caller]
    pub fn outcomes(&self) -> Outcomes<'_> {
        if !self.tracker().registry.records_ends() {
            no_outcomes("TaskGroup::join_next / outcomes");
        }
        Outcomes {
            registry: &self.tracker().registry,
            key: None,
        }
    }

    /// Runs the shutdown ladder: marks the tasks closing, cancels the scope
    /// (one wake per task), re-delivers with back-off to tasks that were polled
    /// and are still alive, escalates at `grace` (each task's hook once, then
    /// abort), and after `abort_grace` reports what is still alive as stuck.
    /// Returns as soon as every task has ended, and within `grace +
    /// abort_grace` (plus scheduling noise) whatever the tasks do.
    ///
    /// Closes the group first: spawning afterwards is refused (see
    /// [`close`](Self::close)). Stuck tasks stay tracked and prune themselves
    /// if they ever end. The report counts every task that ended since the
    /// group's scope was first cancelled (by this call, [`cancel`](Self::cancel),
    /// an enclosing scope or a deadline), not only those that ended while this
    /// call ran.
    ///
    /// # Panics
    ///
    /// When awaited inside a task of this same group (it would escalate on,
    /// and abort, the very task that waits for the report): the message names
    /// the mistake. Call [`cancel`](Self::cancel) there instead, and
    /// `shutdown` from the code that owns the group.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the ladder where it is (the scope stays
    /// cancelled); call `shutdown` again to finish it.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.tracker().shutdown("TaskGroup::shutdown").await
    }

    /// A snapshot of the group's counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.tracker().stats()
    }

    /// The group's live tasks, oldest (lowest id) first: each one's id,
    /// name, spawn site, age, [`TaskState`](crate::TaskState), re-deliveries
    /// and whether it is a blocking closure, as a [`TaskInfo`]. Ended tasks
    /// are never listed, and nothing of them is kept to list.
    ///
    /// **A pure read** (as [`len`](Self::len) and [`stats`](Self::stats)): it
    /// cancels, wakes and delivers to nothing, counts nothing, and does not
    /// even run the cancel of a deadline that passed before its timer fired
    /// (such a task shows as [`Cancelled`](crate::TaskState::Cancelled)).
    /// Taking one in a loop during a shutdown changes nothing of the ladder.
    ///
    /// **Cost**: one registry lock, held only to copy the live tasks' cell
    /// pointers (an `Arc` clone each, as [`shutdown`](Self::shutdown)'s
    /// delivery does); then, after the lock, one clock read and, per task,
    /// one load of its state word and of its scopes' flags, and the sort.
    /// Nothing is added to a task or to its polls for it: a group whose
    /// tasks nobody snapshots pays nothing.
    ///
    /// Synchronous, so it can be called from any thread, inside a runtime or
    /// not (an admin endpoint, a signal handler's thread, an escalation
    /// hook). It works on stable Rust, on every OS and runtime flavor, unlike
    /// tokio's task dumps (`Handle::dump`), which need `--cfg tokio_unstable`
    /// and Linux; it lists this group's tasks with what the crate knows of
    /// them (their cancellation), not their stack traces.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::{TaskGroup, TaskState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let group = TaskGroup::new();
    /// group.build_task().name("listener").spawn(std::future::pending::<()>());
    /// group.spawn_with_scope(|scope| async move {
    ///     scope.cancelled().await;
    ///     tokio::time::sleep(Duration::from_secs(1)).await; // a second of cleanup
    /// });
    /// tokio::time::sleep(Duration::from_millis(250)).await;
    ///
    /// let tasks = group.snapshot();
    /// assert_eq!(tasks.len(), 2);
    /// assert_eq!(tasks[0].name.as_deref(), Some("listener")); // oldest first
    /// assert!(tasks.iter().all(|t| t.state == TaskState::Running));
    /// assert_eq!(tasks[1].age, Duration::from_millis(250));
    ///
    /// group.cancel();
    /// tokio::time::sleep(Duration::from_millis(10)).await;
    /// // The listener was dropped at its await; the other one cleans up.
    /// let tasks = group.snapshot();
    /// assert_eq!(tasks.len(), 1);
    /// assert_eq!(tasks[0].state, TaskState::Cancelled);
    /// println!("{}", tasks[0]); // task#2 cancelled age=260ms at <file>:<line>:<column>
    /// # }
    /// ```
    #[must_use]
    pub fn snapshot(&self) -> Vec<TaskInfo> {
        let tracker = self.tracker();
        // The one lock; everything below runs after it (the lock rule).
        let mut cells = tracker.registry.pending();
        let now = crate::task::now_on(tracker.runtime());
        cells.sort_unstable_by_key(|cell| cell.id);
        cells
            .iter()
            .filter_map(|cell| TaskInfo::read(cell, &tracker.scope, now))
            .collect()
    }
}

impl Tracks<()> for TaskGroup {
    fn tracker(&self) -> &Arc<Tracker<()>> {
        &self.handle.tracker
    }
}

impl Clone for TaskGroup {
    /// Another handle to the same group (see [Handles](Self#handles)).
    fn clone(&self) -> Self {
        TaskGroup {
            handle: self.handle.clone(),
        }
    }
}

impl Default for TaskGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TaskGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskGroup")
            .field("tracker", &self.tracker())
            .finish()
    }
}

/// The panic of an outcome read on a group that does not record them.
#[track_caller]
fn no_outcomes(what: &str) -> ! {
    panic!(
        "cancel_scope: {what} need a group that records outcomes: \
         build it with TaskGroup::builder().collect_outcomes(true).build()"
    )
}

// ===== impl TaskGroupBuilder =====

/// Builds a [`TaskGroup`]; from [`TaskGroup::builder`].
#[derive(Debug)]
#[must_use = "call .build() to get the group"]
pub struct TaskGroupBuilder {
    policy: ShutdownPolicy,
    cancel_on_panic: bool,
    collect_outcomes: bool,
    parent: Option<CancelScope>,
}

impl TaskGroupBuilder {
    /// The shutdown ladder's policy (default: [`ShutdownPolicy::default`]).
    pub fn policy(mut self, policy: ShutdownPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Whether a panicking task cancels the group (default `true`, as Trio),
    /// with the message `task#7 "parser" panicked: bad frame` (its id, its
    /// name if it has one, its panic message).
    pub fn cancel_on_panic(mut self, yes: bool) -> Self {
        self.cancel_on_panic = yes;
        self
    }

    /// Whether the group records how each task ends, for
    /// [`TaskGroup::join_next`] and [`TaskGroup::outcomes`] (default `false`).
    ///
    /// Each ended task then leaves a `(TaskId, TaskOutcome)` (16 bytes) until
    /// it is taken; outputs are never kept by the group (they go to the task's
    /// [`TaskHandle`], or nowhere if the handle was dropped). Unlike
    /// `JoinSet`, which keeps every output until drained, a group that does
    /// not collect outcomes keeps nothing of an ended task.
    pub fn collect_outcomes(mut self, yes: bool) -> Self {
        self.collect_outcomes = yes;
        self
    }

    /// Runs the group in a child of `scope` (see [`TaskGroup::with_scope`]).
    pub fn scope(mut self, scope: CancelScope) -> Self {
        self.parent = Some(scope);
        self
    }

    /// The group.
    #[must_use]
    pub fn build(self) -> TaskGroup {
        let scope = match &self.parent {
            Some(parent) => parent.child(),
            None => CancelScope::new(),
        };
        TaskGroup {
            handle: Arc::new(TrackerHandle {
                tracker: Tracker::new(
                    scope,
                    self.policy,
                    self.cancel_on_panic,
                    self.collect_outcomes,
                ),
            }),
        }
    }
}

// ===== impl Outcomes =====

/// The [`Stream`] of task ends of a group; from [`TaskGroup::outcomes`].
#[must_use = "streams do nothing unless polled"]
pub struct Outcomes<'a> {
    registry: &'a Registry<TaskMeta>,
    key: Option<WaitKey>,
}

impl Stream for Outcomes<'_> {
    type Item = (TaskId, TaskOutcome);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // As `JoinSet::join_next`: each end taken spends one unit of tokio's
        // coop budget, so a loop over many ended tasks yields to the runtime.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let next = this
            .registry
            .poll_next_end(cx.waker(), &mut this.key)
            .expect("checked when the stream was made");
        if next.is_ready() {
            coop.made_progress();
        }
        next
    }
}

impl Drop for Outcomes<'_> {
    fn drop(&mut self) {
        self.registry.release_next_end(&mut self.key);
    }
}

impl std::fmt::Debug for Outcomes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcomes").finish_non_exhaustive()
    }
}
