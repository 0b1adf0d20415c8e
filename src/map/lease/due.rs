//! What a lease's deadlines say at one instant: the pure decision of the
//! lease layer, runtime-free (it reads no clock; `now` is an argument), so
//! it is tested without tokio.
//!
//! A lease has two deadlines, each optional:
//!
//! - **idle**: last activity + `idle_timeout` (the spawn counts as the first
//!   activity; [`TaskMap::touch`](crate::TaskMap::touch) moves it);
//! - **ready**: spawn + `ready_timeout`, until
//!   [`TaskMap::mark_ready`](crate::TaskMap::mark_ready) drops it.
//!
//! An instant that overflows `Instant` (a timeout near `Duration::MAX`) is
//! no deadline at all: never due, never armed.

use std::time::Duration;

use tokio::time::Instant;

/// Which deadline of a lease passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Expiry {
    /// The session was not marked ready within `ready_timeout` of its spawn.
    Ready,
    /// No activity for `idle_timeout`.
    Idle,
}

impl Expiry {
    /// The cancel message of the task this expiry tears down.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Expiry::Idle => "idle timeout",
            Expiry::Ready => "not ready in time",
        }
    }
}

/// What to do with a lease at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A deadline passed (at or before `now`): cancel the task.
    Expire(Expiry),
    /// Nothing is due yet: look again at this instant (after `now`).
    WakeAt(Instant),
    /// No deadline is left (ready, and no finite idle deadline).
    Never,
}

/// A lease's timeouts, as configured on its map (`None`: not configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Timeouts {
    pub(crate) idle: Option<Duration>,
    pub(crate) ready: Option<Duration>,
}

impl Timeouts {
    /// Whether any timeout is configured (the map is leased).
    pub(crate) fn any(self) -> bool {
        self.idle.is_some() || self.ready.is_some()
    }

    /// The verdict at `now` on a lease spawned at `spawned`, last active
    /// `last_activity` after its spawn, and marked ready or not. The earlier
    /// deadline decides; at a tie, `Ready` (the session never got going,
    /// which says more than "idle").
    pub(crate) fn verdict(
        self,
        now: Instant,
        spawned: Instant,
        last_activity: Duration,
        ready: bool,
    ) -> Verdict {
        let ready_at = match (ready, self.ready) {
            (false, Some(d)) => spawned.checked_add(d),
            _ => None,
        };
        let idle_at = self.idle.and_then(|d| {
            spawned
                .checked_add(last_activity)
                .and_then(|t| t.checked_add(d))
        });
        let first = [
            ready_at.map(|t| (t, Expiry::Ready)),
            idle_at.map(|t| (t, Expiry::Idle)),
        ]
        .into_iter()
        .flatten()
        .min();
        match first {
            Some((at, expiry)) if at <= now => Verdict::Expire(expiry),
            Some((at, _)) => Verdict::WakeAt(at),
            None => Verdict::Never,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn both(idle: Duration, ready: Duration) -> Timeouts {
        Timeouts {
            idle: Some(idle),
            ready: Some(ready),
        }
    }

    #[test]
    fn nothing_configured_is_never_due() {
        let t0 = Instant::now();
        let v = Timeouts::default().verdict(t0 + 1000 * S, t0, Duration::ZERO, false);
        assert_eq!(v, Verdict::Never);
    }

    #[test]
    fn idle_counts_from_the_last_activity() {
        let t0 = Instant::now();
        let t = Timeouts {
            idle: Some(10 * S),
            ready: None,
        };
        assert_eq!(
            t.verdict(t0, t0, Duration::ZERO, false),
            Verdict::WakeAt(t0 + 10 * S)
        );
        assert_eq!(
            t.verdict(t0 + 10 * S, t0, Duration::ZERO, false),
            Verdict::Expire(Expiry::Idle)
        );
        // Touched at 7 s: due at 17 s, not before.
        assert_eq!(
            t.verdict(t0 + 10 * S, t0, 7 * S, false),
            Verdict::WakeAt(t0 + 17 * S)
        );
        assert_eq!(
            t.verdict(t0 + 17 * S, t0, 7 * S, false),
            Verdict::Expire(Expiry::Idle)
        );
    }

    #[test]
    fn ready_applies_until_marked_and_the_earlier_deadline_decides() {
        let t0 = Instant::now();
        let t = both(10 * S, 3 * S);
        assert_eq!(
            t.verdict(t0, t0, Duration::ZERO, false),
            Verdict::WakeAt(t0 + 3 * S)
        );
        assert_eq!(
            t.verdict(t0 + 3 * S, t0, Duration::ZERO, false),
            Verdict::Expire(Expiry::Ready)
        );
        // Marked ready: only idle is left.
        assert_eq!(
            t.verdict(t0 + 3 * S, t0, Duration::ZERO, true),
            Verdict::WakeAt(t0 + 10 * S)
        );
        // Idle earlier than ready: idle fires first.
        let t = both(2 * S, 3 * S);
        assert_eq!(
            t.verdict(t0 + 2 * S, t0, Duration::ZERO, false),
            Verdict::Expire(Expiry::Idle)
        );
        // A tie: ready.
        let t = both(3 * S, 3 * S);
        assert_eq!(
            t.verdict(t0 + 3 * S, t0, Duration::ZERO, false),
            Verdict::Expire(Expiry::Ready)
        );
    }

    #[test]
    fn zero_is_due_at_once_and_max_is_never() {
        let t0 = Instant::now();
        let zero = both(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            zero.verdict(t0, t0, Duration::ZERO, false),
            Verdict::Expire(Expiry::Ready)
        );
        assert_eq!(
            zero.verdict(t0, t0, Duration::ZERO, true),
            Verdict::Expire(Expiry::Idle)
        );
        let max = both(Duration::MAX, Duration::MAX);
        assert_eq!(max.verdict(t0, t0, Duration::ZERO, false), Verdict::Never);
        // An activity far out overflows too: never, no panic.
        let idle = Timeouts {
            idle: Some(S),
            ready: None,
        };
        assert_eq!(idle.verdict(t0, t0, Duration::MAX, false), Verdict::Never);
    }
}
