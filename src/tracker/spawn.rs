//! [`Tracker::spawn`] and its kinds (a future on the current runtime, on a
//! given one, on the current `LocalSet`, or a blocking closure): checks, the
//! task's own scope when it needs one, the registry entry, the runtime spawn,
//! and the races with `close`. Every kind goes through [`Tracker::admit`]
//! and [`Tracker::admitted`], so each is tracked, delivered to and torn down
//! by the same ladder.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Tracker;
use super::tracked::{PollingGuard, Tracked};
use crate::registry::{EntryGuard, Inserted, Registry, TaskId, TaskOutcome, Watch};
use crate::scope::{CancelScope, Cancelled};
use crate::task::{Mode, SpawnError, TaskError, TaskHandle, TaskMeta, TaskOptions, TrackedCell};

/// Where a future is spawned.
#[derive(Clone, Copy)]
pub(crate) enum Place<'a> {
    /// The current runtime (`tokio::spawn`).
    Current,
    /// A given runtime (`Handle::spawn`), from anywhere.
    On(&'a Handle),
}

/// Where a `!Send` future is spawned.
#[derive(Clone, Copy)]
pub(crate) enum LocalPlace<'a> {
    /// The current `LocalSet` or local runtime (`tokio::task::spawn_local`).
    Current,
    /// A given `LocalSet` (`LocalSet::spawn_local`), which runs it when it
    /// is driven.
    On(&'a tokio::task::LocalSet),
}

/// A task admitted into the registry, not yet on a runtime.
pub(crate) struct Admitted<K: Eq + Hash + Clone> {
    guard: EntryGuard<TaskMeta, K, Arc<Tracker<K>>>,
    replaced: Option<Arc<TrackedCell>>,
}

