//! [`Stats`]: a snapshot of a group's or map's counters.

// ===== stats =====

/// A snapshot of a group's or map's counters. All counters are totals since
/// creation except `stuck` and `tracked`, which are current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks spawned.
    pub spawned: u64,
    /// Tasks whose future returned.
    pub completed: u64,
    /// Tasks dropped at an await after cancellation.
    pub cancelled: u64,
    /// Tasks aborted or dropped without finishing.
    pub aborted: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks now alive that a ladder reported stuck.
    pub stuck: u64,
    /// Tasks now alive that are being torn down (marked closing by a
    /// shutdown, a per-key cancel or a key replacement).
    pub closing: u64,
    /// Wakes made by first deliveries of cancellation.
    pub deliveries: u64,
    /// Wakes made by re-deliveries (at most `max_redeliveries` per task).
    pub redeliveries: u64,
    /// Tasks escalated (hook run, abort requested).
    pub escalations: u64,
    /// Scoped child processes whose teardown (or exit) was reaped by their
    /// group (feature `process`).
    pub processes: u64,
    /// Tasks whose future is alive now (`len()`).
    pub tracked: u64,
}
