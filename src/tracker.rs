//! The tokio side shared by `TaskGroup` and `TaskMap`: spawning a tracked
//! future, delivering cancellation, and driving the ladder's timetable.
//!
//! A tracked task is the user's future inside [`Tracked`], which owns the
//! registry guard (prune on completion) and polls the user's future with the
//! runtime's own waker: the task's own wakes cost nothing extra, and the
//! library's wakes (delivery, re-delivery, escalation) follow the rules of
//! `registry.rs` through the cell. Delivery is one waker on the
//! tracker's scope ([`Deliverer`]): cancelling the scope, or any ancestor, walks
//! the registry once and wakes each task that is not already scheduled.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};

use tokio::time::Instant;

use crate::ladder::{Schedule, ShutdownPolicy, ShutdownReport, Step, StuckTask};
use crate::registry::{Counters, EntryGuard, HoldsRegistry, Registry, TaskId, TaskOutcome};
use crate::scope::{CancelMessage, CancelScope, Cancelled, Waiter};
use crate::sync::lock;
use crate::task::{
    Cell, Mode, SpawnError, Stats, TaskError, TaskHandle, TaskMeta, TaskOptions, panic_message,
};
use crate::wait_list::WaitKey;

/// What `TaskGroup` and `TaskMap` share with their tasks.
pub(crate) struct Shared<K: Eq + Hash + Clone> {
    pub(crate) scope: CancelScope,
    /// Embedded: each task's guard holds the `Arc<Shared>`, one reference
    /// per task for both.
    pub(crate) registry: Registry<TaskMeta, K>,
    pub(crate) policy: ShutdownPolicy,
    cancel_on_panic: bool,
    first_panic: Mutex<Option<String>>,
    /// The deliverer's registration on `scope`: held while the tracker has
    /// tasks (and always for a scope without a deadline, whose registration
    /// costs no timer), so an idle group under a deadline leaves no timer
    /// behind. Changed only under this mutex.
    deliverer: Mutex<Waiter>,
    /// Whether `deliverer` is registered (or the scope was found cancelled,
    /// which is final). SeqCst, see `disarm_deliverer`.
    deliverer_armed: AtomicBool,
    /// The runtime of the first spawn, for ladders started outside one.
    runtime: OnceLock<tokio::runtime::Handle>,
    /// One group-wide ladder at a time, holding the report of the one that
    /// finished last: a `shutdown` that finds one running waits for it and
    /// returns its report, so concurrent calls never count an escalation or
    /// an abort twice.
    shutdown: tokio::sync::Mutex<Option<ShutdownReport>>,
    /// Ladders of `shutdown` that ran to the end.
    shutdowns_finished: AtomicU64,
    /// No task may be spawned any more: `close`, `shutdown`, or the last user
    /// handle dropped. Never cleared. SeqCst, see `spawn`.
    closed: AtomicBool,
    /// The counters when the scope was first seen cancelled (by the
    /// deliverer, or by `shutdown` / the last handle's drop if it came
    /// first): a report counts what ended since then, not only what ended
    /// while the ladder ran.
    baseline: OnceLock<Stats>,
}

impl<K: Eq + Hash + Clone> HoldsRegistry<TaskMeta, K> for Arc<Shared<K>> {
    fn registry(&self) -> &Registry<TaskMeta, K> {
        &self.registry
    }

    fn became_idle(&self) {
        self.disarm_deliverer();
    }
}

// ===== the task being polled =====

thread_local! {
    /// The tracker of the tracked task whose poll runs on this thread (its
    /// `Arc<Shared>`'s address), 0 outside one: how `join` and `shutdown`
    /// tell that they are awaited by a task of their own group, which could
    /// only wait for itself.
    static POLLING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Restores [`POLLING`] when a poll ends, by return or by unwinding.
struct PollingGuard(usize);

impl PollingGuard {
    #[inline]
    fn enter(tracker: usize) -> Self {
        PollingGuard(POLLING.with(|p| p.replace(tracker)))
    }
}

impl Drop for PollingGuard {
    #[inline]
    fn drop(&mut self) {
        POLLING.with(|p| p.set(self.0));
    }
}

/// The one waker a tracker registers on its scope: cancelling the scope wakes
/// it, and it delivers to every live task.
struct Deliverer<K: Eq + Hash + Clone> {
    shared: Weak<Shared<K>>,
}

impl<K: Eq + Hash + Clone + Debug + Send + Sync + 'static> Wake for Deliverer<K> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.deliver_all();
        }
    }
}

