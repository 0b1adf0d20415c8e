//! [`TaskCell`]: the shared state of one tracked task, and every library
//! wake of it (delivery, re-delivery, escalation), each claimed by one
//! read-modify-write of its state word (registry invariants 1, 2, 3, 5).

// The crate's one `unsafe`: the waker slot (see `TaskCell::waker`). A
// `OnceLock` there cost 71 instructions per spawned task in callgrind
// (spawn + join, current_thread: 127.6 M against 124.8 M for 40,000 tasks)
// and 8 bytes per pending task (the cell is 64 bytes instead of 72); the
// loom models check every access of the slot under `--cfg loom`.
#![allow(unsafe_code)]

use std::task::Waker;

use super::state::*;
use crate::sync::{AtomicU64, Ordering, UnsafeCell};
use crate::task::{TaskId, TaskOutcome};

// ===== impl TaskCell =====

// SAFETY: every field but `waker` is `Send + Sync` when `T` is; the waker
// slot's accesses are ordered by the state word (see its doc), and a `Waker`
// is `Send + Sync`.
unsafe impl<T: Send> Send for TaskCell<T> {}
unsafe impl<T: Sync> Sync for TaskCell<T> {}

/// The shared state of one tracked task; `meta` is the tokio layer's data.
pub(crate) struct TaskCell<T> {
    pub(crate) id: TaskId,
    /// The state word, read and written only through [`Snapshot`].
    state: AtomicU64,
    /// The runtime task's own waker, for the library's wakes: written once,
    /// by the first poll, before that poll clears `SCHEDULED`, and never
    /// changed nor taken out after (invariant 2). A tracked future is polled
    /// only by the tokio task it was spawned as, whose waker wakes that task
    /// for as long as it lives, so the first one serves for good.
    ///
    /// Ordered by the state word, not by a lock or a `Once`: the slot is
    /// read by a library wake only after that wake's read-modify-write saw
    /// `SCHEDULED` clear, which the first poll's `fetch_and` (AcqRel) did
    /// after the write; every cell starts `SCHEDULED`. So the write happens
    /// before every read but the poller's own, and the loom models check it
    /// (loom's `UnsafeCell` under `--cfg loom`).
    waker: UnsafeCell<Option<Waker>>,
    pub(crate) meta: T,
}

impl<T> TaskCell<T> {
    /// A new task's cell: scheduled (its first poll is on its way).
    pub(super) fn new(id: TaskId, watch: Watch, meta: T) -> Self {
        TaskCell {
            id,
            state: AtomicU64::new(Snapshot::new(watch).0),
            waker: UnsafeCell::new(None),
            meta,
        }
    }

