//! Delivery: the one waker a tracker registers on its scope is a callback
//! ([`Deliverer`]). Cancelling the scope, or an ancestor, wakes it, and its
//! `wake` walks the registry once and makes each live task's first delivery
//! (a wake of the runtime task through its cell). A per-task cancel
//! ([`Tracker::begin_cancel`]) marks, cancels and wakes one task and runs its
//! ladder in the background.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Wake, Waker};

use super::Tracker;
use crate::registry::{LadderCounts, TaskOutcome};
use crate::sync::lock;
use crate::task::{Stats, TrackedCell};

/// The one waker a tracker registers on its scope: a *callback waker* (its
/// `wake` runs [`Tracker::deliver_all`] on the cancelling thread instead of
/// scheduling a task; see `ARCHITECTURE.md`), so cancelling the scope
/// delivers to every live task with no task of the library in between.
pub(crate) struct Deliverer<K: Eq + Hash + Clone> {
    shared: Weak<Tracker<K>>,
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

impl<K> Tracker<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// The first delivery to every live task (the scope was cancelled), with
    /// the report's baseline taken first, so the report counts them.
    pub(super) fn deliver_all(&self) {
        let registry = &self.registry;
        self.baseline.get_or_init(|| self.stats());
        let woken = registry.pending().iter().filter(|c| c.deliver()).count();
        LadderCounts::add(&registry.ladder.deliveries, woken as u64);
    }

    /// Registers the deliverer on the scope, unless it is already. Done at
    /// creation and at a spawn into a tracker whose deliverer is not
    /// registered (a scope with a deadline, first outside a runtime or after
    /// the tracker went idle: the deadline's timer needs a runtime, and runs
    /// only while someone waits). A scope found cancelled is delivered to
    /// here, as the deliverer would have been woken, and the baseline of the
    /// report is taken: a group born cancelled counts its tasks too.
    pub(super) fn arm_deliverer(self: &Arc<Self>) {
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
    /// Cancels one task's own scope and wakes it once.
    pub(crate) fn deliver(&self, cell: &TrackedCell) {
        self.registry.mark_closing(cell);
        if let Some(scope) = &cell.meta.scope {
            scope.cancel();
        }
        if cell.deliver() {
            LadderCounts::bump(&self.registry.ladder.deliveries);
        }
    }

    /// Aborts one task now, with no grace and no hook, as `JoinSet::abort_all`
    /// does for each: marked escalated and woken once, so its next poll ends
    /// it as aborted (a blocking closure that has not started never runs; one
    /// that runs cannot be stopped, as tokio's). Returns whether this was the
    /// first abort or escalation of the task.
    pub(crate) fn abort(&self, cell: &TrackedCell) -> bool {
        if cell.is_ended() {
            return false;
        }
        let first = cell.mark_escalated();
        cell.schedule();
        first
    }

    /// A task's own cancel (`TaskHandle::cancel`, delivered by the handle),
    /// seen by the task's poll: marks it closing and counts the delivery,
    /// once (the `CLOSING` mark decides), and with `ladder` runs the task's
    /// ladder in the background; called inside the task's runtime.
    pub(super) fn take_cancel_request(self: &Arc<Self>, cell: &Arc<TrackedCell>, ladder: bool) {
        if !self.registry.mark_closing(cell) {
            return;
        }
        LadderCounts::bump(&self.registry.ladder.deliveries);
        if !ladder {
            return;
        }
        let (shared, cell) = (self.clone(), cell.clone());
        tokio::spawn(async move {
            shared.run_ladder(Some(&cell), &Stats::default()).await;
        });
    }

    /// As [`begin_cancel`](Self::begin_cancel), with `message` on the task's
    /// own scope (its `cancel_message`, and its `TaskError::Cancelled`), but
    /// only if no teardown of the task has begun: a task already closing or
    /// ended is left alone and `false` returned. `counted` runs once the
    /// task is marked closing, before anything is delivered, so a counter it
    /// bumps is seen by whoever sees the task end. For a map's lease expiry.
    pub(crate) fn begin_cancel_with(
        self: &Arc<Self>,
        cell: Arc<TrackedCell>,
        message: &'static str,
        counted: impl FnOnce(),
    ) -> bool {
        if !self.registry.mark_closing(&cell) {
            return false;
        }
        counted();
        // `deliver` and `begin_cancel`, without a second `mark_closing`
        // (a registry lock per expiry).
        if let Some(scope) = &cell.meta.scope {
            scope.cancel_with(message);
        }
        if cell.deliver() {
            LadderCounts::bump(&self.registry.ladder.deliveries);
        }
        if let Some(rt) = self.runtime() {
            let shared = self.clone();
            rt.spawn(async move {
                shared.run_ladder(Some(&cell), &Stats::default()).await;
            });
        }
        true
    }

    /// Cancels a task and runs its ladder in the background, on the current
    /// runtime or else on the one the tracker's tasks run on (so this works
    /// from a `Drop` outside any runtime). `None` if there is no runtime to
    /// run it on: the task is still cancelled and woken.
    pub(crate) fn begin_cancel(
        self: &Arc<Self>,
        cell: Arc<TrackedCell>,
    ) -> Option<tokio::task::JoinHandle<Option<TaskOutcome>>> {
        self.deliver(&cell);
        let rt = self.runtime()?;
        let shared = self.clone();
        Some(rt.spawn(async move {
            shared.run_ladder(Some(&cell), &Stats::default()).await;
            cell.outcome()
        }))
    }
}

impl<K: Eq + Hash + Clone> Tracker<K> {
    /// The last task ended: under a deadline, release the deliverer's
    /// registration, so no timer of the library outlives the work. A spawn
    /// racing with this re-registers: this stores `false` before it reads
    /// the registry's length, a spawn inserts before it reads the flag
    /// (SeqCst both, the registry lock between), so either this sees the new
    /// task and keeps the registration, or the spawn sees `false` and arms.
    pub(super) fn disarm_deliverer(&self) {
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
