//! The ladder's loop, runtime-free: [`drive`] waits for the target (every
//! task, or one) to end or for the next rung of the [`Schedule`] to come,
//! whichever is first, and performs the rung over the core
//! ([`Registry`], [`TaskCell`]). What needs a runtime, a clock and the
//! escalation hook's thread, is behind [`Rungs`]: the tokio side
//! (`tracker/ladder.rs`) gives it a `tokio::time::Sleep` and `yield_now`,
//! the loom models (`loom_models/ladder.rs`) a step timer that loom fires.
//!
//! Per rung, as the diagram of the [module](super) shows:
//!
//! - [`Step::Redeliver`]: [`TaskCell::redeliver`] with the policy's limit to
//!   every live target (registry invariant 3 caps it per cell, whatever
//!   number of ladders run), counted in the registry's `ladder.redeliveries`;
//! - [`Step::Escalate`]: per live target, once per cell
//!   ([`TaskCell::mark_escalated`]), counted in `ladder.escalations`, then
//!   [`Rungs::escalate`] (the hook) and one [`TaskCell::schedule`], whose wake
//!   brings the poll that ends the task as aborted;
//! - [`Step::GiveUp`]: one scheduling round ([`Rungs::round`]), one more
//!   wait for the end until the present moment, then what is alive is marked
//!   stuck.
//!
//! The end is checked before each rung's moment, so a target that already
//! ended costs no timer, and the ladder returns as soon as it ends, holding
//! no registration and no timer (both are released on every path, a drop of
//! the future included).

use std::future::Future;
use std::hash::Hash;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{Schedule, ShutdownPolicy, Step};
use crate::registry::{LadderCounts, LiveEntry, Registry, TaskCell};
use crate::sync::Arc;
use crate::wait_list::WaitKey;

/// What the ladder needs a runtime for: its clock, escalation's hook, and a
/// scheduling round.
pub(crate) trait Rungs<T> {
    /// A moment the ladder waits for, unless the target ends first (tokio:
    /// an `Instant`).
    type Moment: Copy;

    /// The moment rung `index` of the schedule is due: `offset` after the
    /// ladder's start.
    fn rung(&mut self, index: usize, offset: Duration) -> Self::Moment;

    /// The present moment: give-up's last wait for the end, after its round.
    fn now(&mut self) -> Self::Moment;

