//! The std / loom shim: every `Arc`, `Mutex`, atomic and waker slot of the
//! runtime-free core comes from here, so `RUSTFLAGS="--cfg loom"` swaps them all
//! for loom's modelled versions at once (as tokio-util's `src/loom.rs`).
//!
//! Process-wide id counters deliberately use `std` atomics even under loom: a
//! loom atomic may not live in a `static`, and ids only need uniqueness.

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};

/// Locks `m`, ignoring poisoning.
///
/// No user code ever runs while one of the core's locks is held (hooks and
/// wakers run after the guard is dropped), so a poisoned lock can only come from
/// a bug of ours that already panicked; the data is still consistent because
/// every critical section finishes its writes before it can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A single waker slot, shared between the task that parks and the canceller
/// that wakes it: `futures`' `AtomicWaker` normally, loom's under `cfg(loom)`.
#[derive(Default)]
pub(crate) struct AtomicWaker {
    #[cfg(not(loom))]
    inner: futures_util::task::AtomicWaker,
    #[cfg(loom)]
    inner: loom::future::AtomicWaker,
}

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Stores `waker` (cloning it only when it would not wake the same task).
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        #[cfg(not(loom))]
        self.inner.register(waker);
        #[cfg(loom)]
        self.inner.register_by_ref(waker);
    }

    /// Wakes and removes the stored waker, if any.
    pub(crate) fn wake(&self) {
        self.inner.wake();
    }
}

impl std::fmt::Debug for AtomicWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtomicWaker")
    }
}
