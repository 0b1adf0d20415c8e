//! [`TaskSet`]: a typed set of tracked tasks whose outputs come back in
//! completion order, as tokio's [`JoinSet<T>`](tokio::task::JoinSet), torn
//! down by the shutdown ladder instead of by abort.
//!
//! A set is a private [`TaskGroup`] (the tasks, their scope, the ladder) and
//! a [`FuturesUnordered`] of the group's [`TaskHandle`]s (the outputs). The
//! group keeps nothing of an ended task; the handle in the queue holds its
//! output until it is joined, so [`len`](TaskSet::len) counts what JoinSet
//! counts: tasks not yet joined, ended or not. Taking an output out of the
//! queue is polling that handle: `join_next` spends tokio's coop budget (the
//! handle's poll does), `try_join_next` polls once, unconstrained, with a
//! no-op waker, as `JoinSet::try_join_next` does.
//!
//! `cancel_on_error` needs the id of the failing task inside the task, but
//! the id is made by the spawn that returns it. The task and its spawner meet
//! in an [`ErrorSlot`]: whichever of the two comes second (the spawner
//! publishing the id, the task returning an error) cancels the set's scope,
//! so the message always names the task and no one waits.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::group::TaskGroup;
use crate::ladder::{ShutdownPolicy, ShutdownReport};
use crate::registry::TaskId;
use crate::scope::CancelScope;
use crate::task::{Stats, TaskAbortHandle, TaskError, TaskHandle};

/// The outcome of one joined task, as [`TaskSet::join_next_with_id`] returns it.
type Joined<T> = Result<(TaskId, T), (TaskId, TaskError)>;

/// Tells an error output for `cancel_on_error` (`Result::is_err`).
type IsError<T> = fn(&T) -> bool;

// ===== impl TaskSet =====

/// A set of tracked tasks of one output type, joined in completion order, as
/// tokio's [`JoinSet<T>`](tokio::task::JoinSet), whose teardown is the
/// shutdown ladder.
///
/// [`spawn`](Self::spawn) returns a [`TaskAbortHandle`] (as
/// `JoinSet::spawn` returns an `AbortHandle`); the output goes into the set,
/// and [`join_next`](Self::join_next) returns outputs as tasks end, first
/// ended first. Every task runs under the set's [`scope`](Self::scope), in a
/// private [`TaskGroup`]: it prunes itself from the group when it ends, and
/// [`shutdown`](Self::shutdown) ends the tasks in bounded time by the
/// [`ShutdownPolicy`] (cancel, bounded re-delivery, grace, escalation, stuck
/// report) rather than by aborting them all, as `JoinSet::shutdown` does.
/// [`abort_all`](Self::abort_all) is JoinSet's abort, with no grace.
///
/// | tokio's `JoinSet<T>` | `TaskSet<T>` |
/// | --- | --- |
/// | `spawn(fut) -> AbortHandle` | [`spawn`](Self::spawn) (dropped at its next await once cancelled), [`spawn_with_scope`](Self::spawn_with_scope) (sees its scope, cleans up) |
/// | `join_next`, `join_next_with_id`, `try_join_next`, `try_join_next_with_id` | the same names; [`TaskError`] instead of `JoinError`, [`TaskId`] instead of `task::Id` |
/// | `join_all` | [`join_all`](Self::join_all) |
/// | `abort_all` | [`abort_all`](Self::abort_all) |
/// | `shutdown` (abort all, wait) | [`shutdown`](Self::shutdown) (the ladder, returns a [`ShutdownReport`]) |
/// | drop: aborts every task | drop: cancels the scope, the ladder finishes in the background |
/// | `len`, `is_empty` | the same: tasks not yet joined |
///
/// # Errors and panics of tasks
///
/// A task's error comes back from `join_next` as a [`TaskError`]:
/// [`Cancelled`](TaskError::Cancelled) when its scope was cancelled (with the
/// cancel's message), [`Aborted`](TaskError::Aborted) when it was aborted
/// ([`abort_all`](Self::abort_all), its handle, escalation), and
/// [`Panicked`](TaskError::Panicked) with the panic message. As in a
/// JoinSet, tasks are independent by default: a panic does not cancel the
/// others, unless the set was built with
/// [`cancel_on_panic(true)`](TaskSetBuilder::cancel_on_panic) or, for
/// `Result` outputs, [`cancel_on_error`](TaskSetBuilder::cancel_on_error)
/// (the first failure cancels the rest, as Trio's nursery and anyio's task
/// group).
///
/// # Dropping
///
/// Dropping the set drops its group: the group is closed, its scope
/// cancelled, and (inside a runtime) the ladder finishes in the background
/// and logs what stayed stuck. The outputs not yet joined are dropped with
/// the set. tokio's `JoinSet` aborts its tasks instead; call
/// [`abort_all`](Self::abort_all) before dropping for that.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::TaskSet;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut set = TaskSet::new();
/// for secs in [3, 1, 2] {
///     set.spawn(async move {
///         tokio::time::sleep(Duration::from_secs(secs)).await;
///         secs
///     });
/// }
/// let mut order = Vec::new();
/// while let Some(done) = set.join_next().await {
///     order.push(done.unwrap());
/// }
/// assert_eq!(order, [1, 2, 3]); // completion order
/// # }
/// ```
///
/// A teardown that lets tasks finish their work:
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::TaskSet;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut set = TaskSet::new();
/// set.spawn(tokio::time::sleep(Duration::from_secs(3600))); // dropped at its await
/// set.spawn_with_scope(|scope| async move {
///     scope.cancelled().await;
///     // flush, say goodbye: this runs
/// });
/// let report = set.shutdown().await;
/// assert_eq!(report.cancelled, 1);
/// assert_eq!(report.completed, 1);
/// assert!(report.is_clean());
/// assert!(set.is_empty());
/// # }
/// ```
pub struct TaskSet<T> {
    group: TaskGroup,
    // The handles of the tasks not yet joined, ended or not.
    joins: FuturesUnordered<Joining<T>>,
    // `Some` for `cancel_on_error`.
    is_error: Option<IsError<T>>,
}