impl<K> Shared<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    pub(crate) fn new(
        scope: CancelScope,
        policy: ShutdownPolicy,
        cancel_on_panic: bool,
        record_ends: bool,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared {
            scope,
            registry: Registry::new(record_ends),
            policy,
            cancel_on_panic,
            first_panic: Mutex::new(None),
            deliverer: Mutex::new(Waiter::default()),
            deliverer_armed: AtomicBool::new(false),
            runtime: OnceLock::new(),
            shutdown: tokio::sync::Mutex::new(None),
            shutdowns_finished: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            baseline: OnceLock::new(),
        });
        shared.arm_deliverer();
        shared
    }

    /// The first delivery to every live task (the scope was cancelled), with
    /// the report's baseline taken first, so the report counts them.
    fn deliver_all(&self) {
        let registry = &self.registry;
        self.baseline.get_or_init(|| stats_of(registry));
        let woken = registry.pending().iter().filter(|c| c.deliver()).count();
        Counters::add(&registry.counters.deliveries, woken as u64);
    }

    /// Registers the deliverer on the scope, unless it is already. Done at
    /// creation and at a spawn into a tracker whose deliverer is not
    /// registered (a scope with a deadline, first outside a runtime or after
    /// the tracker went idle: the deadline's timer needs a runtime, and runs
    /// only while someone waits). A scope found cancelled is delivered to
    /// here, as the deliverer would have been woken, and the baseline of the
    /// report is taken: a group born cancelled counts its tasks too.
    fn arm_deliverer(self: &Arc<Self>) {
        if self.scope.deadline().is_some() && tokio::runtime::Handle::try_current().is_err() {
            // A deadline needs a timer, a timer a runtime: registration waits
            // for the first spawn.
            return;
        }
        let mut waiter = lock(&self.deliverer);
        if self.deliverer_armed.load(Ordering::SeqCst) {
            return;
        }
        let waker = Waker::from(Arc::new(Deliverer {
            shared: Arc::downgrade(self),
        }));
        let cancelled = waiter.poll(self.scope.node(), &waker).is_ready();
        self.deliverer_armed.store(true, Ordering::SeqCst);
        drop(waiter);
        if cancelled {
            self.deliver_all();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.registry.len()
    }

    pub(crate) fn stats(&self) -> Stats {
        stats_of(&self.registry)
    }

    /// Refuses every later spawn (`SpawnError::Closed`); idempotent.
    pub(crate) fn close(&self) {
        // SeqCst, paired with the two loads in `spawn`: a spawn that raced
        // with this store either sees it, or inserted its task before it.
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The counters to diff a report from: since the scope was first cancelled.
    fn baseline(&self, now: Stats) -> Stats {
        *self.baseline.get_or_init(|| now)
    }

    /// Spawns `make(task_scope)` as a tracked task. `#[track_caller]` from
    /// every public spawn function down to tokio's, so tokio (its task hooks,
    /// tokio-console) and the ladder's reports see the user's spawn site.
    #[track_caller]
    pub(crate) fn spawn<F, Fut>(
        self: &Arc<Self>,
        opts: TaskOptions<K>,
        mode: Mode,
        make: F,
    ) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(Option<CancelScope>) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        // Check first, so a failed spawn leaves nothing behind.
        if self.is_closed() {
            return Err(SpawnError::Closed);
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
        if self.runtime.get().is_none() {
            let _ = self.runtime.set(rt.clone());
        }
        let location = std::panic::Location::caller();
        let TaskOptions {
            key,
            name,
            hook,
            owns_process,
        } = opts;
        let own_scope = (mode == Mode::Cooperative || key.is_some()).then(|| self.scope.child());
        let watch = match (mode, &own_scope) {
            (Mode::Drop, Some(_)) => Watch::Own,
            // The tracker's scope, read through `shared`: no handle clone (two
            // atomic updates on a line every worker writes) per task.
            (Mode::Drop, None) => Watch::Tracker,
            (Mode::Cooperative, _) => Watch::Nothing,
        };
        let fut = make(own_scope.clone());
        let keyed = key.is_some();
        let id = TaskId::next();
        // One span per task, made only when a subscriber wants it: with none,
        // even a disabled span costs ~200 instructions per task once tracing's
        // `log` feature is on somewhere in the build. The task is polled
        // inside it, so the task's own events carry scope, task, name and key.
        // It lives in the cell's boxed extras: the future stays small.
        let span = tracing::enabled!(tracing::Level::DEBUG).then(|| {
            let key_field = key.as_ref().map(|k| format!("{k:?}"));
            tracing::debug_span!(
                parent: None,
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
            owns_process,
            span,
        );
        let (guard, replaced) = Registry::insert_as(self, id, watch as u8, meta, key);
        let cell = guard.cell().clone();
        // After the insertion, SeqCst: see `disarm_deliverer`.
        if !self.deliverer_armed.load(Ordering::SeqCst) {
            self.arm_deliverer();
        }
        let tracked = Tracked { fut, guard };
        let join = rt.spawn(tracked);
        tracing::trace!(task = %id, name = ?cell.meta.name(), keyed, "spawned tracked task");
        // A `shutdown` (close, then cancel) that raced with this spawn may
        // have walked the registry before the insertion: give the task its
        // own ladder. SeqCst with `close`: if this load misses the store, the
        // closer's ladder sees the entry (see `close`).
        if self.is_closed() && self.scope.is_cancelled() {
            drop(self.retire(cell.clone()));
        }
        let handle = TaskHandle::new(id, join, Arc::downgrade(&cell));
        if let Some(old) = replaced {
            tracing::debug!(task = %old.id, replaced_by = %id, "key taken over: cancelling the old task");
            self.retire(old);
        }
        Ok(handle)
    }

    fn record_panic(&self, message: &str) {
        let mut first = lock(&self.first_panic);
        if first.is_none() {
            *first = Some(message.to_owned());
        }
    }

    pub(crate) fn take_panic(&self) -> Option<String> {
        lock(&self.first_panic).take()
    }

    /// Cancels one task's own scope and wakes it once.
    pub(crate) fn deliver(&self, cell: &Cell) {
        self.registry.mark_closing(cell);
        if let Some(scope) = &cell.meta.scope {
            scope.cancel();
        }
        if cell.deliver() {
            Counters::bump(&self.registry.counters.deliveries);
        }
    }

    /// A task's own cancel (`TaskHandle::cancel`, delivered by the handle),
    /// seen by the task's poll: marks it closing and counts the delivery,
    /// once (the `CLOSING` mark decides), and with `ladder` runs the task's
    /// ladder in the background; called inside the task's runtime.
    fn take_cancel_request(self: &Arc<Self>, cell: &Arc<Cell>, ladder: bool) {
        if !self.registry.mark_closing(cell) {
            return;
        }
        Counters::bump(&self.registry.counters.deliveries);
        if !ladder {
            return;
        }
        let (shared, cell) = (self.clone(), cell.clone());
        tokio::spawn(async move {
            shared.run_ladder(Some(&cell), Stats::default()).await;
        });
    }

    /// Cancels a task and runs its ladder in the background, on the current
    /// runtime or else on the one the tracker's tasks run on (so this works
    /// from a `Drop` outside any runtime). `None` if there is no runtime to
    /// run it on: the task is still cancelled and woken.
    pub(crate) fn retire(
        self: &Arc<Self>,
        cell: Arc<Cell>,
    ) -> Option<tokio::task::JoinHandle<Option<TaskOutcome>>> {
        self.deliver(&cell);
        let rt = self.runtime()?;
        let shared = self.clone();
        Some(rt.spawn(async move {
            shared.run_ladder(Some(&cell), Stats::default()).await;
            cell.outcome()
        }))
    }

    /// The current runtime, or else the one the tracker's tasks run on.
    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Handle> {
        tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.get().cloned())
    }

    /// Panics if the current thread is polling a task of this tracker: a
    /// wait for the tracker's tasks there would wait for itself. `what`
    /// names the call, for the message.
    pub(crate) fn assert_not_own_task(self: &Arc<Self>, what: &str) {
        let me = Arc::as_ptr(self) as *const () as usize;
        if POLLING.with(std::cell::Cell::get) == me {
            panic!(
                "cancel_scope: {what} was awaited inside a task of the same group or map, which \
                 would wait for itself: await it from outside the group (the code that owns \
                 it), or end the task by returning and call cancel() / close() from inside"
            );
        }
    }

    /// Marks every live task closing, cancels the scope (the deliverer wakes
    /// each task once) and runs the ladder over all of them. Concurrent calls
    /// share one ladder: a call that finds one running waits for it and
    /// returns its report. A call whose future was dropped mid-ladder
    /// finishes nothing, so the next call runs the ladder itself.
    pub(crate) async fn shutdown(self: &Arc<Self>, what: &str) -> ShutdownReport {
        self.assert_not_own_task(what);
        self.close();
        // A ladder that finishes while this call waits for the lock is the
        // one it joined. (The mutex orders the count: it is bumped under it.)
        let seen = self.shutdowns_finished.load(Ordering::Relaxed);
        let mut last = self.shutdown.lock().await;
        if self.shutdowns_finished.load(Ordering::Relaxed) > seen {
            if let Some(report) = &*last {
                return report.clone();
            }
        }
        let now = self.stats();
        for cell in self.registry.pending() {
            self.registry.mark_closing(&cell);
        }
        self.scope.cancel();
        let before = self.baseline(now);
        let report = self.run_ladder(None, before).await;
        *last = Some(report.clone());
        self.shutdowns_finished.fetch_add(1, Ordering::Relaxed);
        report
    }

    /// The last user handle is gone: close, cancel, and finish the ladder in
    /// the background when there is a runtime to do it on (never blocks).
    pub(crate) fn last_handle_dropped(self: &Arc<Self>) {
        self.close();
        let now = self.stats();
        self.scope.cancel();
        let before = self.baseline(now);
        if self.len() == 0 {
            return;
        }
        // On the current runtime or else the one the tasks run on, so a group
        // dropped on a plain thread still escalates its stubborn tasks.
        match self.runtime() {
            Some(rt) => {
                let shared = self.clone();
                rt.spawn(async move {
                    let report = shared.run_ladder(None, before).await;
                    if !report.is_clean() {
                        tracing::warn!(%report, "tasks of a dropped group are stuck");
                    }
                });
            }
            None => tracing::warn!(
                tracked = self.len(),
                "a dropped group has live tasks and no runtime to run its ladder on: they are \
                 cancelled but will not be escalated"
            ),
        }
    }

    /// The ladder after the first delivery: waits for the target (one task, or
    /// all) to end, re-delivering, escalating and finally reporting what is
    /// stuck, per the policy's [`Schedule`]. Returns as soon as the target has
    /// ended; then it holds no timer.
    pub(crate) async fn run_ladder(
        &self,
        one: Option<&Arc<Cell>>,
        before: Stats,
    ) -> ShutdownReport {
        let start = Instant::now();
        let mut wait = EndWait {
            registry: &self.registry,
            one,
            idle_key: None,
            ended_key: None,
            sleep: None,
        };
        let targets = || match one {
            Some(c) if !c.is_ended() => vec![c.clone()],
            Some(_) => Vec::new(),
            None => self.registry.pending(),
        };
        let mut ended = false;
        // Escalated by this ladder with a hook: reported if it has not
        // returned when the ladder ends.
        let mut hooked: Vec<Arc<Cell>> = Vec::new();
        for (offset, step) in Schedule::new(self.policy) {
            if wait.until(instant_after(start, offset)).await {
                ended = true;
                break;
            }
            match step {
                Step::Redeliver => {
                    let n = targets()
                        .iter()
                        .filter(|c| c.redeliver(self.policy.max_redeliveries))
                        .count();
                    Counters::add(&self.registry.counters.redeliveries, n as u64);
                }
                Step::Escalate => {
                    for cell in targets() {
                        if self.escalate(&cell) {
                            hooked.push(cell);
                        }
                    }
                }
                Step::GiveUp => {
                    // An escalated task was woken to end as aborted: give it
                    // one scheduling round before calling it stuck (with
                    // `abort_grace: 0` the verdict would otherwise come
                    // before the runtime could even poll it).
                    tokio::task::yield_now().await;
                    if wait.until(Instant::now()).await {
                        ended = true;
                    }
                }
            }
        }
        drop(wait);
        let mut stuck = Vec::new();
        if !ended {
            let keyed = self.registry.pending_keyed();
            for (cell, key) in keyed {
                if one.is_some_and(|c| c.id != cell.id) || cell.is_ended() {
                    continue;
                }
                self.registry.mark_stuck(&cell);
                let age = cell.meta.age();
                let message = self.cancel_message(&cell);
                let hook_running = cell.snapshot().is_hook_running();
                tracing::warn!(
                    task = %cell.id,
                    name = ?cell.meta.name(),
                    key = ?key,
                    age_ms = age.as_millis() as u64,
                    spawned_at = %cell.meta.location,
                    hook_running,
                    // Recorded only when the cancel had a message.
                    cancel_message = message.as_deref(),
                    "task is stuck: it outlived cancellation, escalation and abort; it stays \
                     tracked and prunes itself if it ever ends"
                );
                stuck.push(StuckTask {
                    id: cell.id,
                    name: cell.meta.name().cloned(),
                    key: key.map(|k| format!("{k:?}")),
                    age,
                    location: cell.meta.location,
                    hook_running,
                });
            }
        }
        let hooks_running = hooked
            .iter()
            .filter(|c| c.snapshot().is_hook_running())
            .count() as u64;
        let after = self.stats();
        ShutdownReport {
            completed: after.completed - before.completed,
            cancelled: after.cancelled - before.cancelled,
            aborted: after.aborted - before.aborted,
            panicked: after.panicked - before.panicked,
            stuck,
            elapsed: start.elapsed(),
            deliveries: after.deliveries - before.deliveries,
            redeliveries: after.redeliveries - before.redeliveries,
            escalations: after.escalations - before.escalations,
            processes: after.processes - before.processes,
            hooks_running,
        }
    }

    /// The message of the cancel that reached `cell`'s task: its own scope's
    /// when it keeps one (a keyed task), else the tracker's.
    fn cancel_message(&self, cell: &Cell) -> Option<CancelMessage> {
        cell.meta
            .scope
            .as_ref()
            .unwrap_or(&self.scope)
            .cancel_message()
    }

    /// Escalates a task, once: starts its hook, if it has one, on a thread
    /// of its own (a panic in it is caught and logged; a hook that blocks
    /// holds neither the ladder nor a runtime thread, and is reported while
    /// it runs) and aborts the task: the `ESCALATED` bit makes its next poll
    /// end it (as tokio's abort would, without keeping an `AbortHandle` per
    /// task), and one wake brings that poll, at once, not after the hook.
    /// Returns whether a hook was started.
    fn escalate(&self, cell: &Arc<Cell>) -> bool {
        if !cell.mark_escalated() {
            return false;
        }
        Counters::bump(&self.registry.counters.escalations);
        let meta = &cell.meta;
        let message = self.cancel_message(cell);
        tracing::warn!(
            task = %cell.id,
            name = ?meta.name(),
            age_ms = meta.age().as_millis() as u64,
            redeliveries = cell.redeliveries(),
            // Recorded only when the cancel had a message. Not `message`:
            // tracing's name for the event's own text.
            cancel_message = message.as_deref(),
            "task ignored cancellation for the whole grace period: escalating (hook on its own thread, and abort)"
        );
        let hook = meta.take_hook();
        let started = hook.is_some();
        if let Some(hook) = hook {
            cell.mark_hook_running();
            run_hook(hook, cell.clone());
        }
        cell.schedule();
        started
    }
}

/// Runs an escalation hook on a thread of its own, named
/// `cancel-scope-hook`, and clears the cell's `HOOK_RUNNING` when it returns
/// (or panics). If no thread can be started, runs it here, as before.
fn run_hook(hook: crate::task::Hook, cell: Arc<Cell>) {
    fn call(hook: crate::task::Hook, cell: &Cell) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(hook)) {
            tracing::error!(
                task = %cell.id,
                panic = panic_message(&*payload),
                "escalation hook panicked; the task is aborted anyway"
            );
        }
        cell.hook_returned();
    }
    // Shared with the thread, so a failed start gives the hook back.
    let slot = Arc::new(Mutex::new(Some(hook)));
    let (theirs, their_cell) = (slot.clone(), cell.clone());
    let started = std::thread::Builder::new()
        .name("cancel-scope-hook".into())
        .spawn(move || {
            let hook = lock(&theirs).take();
            if let Some(hook) = hook {
                call(hook, &their_cell);
            }
        });
    if let Err(error) = started {
        tracing::warn!(task = %cell.id, %error, "no thread for the escalation hook: running it here");
        let hook = lock(&slot).take();
        if let Some(hook) = hook {
            call(hook, &cell);
        }
    }
}

