//! The shutdown ladder as pure logic: policy, back-off, the schedule of steps,
//! and the report. The tokio layer (`Tracker::run_ladder` in `tracker.rs`)
//! only sleeps until the next step (or until every task has ended, whichever
//! comes first) and performs it.
//!
//! ```text
//!  cancel ──► deliver (one wake per task)
//!    │
//!    ├─ t = b, b+2b, b+2b+4b, …  (≤ max_redeliveries, < grace)
//!    │     re-deliver to tasks that parked again after seeing it; skip the rest
//!    │
//!    ├─ t = grace        escalate: hook once, on its own thread (panics
//!    │                   caught), and abort at once
//!    │
//!    └─ t = grace + abort_grace   whatever is alive is *stuck*: reported
//!
//!  at any point: every task ended ──► return at once, no timer left
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::registry::TaskId;

/// Spacing of re-deliveries: `initial`, then multiplied by `multiplier` each
/// time, capped at `max`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::Backoff;
///
/// let b = Backoff::default(); // 1 s doubling to 2 s
/// assert_eq!(b.delay(0), Duration::from_secs(1));
/// assert_eq!(b.delay(1), Duration::from_secs(2));
/// assert_eq!(b.delay(40), Duration::from_secs(2));
///
/// // Faster, for a policy that wants many early nudges:
/// let quick = Backoff { initial: Duration::from_millis(1), max: Duration::from_secs(1), multiplier: 2 };
/// assert_eq!(quick.delay(3), Duration::from_millis(8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first re-delivery, counted from the first delivery.
    pub initial: Duration,
    /// The largest delay between two re-deliveries.
    pub max: Duration,
    /// Growth factor per re-delivery (1 = constant spacing).
    pub multiplier: u32,
}

impl Default for Backoff {
    /// 1 s doubling to 2 s: with the default policy, re-deliveries at 1 s
    /// and 3 s after the first delivery.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(2),
            multiplier: 2,
        }
    }
}

impl Backoff {
    /// The delay before re-delivery number `attempt` (0-based), saturating.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1)
            .checked_pow(attempt)
            .unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max)
            .max(Duration::from_nanos(1))
    }
}

/// How a task group or task map tears its tasks down: the ladder's knobs.
///
/// Public fields with a [`Default`], so a policy reads
/// `ShutdownPolicy { grace: Duration::from_secs(1), ..Default::default() }`.
///
/// # Ranges
///
/// Every value the types allow is valid; none panics or wraps:
///
/// - Durations saturate, as `tokio::time::sleep(Duration::MAX)` does: a
///   rung whose time does not fit in an `Instant` comes in about 30 years,
///   that is, never. `grace: Duration::MAX` means "never escalate": the
///   ladder waits until every task has ended. `abort_grace: Duration::MAX`
///   means "never declare a task stuck". `Duration::ZERO` for either makes
///   that rung come at once (an escalated task still gets one scheduling
///   round to end before it is called stuck).
/// - `max_redeliveries` is a per-task limit over the task's whole life, for
///   every `u32`: however many ladders run over one task (its own
///   [`TaskHandle::cancel`](crate::TaskHandle::cancel), its key's, its
///   group's `shutdown`), it is re-delivered to at most that many times.
///   Re-deliveries only come before `grace`, so the back-off bounds them too.
/// - [`Backoff`] saturates (see [`Backoff::delay`]); a zero delay becomes
///   1 ns, never an immediate re-wake.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::{ShutdownPolicy, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::builder()
///     .policy(ShutdownPolicy { grace: Duration::from_millis(500), ..Default::default() })
///     .build();
/// group.spawn(std::future::pending::<()>());
/// let report = group.shutdown().await;
/// assert_eq!(report.cancelled, 1);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownPolicy {
    /// How long cancelled tasks may take to end on their own before escalation
    /// (default 5 s).
    pub grace: Duration,
    /// Most re-deliveries per task before escalation (default 2), over the
    /// task's life, whatever number of ladders run over it.
    ///
    /// The library wakes a task at most `max_redeliveries + 3` times: its
    /// first delivery; one more for a per-task cancel
    /// ([`TaskHandle::cancel`](crate::TaskHandle::cancel)) that comes after
    /// another cancel already reached it; at most `max_redeliveries`
    /// re-deliveries; and escalation's one wake (the poll that ends it as
    /// aborted).
    ///
    /// Re-delivery reaches only a task that was polled after its delivery and
    /// parked again: one that saw the cancellation and ignored it, or whose
    /// own code lost the wake. A couple of late nudges serve it as well as
    /// many early ones, and each costs a wake of the ladder and of the task
    /// (about what the whole first delivery costs), so the default keeps the
    /// CPU spent on a task that ignores cancellation near the cancel-once
    /// floor (see BENCHMARKS.md).
    pub max_redeliveries: u32,
    /// Spacing of re-deliveries (default 1 s doubling to 2 s: at 1 s and 3 s).
    pub backoff: Backoff,
    /// How long aborted tasks may take to go away before they are reported
    /// stuck (default 1 s).
    pub abort_grace: Duration,
}