impl<T: Send + 'static> TaskSet<T> {
    /// An empty set with its own root scope and the default
    /// [`ShutdownPolicy`], whose tasks are independent (a panic cancels
    /// nothing), as `JoinSet::new`. Needs no runtime; spawning does.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// let set = TaskSet::<u32>::new();
    /// assert!(set.is_empty());
    /// assert!(!set.scope().is_cancelled());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a set: its policy, an enclosing scope, what a failure
    /// cancels.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::{CancelScope, ShutdownPolicy, TaskSet};
    ///
    /// let server = CancelScope::new();
    /// let set = TaskSet::<()>::builder()
    ///     .policy(ShutdownPolicy { grace: Duration::from_secs(10), ..Default::default() })
    ///     .scope(server.clone())
    ///     .cancel_on_panic(true)
    ///     .build();
    /// server.cancel();
    /// assert!(set.scope().is_cancelled()); // a child of `server`
    /// ```
    pub fn builder() -> TaskSetBuilder<T> {
        TaskSetBuilder {
            policy: ShutdownPolicy::default(),
            parent: None,
            cancel_on_panic: false,
            is_error: None,
        }
    }

    /// Spawns `fut` into the set and returns a handle that can abort or
    /// cancel it (not await it: its output comes from
    /// [`join_next`](Self::join_next)), as `JoinSet::spawn`.
    ///
    /// Once the set's scope is cancelled the future is dropped at its next
    /// await, and it is joined as [`TaskError::Cancelled`]: code after an
    /// await never runs. A task that must clean up uses
    /// [`spawn_with_scope`](Self::spawn_with_scope) (see
    /// [`TaskGroup::spawn`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, and after [`shutdown`](Self::shutdown) (which
    /// closes the set; unlike a `JoinSet`, a shut-down set takes no new
    /// tasks), with a message naming the fix.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskError, TaskSet};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// let forever = set.spawn(std::future::pending::<u32>());
    /// forever.abort();
    /// assert!(matches!(set.join_next().await, Some(Err(TaskError::Aborted))));
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn<F>(&mut self, fut: F) -> TaskAbortHandle
    where
        F: Future<Output = T> + Send + 'static,
    {
        let watch = self.watch();
        let slot = watch.slot();
        let handle = self.group.spawn(watched(fut, watch));
        self.insert(handle, slot)
    }

    /// Spawns `f(scope)` into the set, where `scope` is a fresh child of the
    /// set's scope: the task sees a cancel and decides how to end (finish its
    /// item, clean up, return a partial output), as
    /// [`TaskGroup::spawn_with_scope`]. The ladder of
    /// [`shutdown`](Self::shutdown) still re-delivers to it and escalates on
    /// it past grace. Returns the task's abort handle, as
    /// [`spawn`](Self::spawn).
    ///
    /// # Panics
    ///
    /// As [`spawn`](Self::spawn): outside a tokio runtime and after
    /// [`shutdown`](Self::shutdown); `f` is not called.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn_with_scope(|scope| async move {
    ///     let mut items = 0;
    ///     while !scope.is_cancelled() {
    ///         items += 1; // one unit of work
    ///         tokio::task::yield_now().await;
    ///     }
    ///     items // a partial output, not an error
    /// });
    /// tokio::task::yield_now().await;
    /// set.scope().cancel();
    /// assert!(set.join_next().await.unwrap().unwrap() >= 1);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_with_scope<F, Fut>(&mut self, f: F) -> TaskAbortHandle
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let watch = self.watch();
        let slot = watch.slot();
        let handle = self
            .group
            .spawn_with_scope(move |scope| watched(f(scope), watch));
        self.insert(handle, slot)
    }

    /// Runs the blocking closure `f` on tokio's blocking pool, its output
    /// joined in completion order with the rest, as
    /// `JoinSet::spawn_blocking`; tracked and torn down as
    /// [`TaskGroup::spawn_blocking`]: a cancel before it starts skips it, and
    /// one that runs past `grace + abort_grace` is reported stuck (it cannot
    /// be aborted) and stays in the set until it returns.
    ///
    /// # Panics
    ///
    /// As [`spawn`](Self::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn_blocking(|| (1..=10u32).product::<u32>());
    /// assert_eq!(set.join_next().await.unwrap().unwrap(), 3_628_800);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_blocking<F>(&mut self, f: F) -> TaskAbortHandle
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let watch = self.watch();
        let slot = watch.slot();
        let handle = self.group.spawn_blocking(move || {
            let output = f();
            watch.check(&output);
            output
        });
        self.insert(handle, slot)
    }

    /// Spawns a `!Send` future on the current `LocalSet` or local runtime,
    /// as `JoinSet::spawn_local`; otherwise as [`spawn`](Self::spawn).
    ///
    /// # Panics
    ///
    /// As [`spawn`](Self::spawn), and, as tokio's `spawn_local`, outside a
    /// `LocalSet` or local runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::rc::Rc;
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// let local = tokio::task::LocalSet::new();
    /// let out = local
    ///     .run_until(async {
    ///         let name = Rc::new("local"); // !Send
    ///         set.spawn_local(async move { name.len() });
    ///         set.join_next().await
    ///     })
    ///     .await;
    /// assert_eq!(out.unwrap().unwrap(), 5);
    /// # }
    /// ```
    #[track_caller]
    pub fn spawn_local<F>(&mut self, fut: F) -> TaskAbortHandle
    where
        F: Future<Output = T> + 'static,
    {
        let watch = self.watch();
        let slot = watch.slot();
        let handle = self.group.spawn_local(watched(fut, watch));
        self.insert(handle, slot)
    }

    /// Spawns `fut` on the runtime of `handle`, from anywhere, as
    /// `JoinSet::spawn_on`; otherwise as [`spawn`](Self::spawn).
    ///
    /// # Panics
    ///
    /// After [`shutdown`](Self::shutdown).
    #[track_caller]
    pub fn spawn_on<F>(&mut self, fut: F, handle: &tokio::runtime::Handle) -> TaskAbortHandle
    where
        F: Future<Output = T> + Send + 'static,
    {
        let watch = self.watch();
        let slot = watch.slot();
        let task = self.group.spawn_on(watched(fut, watch), handle);
        self.insert(task, slot)
    }

    /// Spawns a `!Send` future on `local`, as `JoinSet::spawn_local_on`;
    /// otherwise as [`spawn_local`](Self::spawn_local).
    ///
    /// # Panics
    ///
    /// After [`shutdown`](Self::shutdown), or outside a runtime before the
    /// set's first spawn (its ladders need one).
    #[track_caller]
    pub fn spawn_local_on<F>(&mut self, fut: F, local: &tokio::task::LocalSet) -> TaskAbortHandle
    where
        F: Future<Output = T> + 'static,
    {
        let watch = self.watch();
        let slot = watch.slot();
        let handle = self.group.spawn_local_on(watched(fut, watch), local);
        self.insert(handle, slot)
    }

    /// As [`spawn_blocking`](Self::spawn_blocking), on the blocking pool of
    /// the runtime of `handle`, from anywhere; as `JoinSet::spawn_blocking_on`.
    ///
    /// # Panics
    ///
    /// After [`shutdown`](Self::shutdown).
    #[track_caller]
    pub fn spawn_blocking_on<F>(&mut self, f: F, handle: &tokio::runtime::Handle) -> TaskAbortHandle
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let watch = self.watch();
        let slot = watch.slot();
        let task = self.group.spawn_blocking_on(
            move || {
                let output = f();
                watch.check(&output);
                output
            },
            handle,
        );
        self.insert(task, slot)
    }

    /// Waits for the next task to end and returns its output, first ended
    /// first; `None` once the set is empty. As `JoinSet::join_next`.
    ///
    /// # Errors
    ///
    /// `Some(Err(_))` for a task that produced no output: see
    /// [`TaskError`] (cancelled, aborted, panicked). The task is joined (it
    /// left the set) either way.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is taken from the set unless this returns it, so
    /// it can be a branch of `tokio::select!` in a loop.
    ///
    /// Each task joined spends one unit of tokio's coop budget, as
    /// `JoinSet::join_next`: a loop over many ended tasks yields to the
    /// runtime now and then.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn(async { tokio::time::sleep(Duration::from_secs(5)).await; "late" });
    /// // A timeout drops the join, not the output.
    /// let early = tokio::time::timeout(Duration::from_secs(1), set.join_next()).await;
    /// assert!(early.is_err());
    /// assert_eq!(set.len(), 1);
    /// assert_eq!(set.join_next().await.unwrap().unwrap(), "late");
    /// assert!(set.join_next().await.is_none());
    /// # }
    /// ```
    pub async fn join_next(&mut self) -> Option<Result<T, TaskError>> {
        let (_, result) = self.joins.next().await?;
        Some(result)
    }

    /// As [`join_next`](Self::join_next), with the id of the task that ended
    /// (the id of the handle [`spawn`](Self::spawn) returned for it), on
    /// success and on error, as `JoinSet::join_next_with_id`.
    ///
    /// # Errors
    ///
    /// `Some(Err((id, error)))` for a task that produced no output; see
    /// [`TaskError`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`join_next`](Self::join_next).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// let ok = set.spawn(async { 1 }).id();
    /// let failed = set.spawn(async { panic!("bad frame") }).id();
    /// let mut seen = Vec::new();
    /// while let Some(joined) = set.join_next_with_id().await {
    ///     match joined {
    ///         Ok((id, output)) => seen.push((id, Ok(output))),
    ///         Err((id, error)) => seen.push((id, Err(error.to_string()))),
    ///     }
    /// }
    /// seen.sort_by_key(|(id, _)| *id);
    /// assert_eq!(seen, [(ok, Ok(1)), (failed, Err("task panicked: bad frame".to_owned()))]);
    /// # }
    /// ```
    pub async fn join_next_with_id(&mut self) -> Option<Joined<T>> {
        let (id, result) = self.joins.next().await?;
        Some(split(id, result))
    }

    /// Takes the output of a task that has ended, if there is one, without
    /// waiting; `None` if no task has ended yet or the set is empty. As
    /// `JoinSet::try_join_next`.
    ///
    /// It never stops at tokio's coop budget (the poll is
    /// [unconstrained](tokio::task::unconstrained), as JoinSet's): a
    /// synchronous loop drains every ended task.
    ///
    /// # Errors
    ///
    /// As [`join_next`](Self::join_next): `Some(Err(_))` for an ended task
    /// that produced no output.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn(async { tokio::time::sleep(Duration::from_secs(1)).await; 7 });
    /// assert!(set.try_join_next().is_none()); // not ended yet
    /// tokio::time::sleep(Duration::from_secs(2)).await;
    /// assert_eq!(set.try_join_next().unwrap().unwrap(), 7);
    /// assert!(set.try_join_next().is_none()); // empty
    /// # }
    /// ```
    pub fn try_join_next(&mut self) -> Option<Result<T, TaskError>> {
        self.try_next().map(|(_, result)| result)
    }

    /// As [`try_join_next`](Self::try_join_next), with the task's id, as
    /// `JoinSet::try_join_next_with_id`.
    ///
    /// # Errors
    ///
    /// `Some(Err((id, error)))` for an ended task that produced no output.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// let id = set.spawn(async { "done" }).id();
    /// tokio::task::yield_now().await; // let it run
    /// assert_eq!(set.try_join_next_with_id(), Some(Ok((id, "done"))));
    /// # }
    /// ```
    pub fn try_join_next_with_id(&mut self) -> Option<Joined<T>> {
        self.try_next().map(|(id, result)| split(id, result))
    }

    /// Waits for every task and returns their outputs in completion order,
    /// as `JoinSet::join_all`.
    ///
    /// # Panics
    ///
    /// If a task panicked, its panic is resumed here
    /// ([`std::panic::resume_unwind`]) with its panic message (a `String`)
    /// as the payload. If a task was cancelled or aborted, this panics with
    /// a message naming the task and its error. The set is dropped then: its
    /// remaining tasks are cancelled (see [Dropping](Self#dropping)). With
    /// [`cancel_on_error`](TaskSetBuilder::cancel_on_error), the tasks a
    /// failure cancelled make this panic: use a
    /// [`join_next`](Self::join_next) loop to see every outcome.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: the set is moved in, so dropping the future drops
    /// the outputs gathered so far and the set (cancelling what is left).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// for i in 0..3 {
    ///     set.spawn(async move { i * 10 });
    /// }
    /// let mut outputs = set.join_all().await;
    /// outputs.sort();
    /// assert_eq!(outputs, [0, 10, 20]);
    /// # }
    /// ```
    pub async fn join_all(self) -> Vec<T> {
        let mut set = self;
        let mut outputs = Vec::with_capacity(set.len());
        while let Some(joined) = set.join_next_with_id().await {
            match joined {
                Ok((_, output)) => outputs.push(output),
                Err((_, TaskError::Panicked(message))) => {
                    std::panic::resume_unwind(Box::new(message))
                }
                Err((id, error)) => panic!("cancel_scope: TaskSet::join_all: {id} failed: {error}"),
            }
        }
        outputs
    }

    /// Tasks not yet joined: running ones, ended ones whose output waits in
    /// the set, and stuck ones after a [`shutdown`](Self::shutdown). As
    /// `JoinSet::len`; [`stats`](Self::stats) counts live futures
    /// (`tracked`).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn(async {});
    /// tokio::task::yield_now().await; // it ends
    /// assert_eq!(set.len(), 1); // not yet joined
    /// assert_eq!(set.stats().tracked, 0); // its future is gone
    /// set.join_next().await;
    /// assert_eq!(set.len(), 0);
    /// # }
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.joins.len()
    }

    /// Whether no task is left to join, as `JoinSet::is_empty`.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// assert!(set.is_empty());
    /// set.spawn(async {});
    /// assert!(!set.is_empty());
    /// # }
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty()
    }

    /// The set's scope: every task runs under it. Cancelling it (with
    /// [`cancel_with`](CancelScope::cancel_with) for a message) cancels
    /// every task without waiting; [`shutdown`](Self::shutdown) is the
    /// bounded teardown. It does not close the set: tasks spawned later start
    /// cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn(std::future::pending::<()>());
    /// set.scope().cancel_with("client went away");
    /// let error = set.join_next().await.unwrap().unwrap_err();
    /// assert_eq!(error.cancel_message(), Some("client went away"));
    /// # }
    /// ```
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        self.group.scope()
    }

    /// Aborts every task not yet joined, now, with no grace, as
    /// `JoinSet::abort_all`: each is joined as [`TaskError::Aborted`] unless
    /// it ended first. A task with a scope of its own has it cancelled right
    /// before its future is dropped (see [`TaskHandle::abort`]). The tasks
    /// stay in the set until joined.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskError, TaskSet};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// for _ in 0..3 {
    ///     set.spawn(std::future::pending::<()>());
    /// }
    /// set.abort_all();
    /// while let Some(joined) = set.join_next().await {
    ///     assert!(matches!(joined, Err(TaskError::Aborted)));
    /// }
    /// assert_eq!(set.stats().aborted, 3);
    /// # }
    /// ```
    pub fn abort_all(&mut self) {
        for join in self.joins.iter() {
            join.handle.abort();
        }
    }

    /// Forgets every task without ending any, as `JoinSet::detach_all`:
    /// [`len`](Self::len) is 0 and their outputs go nowhere, but the tasks
    /// stay tracked by the set's group, so [`shutdown`](Self::shutdown) and
    /// the set's drop still tear them down by the ladder (unlike a detached
    /// `JoinSet` task, none escapes).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn(std::future::pending::<()>());
    /// set.detach_all();
    /// assert!(set.is_empty());
    /// assert!(set.join_next().await.is_none());
    /// let report = set.shutdown().await; // the detached task is still torn down
    /// assert_eq!(report.cancelled, 1);
    /// # }
    /// ```
    pub fn detach_all(&mut self) {
        self.joins.clear();
    }

    /// Polls for the next task to end, as `JoinSet::poll_join_next`: for a
    /// hand-written `Future` or `Stream` over the set. `Poll::Ready(None)`
    /// once the set is empty. Registers `cx`'s waker when it returns
    /// `Pending`; spends tokio's coop budget as [`join_next`](Self::join_next).
    pub fn poll_join_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, TaskError>>> {
        self.joins
            .poll_next_unpin(cx)
            .map(|joined| joined.map(|(_, result)| result))
    }

    /// As [`poll_join_next`](Self::poll_join_next), with the task's id, as
    /// `JoinSet::poll_join_next_with_id`.
    pub fn poll_join_next_with_id(&mut self, cx: &mut Context<'_>) -> Poll<Option<Joined<T>>> {
        self.joins.poll_next_unpin(cx).map(|joined| {
            joined.map(|(id, result)| match result {
                Ok(output) => Ok((id, output)),
                Err(e) => Err((id, e)),
            })
        })
    }

    /// Tears the set down by the shutdown ladder, as
    /// [`TaskGroup::shutdown`]: closes the set, cancels its scope (one wake
    /// per task), re-delivers with back-off to tasks that were polled and did
    /// not end, escalates at `grace` (abort), and reports what is still alive
    /// after `abort_grace` as stuck. Returns within `grace + abort_grace`
    /// (plus scheduling noise), and as soon as every task has ended.
    ///
    /// Afterwards the outputs of the ended tasks are discarded, as
    /// `JoinSet::shutdown` does, those of tasks that ended before the call
    /// too (the report counts the tasks that ended since the set's scope was
    /// first cancelled, see [`ShutdownReport`]; [`stats`](Self::stats)
    /// counts every one); the tasks
    /// reported stuck stay in the set, so [`len`](Self::len) counts them and
    /// [`join_next`](Self::join_next) returns them if they ever end. The set
    /// is closed: a later spawn panics (a `JoinSet` takes new tasks after
    /// its shutdown). A second `shutdown` runs the ladder over the stuck
    /// tasks again.
    ///
    /// # Panics
    ///
    /// When awaited inside a task of this same set, with a message naming the
    /// mistake (as [`TaskGroup::shutdown`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the ladder where it is (the scope stays
    /// cancelled, the set closed); the set keeps every task not yet
    /// discarded, and `shutdown` can be called again to finish.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::{ShutdownPolicy, TaskSet};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::builder()
    ///     .policy(ShutdownPolicy { grace: Duration::from_secs(2), ..Default::default() })
    ///     .build();
    /// set.spawn(async {}); // ends before the shutdown, never joined
    /// for _ in 0..10 {
    ///     set.spawn(tokio::time::sleep(Duration::from_secs(3600)));
    /// }
    /// // A task that ignores its scope is aborted at grace.
    /// set.spawn_with_scope(|_ignored| std::future::pending());
    /// tokio::task::yield_now().await;
    ///
    /// let report = set.shutdown().await;
    /// assert_eq!((report.cancelled, report.aborted), (10, 1));
    /// assert_eq!(report.escalations, 1);
    /// assert!(report.is_clean());
    /// assert!(set.is_empty()); // the ended task's output was discarded
    /// # }
    /// ```
    pub async fn shutdown(&mut self) -> ShutdownReport {
        let report = self.group.shutdown().await;
        let stuck: HashSet<TaskId> = report.stuck.iter().map(|s| s.id).collect();
        // Every task not reported stuck has ended (its future is gone), so
        // its handle is ready or about to be: wait for those, keep the rest.
        let mut ended = FuturesUnordered::new();
        for join in std::mem::take(&mut self.joins) {
            if stuck.contains(&join.handle.id()) {
                self.joins.push(join);
            } else {
                ended.push(join);
            }
        }
        while ended.next().await.is_some() {}
        report
    }

    /// A snapshot of the set's counters (spawned, completed, cancelled,
    /// aborted, panicked, stuck, ...): see [`Stats`]. Its `tracked` counts
    /// live task futures, not tasks waiting to be joined
    /// ([`len`](Self::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::new();
    /// set.spawn(async { 1 });
    /// set.spawn(async { panic!("bad frame") });
    /// while set.join_next().await.is_some() {}
    /// let stats = set.stats();
    /// assert_eq!((stats.spawned, stats.completed, stats.panicked), (2, 1, 1));
    /// assert_eq!(stats.tracked, 0);
    /// # }
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.group.stats()
    }

    /// Queues a spawned task's handle and returns its abort handle.
    fn insert(&mut self, handle: TaskHandle<T>, slot: Option<Arc<ErrorSlot>>) -> TaskAbortHandle {
        if let Some(slot) = slot {
            self.publish(&slot, handle.id());
        }
        let abort = handle.abort_handle();
        self.joins.push(Joining { handle });
        abort
    }

    /// What `cancel_on_error` adds to the next task: the check of its output.
    fn watch(&self) -> Watch<T> {
        Watch(self.is_error.map(|is_error| WatchErrors {
            is_error,
            set_scope: self.scope().clone(),
            slot: Arc::new(ErrorSlot::new()),
        }))
    }

    /// The spawner's side of `cancel_on_error`: publish the id, and cancel
    /// if the task already returned an error.
    fn publish(&self, slot: &ErrorSlot, id: TaskId) {
        if slot.publish(id) {
            cancel_for_error(self.scope(), id);
        }
    }

    /// One poll of the queue, with a no-op waker and no coop budget (as
    /// `JoinSet::try_join_next`): every ended task's handle is ready, none
    /// waits for the budget.
    fn try_next(&mut self) -> Option<(TaskId, Result<T, TaskError>)> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut next = tokio::task::unconstrained(self.joins.next());
        match Pin::new(&mut next).poll(&mut cx) {
            Poll::Ready(joined) => joined,
            Poll::Pending => None,
        }
    }
}