/// `start + offset`, saturating at about 30 years from now (as tokio's own
/// far-future sentinel), so any `Duration` of a policy is a valid rung.
fn instant_after(start: Instant, offset: std::time::Duration) -> Instant {
    start
        .checked_add(offset)
        .unwrap_or_else(crate::scope::far_future)
}

fn stats_of<K: Eq + Hash + Clone>(registry: &Registry<TaskMeta, K>) -> Stats {
    let c = &registry.counters;
    let t = registry.totals();
    Stats {
        spawned: t.spawned,
        completed: t.completed,
        cancelled: t.cancelled,
        aborted: t.aborted,
        panicked: t.panicked,
        stuck: t.stuck,
        closing: t.closing,
        deliveries: Counters::get(&c.deliveries),
        redeliveries: Counters::get(&c.redeliveries),
        escalations: Counters::get(&c.escalations),
        processes: Counters::get(&c.processes),
        tracked: t.tracked,
    }
}

// ===== impl Owner =====

/// The users' share of a tracker. `TaskGroup` and `TaskMap` are one
/// `Arc<Owner>`, so their clones share it, and its drop is the drop of the
/// last user handle. Tasks, task handles and ladders hold the [`Shared`]
/// itself, so they never keep a group open.
pub(crate) struct Owner<K: Eq + Hash + Clone + Debug + Send + Sync + 'static> {
    pub(crate) shared: Arc<Shared<K>>,
}

