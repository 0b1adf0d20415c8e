//! The registry's counters: the ladder's own work ([`LadderCounts`], atomics)
//! and the per-task counts and gauges kept under the registry lock
//! ([`TaskCounts`]).

use crate::sync::{AtomicU64, Ordering};

// ===== counters =====

/// Counters of the ladder's own work (all `Relaxed`: they are statistics,
/// read as a snapshot that synchronizes with nothing). Counters that change
/// with every spawn and end live under the registry lock instead
/// ([`TaskCounts`]), which both already take: no shared cache line is written
/// per task besides the lock's.
#[derive(Debug, Default)]
pub(crate) struct LadderCounts {
    pub(crate) deliveries: AtomicU64,
    pub(crate) redeliveries: AtomicU64,
    pub(crate) escalations: AtomicU64,
}

/// Per-task counters and gauges, kept under the registry lock.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskCounts {
    pub(crate) spawned: u64,
    pub(crate) completed: u64,
    pub(crate) cancelled: u64,
    pub(crate) aborted: u64,
    pub(crate) panicked: u64,
    /// Tasks declared stuck that have not ended yet (a gauge, changed
    /// together with the cell's `STUCK` bit).
    pub(crate) stuck: u64,
    /// Tasks marked closing that have not ended yet (a gauge, as `stuck`).
    pub(crate) closing: u64,
    /// Live tasks.
    pub(crate) tracked: u64,
}

impl LadderCounts {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