impl Default for ShutdownPolicy {
    fn default() -> Self {
        ShutdownPolicy {
            grace: Duration::from_secs(5),
            max_redeliveries: 2,
            backoff: Backoff::default(),
            abort_grace: Duration::from_secs(1),
        }
    }
}

/// One rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Re-deliver to tasks that were polled after their delivery and parked
    /// again (their poll returned `Pending`).
    Redeliver,
    /// Run escalation hooks and abort.
    Escalate,
    /// Stop waiting: what is alive is stuck.
    GiveUp,
}

/// The ladder's timetable: offsets from the first delivery, increasing.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    policy: ShutdownPolicy,
    attempt: u32,
    at: Duration,
    done: bool,
    escalated: bool,
}

impl Schedule {
    pub(crate) fn new(policy: ShutdownPolicy) -> Self {
        Schedule {
            policy,
            attempt: 0,
            at: Duration::ZERO,
            done: false,
            escalated: false,
        }
    }
}

impl Iterator for Schedule {
    type Item = (Duration, Step);

    fn next(&mut self) -> Option<(Duration, Step)> {
        if self.done {
            return None;
        }
        let p = &self.policy;
        if !self.escalated {
            if self.attempt < p.max_redeliveries {
                let at = self.at.saturating_add(p.backoff.delay(self.attempt));
                if at < p.grace {
                    self.attempt += 1;
                    self.at = at;
                    return Some((at, Step::Redeliver));
                }
            }
            self.escalated = true;
            return Some((p.grace, Step::Escalate));
        }
        self.done = true;
        Some((p.grace.saturating_add(p.abort_grace), Step::GiveUp))
    }
}

/// A task that outlived escalation and abort grace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StuckTask {
    /// The task's id.
    pub id: TaskId,
    /// Its name, if it was spawned with [`TaskBuilder::name`](crate::TaskBuilder::name).
    pub name: Option<Arc<str>>,
    /// Its key's `Debug` form, for a task in a [`TaskMap`](crate::TaskMap):
    /// `"blocker"` for the key `"blocker"`, `7` for the key `7`.
    pub key: Option<String>,
    /// Time since it was spawned, at the moment it was reported.
    pub age: Duration,
    /// Where it was spawned: the caller of the spawn function (`spawn`,
    /// `spawn_with_scope`, a builder's, a map's), through `#[track_caller]`.
    pub location: &'static std::panic::Location<'static>,
    /// Its escalation hook was started and had not returned when the task
    /// was reported (a hook that blocks: it runs on a thread of its own, so
    /// it holds neither the ladder nor the runtime).
    pub hook_running: bool,
}

impl std::fmt::Display for StuckTask {
    /// `stuck task#3 name="listener" key="blocker" age=6s at src/main.rs:10:5`:
    /// the name quoted once, the key in its `Debug` form as stored (not
    /// quoted again), absent fields left out, `(hook still running)` at the
    /// end when it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stuck {}", self.id)?;
        if let Some(name) = &self.name {
            write!(f, " name={:?}", &**name)?;
        }
        if let Some(key) = &self.key {
            write!(f, " key={key}")?;
        }
        write!(f, " age={:?} at {}", self.age, self.location)?;
        if self.hook_running {
            f.write_str(" (hook still running)")?;
        }
        Ok(())
    }
}