impl<K> Drop for Owner<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.shared.last_handle_dropped();
    }
}

impl<K: Eq + Hash + Clone + Debug + Send + Sync + 'static> Debug for Owner<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl<K: Eq + Hash + Clone> Shared<K> {
    /// The last task ended: under a deadline, release the deliverer's
    /// registration, so no timer of the library outlives the work. A spawn
    /// racing with this re-registers: this stores `false` before it reads
    /// the registry's length, a spawn inserts before it reads the flag
    /// (SeqCst both, the registry lock between), so either this sees the new
    /// task and keeps the registration, or the spawn sees `false` and arms.
    fn disarm_deliverer(&self) {
        if self.scope.deadline().is_none() || !self.deliverer_armed.load(Ordering::SeqCst) {
            return;
        }
        let mut waiter = lock(&self.deliverer);
        if !self.deliverer_armed.swap(false, Ordering::SeqCst) {
            return;
        }
        if self.registry.len() != 0 || self.scope.is_cancelled() {
            // A task came in (or nothing will ever be delivered again).
            self.deliverer_armed.store(true, Ordering::SeqCst);
            return;
        }
        waiter.release(self.scope.node());
    }
}

impl<K: Eq + Hash + Clone> Debug for Shared<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("scope", &self.scope)
            .field("tracked", &self.registry.len())
            .field("policy", &self.policy)
            .field("cancel_on_panic", &self.cancel_on_panic)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

