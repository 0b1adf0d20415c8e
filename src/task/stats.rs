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
    /// Tasks of a [`TaskMap`](crate::TaskMap) with an
    /// [`idle_timeout`](crate::TaskMapBuilder::idle_timeout) that were
    /// cancelled (with the message `"idle timeout"`) because their key saw
    /// no [`touch`](crate::TaskMap::touch) for that long. Counted when the
    /// teardown begins; 0 on maps without leases and on groups.
    pub idle_expired: u64,
    /// Tasks of a [`TaskMap`](crate::TaskMap) with a
    /// [`ready_timeout`](crate::TaskMapBuilder::ready_timeout) that were
    /// cancelled (with the message `"not ready in time"`) because they were
    /// not [marked ready](crate::TaskMap::mark_ready) that long after their
    /// spawn. Counted when the teardown begins; 0 on maps without leases and
    /// on groups.
    pub ready_expired: u64,
}
