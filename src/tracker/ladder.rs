//! The shutdown ladder's tokio side: [`Tracker::shutdown`], the background
//! ladder of a dropped group, and [`Tracker::run_ladder`], which runs the
//! ladder's loop ([`driver::drive`], runtime-free) on tokio's clock
//! ([`TokioRungs`]: one `Sleep` until each rung of
//! [`Schedule`](crate::ladder::Schedule), and `yield_now`) and builds the
//! [`ShutdownReport`]; escalation runs each hook on a thread of its own.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::Tracker;
use crate::ladder::driver::{self, Rungs};
use crate::ladder::{ShutdownReport, StuckTask};
use crate::registry::LiveEntry;
use crate::scope::CancelMessage;
use crate::sync::lock;
use crate::task::{Stats, TaskMeta, TrackedCell, panic_message};

impl<K> Tracker<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
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
        let report = self.run_ladder(None, &before).await;
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
                    let report = shared.run_ladder(None, &before).await;
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
    /// stuck, per the policy's [`Schedule`](crate::ladder::Schedule):
    /// [`driver::drive`] over [`TokioRungs`]. Returns as soon as the target
    /// has ended; then it holds no timer.
    pub(crate) async fn run_ladder(
        &self,
        one: Option<&Arc<TrackedCell>>,
        before: &Stats,
    ) -> ShutdownReport {
        // `before` borrowed and `start` kept in `rungs` only: this future
        // lives in every per-task ladder's spawned task, and its size
        // decides that task's allocation class (see BENCHMARKS.md, issue 19).
        let mut rungs = TokioRungs {
            tracker: self,
            start: Instant::now(),
            sleep: None,
        };
        let finished = driver::drive(&self.registry, one, &self.policy, &mut rungs).await;
        // Nothing to convert (the usual case) costs no collect: every
        // per-task ladder ends here.
        let stuck: Vec<StuckTask> = if finished.stuck.is_empty() {
            Vec::new()
        } else {
            finished
                .stuck
                .into_iter()
                .map(|LiveEntry { cell, key }| {
                    let age = cell.meta.age();
                    let message = self.cancel_message(&cell);
                    let hook_running = cell.snapshot().is_hook_running();
                    tracing::warn!(
                        task = %cell.id,
                        // Plain text, recorded only when the task has one.
                        name = cell.meta.name().map(|n| &**n),
                        key = key.as_ref().map(|k| tracing::field::debug(&**k)),
                        age_ms = age.as_millis() as u64,
                        spawned_at = %cell.meta.location,
                        hook_running,
                        // Recorded only when the cancel had a message.
                        cancel_message = message.as_deref(),
                        "task is stuck: it outlived cancellation, escalation and abort; it stays \
                         tracked and prunes itself if it ever ends"
                    );
                    StuckTask {
                        id: cell.id,
                        name: cell.meta.name().cloned(),
                        key: key.map(|k| format!("{k:?}")),
                        age,
                        location: cell.meta.location,
                        hook_running,
                    }
                })
                .collect()
        };
        // Escalated by this ladder with a hook: reported if it has not
        // returned when the ladder ends.
        let hooks_running = finished
            .hooked
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
            elapsed: rungs.start.elapsed(),
            deliveries: after.deliveries - before.deliveries,
            redeliveries: after.redeliveries - before.redeliveries,
            escalations: after.escalations - before.escalations,
            processes: after.processes - before.processes,
            hooks_running,
        }
    }

    /// The message of the cancel that reached `cell`'s task: its own scope's
    /// when it keeps one (a keyed task), else the tracker's.
    pub(super) fn cancel_message(&self, cell: &TrackedCell) -> Option<CancelMessage> {
        cell.meta
            .scope
            .as_ref()
            .unwrap_or(&self.scope)
            .cancel_message()
    }

    /// The tokio half of escalating a task, which [`driver::drive`] has just
    /// marked escalated (once per cell) and wakes right after, so that its
    /// next poll ends it as aborted (as tokio's abort would, without keeping
    /// an `AbortHandle` per task), at once, not after the hook: logs the
    /// escalation and starts the task's hook, if it has one, on a thread of
    /// its own (a panic in it is caught and logged; a hook that blocks holds
    /// neither the ladder nor a runtime thread, and is reported while it
    /// runs). Returns whether a hook was started.
    fn escalate(&self, cell: &Arc<TrackedCell>) -> bool {
        let meta = &cell.meta;
        let message = self.cancel_message(cell);
        tracing::warn!(
            task = %cell.id,
            name = meta.name().map(|n| &**n),
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
        started
    }
}

/// Runs an escalation hook on a thread of its own, named
/// `cancel-scope-hook`, and clears the cell's `HOOK_RUNNING` when it returns
/// (or panics). If no thread can be started, runs it here, as before.
pub(super) fn run_hook(hook: crate::task::Hook, cell: Arc<TrackedCell>) {
    fn call(hook: crate::task::Hook, cell: &TrackedCell) {
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
pub(super) fn instant_after(start: Instant, offset: Duration) -> Instant {
    start
        .checked_add(offset)
        .unwrap_or_else(crate::scope::far_future)
}

// ===== the driver's clock =====

/// The ladder's [`Rungs`] on tokio: one timer, reset between rungs (created
/// at the first rung the target outlives, dropped with the ladder),
/// `yield_now` for give-up's round, and [`Tracker::escalate`].
struct TokioRungs<'a, K: Eq + Hash + Clone> {
    tracker: &'a Tracker<K>,
    start: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<K> Rungs<TaskMeta> for TokioRungs<'_, K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    type Moment = Instant;

    fn rung(&mut self, _index: usize, offset: Duration) -> Instant {
        instant_after(self.start, offset)
    }

    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn poll_due(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(s) => {
                if s.deadline() != at {
                    s.as_mut().reset(at);
                }
                s
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        sleep.as_mut().poll(cx)
    }

    fn escalate(&mut self, cell: &Arc<TrackedCell>) -> bool {
        self.tracker.escalate(cell)
    }

    fn round(&mut self) -> impl Future<Output = ()> {
        tokio::task::yield_now()
    }

    fn release(&mut self) {
        self.sleep = None;
    }
}

#[cfg(test)]
mod tests {
    /// The ladder's future is inside every per-task ladder's spawned task
    /// (`TaskMap::cancel`, a key replacement, `TaskHandle::cancel`), so its
    /// size picks that task's allocation class. At 872 bytes (the driver's
    /// by-value arguments, stored twice by the async state machine) the task
    /// left malloc's per-thread cache: +7.6 % instructions in `map_churn`.
    #[test]
    fn the_ladder_future_stays_within_560_bytes() {
        let tracker = super::Tracker::<()>::new(
            crate::CancelScope::new(),
            crate::ShutdownPolicy::default(),
            false,
            false,
        );
        let before = crate::task::Stats::default();
        let ladder = tracker.run_ladder(None, &before);
        let size = std::mem::size_of_val(&ladder);
        assert!(size <= 560, "the ladder's future is {size} bytes");
    }
}
