//! The ladder's knobs: [`ShutdownPolicy`], and the spacing of its
//! re-deliveries, [`Backoff`].

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
