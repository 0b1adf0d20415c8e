//! A list of parked waiters with generation-checked keys: the registrations
//! behind `join`, `join_next` and the ladder's wait for a task's end.
//!
//! A waiter keeps a [`WaitKey`] across polls to refresh its registration.
//! Slab indices are reused once a list is drained, so an index alone would let
//! a waiter that was woken but has not re-polled yet mistake a *later*
//! waiter's slot for its own and overwrite that waker: the later waiter would
//! then never be woken (the lost wakeup of tokio-util's `notify_many`
//! contract). Each registration therefore also carries a generation, unique in
//! the list's life, and a key acts only on the slot of its own generation.
//!
//! A key whose slot is gone was [drained](WaitList::drain): its waiter was
//! woken. Owners use that to latch a notification ([`WaitList::was_woken`]).
//!
//! Runtime-free and lock-free itself: the list lives inside one of the core's
//! mutexes. Wakers come in already cloned (cloned before the lock) and go out
//! to the caller, who wakes or drops them after the lock (see
//! [`AfterUnlock`](crate::sync::AfterUnlock)).

use std::task::Waker;

use slab::Slab;

/// A waiter's registration: the slot and the generation it was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaitKey {
    index: usize,
    generation: u64,
}

/// Parked waiters; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct WaitList {
    slots: Slab<(u64, Waker)>,
    next_generation: u64,
}

/// The negative control of the loom model `join_waiters_survive_respawn`
/// turns generation checks off, to show the model catches the stale key.
#[cfg(loom)]
pub(crate) static IGNORE_GENERATIONS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl WaitList {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `key`'s slot still holds the registration `key` was made with.
    fn is_current(&self, key: WaitKey) -> bool {
        #[cfg(loom)]
        if IGNORE_GENERATIONS.load(std::sync::atomic::Ordering::Relaxed) {
            return self.slots.contains(key.index);
        }
        self.slots
            .get(key.index)
            .is_some_and(|(generation, _)| *generation == key.generation)
    }

    /// Whether the registration of `key` was drained (its waiter woken) since
    /// it was made.
    pub(crate) fn was_woken(&self, key: WaitKey) -> bool {
        !self.is_current(key)
    }

    /// Registers `waker` for the waiter holding `key`: refreshes its slot if it
    /// is still there, else makes a new one and updates `key`. Returns the
    /// waker that was replaced, for the caller to drop after the lock.
    pub(crate) fn register(&mut self, key: &mut Option<WaitKey>, waker: Waker) -> Option<Waker> {
        if let Some(k) = key.filter(|&k| self.is_current(k)) {
            return Some(std::mem::replace(&mut self.slots[k.index].1, waker));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let index = self.slots.insert((generation, waker));
        *key = Some(WaitKey { index, generation });
        None
    }

    /// Removes the registration of `key` (taking the key) if it is still
    /// there; returns its waker, for the caller to drop after the lock.
    pub(crate) fn remove(&mut self, key: &mut Option<WaitKey>) -> Option<Waker> {
        let k = key.take().filter(|&k| self.is_current(k))?;
        Some(self.slots.remove(k.index).1)
    }

    /// Takes every registration's waker, for the caller to wake after the
    /// lock. Keys held by their waiters now read as [woken](Self::was_woken).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Waker> + '_ {
        self.slots.drain().map(|(_, w)| w)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_stale_key_never_touches_a_later_registration() {
        let mut list = WaitList::new();
        let (mut a, mut b) = (None, None);
        assert!(list.register(&mut a, Waker::noop().clone()).is_none());
        assert_eq!(list.drain().count(), 1);
        // B takes the slot A's key points at.
        assert!(list.register(&mut b, Waker::noop().clone()).is_none());
        assert_eq!(a.unwrap().index, b.unwrap().index);
        assert!(list.was_woken(a.unwrap()));
        assert!(!list.was_woken(b.unwrap()));
        // A re-registers: a slot of its own, B's is untouched.
        assert!(list.register(&mut a, Waker::noop().clone()).is_none());
        assert_ne!(a, b);
        assert_eq!(list.slots.len(), 2);
        // A stale remove is a no-op.
        let mut stale = Some(WaitKey {
            index: b.unwrap().index,
            generation: 0,
        });
        assert!(list.remove(&mut stale).is_none());
        assert!(list.remove(&mut b).is_some());
        assert!(list.remove(&mut a).is_some());
        assert!(list.is_empty());
    }
}