    /// Ready once `at` has come; registers `cx`'s waker for it otherwise (a
    /// timer: one, reset between moments).
    fn poll_due(&mut self, at: Self::Moment, cx: &mut Context<'_>) -> Poll<()>;

    /// Escalates one live target, which the driver has just marked escalated
    /// (it won [`TaskCell::mark_escalated`]: once per cell, whatever number
    /// of ladders get here): starts its hook, if it has one. Returns whether
    /// a hook was started. The driver wakes the task afterwards.
    fn escalate(&mut self, cell: &Arc<TaskCell<T>>) -> bool;

    /// One scheduling round before the give-up verdict, so that an escalated
    /// task can be polled and end (tokio: `yield_now`).
    fn round(&mut self) -> impl Future<Output = ()>;

    /// The ladder is over (the target ended or the give-up rung came): let
    /// go of the clock (tokio: the timer), before the stuck are marked.
    fn release(&mut self);
}

/// How a ladder ended, for the caller's report.
pub(crate) struct Finished<T, K> {
    /// The target ended before the ladder gave up.
    pub(crate) ended: bool,
    /// Targets this ladder escalated and whose hook it started.
    pub(crate) hooked: Vec<Arc<TaskCell<T>>>,
    /// What outlived the ladder, marked stuck, with its key; empty if the
    /// target ended.
    pub(crate) stuck: Vec<LiveEntry<T, K>>,
    /// The re-deliveries this ladder made (what it added to the registry's
    /// `ladder.redeliveries`).
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests and models"))]
    pub(crate) redelivered: u64,
    /// The wakes its escalations issued (at most one per cell).
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the tests and models"))]
    pub(crate) escalation_wakes: u64,
}

/// Runs the ladder over the target (`one` task, or every task of `registry`)
/// after the first delivery, per `policy`'s [`Schedule`], with `rungs`'
/// clock; returns as soon as the target has ended. `rungs` is released (its
/// timer with it) before the stuck are marked, as the registrations are.
/// Both are borrowed: an `async fn` keeps its by-value arguments in its
/// state twice (rust-lang/rust#62958), and this future lives inside every
/// per-task ladder's spawned task.
pub(crate) async fn drive<T, K, R>(
    registry: &Registry<T, K>,
    one: Option<&Arc<TaskCell<T>>>,
    policy: &ShutdownPolicy,
    rungs: &mut R,
) -> Finished<T, K>
where
    K: Eq + Hash + Clone,
    R: Rungs<T>,
{
    let mut wait = EndWait {
        registry,
        one,
        idle_key: None,
        ended_key: None,
    };
    let targets = || match one {
        Some(c) if !c.is_ended() => vec![c.clone()],
        Some(_) => Vec::new(),
        None => registry.pending(),
    };
    let mut finished = Finished {
        ended: false,
        hooked: Vec::new(),
        stuck: Vec::new(),
        redelivered: 0,
        escalation_wakes: 0,
    };
    for (index, (offset, step)) in Schedule::new(*policy).enumerate() {
        let at = rungs.rung(index, offset);
        if wait.until(rungs, at).await {
            finished.ended = true;
            break;
        }
        match step {
            Step::Redeliver => {
                let n = targets()
                    .iter()
                    .filter(|c| c.redeliver(policy.max_redeliveries))
                    .count() as u64;
                LadderCounts::add(&registry.ladder.redeliveries, n);
                finished.redelivered += n;
            }
            Step::Escalate => {
                for cell in targets() {
                    if !cell.mark_escalated() {
                        continue;
                    }
                    LadderCounts::bump(&registry.ladder.escalations);
                    let hooked = rungs.escalate(&cell);
                    // The abort: the `ESCALATED` bit makes the task's next
                    // poll end it, and this wake brings that poll at once.
                    finished.escalation_wakes += u64::from(cell.schedule());
                    if hooked {
                        finished.hooked.push(cell);
                    }
                }
            }
            Step::GiveUp => {
                // An escalated task was woken to end as aborted: give it
                // one scheduling round before calling it stuck (with
                // `abort_grace: 0` the verdict would otherwise come before
                // the runtime could even poll it).
                rungs.round().await;
                let now = rungs.now();
                if wait.until(rungs, now).await {
                    finished.ended = true;
                }
            }
        }
    }
    drop(wait);
    rungs.release();
    if !finished.ended {
        let mut stuck = registry.pending_keyed();
        stuck.retain(|LiveEntry { cell, .. }| {
            if one.is_some_and(|c| c.id != cell.id) || cell.is_ended() {
                return false;
            }
            registry.mark_stuck(cell);
            true
        });
        finished.stuck = stuck;
    }
    finished
}

/// Waits until the target has ended or a moment of `Rungs`, whichever is
/// first; registrations are released on drop.
struct EndWait<'a, T, K: Eq + Hash + Clone> {
    registry: &'a Registry<T, K>,
    one: Option<&'a Arc<TaskCell<T>>>,
    idle_key: Option<WaitKey>,
    ended_key: Option<WaitKey>,
}

impl<T, K: Eq + Hash + Clone> EndWait<'_, T, K> {
    /// `true` if the target ended, `false` if `at` came first. The end is
    /// checked first, so a target that already ended costs no timer.
    async fn until<R: Rungs<T>>(&mut self, rungs: &mut R, at: R::Moment) -> bool {
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
            rungs.poll_due(at, cx).map(|()| false)
        })
        .await
    }
}

