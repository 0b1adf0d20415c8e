//! [`TaskId`] and [`TaskOutcome`]: what names a tracked task and how it
//! ended. Runtime-free: the registry core uses both.

/// How a tracked task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskOutcome {
    /// Its future returned a value.
    Completed,
    /// It was cancelled: its future was dropped at an await after its scope was
    /// cancelled.
    Cancelled,
    /// It was aborted (`TaskHandle::abort`, escalation, runtime shutdown) or its
    /// future was dropped by the runtime without finishing.
    Aborted,
    /// Its future panicked.
    Panicked,
    /// It outlived escalation and abort grace and is still running; it will
    /// prune itself when it ends.
    Stuck,
}

/// An opaque, process-unique identifier of a tracked task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The id as a number, for logs and metrics.
    #[must_use]
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task#{}", self.0)
    }
}

impl TaskId {
    /// A fresh, process-unique id.
    pub(crate) fn next() -> TaskId {
        // std atomic on purpose, see `crate::sync`.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        TaskId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}