impl<T, F> Extend<F> for TaskSet<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    /// Spawns every future of `iter`, as `JoinSet`'s `Extend`.
    ///
    /// # Panics
    ///
    /// As [`TaskSet::spawn`].
    #[track_caller]
    fn extend<I: IntoIterator<Item = F>>(&mut self, iter: I) {
        for fut in iter {
            self.spawn(fut);
        }
    }
}

impl<T, F> FromIterator<F> for TaskSet<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    /// A new set with every future of `iter` spawned, as `JoinSet`'s
    /// `FromIterator`:
    /// `let set: TaskSet<_> = (0..5).map(|i| async move { i }).collect();`.
    ///
    /// # Panics
    ///
    /// As [`TaskSet::spawn`]: outside a tokio runtime.
    #[track_caller]
    fn from_iter<I: IntoIterator<Item = F>>(iter: I) -> Self {
        let mut set = TaskSet::new();
        set.extend(iter);
        set
    }
}

impl<T: Send + 'static> Default for TaskSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for TaskSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSet")
            .field("len", &self.joins.len())
            .field("group", &self.group)
            .finish()
    }
}

fn split<T>(id: TaskId, result: Result<T, TaskError>) -> Joined<T> {
    match result {
        Ok(output) => Ok((id, output)),
        Err(error) => Err((id, error)),
    }
}