// ===== waiting for the end =====

/// Waits until the target has ended or a time, whichever is first. One timer,
/// reset between rungs; registrations are released on drop.
struct EndWait<'a, K: Eq + Hash + Clone> {
    registry: &'a Registry<TaskMeta, K>,
    one: Option<&'a Arc<Cell>>,
    idle_key: Option<WaitKey>,
    ended_key: Option<WaitKey>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<K: Eq + Hash + Clone> EndWait<'_, K> {
    /// `true` if the target ended, `false` if `at` came first. The end is
    /// checked first, so a target that already ended costs no timer.
    async fn until(&mut self, at: Instant) -> bool {
        std::future::poll_fn(|cx| {
            let ended = match self.one {
                Some(cell) => self
                    .registry
                    .poll_ended(cell, cx.waker(), &mut self.ended_key),
                None => self.registry.poll_idle(cx.waker(), &mut self.idle_key),
            };
            if ended.is_ready() {
                return Poll::Ready(true);
            }
            let sleep = match &mut self.sleep {
                Some(s) => {
                    if s.deadline() != at {
                        s.as_mut().reset(at);
                    }
                    s
                }
                none => none.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            sleep.as_mut().poll(cx).map(|()| false)
        })
        .await
    }
}

impl<K: Eq + Hash + Clone> Drop for EndWait<'_, K> {
    fn drop(&mut self) {
        self.registry.release_idle(&mut self.idle_key);
        if let Some(cell) = self.one {
            self.registry.release_ended(cell.id, &mut self.ended_key);
        }
    }
}

