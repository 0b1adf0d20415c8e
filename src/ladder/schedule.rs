//! The ladder's timetable: [`Schedule`] turns a [`ShutdownPolicy`] into the
//! rungs ([`Step`]) and their offsets from the first delivery, as pure data.

use std::time::Duration;

use super::ShutdownPolicy;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::Backoff;

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
}