// ===== impl TaskSetBuilder =====

/// Builds a [`TaskSet`]; from [`TaskSet::builder`].
///
/// # Examples
///
/// ```
/// use cancel_scope::TaskSet;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut set = TaskSet::<Result<u32, String>>::builder().cancel_on_error().build();
/// set.spawn(async { Err("no route".to_owned()) });
/// set.spawn(std::future::pending());
/// assert_eq!(set.join_next().await.unwrap().unwrap(), Err("no route".to_owned()));
/// let sibling = set.join_next().await.unwrap().unwrap_err();
/// assert!(sibling.cancel_message().unwrap().ends_with("returned an error (cancel_on_error)"));
/// # }
/// ```
#[must_use = "call .build() to get the set"]
pub struct TaskSetBuilder<T> {
    policy: ShutdownPolicy,
    parent: Option<CancelScope>,
    cancel_on_panic: bool,
    is_error: Option<IsError<T>>,
}

impl<T> TaskSetBuilder<T> {
    /// The shutdown ladder's policy (default: [`ShutdownPolicy::default`]).
    pub fn policy(mut self, policy: ShutdownPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Runs the set in a child of `scope`: cancelling `scope` (or reaching
    /// its deadline) cancels the set; the set's shutdown or drop does not
    /// cancel `scope`.
    pub fn scope(mut self, scope: CancelScope) -> Self {
        self.parent = Some(scope);
        self
    }

    /// Whether a panicking task cancels the set's scope, and so the other
    /// tasks (default `false`: tasks are independent, as in a `JoinSet`),
    /// with the message `task#7 panicked: bad frame`, as
    /// [`TaskGroupBuilder::cancel_on_panic`](crate::TaskGroupBuilder::cancel_on_panic).
    /// The panic itself is joined as [`TaskError::Panicked`] either way.
    pub fn cancel_on_panic(mut self, yes: bool) -> Self {
        self.cancel_on_panic = yes;
        self
    }

    /// The set.
    pub fn build(self) -> TaskSet<T> {
        let mut group = TaskGroup::builder()
            .policy(self.policy)
            .cancel_on_panic(self.cancel_on_panic);
        if let Some(parent) = self.parent {
            group = group.scope(parent);
        }
        TaskSet {
            group: group.build(),
            joins: FuturesUnordered::new(),
            is_error: self.is_error,
        }
    }
}

impl<U, E> TaskSetBuilder<Result<U, E>> {
    /// The first task whose output is an `Err` cancels the set's scope, and
    /// so the other tasks, with the message `task#7 returned an error
    /// (cancel_on_error)` that their [`TaskError::Cancelled`] carries
    /// ([`cancel_message`](TaskError::cancel_message)); the `Err` itself is
    /// joined as that task's output. As Trio's nursery and anyio's task
    /// group, the first failure cancels the rest, so this also turns
    /// [`cancel_on_panic`](Self::cancel_on_panic) on (a later
    /// `cancel_on_panic(false)` turns it off again). The first cancel wins:
    /// a later error does not change the message.
    ///
    /// The error is not printed (`E` needs no `Debug`): it is in the output.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::TaskSet;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut set = TaskSet::<Result<(), &str>>::builder().cancel_on_error().build();
    /// let failing = set.spawn(async {
    ///     tokio::time::sleep(Duration::from_secs(1)).await;
    ///     Err("upstream refused")
    /// });
    /// for _ in 0..3 {
    ///     set.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await; Ok(()) });
    /// }
    /// assert_eq!(set.join_next().await.unwrap().unwrap(), Err("upstream refused"));
    /// let expected = format!("{} returned an error (cancel_on_error)", failing.id());
    /// while let Some(sibling) = set.join_next().await {
    ///     assert_eq!(sibling.unwrap_err().cancel_message(), Some(expected.as_str()));
    /// }
    /// assert_eq!(set.stats().cancelled, 3);
    /// # }
    /// ```
    pub fn cancel_on_error(mut self) -> Self {
        self.is_error = Some(Result::is_err);
        self.cancel_on_panic = true;
        self
    }
}

impl<T> std::fmt::Debug for TaskSetBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSetBuilder")
            .field("policy", &self.policy)
            .field("scope", &self.parent)
            .field("cancel_on_panic", &self.cancel_on_panic)
            .field("cancel_on_error", &self.is_error.is_some())
            .finish()
    }
}