    /// The state word now. Acquire: pairs with the Release half of whichever
    /// transition wrote it, so what the writer published before (a cancelled
    /// flag, an escalation) is visible with the bits.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot(self.state.load(Ordering::Acquire))
    }

    /// A read-modify-write through `step`, which sees the current word and
    /// returns the next one or `None` (nothing written). Returns the word
    /// before the write and whether it happened.
    pub(super) fn transition(
        &self,
        step: impl Fn(Snapshot) -> Option<Snapshot>,
    ) -> Result<Snapshot, Snapshot> {
        let mut cur = self.snapshot();
        loop {
            let Some(next) = step(cur) else {
                return Err(cur);
            };
            // AcqRel, invariant 2: Release publishes the caller's prior
            // writes to the poll that reads the bits next; Acquire sees the
            // writes of the transition it replaces.
            match self.state.compare_exchange_weak(
                cur.0,
                next.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(cur),
                Err(actual) => cur = Snapshot(actual),
            }
        }
    }

    /// Sets `bit`, returning the word before.
    pub(super) fn set(&self, bit: u64) -> Snapshot {
        // AcqRel as in `transition`.
        Snapshot(self.state.fetch_or(bit, Ordering::AcqRel))
    }

    /// Start of a poll of the task: at the first poll, store the task's waker;
    /// after a library wake (or at the first poll), clear `SCHEDULED` (and
    /// `PARKED`: the task is running). The order matters: a wake that sees the bit
    /// clear must find the waker. An ordinary poll (nothing set) costs one
    /// load.
    #[inline]
    pub(crate) fn begin_poll(&self, waker: &Waker) -> PollStart {
        let mut prev = self.snapshot();
        if prev.0 & (SCHEDULED | PARKED) != 0 {
            // SAFETY: only a poll reads the slot without the ordering of
            // the state word, and polls of one task do not overlap; a wake
            // reads it only once `SCHEDULED` was seen clear (see `waker`).
            if prev.is_scheduled() && self.waker.with(|w| unsafe { (*w).is_none() }) {
                // The first poll (invariant 2), the slot's one write: no wake
                // reads it before the `fetch_and` below clears `SCHEDULED`.
                // Cloned here, under no lock.
                let fresh = waker.clone();
                // SAFETY: as above; nothing else writes.
                self.waker.with_mut(|w| unsafe { *w = Some(fresh) });
            }
            // AcqRel, invariant 2: Acquire pairs with the Release half of the
            // wake that set the bit, so this poll sees what the canceller
            // published (the cancelled flag, the escalation) before waking.
            prev = Snapshot(
                self.state
                    .fetch_and(!(SCHEDULED | PARKED), Ordering::AcqRel),
            );
        }
        PollStart {
            escalated: prev.is_escalated(),
            delivered: prev.is_delivered(),
            cancel_requested: prev.is_cancel_requested(),
            closing: prev.is_closing(),
            watch: prev.watch(),
        }
    }

    /// Asks this one task to cancel; `true` the first time, for a task that
    /// has not ended. The caller then wakes it
    /// ([`deliver_or_schedule`](Self::deliver_or_schedule)).
    pub(crate) fn request_cancel(&self) -> bool {
        // Release publishes the caller's prior writes (the task's own scope
        // cancelled) with the bit, as a wake does (invariant 2).
        let prev = self.set(CANCEL_REQUESTED);
        !prev.is_cancel_requested() && !prev.is_ended()
    }

    /// End of a poll that returned `Pending` and began with
    /// [`PollStart::delivered`]: the task parked again after seeing the
    /// cancellation, so the ladder may re-deliver to it (invariant 3).
    pub(crate) fn parked_after_delivery(&self) {
        // Release pairs with the Acquire of `redeliver`'s read: nothing to
        // publish but the bit itself; a wake that came meanwhile set
        // `SCHEDULED`, which `redeliver` checks in the same read.
        self.state.fetch_or(PARKED, Ordering::Release);
    }

    /// Wakes the runtime task by reference: the waker stays in its slot.
    fn wake(&self) {
        // SAFETY: called only after a read-modify-write of the state word
        // saw `SCHEDULED` clear (or for a blocking closure, whose slot is
        // never written): the first poll's write happened before (see
        // `waker`).
        self.waker.with(|w| {
            if let Some(waker) = unsafe { &*w } {
                waker.wake_by_ref();
            }
        });
    }

    /// A library wake: wakes the task unless the library already woke it since
    /// its last poll began, or it ended. Returns whether a wake was issued.
    pub(crate) fn schedule(&self) -> bool {
        let prev = self.set(SCHEDULED);
        if prev.is_scheduled() || prev.is_ended() {
            return false;
        }
        self.wake();
        true
    }

    /// The first delivery of cancellation: like [`schedule`](Self::schedule),
    /// but once per task. Returns whether a wake was issued (not when the task
    /// was already scheduled: it will see the cancel at that poll).
    pub(crate) fn deliver(&self) -> bool {
        self.try_deliver().unwrap_or(false)
    }

    /// A per-task cancel's wake ([`request_cancel`](Self::request_cancel)
    /// returned `true`): the first delivery if none was made yet, else one
    /// plain wake, so that a task some other cancel already reached (and that
    /// parked again since) still gets the poll that starts its own ladder.
    /// Once per task, as the request is.
    pub(crate) fn deliver_or_schedule(&self) -> bool {
        self.try_deliver().unwrap_or_else(|| self.schedule())
    }

    /// The first delivery, if none was made and the task has not ended:
    /// `Some(woken)`; `None` otherwise.
    fn try_deliver(&self) -> Option<bool> {
        let prev = self.transition(Snapshot::delivered).ok()?;
        // A blocking closure is never woken (it has no waker, and stays
        // `SCHEDULED`): its scope is its delivery, counted as one.
        let woken = !prev.is_scheduled() || prev.is_blocking();
        if woken {
            self.wake();
        }
        Some(woken)
    }

    /// A counted re-delivery: like [`schedule`](Self::schedule), but only to a
    /// task that parked again after seeing the cancellation (`PARKED`), and at
    /// most `limit` times over the task's life (invariant 3).
    pub(crate) fn redeliver(&self, limit: u32) -> bool {
        if self.transition(|s| s.redelivered(limit)).is_err() {
            return false;
        }
        self.wake();
        true
    }

    /// Marks the task escalated; `true` the first time, so the hook runs
    /// once.
    pub(crate) fn mark_escalated(&self) -> bool {
        !self.set(ESCALATED).is_escalated()
    }

    /// The escalation hook was started (by the one caller that won
    /// [`mark_escalated`](Self::mark_escalated)) and has not returned yet.
    pub(crate) fn mark_hook_running(&self) {
        self.set(HOOK_RUNNING);
    }

    /// The escalation hook returned (or panicked).
    pub(crate) fn hook_returned(&self) {
        // Release: whoever sees the bit clear sees what the hook did.
        self.state.fetch_and(!HOOK_RUNNING, Ordering::Release);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.snapshot().is_closing()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.snapshot().is_ended()
    }

    pub(crate) fn is_stuck(&self) -> bool {
        let s = self.snapshot();
        s.is_stuck() && !s.is_ended()
    }

    pub(crate) fn redeliveries(&self) -> u32 {
        self.snapshot().redeliveries()
    }

    /// The outcome once ended; `Stuck` if still alive and declared stuck.
    pub(crate) fn outcome(&self) -> Option<TaskOutcome> {
        let s = self.snapshot();
        if s.is_ended() {
            s.outcome()
        } else if s.is_stuck() {
            Some(TaskOutcome::Stuck)
        } else {
            None
        }
    }
}

impl<T> std::fmt::Debug for TaskCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCell")
            .field("id", &self.id)
            .field("state", &self.snapshot())
            .finish()
    }
}

/// What the start of a poll learned from the cell.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollStart {
    /// The task was escalated: it must end now, as aborted.
    pub(crate) escalated: bool,
    /// The first delivery came before this poll: if it returns `Pending`, call
    /// [`TaskCell::parked_after_delivery`].
    pub(crate) delivered: bool,
    /// This one task was asked to cancel ([`TaskCell::request_cancel`]).
    pub(crate) cancel_requested: bool,
    /// A ladder already runs (or ran) for this task (`CLOSING`).
    pub(crate) closing: bool,
    /// What this task's poll treats as its cancellation, read in the same
    /// load as the flags.
    pub(crate) watch: Watch,
}