/// What a shutdown did: how each task ended, what is stuck, how long it took.
///
/// Counts cover every task that ended since the group's (or map's) scope was
/// first cancelled, whoever cancelled it (the shutdown itself, `cancel`, an
/// enclosing scope, a deadline), so tasks that ended before `shutdown` was
/// called are in the report too. A stuck task is still tracked (it counts in
/// `len()`) and prunes itself when it finally ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks whose future returned a value.
    pub completed: u64,
    /// Tasks whose future was dropped at an await after cancellation.
    pub cancelled: u64,
    /// Tasks aborted (by escalation or otherwise).
    pub aborted: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks still alive at the end of the ladder.
    pub stuck: Vec<StuckTask>,
    /// Wall (or paused-clock) time the ladder took.
    pub elapsed: Duration,
    /// Wakes made by the first delivery of cancellation.
    pub deliveries: u64,
    /// Wakes made by re-delivery.
    pub redeliveries: u64,
    /// Escalation hooks run (tasks escalated).
    pub escalations: u64,
    /// Scoped child processes (feature `process`) reaped during the ladder;
    /// their reaper tasks also count as completed tasks.
    pub processes: u64,
    /// Escalation hooks this ladder started whose thread had not returned
    /// when the ladder ended. Each runs on a thread of its own, beside the
    /// abort, and the ladder does not wait for it, so a blocking hook never
    /// stretches the ladder; a hook that returns at once may still be
    /// counted here if its thread had not run yet when the abort ended the
    /// task. (A stuck task's [`StuckTask::hook_running`] had all of
    /// `abort_grace` to return.)
    pub hooks_running: u64,
}

impl ShutdownReport {
    /// Whether every task ended (nothing is stuck).
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.stuck.is_empty()
    }
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "completed {}, cancelled {}, aborted {}, panicked {}, stuck {} in {:?} \
             ({} deliveries, {} re-deliveries, {} escalations, {} processes)",
            self.completed,
            self.cancelled,
            self.aborted,
            self.panicked,
            self.stuck.len(),
            self.elapsed,
            self.deliveries,
            self.redeliveries,
            self.escalations,
            self.processes
        )?;
        if self.hooks_running > 0 {
            write!(
                f,
                ", {} escalation hooks not returned yet",
                self.hooks_running
            )?;
        }
        for s in &self.stuck {
            write!(f, "\n  {s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn default_schedule_doubles_then_escalates_then_gives_up() {
        let steps: Vec<_> = Schedule::new(ShutdownPolicy::default()).collect();
        let redeliver: Vec<_> = steps
            .iter()
            .filter(|(_, s)| *s == Step::Redeliver)
            .map(|(t, _)| *t)
            .collect();
        // 1 s, then 1 + 2 s: two re-deliveries before grace.
        assert_eq!(redeliver, [ms(1000), ms(3000)]);
        assert_eq!(steps[2], (Duration::from_secs(5), Step::Escalate));
        assert_eq!(steps[3], (Duration::from_secs(6), Step::GiveUp));
        assert_eq!(steps.len(), 4);
    }

    #[test]
    fn redeliveries_stop_at_grace() {
        let policy = ShutdownPolicy {
            grace: ms(10),
            max_redeliveries: 100,
            backoff: Backoff {
                initial: ms(1),
                max: ms(1000),
                multiplier: 2,
            },
            ..Default::default()
        };
        let steps: Vec<_> = Schedule::new(policy).collect();
        // 1, 3, 7 fit under 10 ms; 15 does not.
        assert_eq!(
            steps.iter().filter(|(_, s)| *s == Step::Redeliver).count(),
            3
        );
        assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0), "{steps:?}");
    }

    #[test]
    fn zero_policy_escalates_at_once() {
        let policy = ShutdownPolicy {
            grace: Duration::ZERO,
            abort_grace: Duration::ZERO,
            ..Default::default()
        };
        let steps: Vec<_> = Schedule::new(policy).collect();
        assert_eq!(
            steps,
            vec![
                (Duration::ZERO, Step::Escalate),
                (Duration::ZERO, Step::GiveUp)
            ]
        );
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let b = Backoff {
            initial: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
            multiplier: u32::MAX,
        };
        assert_eq!(b.delay(5), Duration::MAX);
        let zero = Backoff {
            initial: Duration::ZERO,
            ..Default::default()
        };
        // Never an immediate re-wake: at least a nanosecond of timer.
        assert!(zero.delay(0) > Duration::ZERO);
    }
}