impl<K> Tracker<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// Spawns `make(task_scope)` as a tracked task at `place`.
    /// `#[track_caller]` from every public spawn function down to tokio's,
    /// so tokio (its task hooks, tokio-console) and the ladder's reports see
    /// the user's spawn site.
    #[track_caller]
    pub(crate) fn spawn<F, Fut>(
        self: &Arc<Self>,
        opts: TaskOptions<K>,
        mode: Mode,
        place: Place<'_>,
        make: F,
    ) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(Option<CancelScope>) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let rt = match place {
            Place::Current => Handle::try_current().map_err(|_| SpawnError::NoRuntime)?,
            Place::On(handle) => handle.clone(),
        };
        self.spawn_future(opts, mode, &rt, make, |tracked| rt.spawn(tracked))
    }

    /// As [`spawn`](Self::spawn), for a `!Send` future at `place`.
    /// `LocalPlace::On` needs no runtime at the spawn (the `LocalSet` runs
    /// it once driven), but the tracker's ladders need one: the first spawn
    /// of a tracker must come from inside a runtime.
    #[track_caller]
    pub(crate) fn spawn_local<F, Fut>(
        self: &Arc<Self>,
        opts: TaskOptions<K>,
        mode: Mode,
        place: LocalPlace<'_>,
        make: F,
    ) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(Option<CancelScope>) -> Fut,
        Fut: Future + 'static,
        Fut::Output: 'static,
    {
        let rt = match Handle::try_current() {
            Ok(rt) => rt,
            Err(_) => match (place, self.runtime.get()) {
                (LocalPlace::On(_), Some(rt)) => rt.clone(),
                _ => return Err(SpawnError::NoRuntime),
            },
        };
        self.spawn_future(opts, mode, &rt, make, |tracked| match place {
            LocalPlace::Current => tokio::task::spawn_local(tracked),
            LocalPlace::On(local) => local.spawn_local(tracked),
        })
    }

    /// What every future's spawn shares: the checks, the task's scope, its
    /// future, its entry, then `start` puts the tracked future on its
    /// runtime.
    #[track_caller]
    fn spawn_future<F, Fut>(
        self: &Arc<Self>,
        opts: TaskOptions<K>,
        mode: Mode,
        rt: &Handle,
        make: F,
        start: impl FnOnce(Tracked<Fut, K>) -> JoinHandle<Result<Fut::Output, TaskError>>,
    ) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(Option<CancelScope>) -> Fut,
        Fut: Future,
    {
        let scope = self.scope_for(&opts, mode, rt)?;
        let watch = Self::watch_of(mode, &scope);
        let fut = make(scope.clone());
        let admitted = self.admit(opts, watch, scope);
        Ok(self.admitted(admitted, |guard| start(Tracked { fut, guard })))
    }

    /// Spawns the blocking closure `f(task_scope)` on the runtime's blocking
    /// pool (`spawn_blocking`), tracked until it returns. `with_scope`: it
    /// gets its own child scope, and runs even if that is already cancelled
    /// (it decides); without, it is handed none, and a cancel that came
    /// before it started skips it, as a plain task is dropped at its first
    /// poll.
    #[track_caller]
    pub(crate) fn spawn_blocking<F, R>(
        self: &Arc<Self>,
        mut opts: TaskOptions<K>,
        with_scope: bool,
        place: Place<'_>,
        f: F,
    ) -> Result<TaskHandle<R>, SpawnError>
    where
        F: FnOnce(Option<CancelScope>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let rt = match place {
            Place::Current => Handle::try_current().map_err(|_| SpawnError::NoRuntime)?,
            Place::On(handle) => handle.clone(),
        };
        let mode = if with_scope {
            Mode::Cooperative
        } else {
            Mode::Drop
        };
        let scope = self.scope_for(&opts, mode, &rt)?;
        // Never polled, so never reached by a poll that starts a per-task
        // ladder: `TaskHandle::cancel` starts it through the cell.
        let me = Arc::downgrade(self);
        opts.begin_ladder = Some(Box::new(move |cell: &Arc<TrackedCell>| {
            if let Some(tracker) = me.upgrade() {
                tracker.begin_blocking_cancel(cell);
            }
        }));
        let admitted = self.admit(opts, Watch::Blocking, scope);
        Ok(self.admitted(admitted, |guard| {
            rt.spawn_blocking(move || run_blocking(guard, with_scope, f))
        }))
    }

    /// The checks every spawn makes first (so a failed spawn leaves nothing
    /// behind), and the task's own scope, made when it needs one: a
    /// cooperative task, a keyed one.
    fn scope_for(
        &self,
        opts: &TaskOptions<K>,
        mode: Mode,
        rt: &Handle,
    ) -> Result<Option<CancelScope>, SpawnError> {
        if self.is_closed() {
            return Err(SpawnError::Closed);
        }
        if self.runtime.get().is_none() {
            let _ = self.runtime.set(rt.clone());
        }
        let own = (mode == Mode::Cooperative || opts.key.is_some()).then(|| self.scope.child());
        Ok(own)
    }

    fn watch_of(mode: Mode, own_scope: &Option<CancelScope>) -> Watch {
        match (mode, own_scope) {
            (Mode::Drop, Some(_)) => Watch::Own,
            // The tracker's scope, read through `shared`: no handle clone (two
            // atomic updates on a line every worker writes) per task.
            (Mode::Drop, None) => Watch::Tracker,
            (Mode::Cooperative, _) => Watch::Nothing,
        }
    }

    /// Enters a task into the registry: its id, span and data.
    #[track_caller]
    fn admit(
        self: &Arc<Self>,
        opts: TaskOptions<K>,
        watch: Watch,
        own_scope: Option<CancelScope>,
    ) -> Admitted<K> {
        let location = std::panic::Location::caller();
        let TaskOptions {
            key,
            name,
            hook,
            begin_ladder,
            linger,
        } = opts;
        let id = TaskId::next();
        // One span per task, made only when a subscriber wants it: with none,
        // even a disabled span costs ~200 instructions per task once tracing's
        // `log` feature is on somewhere in the build. The task runs inside it,
        // so its own events carry scope, task, name and key; its parent is
        // the span current at the spawn (as `fut.in_current_span()`), and it
        // is at WARN, so a subscriber that shows the ladder's warnings shows
        // the task's fields with them. It lives in the cell's boxed extras:
        // the future stays small.
        let span = tracing::enabled!(tracing::Level::WARN).then(|| {
            let key_field = key.as_ref().map(|k| format!("{k:?}"));
            tracing::warn_span!(
                "task",
                task = %id,
                scope = self.scope.id(),
                name = name.as_deref(),
                key = key_field.as_deref(),
            )
        });
        // The own scope is kept for a per-task cancel (`TaskHandle::cancel`,
        // a key's ladder), for an abort, which cancels it (see `Tracked`),
        // and for `Watch::Own`.
        let meta = TaskMeta::new(
            Instant::now(),
            location,
            own_scope,
            name,
            hook,
            span,
            begin_ladder,
        )
        .with_linger(linger);
        let Inserted { guard, replaced } = Registry::insert_as(self, id, watch, meta, key);
        // After the insertion, SeqCst: see `disarm_deliverer`.
        if !self.deliverer_armed.load(Ordering::SeqCst) {
            self.arm_deliverer();
        }
        Admitted { guard, replaced }
    }

    /// Puts an admitted task on its runtime (`start`) and settles the races
    /// of the spawn with a `shutdown` and a key's previous task.
    fn admitted<T>(
        self: &Arc<Self>,
        admitted: Admitted<K>,
        start: impl FnOnce(EntryGuard<TaskMeta, K, Arc<Tracker<K>>>) -> JoinHandle<Result<T, TaskError>>,
    ) -> TaskHandle<T> {
        let Admitted { guard, replaced } = admitted;
        let cell = guard.cell().clone();
        let join = start(guard);
        tracing::trace!(task = %cell.id, "spawned tracked task");
        // A `shutdown` (close, then cancel) that raced with this spawn may
        // have walked the registry before the insertion: give the task its
        // own ladder. SeqCst with `close`: if this load misses the store, the
        // closer's ladder sees the entry (see `close`).
        if self.is_closed() && self.scope.is_cancelled() {
            drop(self.begin_cancel(cell.clone()));
        }
        let handle = TaskHandle::new(cell.id, join, Arc::downgrade(&cell));
        if let Some(old) = replaced {
            tracing::debug!(task = %old.id, replaced_by = %cell.id, "key taken over: cancelling the old task");
            self.begin_cancel(old);
        }
        handle
    }

    /// `TaskHandle::cancel` of a blocking task: its ladder starts here, as
    /// the poll of a future would start it, unless one already runs over it.
    fn begin_blocking_cancel(self: &Arc<Self>, cell: &Arc<TrackedCell>) {
        if self.registry.mark_closing(cell) {
            drop(self.begin_cancel(cell.clone()));
        }
    }
}

