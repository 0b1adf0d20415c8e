//! The shutdown ladder's tokio side: [`Tracker::shutdown`], the background
//! ladder of a dropped group, and [`Tracker::run_ladder`], which sleeps until
//! each rung of [`Schedule`] (or until the target ended, whichever is first)
//! and performs it; escalation runs each hook on a thread of its own.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use tokio::time::Instant;

use super::Tracker;
use crate::ladder::{Schedule, ShutdownReport, Step, StuckTask};
use crate::registry::{LadderCounts, Registry};
use crate::scope::CancelMessage;
use crate::sync::lock;
use crate::task::{Stats, TaskMeta, TrackedCell, panic_message};
use crate::wait_list::WaitKey;

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
        one: Option<&Arc<TrackedCell>>,
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
        let mut hooked: Vec<Arc<TrackedCell>> = Vec::new();
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
                    LadderCounts::add(&self.registry.ladder.redeliveries, n as u64);
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
    pub(super) fn cancel_message(&self, cell: &TrackedCell) -> Option<CancelMessage> {
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
    pub(super) fn escalate(&self, cell: &Arc<TrackedCell>) -> bool {
        if !cell.mark_escalated() {
            return false;
        }
        LadderCounts::bump(&self.registry.ladder.escalations);
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
    // Tracker with the thread, so a failed start gives the hook back.
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
pub(super) fn instant_after(start: Instant, offset: std::time::Duration) -> Instant {
    start
        .checked_add(offset)
        .unwrap_or_else(crate::scope::far_future)
}

// ===== waiting for the end =====

/// Waits until the target has ended or a time, whichever is first. One timer,
/// reset between rungs; registrations are released on drop.
struct EndWait<'a, K: Eq + Hash + Clone> {
    registry: &'a Registry<TaskMeta, K>,
    one: Option<&'a Arc<TrackedCell>>,
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