impl<T, K: Eq + Hash + Clone> Drop for EndWait<'_, T, K> {
    fn drop(&mut self) {
        self.registry.release_idle(&mut self.idle_key);
        if let Some(cell) = self.one {
            self.registry.release_ended(cell.id, &mut self.ended_key);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::pin::pin;
    use std::task::Waker;

    use super::*;
    use crate::registry::TaskOutcome;

    /// Rungs whose moments have all come (every timer expired), counting
    /// what the driver asks of them.
    #[derive(Default)]
    struct Due {
        polled: usize,
        escalated: usize,
        rounds: usize,
    }

    impl<T> Rungs<T> for &mut Due {
        type Moment = ();

        fn rung(&mut self, _: usize, _: Duration) {}

        fn now(&mut self) {}

        fn poll_due(&mut self, (): (), _: &mut Context<'_>) -> Poll<()> {
            self.polled += 1;
            Poll::Ready(())
        }

        fn escalate(&mut self, _: &Arc<TaskCell<T>>) -> bool {
            self.escalated += 1;
            true
        }

        async fn round(&mut self) {
            self.rounds += 1;
        }

        fn release(&mut self) {}
    }

    /// Runs `drive` to the end in one poll, as rungs always due allow.
    fn run<T, K: Eq + Hash + Clone>(
        registry: &Registry<T, K>,
        one: Option<&Arc<TaskCell<T>>>,
        rungs: &mut Due,
    ) -> Finished<T, K> {
        let policy = ShutdownPolicy::default();
        let mut rungs = rungs;
        let mut ladder = pin!(drive(registry, one, &policy, &mut rungs));
        match ladder
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(finished) => finished,
            Poll::Pending => panic!("a ladder with every rung due waited"),
        }
    }

    #[test]
    fn an_ended_target_costs_no_rung() {
        let registry = Arc::new(Registry::<(), ()>::new(false));
        let mut guard = Registry::insert(&registry, (), None).guard;
        let cell = guard.cell().clone();
        *guard.parts().2 = TaskOutcome::Completed;
        drop(guard);
        for one in [None, Some(&cell)] {
            let mut rungs = Due::default();
            let finished = run(&registry, one, &mut rungs);
            assert!(finished.ended);
            assert!(finished.stuck.is_empty() && finished.hooked.is_empty());
            assert_eq!((rungs.polled, rungs.escalated, rungs.rounds), (0, 0, 0));
        }
    }

    #[test]
    fn a_stubborn_target_is_escalated_once_and_reported_stuck() {
        let registry = Arc::new(Registry::<(), ()>::new(false));
        let guard = Registry::insert(&registry, (), None).guard;
        let cell = guard.cell().clone();
        // Its first poll: delivered, ignored, parked again.
        cell.begin_poll(Waker::noop());
        registry.mark_closing(&cell);
        assert!(cell.deliver());
        cell.begin_poll(Waker::noop());
        cell.parked_after_delivery();

        let mut rungs = Due::default();
        let finished = run(&registry, Some(&cell), &mut rungs);
        // Re-delivered once (it was not polled again since, so the second
        // re-delivery rung skips it), escalated once (its wake coalesced
        // with the re-delivery's: not polled since, invariant 2), given one
        // round, and reported stuck.
        assert!(!finished.ended);
        assert_eq!((finished.redelivered, finished.escalation_wakes), (1, 0));
        assert_eq!(LadderCounts::get(&registry.ladder.redeliveries), 1);
        assert_eq!(LadderCounts::get(&registry.ladder.escalations), 1);
        assert_eq!(finished.hooked.len(), 1);
        assert_eq!(finished.stuck.len(), 1);
        assert!(cell.is_stuck());
        let rungs_in_schedule = Schedule::new(ShutdownPolicy::default()).count();
        // One moment per rung, and give-up's last one.
        assert_eq!(rungs.polled, rungs_in_schedule + 1);
        assert_eq!((rungs.escalated, rungs.rounds), (1, 1));

        // A second ladder over it: no hook, no wake, reported stuck again.
        let mut rungs = Due::default();
        let finished = run(&registry, None, &mut rungs);
        assert_eq!((finished.redelivered, finished.escalation_wakes), (0, 0));
        assert!(finished.hooked.is_empty());
        assert_eq!(finished.stuck.len(), 1);
        assert_eq!(rungs.escalated, 0);
        drop(finished);
        drop(guard);
        assert_eq!(registry.task_counts().stuck, 0);
    }
}