// ===== the join queue =====

/// A task's handle in the set's queue: resolves to the task's id and result.
#[must_use = "futures do nothing unless polled"]
struct Joining<T> {
    handle: TaskHandle<T>,
}

impl<T> Future for Joining<T> {
    type Output = (TaskId, Result<T, TaskError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.handle.id();
        // The handle's poll spends tokio's coop budget (a JoinHandle's does).
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|result| (id, result))
    }
}

// ===== cancel_on_error =====

/// `fut`, cancelling `set_scope` when its output is an error (the first
/// cancel wins): the wrapper of a `cancel_on_error` task. The cancel happens
/// in the poll that returns the output, so the task itself completes with
/// its error, and its siblings are cancelled.
async fn watched<Fut: Future>(fut: Fut, watch: Watch<Fut::Output>) -> Fut::Output {
    let output = fut.await;
    watch.check(&output);
    output
}

/// One task's share of `cancel_on_error` (nothing without it).
struct Watch<T>(Option<WatchErrors<T>>);

struct WatchErrors<T> {
    is_error: IsError<T>,
    set_scope: CancelScope,
    slot: Arc<ErrorSlot>,
}

impl<T> Watch<T> {
    /// The slot the spawner publishes the task's id in.
    fn slot(&self) -> Option<Arc<ErrorSlot>> {
        self.0.as_ref().map(|w| w.slot.clone())
    }

