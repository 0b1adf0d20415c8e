//! The std / loom shim: every `Arc`, `Mutex` and atomic of the runtime-free
//! core comes from here, so `RUSTFLAGS="--cfg loom"` swaps them all for loom's
//! modelled versions at once (as tokio-util's `src/loom.rs`).
//!
//! Process-wide id counters deliberately use `std` atomics even under loom: a
//! loom atomic may not live in a `static`, and ids only need uniqueness. Two
//! write-once cells use a `std` `OnceLock` under loom too (a task's waker
//! slot, a cancel's message): the models check the atomic state word that
//! publishes each of them.

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering},
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering},
};

/// A cell whose accesses the caller orders by other means (as tokio's
/// `loom/std/unsafe_cell.rs`): `std`'s `UnsafeCell` with loom's closure API,
/// so that under loom every access is checked for a data race.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// Locks `m`, ignoring poisoning.
///
/// The rule of the core: **under a core lock nothing that belongs to a user is
/// cloned, dropped or called** (wakers, keys, hooks, outputs). Wakers are
/// cloned before a lock is taken; what leaves a locked structure (a waker to
/// wake, a replaced waker, a removed key) goes into an [`AfterUnlock`] declared
/// *before* the guard, so it is woken or dropped only once the guard is gone.
/// The one exception is a key's `Hash` and `Eq`, which a `HashMap` lookup must
/// call; they are documented to be pure. So a poisoned lock can only come from
/// a bug of ours that already panicked; the data is still consistent because
/// every critical section finishes its writes before it can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What leaves a core lock: wakers to wake, and replaced or removed wakers to
/// drop, once the lock is released (the rule stated at [`lock`]; as tokio's
/// `WakeList`).
///
/// Declare it before the lock guard: locals drop in reverse order, so the
/// guard goes first, on every path, early returns and unwinding included.
/// Other user values leaving a lock (a registry's removed key) are declared
/// before it, so they go after every wake.
#[must_use = "an AfterUnlock does its work when dropped, after the lock guard"]
pub(crate) struct AfterUnlock {
    wake: Vec<std::task::Waker>,
    drop_wakers: Vec<std::task::Waker>,
}

impl AfterUnlock {
    pub(crate) fn new() -> Self {
        AfterUnlock {
            wake: Vec::new(),
            drop_wakers: Vec::new(),
        }
    }

    /// Wakes every waker of `wakers` once the lock is released.
    pub(crate) fn wake_all(&mut self, wakers: impl IntoIterator<Item = std::task::Waker>) {
        self.wake.extend(wakers);
    }

    /// Drops a waker (a replaced or removed registration) once the lock is
    /// released.
    pub(crate) fn drop_waker(&mut self, waker: Option<std::task::Waker>) {
        self.drop_wakers.extend(waker);
    }
}

impl Drop for AfterUnlock {
    #[inline]
    fn drop(&mut self) {
        // Most critical sections wake nothing: no drain to build then.
        if !self.wake.is_empty() {
            for w in std::mem::take(&mut self.wake) {
                w.wake();
            }
        }
        // `drop_wakers` drops with the struct, after the wakes.
    }
}

impl std::fmt::Debug for AfterUnlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterUnlock")
            .field("wake", &self.wake.len())
            .field("drop", &self.drop_wakers.len())
            .finish()
    }
}