/// Ready once no task of the registry is alive; for `join`.
pub(crate) async fn idle<K: Eq + Hash + Clone>(registry: &Registry<TaskMeta, K>) {
    struct Idle<'a, K: Eq + Hash + Clone> {
        registry: &'a Registry<TaskMeta, K>,
        key: Option<WaitKey>,
    }
    impl<K: Eq + Hash + Clone> Drop for Idle<'_, K> {
        fn drop(&mut self) {
            self.registry.release_idle(&mut self.key);
        }
    }
    let mut w = Idle {
        registry,
        key: None,
    };
    std::future::poll_fn(|cx| w.registry.poll_idle(cx.waker(), &mut w.key)).await;
}

// ===== the tracked future =====

/// Which scope's cancellation drops a tracked future; kept in the cell's
/// `tag`, so the future carries nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Watch {
    /// The tracker's own scope (a group's plain `spawn`).
    Tracker,
    /// The task's own scope, kept in its cell (a map's tasks).
    Own,
    /// None: the task was handed its scope and decides (cooperative).
    Nothing,
}

impl Watch {
    #[inline]
    fn from_tag(tag: u8) -> Self {
        match tag {
            t if t == Watch::Tracker as u8 => Watch::Tracker,
            t if t == Watch::Own as u8 => Watch::Own,
            _ => Watch::Nothing,
        }
    }
}