    /// The task's output: an error cancels the set (the first cancel wins).
    fn check(&self, output: &T) {
        if let Some(w) = &self.0 {
            if (w.is_error)(output) {
                if let Some(id) = w.slot.errored() {
                    cancel_for_error(&w.set_scope, id);
                }
            }
        }
    }
}

fn cancel_for_error(set_scope: &CancelScope, id: TaskId) {
    tracing::debug!(task = %id, "task returned an error: cancelling its set (cancel_on_error)");
    set_scope.cancel_with(format!("{id} returned an error (cancel_on_error)"));
}

/// Where a `cancel_on_error` task and its spawner meet: the task's id is
/// made by the spawn that returns it, so on a multi-thread runtime the task
/// may end with an error before its spawner knows the id. Whichever side
/// comes second cancels, with the id: one of [`errored`](Self::errored) and
/// [`publish`](Self::publish) sees the other's write.
///
/// The word is [`EMPTY`](Self::EMPTY) (neither came yet), a task id (the
/// spawner came first), or [`ERRORED`](Self::ERRORED) (the task came first
/// with an error). Ids start at 1 and never reach `u64::MAX`, so the three
/// cannot be confused; once an id is in, the word never changes.
struct ErrorSlot(AtomicU64);

impl ErrorSlot {
    const EMPTY: u64 = 0;
    const ERRORED: u64 = u64::MAX;

