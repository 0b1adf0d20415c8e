//! The deadline clock: ticks, the signed nanoseconds from a process-wide base
//! in which the tree stores deadlines, and the conversions to and from
//! tokio's `Instant`.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use super::tree::NO_DEADLINE;

// ===== clock =====

/// The tree stores deadlines as signed nanoseconds from a process-wide base, so
/// that a deadline is one `AtomicI64`: `is_cancelled` reads it with one load
/// (its second, after the flag) and compares it with the clock, without a lock.
fn base() -> std::time::Instant {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

pub(crate) fn to_ticks(at: Instant) -> i64 {
    let at = at.into_std();
    let base = base();
    // Saturate one short of `NO_DEADLINE`: a far-future deadline is still one.
    match at.checked_duration_since(base) {
        Some(d) => nanos(d).min(NO_DEADLINE - 1),
        None => -nanos(base.duration_since(at)),
    }
}

/// `d` in nanoseconds, saturating at `i64::MAX` (292 years): in 64-bit
/// arithmetic, not `as_nanos`'s 128.
#[inline]
fn nanos(d: Duration) -> i64 {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    secs.saturating_mul(1_000_000_000)
        .saturating_add(i64::from(d.subsec_nanos()))
}

pub(crate) fn from_ticks(ticks: i64) -> Instant {
    let base = base();
    let at = if ticks >= 0 {
        base.checked_add(Duration::from_nanos(ticks as u64))
    } else {
        base.checked_sub(Duration::from_nanos(ticks.unsigned_abs()))
    };
    Instant::from_std(at.unwrap_or(base))
}

pub(super) fn now_ticks() -> i64 {
    to_ticks(Instant::now())
}

/// About 30 years from now, as tokio's own far-future sentinel: where a
/// deadline or a ladder rung that does not fit in an `Instant` goes.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_trip_both_sides_of_the_base() {
        let now = Instant::now();
        for at in [
            now,
            now + Duration::from_secs(3),
            now - Duration::from_millis(7),
        ] {
            assert_eq!(from_ticks(to_ticks(at)), at);
        }
        assert!(to_ticks(now + Duration::from_secs(1)) > to_ticks(now));
    }
}