pin_project_lite::pin_project! {
    /// The user's future as spawned: prune guard, poll bookkeeping, cancel
    /// check, panic capture.
    struct Tracked<F, K>
    where
        K: Eq,
        K: Hash,
        K: Clone,
    {
        #[pin]
        fut: F,
        // Dropped with the future, whatever ends it: prune on completion.
        // Holds the task's one reference to its tracker.
        guard: EntryGuard<TaskMeta, K, Arc<Shared<K>>>,
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
        let watch = Watch::from_tag(start.tag);
        if start.escalated {
            // Escalated: end now, as an abort would.
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
            Watch::Nothing => None,
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
                if cell.meta.owns_process() {
                    Counters::bump(&shared.registry.counters.processes);
                }
                *outcome = TaskOutcome::Completed;
                Poll::Ready(Ok(v))
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                tracing::debug!(task = %cell.id, panic = %message, "tracked task panicked");
                shared.record_panic(&message);
                if shared.cancel_on_panic {
                    // The siblings' `Cancelled` says why, as `cancel_with`.
                    let why = match cell.meta.name() {
                        Some(name) => format!("{} {:?} panicked: {message}", cell.id, &**name),
                        None => format!("{} panicked: {message}", cell.id),
                    };
                    shared.scope.cancel_with(why);
                }
                *outcome = TaskOutcome::Panicked;
                Poll::Ready(Err(TaskError::Panicked(message)))
            }
        }
    }
}
#[cfg(test)]
mod tests {
    /// Bytes per pending task (issue 12): what a tracked task adds to the
    /// user's future stays within 24 bytes, so a 128-byte future's task stays
    /// in tokio's 256-byte cell class (tokio aligns task cells to 128 bytes on
    /// x86_64), and the shared cell within 72.
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
        assert!(std::mem::size_of::<super::Cell>() <= 72);
    }
}