    fn new() -> Self {
        ErrorSlot(AtomicU64::new(Self::EMPTY))
    }

    /// The task's side, on an error output: the id to name in the cancel,
    /// or `None` when the spawner will cancel as it publishes the id.
    fn errored(&self) -> Option<TaskId> {
        // Relaxed: the word carries only itself (the cancel goes through
        // the scope, which orders its own state), and read-modify-writes of
        // one atomic are totally ordered, so exactly one side sees the other.
        match self.0.compare_exchange(
            Self::EMPTY,
            Self::ERRORED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => None,
            Err(id) => Some(TaskId(id)),
        }
    }

    /// The spawner's side: publishes `id`; `true` if the task already
    /// returned an error (the spawner cancels then).
    fn publish(&self, id: TaskId) -> bool {
        // Relaxed: as in `errored`.
        self.0.swap(id.0, Ordering::Relaxed) == Self::ERRORED
    }
}

#[cfg(test)]
mod tests {
    use super::{ErrorSlot, TaskId};

    /// Both orders of the race between a failing task and its spawner name
    /// the task exactly once.
    #[test]
    fn an_error_slot_names_the_task_in_either_order() {
        let task_first = ErrorSlot::new();
        assert_eq!(task_first.errored(), None);
        assert!(task_first.publish(TaskId(7)), "the spawner cancels");

        let spawner_first = ErrorSlot::new();
        assert!(!spawner_first.publish(TaskId(7)));
        assert_eq!(spawner_first.errored(), Some(TaskId(7)), "the task cancels");
        assert_eq!(spawner_first.errored(), Some(TaskId(7)));
    }
}
