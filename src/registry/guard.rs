//! [`EntryGuard`]: lives inside the tracked future, and its drop removes the
//! task's entry (prune on completion), whatever ended the future.

use std::hash::Hash;

use super::cell::TaskCell;
use super::set::Registry;
use crate::sync::Arc;
use crate::task::TaskOutcome;

// ===== impl EntryGuard =====

/// What holds a registry: the registry itself in an `Arc`, or a tracker
/// that embeds one. An [`EntryGuard`] keeps a clone of it.
pub(crate) trait HoldsRegistry<T, K: Eq + Hash + Clone>: Clone {
    fn registry(&self) -> &Registry<T, K>;

    /// Called after an end left the registry empty (outside its lock).
    fn became_idle(&self) {}
}

impl<T, K: Eq + Hash + Clone> HoldsRegistry<T, K> for Arc<Registry<T, K>> {
    fn registry(&self) -> &Registry<T, K> {
        self
    }
}

/// Lives inside the tracked future; its drop prunes the entry, whatever ended
/// the future (prune on completion).
pub(crate) struct EntryGuard<
    T,
    K: Eq + Hash + Clone = (),
    O: HoldsRegistry<T, K> = Arc<Registry<T, K>>,
> {
    pub(super) owner: O,
    pub(super) _key: std::marker::PhantomData<fn() -> K>,
    pub(super) cell: Arc<TaskCell<T>>,
    pub(super) slot: u32,
    /// What the task's wrapper observed; a future dropped without a verdict
    /// (abort, runtime shutdown) counts as aborted.
    pub(crate) outcome: TaskOutcome,
}

impl<T, K: Eq + Hash + Clone, O: HoldsRegistry<T, K>> EntryGuard<T, K, O> {
    pub(crate) fn cell(&self) -> &Arc<TaskCell<T>> {
        &self.cell
    }

    /// The owner, the cell and the outcome at once (disjoint borrows, for a
    /// poll that records its verdict while holding the other two).
    pub(crate) fn parts(&mut self) -> (&O, &Arc<TaskCell<T>>, &mut TaskOutcome) {
        (&self.owner, &self.cell, &mut self.outcome)
    }
}

impl<T, K: Eq + Hash + Clone, O: HoldsRegistry<T, K>> Drop for EntryGuard<T, K, O> {
    fn drop(&mut self) {
        if self
            .owner
            .registry()
            .remove(self.slot as usize, &self.cell, self.outcome)
        {
            self.owner.became_idle();
        }
    }
}

impl<T, K: Eq + Hash + Clone, O: HoldsRegistry<T, K>> std::fmt::Debug for EntryGuard<T, K, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryGuard")
            .field("cell", &self.cell)
            .field("slot", &self.slot)
            .finish()
    }
}
