//! [`TaskBuilder`]: one task's name and escalation hook, then the spawn.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use crate::map::lease::{Admission, LeaseGuard, Leases};
use crate::scope::CancelScope;
use crate::task::{Mode, SpawnError, TaskHandle, TaskOptions};
use crate::tracker::{LocalPlace, Place, Tracker, Tracks};

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
    tracker: &'a Arc<Tracker<K>>,
    opts: TaskOptions<K>,
    /// The map's lease layer, for a task of a leased map: its future (or
    /// closure) carries a lease guard, and its lease is registered once the
    /// spawn returned.
    leases: Option<&'a Arc<Leases<K>>>,
}

impl<'a, K> TaskBuilder<'a, K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    pub(crate) fn new(tracker: &'a Arc<Tracker<K>>, key: Option<K>) -> Self {
        TaskBuilder {
            tracker,
            opts: TaskOptions {
                key,
                name: None,
                hook: None,
                begin_ladder: None,
                linger: None,
            },
            leases: None,
        }
    }

    /// Gives each task of this builder a lease of `leases` (a leased map).
    pub(crate) fn with_leases(mut self, leases: Option<&'a Arc<Leases<K>>>) -> Self {
        self.leases = leases;
        self
    }

    /// The task's lease, if its map is leased: the guard for its future and
    /// the admission that registers it after the spawn.
    fn lease(&self) -> Option<(LeaseGuard<K>, Admission<K>)> {
        let leases = self.leases?;
        let key = self.opts.key.as_ref()?;
        Some(leases.prepare(key))
    }

    /// Names the task, for logs and [`StuckTask`](crate::StuckTask) reports.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.opts.name = Some(name.into());
        self
    }

    /// Sets the escalation hook: called once, if the task is still alive when
    /// grace runs out, as it is aborted. Close the task's transport here (drop
    /// a subscription, shut a socket) so a task blocked on it ends.
    ///
    /// The hook runs on a thread of its own (named `cancel-scope-hook`), not
    /// on the ladder's task nor on a runtime thread, and the abort is
    /// requested at the same moment, not after the hook returns: a hook that
    /// blocks never stretches the ladder past `grace + abort_grace` nor
    /// stops the runtime (a stuck task's report says
    /// [`hook_running`](crate::StuckTask::hook_running), and
    /// [`ShutdownReport::hooks_running`](crate::ShutdownReport::hooks_running)
    /// counts hooks that had not returned when the ladder ended). If no
    /// thread can be started, the hook runs on the ladder's task. A panic in
    /// the hook is caught and logged; the abort still happens.
    pub fn on_escalate(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.opts.hook = Some(Box::new(hook));
        self
    }

    /// Sets what the task's poll runs after an escalation or abort before
    /// the task ends (see [`Linger`](crate::task::Linger)); for feature
    /// layers (a scoped child's reap).
    #[cfg_attr(
        not(all(unix, feature = "process")),
        expect(dead_code, reason = "only feature layers linger")
    )]
    pub(crate) fn linger(mut self, linger: crate::task::Linger) -> Self {
        self.opts.linger = Some(linger);
        self
    }

    /// Spawns `fut`; it is dropped at its next await once its scope is
    /// cancelled. See [`TaskGroup::spawn`](crate::TaskGroup::spawn).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a closed group or map, with a message
    /// naming the fix; see [`try_spawn`](Self::try_spawn).
    #[track_caller]
    pub fn spawn<F>(self, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        or_panic(self.try_spawn(fut))
    }

    /// As [`spawn`](Self::spawn), returning an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a closed group or map; nothing is tracked.
    #[track_caller]
    pub fn try_spawn<F>(self, fut: F) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.lease() {
            None => self
                .tracker
                .spawn(self.opts, Mode::Drop, Place::Current, |_| fut),
            Some((guard, admission)) => {
                let spawned = self
                    .tracker
                    .spawn(self.opts, Mode::Drop, Place::Current, |_| guard.wrap(fut));
                admission.admit(self.tracker, spawned)
            }
        }
    }

    /// Spawns `f(scope)`: the task gets its own child scope and decides how to
    /// react to it (cooperative cancellation). See
    /// [`TaskGroup::spawn_with_scope`](crate::TaskGroup::spawn_with_scope).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a closed group or map, with a message
    /// naming the fix; see [`try_spawn_with_scope`](Self::try_spawn_with_scope).
    #[track_caller]
    pub fn spawn_with_scope<F, Fut>(self, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        or_panic(self.try_spawn_with_scope(f))
    }

    /// As [`spawn_with_scope`](Self::spawn_with_scope), returning an error
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a closed group or map; `f` is not called.
    #[track_caller]
    pub fn try_spawn_with_scope<F, Fut>(self, f: F) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let make =
            |scope: Option<CancelScope>| f(scope.expect("cooperative tasks get their own scope"));
        match self.lease() {
            None => self
                .tracker
                .spawn(self.opts, Mode::Cooperative, Place::Current, make),
            Some((guard, admission)) => {
                let spawned =
                    self.tracker
                        .spawn(self.opts, Mode::Cooperative, Place::Current, |scope| {
                            guard.wrap(make(scope))
                        });
                admission.admit(self.tracker, spawned)
            }
        }
    }
    /// Spawns `fut` on the runtime of `handle` instead of the current one,
    /// from anywhere (a plain thread, another runtime), as
    /// `Handle::spawn` / `JoinSet::spawn_on`; otherwise as
    /// [`spawn`](Self::spawn). See
    /// [`TaskGroup::spawn_on`](crate::TaskGroup::spawn_on).
    ///
    /// # Panics
    ///
    /// On a closed group or map; see [`try_spawn_on`](Self::try_spawn_on).
    #[track_caller]
    pub fn spawn_on<F>(self, fut: F, handle: &tokio::runtime::Handle) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        or_panic(self.try_spawn_on(fut, handle))
    }

    /// As [`spawn_on`](Self::spawn_on), returning an error instead of
    /// panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Closed`] on a closed group or map; nothing is tracked.
    #[track_caller]
    pub fn try_spawn_on<F>(
        self,
        fut: F,
        handle: &tokio::runtime::Handle,
    ) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.lease() {
            None => self
                .tracker
                .spawn(self.opts, Mode::Drop, Place::On(handle), |_| fut),
            Some((guard, admission)) => {
                let spawned = self
                    .tracker
                    .spawn(self.opts, Mode::Drop, Place::On(handle), |_| {
                        guard.wrap(fut)
                    });
                admission.admit(self.tracker, spawned)
            }
        }
    }

    /// Spawns a `!Send` future on the current `LocalSet` or local runtime,
    /// as `tokio::task::spawn_local`; otherwise as [`spawn`](Self::spawn).
    /// See [`TaskGroup::spawn_local`](crate::TaskGroup::spawn_local).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a closed group or map (see
    /// [`try_spawn_local`](Self::try_spawn_local)), and, as tokio's
    /// `spawn_local`, inside a runtime but outside a `LocalSet` or local
    /// runtime (the task is then not tracked).
    #[track_caller]
    pub fn spawn_local<F>(self, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        or_panic(self.try_spawn_local(fut))
    }

    /// As [`spawn_local`](Self::spawn_local), returning an error instead of
    /// panicking for the two errors below.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a closed group or map; nothing is tracked.
    ///
    /// # Panics
    ///
    /// As tokio's `spawn_local`, inside a runtime but outside a `LocalSet`
    /// or local runtime.
    #[track_caller]
    pub fn try_spawn_local<F>(self, fut: F) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        match self.lease() {
            None => self
                .tracker
                .spawn_local(self.opts, Mode::Drop, LocalPlace::Current, |_| fut),
            Some((guard, admission)) => {
                let spawned =
                    self.tracker
                        .spawn_local(self.opts, Mode::Drop, LocalPlace::Current, |_| {
                            guard.wrap(fut)
                        });
                admission.admit(self.tracker, spawned)
            }
        }
    }

    /// As [`spawn_with_scope`](Self::spawn_with_scope), for a `!Send` future
    /// on the current `LocalSet` or local runtime. See
    /// [`spawn_local`](Self::spawn_local) for its panics.
    #[track_caller]
    pub fn spawn_local_with_scope<F, Fut>(self, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + 'static,
        Fut::Output: 'static,
    {
        let make =
            |scope: Option<CancelScope>| f(scope.expect("cooperative tasks get their own scope"));
        let spawned = match self.lease() {
            None => {
                self.tracker
                    .spawn_local(self.opts, Mode::Cooperative, LocalPlace::Current, make)
            }
            Some((guard, admission)) => {
                let spawned = self.tracker.spawn_local(
                    self.opts,
                    Mode::Cooperative,
                    LocalPlace::Current,
                    |scope| guard.wrap(make(scope)),
                );
                admission.admit(self.tracker, spawned)
            }
        };
        or_panic(spawned)
    }

    /// Spawns a `!Send` future on `local`, which runs it whenever it is
    /// driven (`LocalSet::run_until`, `block_on`, or awaited), as
    /// `LocalSet::spawn_local` / `JoinSet::spawn_local_on`; otherwise as
    /// [`spawn`](Self::spawn). Works outside a runtime once the group or map
    /// has spawned inside one (its ladders need one).
    ///
    /// # Panics
    ///
    /// On a closed group or map, or outside a runtime before the group's
    /// first spawn; see [`try_spawn_local_on`](Self::try_spawn_local_on).
    #[track_caller]
    pub fn spawn_local_on<F>(self, fut: F, local: &tokio::task::LocalSet) -> TaskHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        or_panic(self.try_spawn_local_on(fut, local))
    }

    /// As [`spawn_local_on`](Self::spawn_local_on), returning an error
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime when the group or
    /// map never spawned inside one, [`SpawnError::Closed`] on a closed
    /// group or map; nothing is tracked.
    #[track_caller]
    pub fn try_spawn_local_on<F>(
        self,
        fut: F,
        local: &tokio::task::LocalSet,
    ) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        match self.lease() {
            None => self
                .tracker
                .spawn_local(self.opts, Mode::Drop, LocalPlace::On(local), |_| fut),
            Some((guard, admission)) => {
                let spawned =
                    self.tracker
                        .spawn_local(self.opts, Mode::Drop, LocalPlace::On(local), |_| {
                            guard.wrap(fut)
                        });
                admission.admit(self.tracker, spawned)
            }
        }
    }

    /// Runs the blocking closure `f` on tokio's blocking pool, as
    /// `tokio::task::spawn_blocking`, tracked until it returns. See
    /// [`TaskGroup::spawn_blocking`](crate::TaskGroup::spawn_blocking).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a closed group or map; see
    /// [`try_spawn_blocking`](Self::try_spawn_blocking).
    #[track_caller]
    pub fn spawn_blocking<F, R>(self, f: F) -> TaskHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        or_panic(self.try_spawn_blocking(f))
    }

    /// As [`spawn_blocking`](Self::spawn_blocking), returning an error
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a closed group or map; `f` never runs.
    #[track_caller]
    pub fn try_spawn_blocking<F, R>(self, f: F) -> Result<TaskHandle<R>, SpawnError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match self.lease() {
            None => self
                .tracker
                .spawn_blocking(self.opts, false, Place::Current, move |_| f()),
            Some((guard, admission)) => {
                let spawned =
                    self.tracker
                        .spawn_blocking(self.opts, false, Place::Current, move |_| {
                            let _lease = guard;
                            f()
                        });
                admission.admit(self.tracker, spawned)
            }
        }
    }

    /// Runs the blocking closure `f(scope)` on tokio's blocking pool with the
    /// task's own child scope, which it polls
    /// ([`is_cancelled`](CancelScope::is_cancelled) is lock-free). See
    /// [`TaskGroup::spawn_blocking_with_scope`](crate::TaskGroup::spawn_blocking_with_scope).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a closed group or map; see
    /// [`try_spawn_blocking_with_scope`](Self::try_spawn_blocking_with_scope).
    #[track_caller]
    pub fn spawn_blocking_with_scope<F, R>(self, f: F) -> TaskHandle<R>
    where
        F: FnOnce(CancelScope) -> R + Send + 'static,
        R: Send + 'static,
    {
        or_panic(self.try_spawn_blocking_with_scope(f))
    }

    /// As [`spawn_blocking_with_scope`](Self::spawn_blocking_with_scope),
    /// returning an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a closed group or map; `f` never runs.
    #[track_caller]
    pub fn try_spawn_blocking_with_scope<F, R>(self, f: F) -> Result<TaskHandle<R>, SpawnError>
    where
        F: FnOnce(CancelScope) -> R + Send + 'static,
        R: Send + 'static,
    {
        let lease = self.lease();
        let (guard, admission) = lease.unzip();
        let spawned = self
            .tracker
            .spawn_blocking(self.opts, true, Place::Current, move |scope| {
                let _lease = guard;
                f(scope.expect("blocking tasks with a scope get their own"))
            });
        match admission {
            None => spawned,
            Some(admission) => admission.admit(self.tracker, spawned),
        }
    }

    /// As [`spawn_blocking`](Self::spawn_blocking), on the blocking pool of
    /// the runtime of `handle`, from anywhere; as tokio-util's
    /// `TaskTracker::spawn_blocking_on` and `JoinSet::spawn_blocking_on`.
    ///
    /// # Panics
    ///
    /// On a closed group or map; see
    /// [`try_spawn_blocking_on`](Self::try_spawn_blocking_on).
    #[track_caller]
    pub fn spawn_blocking_on<F, R>(self, f: F, handle: &tokio::runtime::Handle) -> TaskHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        or_panic(self.try_spawn_blocking_on(f, handle))
    }

    /// As [`spawn_blocking_on`](Self::spawn_blocking_on), returning an error
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Closed`] on a closed group or map; `f` never runs.
    #[track_caller]
    pub fn try_spawn_blocking_on<F, R>(
        self,
        f: F,
        handle: &tokio::runtime::Handle,
    ) -> Result<TaskHandle<R>, SpawnError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (guard, admission) = self.lease().unzip();
        let spawned = self
            .tracker
            .spawn_blocking(self.opts, false, Place::On(handle), move |_| {
                let _lease = guard;
                f()
            });
        match admission {
            None => spawned,
            Some(admission) => admission.admit(self.tracker, spawned),
        }
    }
}

/// A spawn's error as the panic of the `spawn*` functions, naming the fix.
#[track_caller]
fn or_panic<T>(spawned: Result<T, SpawnError>) -> T {
    match spawned {
        Ok(handle) => handle,
        Err(e) => panic!("cancel_scope: cannot spawn: {e} (try_spawn returns this as an error)"),
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

impl<K> Tracks<K> for TaskBuilder<'_, K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    fn tracker(&self) -> &Arc<Tracker<K>> {
        self.tracker
    }
}