/// The body of a blocking task on its pool thread: the closure, with the
/// task's span entered and its panic caught; the guard, dropped when this
/// returns, prunes the entry (prune on completion, whatever the closure did
/// meanwhile: a closure reported stuck prunes itself here).
fn run_blocking<K, F, R>(
    mut guard: EntryGuard<TaskMeta, K, Arc<Tracker<K>>>,
    with_scope: bool,
    f: F,
) -> Result<R, TaskError>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    F: FnOnce(Option<CancelScope>) -> R,
{
    let (tracker, cell, outcome) = guard.parts();
    let _entered = cell.meta.span().map(tracing::Span::enter);
    let _polling = PollingGuard::enter(Arc::as_ptr(tracker) as *const () as usize);
    let state = cell.snapshot();
    if state.is_escalated() {
        // Aborted before it started (an escalation, `abort_all`): it never
        // runs, as tokio's `abort` of a queued blocking task.
        return Err(TaskError::Aborted);
    }
    let scope = cell.meta.scope.clone();
    if !with_scope {
        let watched = scope.as_ref().unwrap_or(&tracker.scope);
        if watched.is_cancelled() || state.is_closing() || state.is_cancel_requested() {
            *outcome = TaskOutcome::Cancelled;
            return Err(TaskError::Cancelled(Cancelled::of(watched)));
        }
    }
    match catch_unwind(AssertUnwindSafe(|| f(scope.filter(|_| with_scope)))) {
        Ok(v) => {
            *outcome = TaskOutcome::Completed;
            Ok(v)
        }
        Err(payload) => {
            *outcome = TaskOutcome::Panicked;
            Err(tracker.task_panicked(cell, &*payload))
        }
    }
}
