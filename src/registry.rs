//! Tracked task entries, runtime-free: the registry behind `TaskGroup` and
//! `TaskMap`, the prune-on-completion guard, and the delivery rule.
//!
//! Each tracked task has a [`TaskCell`] shared by three parties: the registry
//! entry, the task's own wrapper future (through its [`EntryGuard`]), and
//! cancellers. The guard lives inside the spawned future, so the entry is removed
//! by the task itself whenever its future goes away (completion, panic, cancel,
//! abort, runtime shutdown): nothing scans or polls.
//!
//! # Delivery
//!
//! The task's own future is polled with the runtime's waker: the library does
//! not interpose on the task's wakes, so a tracked task pays nothing per wake
//! of its own I/O. The cell keeps the runtime waker in a slot for the
//! library's own wakes (delivery, re-delivery, escalation).
//!
//! The cell's `SCHEDULED` bit says "the library woke the task (or spawned it)
//! and no poll began since". The library wakes go through
//! [`TaskCell::schedule`], which sets the bit and wakes the runtime task only
//! if the bit was clear. So a task the library already woke and that has not
//! been polled since is never woken again by it (as Trio, one abort attempt
//! per blocking call). The slot is written once, by the task's first poll, and
//! never emptied: a library wake wakes it by reference, so no ordinary poll
//! writes it. (An earlier slot was emptied by each wake and refilled by the
//! poll after it; the loom ladder models found that a poll between a wake's
//! claim and its take left the slot empty with `SCHEDULED` clear, losing
//! escalation's wake. A slot nothing empties cannot lose a waker.)
//!
//! A re-delivery needs more: the `PARKED` bit, set only when a poll that
//! *began after the first delivery* returned `Pending`, and cleared when the
//! next poll begins. So a re-delivery reaches only a task that saw the
//! cancellation and parked again, ignoring it (Trio's rule); a task not yet
//! polled, or in the middle of the poll that ends it, is never re-delivered
//! to, and 10,000 tasks that end on their first delivery cost no re-delivery
//! however long the scheduler takes to reach them or to finish their polls.
//!
//! # Invariants
//!
//! 1. `ENDED` is set exactly once, by the guard, under the registry lock, in the
//!    same critical section that removes the entry. A snapshot taken under the
//!    lock ([`Registry::pending`]) never holds an ended task, and a cell that is
//!    `ENDED` is never woken by a canceller ([`TaskCell::redeliver`] checks it in
//!    the same atomic read-modify-write that claims the wake).
//! 2. `SCHEDULED` is cleared only by the task's own poll ([`TaskCell::begin_poll`])
//!    and set only by [`TaskCell::schedule`] / [`TaskCell::deliver`] /
//!    [`TaskCell::redeliver`], all read-modify-writes of one atomic, so they
//!    are totally ordered: a wake either precedes the clearing (and the poll
//!    that follows sees whatever the waker published before it) or follows it
//!    (and wakes the task). A poll that reads the bit clear skips the clearing;
//!    a wake that sets it after that read also wakes the runtime task, whose
//!    next poll clears it. A new cell is `SCHEDULED` (its first poll is on
//!    its way), and that poll stores the task's waker before it clears the
//!    bit; the slot is never emptied. So every wake that finds the bit clear
//!    (the only ones that wake) finds the waker, and sees it through the
//!    Acquire half of its read-modify-write.
//! 3. The re-delivery count of a cell never exceeds the limit passed to
//!    [`TaskCell::redeliver`], whatever number of ladders run over the cell,
//!    for every `u32` limit: the count is the high 32 bits of the state word,
//!    compared with the limit and incremented in one compare-and-swap
//!    ([`Snapshot::redelivered`], checked, never wrapping). A re-delivery is
//!    claimed only from `PARKED` and clears it, in the same read-modify-write
//!    that sets `SCHEDULED`.
//! 4. A key maps to the entry that was inserted last under it; removing an entry
//!    removes the key only if it still maps to that entry, so an old task's end
//!    never removes a newer task under the same key. The index finds an entry
//!    to remove by the key's hash stored at insertion and the entry's slot
//!    (as tokio-util's `JoinMap`, by hash and id), so a removal runs no user
//!    code and the index and the slab change together or not at all.
//! 5. Every library wake of a task is claimed by one read-modify-write of its
//!    state word, and each kind is bounded per task: the first delivery
//!    (`DELIVERED`, once), a per-task cancel's wake (`CANCEL_REQUESTED`,
//!    once), re-deliveries (invariant 3), escalation's (`ESCALATED`, once).
//!    So a task is woken by the library at most `limit + 3` times.
//!
//! # Deadlock safety
//!
//! One lock (the registry's). Under it nothing of a user's is cloned, dropped
//! or called (the rule of `crate::sync`): wakers are cloned before it is taken
//! and woken or dropped after it is released ([`AfterUnlock`]); keys live in
//! `std::sync::Arc`s, so the lock only moves and counts references, and a
//! removed key is dropped after it, once every waiter has been woken. A key's
//! `Hash` runs before the lock; only its `Eq` runs under it, in a lookup that
//! comes before any write, so a panic there fails one call and changes
//! nothing (invariant 4).
//!
//! Waiter registrations (`join`, `join_next`, the ladder's waits) are
//! generation-checked [`WaitList`] keys, so a waiter that was woken but has not
//! re-polled yet can never overwrite a later waiter's registration.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::OnceLock;
use std::task::{Poll, Waker};

use hashbrown::HashTable;
use slab::Slab;

use crate::sync::{AfterUnlock, Arc, AtomicU64, Mutex, Ordering, lock};
use crate::wait_list::{WaitKey, WaitList};

/// A key as the registry holds it: shared between the entry and the key index
/// without cloning the user's value (a `std` `Arc`: keys are not modelled).
pub(crate) type SharedKey<K> = std::sync::Arc<K>;

/// A new task's guard, and the task that held its key before (still alive).
pub(crate) type Inserted<T, K, O> = (EntryGuard<T, K, O>, Option<Arc<TaskCell<T>>>);

/// A live task with its key, as [`Registry::pending_keyed`] lists them.
pub(crate) type KeyedCell<T, K> = (Arc<TaskCell<T>>, Option<SharedKey<K>>);

// ===== the state word =====

/// A wake was issued since the task's last poll began (invariant 2).
const SCHEDULED: u64 = 1 << 0;
/// The task's future is gone and its entry removed (invariant 1).
const ENDED: u64 = 1 << 1;
/// A canceller started the ladder for this task (`TaskMap::is_closing`).
const CLOSING: u64 = 1 << 2;
/// The task was escalated: its hook was started (it may still run, see
/// `HOOK_RUNNING`) and its next poll ends it as aborted; set once.
const ESCALATED: u64 = 1 << 3;
/// The task outlived escalation and abort grace: it is reported stuck.
const STUCK: u64 = 1 << 4;
/// A canceller made the task's first delivery (at most one per task, whatever
/// number of cancel paths reach it: group, parent scope, key, replacement).
const DELIVERED: u64 = 1 << 5;
/// A poll that began after `DELIVERED` was set returned `Pending`, and no poll
/// or wake came since: the task saw the cancellation and parked again, so a
/// re-delivery may wake it (invariant 3). Never set while a poll runs (the
/// poll's start clears it), never set without `DELIVERED`.
const PARKED: u64 = 1 << 6;
/// This one task was asked to cancel (`TaskHandle::cancel`); set once, read
/// by the task's next poll, which ends a plain task or starts the task's
/// ladder.
const CANCEL_REQUESTED: u64 = 1 << 7;
/// Outcome code, written together with `ENDED` (never without it).
const OUTCOME_SHIFT: u32 = 8;
const OUTCOME_MASK: u64 = 0b111 << OUTCOME_SHIFT;
/// The owner's constant (the tokio layer's spawn mode), written at creation
/// and never changed: two bits, so a tag that does not fit cannot be made
/// ([`Snapshot::new`] checks it).
const TAG_SHIFT: u32 = 12;
const TAG_MASK: u64 = 0b11 << TAG_SHIFT;
/// The largest tag a cell can hold.
pub(crate) const MAX_TAG: u8 = 0b11;
/// The task's escalation hook was started and has not returned yet (set
/// only with `ESCALATED`; cleared by whoever runs the hook).
const HOOK_RUNNING: u64 = 1 << 14;
/// Re-deliveries made so far (invariant 3): the whole high half, so every
/// `u32` limit fits and the count never wraps ([`Snapshot::redelivered`]
/// refuses to pass `u32::MAX`).
const REDELIVERY_SHIFT: u32 = 32;

/// A decoded copy of a cell's state word, as tokio's `runtime/task/state.rs`
/// `Snapshot`: every read of the word goes through one, and every
/// transition is a `#[must_use]` method that returns the next word (or
/// `None` when the transition is not allowed), so a field that cannot hold
/// its range cannot be written and a computed transition cannot be dropped
/// by mistake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot(u64);

impl Snapshot {
    /// A new task's word: scheduled (its first poll is on its way), with the
    /// owner's `tag`.
    ///
    /// # Panics
    ///
    /// If `tag > MAX_TAG`: a bug of the owner, caught at its first spawn.
    fn new(tag: u8) -> Self {
        assert!(tag <= MAX_TAG, "cancel_scope: a cell tag holds 2 bits");
        Snapshot(SCHEDULED | (u64::from(tag) << TAG_SHIFT))
    }

    fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }

    pub(crate) fn is_scheduled(self) -> bool {
        self.has(SCHEDULED)
    }

    pub(crate) fn is_ended(self) -> bool {
        self.has(ENDED)
    }

    pub(crate) fn is_closing(self) -> bool {
        self.has(CLOSING)
    }

    pub(crate) fn is_escalated(self) -> bool {
        self.has(ESCALATED)
    }

    pub(crate) fn is_stuck(self) -> bool {
        self.has(STUCK)
    }

    pub(crate) fn is_delivered(self) -> bool {
        self.has(DELIVERED)
    }

    pub(crate) fn is_parked(self) -> bool {
        self.has(PARKED)
    }

    pub(crate) fn is_cancel_requested(self) -> bool {
        self.has(CANCEL_REQUESTED)
    }

    pub(crate) fn is_hook_running(self) -> bool {
        self.has(HOOK_RUNNING)
    }

    /// The owner's constant given at insertion (see [`PollStart::tag`]).
    pub(crate) fn tag(self) -> u8 {
        ((self.0 & TAG_MASK) >> TAG_SHIFT) as u8
    }

    /// Re-deliveries made so far.
    pub(crate) fn redeliveries(self) -> u32 {
        (self.0 >> REDELIVERY_SHIFT) as u32
    }

    /// How the task ended, once `ENDED` is set.
    pub(crate) fn outcome(self) -> Option<TaskOutcome> {
        Some(match (self.0 & OUTCOME_MASK) >> OUTCOME_SHIFT {
            1 => TaskOutcome::Completed,
            2 => TaskOutcome::Cancelled,
            3 => TaskOutcome::Aborted,
            4 => TaskOutcome::Panicked,
            _ => return None,
        })
    }

    /// The first delivery: `None` if the task was delivered to already or
    /// ended (at most one per task).
    #[must_use]
    fn delivered(self) -> Option<Snapshot> {
        (!self.has(DELIVERED | ENDED)).then_some(Snapshot(self.0 | DELIVERED | SCHEDULED))
    }

    /// A counted re-delivery: only from `PARKED` (not scheduled, not ended),
    /// only while fewer than `limit` were made, and never past `u32::MAX`
    /// (invariant 3). Clears `PARKED`, sets `SCHEDULED`, counts one.
    #[must_use]
    fn redelivered(self, limit: u32) -> Option<Snapshot> {
        if self.0 & (SCHEDULED | ENDED | PARKED) != PARKED || self.redeliveries() >= limit {
            return None;
        }
        // Checked: `redeliveries() < limit <= u32::MAX`, so this cannot
        // fail, and if it ever could, no wrapped count would be written.
        let count = self.redeliveries().checked_add(1)?;
        let flags = (self.0 | SCHEDULED) & !PARKED & ((1 << REDELIVERY_SHIFT) - 1);
        Some(Snapshot(flags | (u64::from(count) << REDELIVERY_SHIFT)))
    }

    /// The end: `ENDED` and the outcome code, in one write (invariant 1).
    #[must_use]
    fn ended(self, outcome: TaskOutcome) -> Snapshot {
        debug_assert!(!self.is_ended(), "a task ends once");
        Snapshot((self.0 & !OUTCOME_MASK) | ENDED | outcome.code())
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("scheduled", &self.is_scheduled())
            .field("ended", &self.is_ended())
            .field("closing", &self.is_closing())
            .field("delivered", &self.is_delivered())
            .field("parked", &self.is_parked())
            .field("cancel_requested", &self.is_cancel_requested())
            .field("escalated", &self.is_escalated())
            .field("hook_running", &self.is_hook_running())
            .field("stuck", &self.is_stuck())
            .field("outcome", &self.outcome())
            .field("tag", &self.tag())
            .field("redeliveries", &self.redeliveries())
            .finish()
    }
}

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

impl TaskOutcome {
    fn code(self) -> u64 {
        (match self {
            TaskOutcome::Completed => 1,
            TaskOutcome::Cancelled => 2,
            TaskOutcome::Aborted => 3,
            TaskOutcome::Panicked => 4,
            // A verdict of the ladder, never an end: recorded as an abort.
            TaskOutcome::Stuck => 3,
        }) << OUTCOME_SHIFT
    }
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

// ===== impl TaskCell =====

/// The shared state of one tracked task; `meta` is the tokio layer's data.
pub(crate) struct TaskCell<T> {
    pub(crate) id: TaskId,
    /// The state word, read and written only through [`Snapshot`].
    state: AtomicU64,
    /// The runtime task's own waker, for the library's wakes: stored by the
    /// first poll, never taken out (invariant 2). A tracked future is polled
    /// only by the tokio task it was spawned as, whose waker wakes that task
    /// for as long as it lives, so the first one serves for good. (A `std`
    /// `OnceLock` under loom too: the models check the state word that
    /// publishes it.)
    waker: OnceLock<Waker>,
    pub(crate) meta: T,
}

impl<T> TaskCell<T> {
    /// The state word now. Acquire: pairs with the Release half of whichever
    /// transition wrote it, so what the writer published before (a cancelled
    /// flag, an escalation) is visible with the bits.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot(self.state.load(Ordering::Acquire))
    }

    /// A read-modify-write through `step`, which sees the current word and
    /// returns the next one or `None` (nothing written). Returns the word
    /// before the write and whether it happened.
    fn transition(
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
    fn set(&self, bit: u64) -> Snapshot {
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
            if prev.is_scheduled() && self.waker.get().is_none() {
                // The first poll (invariant 2). Cloned here, under no lock.
                let _ = self.waker.set(waker.clone());
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
            tag: prev.tag(),
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
        if let Some(waker) = self.waker.get() {
            waker.wake_by_ref();
        }
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
        let woken = !prev.is_scheduled();
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
    /// The owner's constant given at insertion (the tokio layer's spawn
    /// mode), kept in the state word and read in the same load.
    pub(crate) tag: u8,
}

// ===== counters =====

/// LadderCounts of the ladder's own work (all `Relaxed`: they are statistics,
/// read as a snapshot that synchronizes with nothing). LadderCounts that change
/// with every spawn and end live under the registry lock instead
/// ([`TaskCounts`]), which both already take: no shared cache line is written
/// per task besides the lock's.
#[derive(Debug, Default)]
pub(crate) struct LadderCounts {
    pub(crate) deliveries: AtomicU64,
    pub(crate) redeliveries: AtomicU64,
    pub(crate) escalations: AtomicU64,
    /// Tasks that reaped a scoped child process and completed.
    pub(crate) processes: AtomicU64,
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

// ===== impl Registry =====

struct Entry<T, K> {
    cell: Arc<TaskCell<T>>,
    key: Option<SharedKey<K>>,
    /// The key's hash, computed once at insertion (before the lock): the
    /// entry leaves the index by this hash and its slot, never calling the
    /// user's `Hash` or `Eq` again (invariant 4).
    hash: u64,
}

/// One key of the index: the slot of the newest entry under it, with the
/// key's hash (the key itself is the entry's).
#[derive(Debug, Clone, Copy)]
struct KeySlot {
    hash: u64,
    slot: usize,
}

struct Inner<T, K> {
    entries: Slab<Entry<T, K>>,
    /// Key → slot of the newest entry under it (invariant 4); the key of a
    /// [`KeySlot`] is `entries[slot].key`.
    keys: HashTable<KeySlot>,
    /// Woken when `entries` becomes empty; a drained key reads as woken, so
    /// a waiter that saw the registry idle stays done (`poll_idle`).
    idle: WaitList,
    /// Woken when the task with this id ends: one list per waited-on task, so
    /// an end finds its waiters without scanning every other task's (mass
    /// per-key cancels stay O(n)).
    ended: HashMap<TaskId, WaitList>,
    /// Ends not yet taken by `poll_next_end`, when the owner records them.
    log: Option<VecDeque<(TaskId, TaskOutcome)>>,
    /// Woken when `log` grows or `entries` becomes empty.
    log_waiters: WaitList,
    counts: TaskCounts,
}

/// The set of live tracked tasks, optionally keyed.
pub(crate) struct Registry<T, K = ()> {
    inner: Mutex<Inner<T, K>>,
    /// Hashes keys outside the lock.
    hasher: RandomState,
    pub(crate) ladder: LadderCounts,
}

impl TaskId {
    /// A fresh, process-unique id.
    pub(crate) fn next() -> TaskId {
        // std atomic on purpose, see `crate::sync`.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        TaskId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl<T, K: Eq + Hash + Clone> Registry<T, K> {
    /// An empty registry; with `record_ends`, every end is queued for
    /// [`poll_next_end`](Self::poll_next_end) until taken.
    pub(crate) fn new(record_ends: bool) -> Self {
        Registry {
            inner: Mutex::new(Inner {
                entries: Slab::new(),
                keys: HashTable::new(),
                idle: WaitList::new(),
                ended: HashMap::new(),
                log: record_ends.then(VecDeque::new),
                log_waiters: WaitList::new(),
                counts: TaskCounts::default(),
            }),
            hasher: RandomState::new(),
            ladder: LadderCounts::default(),
        }
    }

    /// The slot `key` maps to; `Eq` runs under the lock, on the caller's
    /// thread, and a panic in it changes nothing.
    fn find(inner: &Inner<T, K>, hash: u64, key: &K) -> Option<usize> {
        inner
            .keys
            .find(hash, |ks| {
                inner.entries[ks.slot].key.as_deref() == Some(key)
            })
            .map(|ks| ks.slot)
    }

    /// Tracks a new task. With a key, the key now maps to it, and the task that
    /// held the key before (still alive, still tracked) is returned. The guard
    /// keeps a clone of `owner` (whatever holds this registry), so a task
    /// holds one reference to its tracker, not one per layer.
    #[cfg(test)]
    pub(crate) fn insert<O: HoldsRegistry<T, K>>(
        owner: &O,
        meta: T,
        key: Option<K>,
    ) -> Inserted<T, K, O> {
        Self::insert_as(owner, TaskId::next(), 0, meta, key)
    }

    /// As `insert` (the tests'), with an id made beforehand and the
    /// cell's `tag`.
    pub(crate) fn insert_as<O: HoldsRegistry<T, K>>(
        owner: &O,
        id: TaskId,
        tag: u8,
        meta: T,
        key: Option<K>,
    ) -> Inserted<T, K, O> {
        let this = owner.registry();
        let cell = Arc::new(TaskCell {
            id,
            // A new task is scheduled: its first poll is on its way.
            state: AtomicU64::new(Snapshot::new(tag).0),
            waker: OnceLock::new(),
            meta,
        });
        // Hashed and wrapped before the lock: a panicking `Hash` fails this
        // call with nothing changed, and under the lock only references are
        // counted.
        let hash = key.as_ref().map_or(0, |k| this.hasher.hash_one(k));
        let key = key.map(SharedKey::new);
        let mut guard = lock(&this.inner);
        let inner = &mut *guard;
        let slot = inner.entries.vacant_entry().key();
        // A slot is 4 bytes in every task's future (bytes per task); more
        // than 2^32 live tasks would need over a terabyte.
        let slot32 = u32::try_from(slot).expect("cancel_scope: more than 2^32 live tasks");
        // The lookup (the only user code here, `Eq`) comes before any write,
        // so a panic in it leaves the registry as it was.
        let taken = match &key {
            Some(k) => Self::find(inner, hash, k),
            None => None,
        };
        let replaced = match (&key, taken) {
            // A taken key keeps its index entry and points it at the new slot:
            // no key is dropped here (tokio-util's `duplicate_keys_drop`).
            (Some(_), Some(old)) => {
                let ks = inner
                    .keys
                    .find_mut(hash, |ks| ks.slot == old)
                    .expect("the index entry just found");
                ks.slot = slot;
                Some(inner.entries[old].cell.clone())
            }
            (Some(_), None) => {
                inner
                    .keys
                    .insert_unique(hash, KeySlot { hash, slot }, |ks| ks.hash);
                None
            }
            (None, _) => None,
        };
        inner.entries.insert(Entry {
            cell: cell.clone(),
            key,
            hash,
        });
        inner.counts.spawned += 1;
        drop(guard);
        let guard = EntryGuard {
            owner: owner.clone(),
            _key: std::marker::PhantomData,
            cell,
            slot: slot32,
            outcome: TaskOutcome::Aborted,
        };
        (guard, replaced)
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// A snapshot of the per-task counters, taken under the lock.
    pub(crate) fn task_counts(&self) -> TaskCounts {
        let inner = lock(&self.inner);
        TaskCounts {
            tracked: inner.entries.len() as u64,
            ..inner.counts
        }
    }

    /// The live tasks, as of now (invariant 1: none ended).
    pub(crate) fn pending(&self) -> Vec<Arc<TaskCell<T>>> {
        let inner = lock(&self.inner);
        inner.entries.iter().map(|(_, e)| e.cell.clone()).collect()
    }

    /// The live tasks with their keys.
    pub(crate) fn pending_keyed(&self) -> Vec<KeyedCell<T, K>> {
        let inner = lock(&self.inner);
        inner
            .entries
            .iter()
            .map(|(_, e)| (e.cell.clone(), e.key.clone()))
            .collect()
    }

    /// The task that `key` maps to. `Hash` runs before the lock, `Eq` under
    /// it; a panic in either fails this call and changes nothing.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<TaskCell<T>>> {
        let hash = self.hasher.hash_one(key);
        let inner = lock(&self.inner);
        Self::find(&inner, hash, key).map(|slot| inner.entries[slot].cell.clone())
    }

    /// The keys whose task satisfies `pred`, cloned after the lock.
    pub(crate) fn keys_where(&self, pred: impl Fn(&TaskCell<T>) -> bool) -> Vec<K> {
        let shared: Vec<SharedKey<K>> = {
            let inner = lock(&self.inner);
            inner
                .keys
                .iter()
                .map(|ks| &inner.entries[ks.slot])
                .filter(|e| pred(&e.cell))
                .filter_map(|e| e.key.clone())
                .collect()
        };
        shared.iter().map(|k| K::clone(k)).collect()
    }

    /// Ready once no task is tracked, or once the registry was idle at any
    /// moment since this waiter registered (as tokio-util's `TaskTracker::wait`,
    /// a waiter woken by idleness stays done even if a task is spawned before
    /// it re-polls). `key` keeps the registration across polls and must be
    /// passed to [`release_idle`](Self::release_idle).
    pub(crate) fn poll_idle(&self, waker: &Waker, key: &mut Option<WaitKey>) -> Poll<()> {
        let fresh = waker.clone();
        let mut after = AfterUnlock::new();
        let mut inner = lock(&self.inner);
        if inner.entries.is_empty() || key.is_some_and(|k| inner.idle.was_woken(k)) {
            after.drop_waker(inner.idle.remove(key));
            *key = None;
            after.drop_waker(Some(fresh));
            return Poll::Ready(());
        }
        after.drop_waker(inner.idle.register(key, fresh));
        Poll::Pending
    }

    /// Ready once `cell` has ended. `key` must be passed to
    /// [`release_ended`](Self::release_ended).
    pub(crate) fn poll_ended(
        &self,
        cell: &TaskCell<T>,
        waker: &Waker,
        key: &mut Option<WaitKey>,
    ) -> Poll<()> {
        let fresh = waker.clone();
        let mut after = AfterUnlock::new();
        let mut inner = lock(&self.inner);
        if cell.is_ended() {
            // `remove` already took and woke every waiter of this task.
            *key = None;
            after.drop_waker(Some(fresh));
            return Poll::Ready(());
        }
        let list = inner.ended.entry(cell.id).or_default();
        after.drop_waker(list.register(key, fresh));
        Poll::Pending
    }

    /// The next recorded end, oldest first; `Ready(None)` once nothing is
    /// recorded and no task is alive. `None` if ends are not recorded. `key`
    /// must be passed to [`release_next_end`](Self::release_next_end).
    pub(crate) fn poll_next_end(
        &self,
        waker: &Waker,
        key: &mut Option<WaitKey>,
    ) -> Option<Poll<Option<(TaskId, TaskOutcome)>>> {
        let fresh = waker.clone();
        let mut after = AfterUnlock::new();
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let log = inner.log.as_mut()?;
        let next = log.pop_front();
        if next.is_some() || inner.entries.is_empty() {
            after.drop_waker(inner.log_waiters.remove(key));
            after.drop_waker(Some(fresh));
            return Some(Poll::Ready(next));
        }
        after.drop_waker(inner.log_waiters.register(key, fresh));
        Some(Poll::Pending)
    }

    /// Marks a live task closing; `true` the first time. Under the lock, so
    /// the gauge and the bit change together and `remove` undoes both.
    pub(crate) fn mark_closing(&self, cell: &TaskCell<T>) -> bool {
        self.mark(cell, CLOSING, |t| &mut t.closing)
    }

    /// Marks a live task stuck; `true` the first time (see `mark_closing`).
    pub(crate) fn mark_stuck(&self, cell: &TaskCell<T>) -> bool {
        self.mark(cell, STUCK, |t| &mut t.stuck)
    }

    fn mark(&self, cell: &TaskCell<T>, bit: u64, gauge: fn(&mut TaskCounts) -> &mut u64) -> bool {
        let mut inner = lock(&self.inner);
        // Invariant 1: `ENDED` is only set under this lock, so it cannot
        // appear between this check and the `set`.
        if cell.is_ended() || cell.set(bit).has(bit) {
            return false;
        }
        *gauge(&mut inner.counts) += 1;
        true
    }

    /// Whether ends are recorded for `poll_next_end`.
    pub(crate) fn records_ends(&self) -> bool {
        lock(&self.inner).log.is_some()
    }

    /// Drops a registration made by `poll_next_end`.
    pub(crate) fn release_next_end(&self, key: &mut Option<WaitKey>) {
        if key.is_some() {
            let mut after = AfterUnlock::new();
            let mut inner = lock(&self.inner);
            after.drop_waker(inner.log_waiters.remove(key));
        }
    }

    /// Drops a registration made by `poll_idle`.
    pub(crate) fn release_idle(&self, key: &mut Option<WaitKey>) {
        if key.is_some() {
            let mut after = AfterUnlock::new();
            let mut inner = lock(&self.inner);
            after.drop_waker(inner.idle.remove(key));
        }
    }

    /// Drops a registration made by `poll_ended` for the task `id`.
    pub(crate) fn release_ended(&self, id: TaskId, key: &mut Option<WaitKey>) {
        if key.is_some() {
            let mut after = AfterUnlock::new();
            let mut inner = lock(&self.inner);
            if let Some(list) = inner.ended.get_mut(&id) {
                after.drop_waker(list.remove(key));
                if list.is_empty() {
                    inner.ended.remove(&id);
                }
            }
            *key = None;
        }
    }

    /// Removes the entry at `slot` (the task's end); returns whether the
    /// registry is now idle.
    fn remove(&self, slot: usize, cell: &TaskCell<T>, outcome: TaskOutcome) -> bool {
        // Declared before `after` and the guard, so dropped last: user keys
        // go once the lock is released and every waiter is woken.
        let entry: Entry<T, K>;
        let idle;
        let mut after = AfterUnlock::new();
        {
            let mut inner = lock(&self.inner);
            let inner = &mut *inner;
            entry = inner.entries.remove(slot);
            if entry.key.is_some() {
                // Invariant 4: by the stored hash and the slot, so no user
                // code runs here and the index and the slab change together.
                // Not found when a newer entry took the key over.
                if let Ok(ks) = inner.keys.find_entry(entry.hash, |ks| ks.slot == slot) {
                    ks.remove();
                }
            }
            // Invariant 1: in the same critical section as the removal.
            let prev = match cell.transition(|s| Some(s.ended(outcome))) {
                Ok(prev) | Err(prev) => prev,
            };
            // Gauges: the bits were set under this lock (`mark`).
            let counts = &mut inner.counts;
            if prev.is_stuck() {
                counts.stuck -= 1;
            }
            if prev.is_closing() {
                counts.closing -= 1;
            }
            *match outcome {
                TaskOutcome::Completed => &mut counts.completed,
                TaskOutcome::Cancelled => &mut counts.cancelled,
                TaskOutcome::Panicked => &mut counts.panicked,
                TaskOutcome::Aborted | TaskOutcome::Stuck => &mut counts.aborted,
            } += 1;
            idle = inner.entries.is_empty();
            if idle {
                after.wake_all(inner.idle.drain());
            }
            if let Some(log) = &mut inner.log {
                log.push_back((cell.id, outcome));
                after.wake_all(inner.log_waiters.drain());
            }
            // Checked first: hashing the id costs more than the rest of an
            // uncontended removal, and a waited-on end is rare.
            if !inner.ended.is_empty() {
                if let Some(mut list) = inner.ended.remove(&cell.id) {
                    after.wake_all(list.drain());
                }
            }
        }
        // Wakes first, then the user's keys (a panicking key `Drop` can no
        // longer cost a wakeup).
        drop(after);
        drop(entry);
        idle
    }
}

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
    owner: O,
    _key: std::marker::PhantomData<fn() -> K>,
    cell: Arc<TaskCell<T>>,
    slot: u32,
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn registry() -> Arc<Registry<(), &'static str>> {
        Arc::new(Registry::new(false))
    }

    #[test]
    fn a_task_ending_while_delivery_is_in_flight_is_skipped() {
        let reg = registry();
        let (guard, _) = Registry::insert(&reg, (), None);
        let snapshot = reg.pending(); // the canceller's view
        let cell = guard.cell().clone();
        cell.begin_poll(std::task::Waker::noop()); // polled: deliverable
        drop(guard); // ... but it ends before the canceller gets to it
        assert!(!snapshot[0].schedule(), "an ended task is never woken");
        assert!(!snapshot[0].redeliver(8));
        assert_eq!(cell.redeliveries(), 0);
        assert_eq!(reg.len(), 0);
        assert_eq!(cell.outcome(), Some(TaskOutcome::Aborted));
    }

    #[test]
    fn a_scheduled_task_is_not_woken_again_and_redelivery_is_capped() {
        let reg = registry();
        let (guard, _) = Registry::insert(&reg, (), None);
        let cell = guard.cell().clone();
        assert!(!cell.schedule(), "never polled: already scheduled");
        assert!(!cell.deliver(), "never polled: the delivery needs no wake");
        for round in 0..5 {
            let start = cell.begin_poll(std::task::Waker::noop());
            assert!(start.delivered);
            assert!(!cell.redeliver(3), "mid-poll: never re-delivered");
            cell.parked_after_delivery();
            assert_eq!(cell.redeliver(3), round < 3, "round {round}");
            assert!(!cell.redeliver(3), "woken, not polled since");
        }
        assert_eq!(cell.redeliveries(), 3);
    }

    #[test]
    fn only_a_task_that_parked_after_the_delivery_is_redelivered_to() {
        let reg = registry();
        let (guard, _) = Registry::insert(&reg, (), None);
        let cell = guard.cell().clone();
        // Polled and parked before any delivery.
        assert!(!cell.begin_poll(std::task::Waker::noop()).delivered);
        assert!(!cell.redeliver(8), "not delivered yet");
        assert!(cell.deliver());
        assert!(!cell.redeliver(8), "delivered, not polled since");
        // The poll that sees the cancel ends the task: never re-delivered.
        assert!(cell.begin_poll(std::task::Waker::noop()).delivered);
        assert!(!cell.redeliver(8), "in the poll that ends it");
        drop(guard);
        assert!(!cell.redeliver(8));
        assert_eq!(cell.redeliveries(), 0);
    }

    #[test]
    fn every_library_wake_of_a_cell_is_bounded_by_the_limit_plus_three() {
        use std::sync::atomic::{AtomicUsize as StdAtomic, Ordering::SeqCst};
        use std::task::Wake;
        struct Count(StdAtomic);
        impl Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, SeqCst);
            }
        }
        const LIMIT: u32 = 5;
        let count = std::sync::Arc::new(Count(StdAtomic::new(0)));
        let waker = Waker::from(count.clone());
        let reg = registry();
        let (guard, _) = Registry::insert(&reg, (), None);
        let cell = guard.cell().clone();
        let park = || {
            let start = cell.begin_poll(&waker);
            if start.delivered {
                cell.parked_after_delivery();
            }
        };
        park();
        // Every kind of wake, each tried more often than it may happen.
        for _ in 0..3 {
            cell.deliver();
            park();
        }
        for _ in 0..3 {
            if cell.request_cancel() {
                cell.deliver_or_schedule();
            }
            park();
        }
        for _ in 0..(2 * LIMIT) {
            cell.redeliver(LIMIT);
            park();
        }
        for _ in 0..3 {
            if cell.mark_escalated() {
                cell.schedule();
            }
            park();
        }
        assert_eq!(cell.redeliveries(), LIMIT);
        assert_eq!(count.0.load(SeqCst), LIMIT as usize + 3);
    }

    #[test]
    fn a_redelivery_count_holds_every_u32_and_leaves_the_flags_alone() {
        let near = Snapshot(
            Snapshot::new(MAX_TAG).0 & !SCHEDULED
                | DELIVERED
                | PARKED
                | CLOSING
                | (u64::from(u32::MAX - 1) << REDELIVERY_SHIFT),
        );
        let at_max = near.redelivered(u32::MAX).expect("one below the limit");
        assert_eq!(at_max.redeliveries(), u32::MAX);
        assert!(at_max.is_scheduled() && !at_max.is_parked());
        assert!(at_max.is_closing() && at_max.is_delivered());
        assert_eq!(at_max.tag(), MAX_TAG);
        // Parked again at the top: no limit lets the count wrap.
        let parked = Snapshot(at_max.0 & !SCHEDULED | PARKED);
        assert_eq!(parked.redelivered(u32::MAX), None);
        // A limit above 16 bits is a limit, not a wrap.
        let mid = Snapshot(PARKED | DELIVERED | (70_000 << REDELIVERY_SHIFT));
        assert_eq!(mid.redelivered(70_000), None);
        assert_eq!(
            mid.redelivered(70_001).map(Snapshot::redeliveries),
            Some(70_001)
        );
    }

    #[test]
    #[should_panic(expected = "a cell tag holds 2 bits")]
    fn a_tag_that_does_not_fit_cannot_be_written() {
        let _ = Snapshot::new(MAX_TAG + 1);
    }

    #[test]
    fn an_old_entry_never_removes_the_newer_one_under_its_key() {
        let reg = registry();
        let (old, replaced) = Registry::insert(&reg, (), Some("k"));
        assert!(replaced.is_none());
        let (new, replaced) = Registry::insert(&reg, (), Some("k"));
        assert_eq!(replaced.map(|c| c.id), Some(old.cell().id));
        drop(old);
        assert_eq!(reg.get(&"k").map(|c| c.id), Some(new.cell().id));
        drop(new);
        assert!(reg.get(&"k").is_none());
    }

    #[test]
    fn idle_and_ended_waiters_are_woken_once_by_the_end() {
        use std::sync::atomic::AtomicUsize as StdAtomic;
        use std::task::Wake;
        struct Count(StdAtomic);
        impl Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let count = std::sync::Arc::new(Count(StdAtomic::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let reg = registry();
        let (a, _) = Registry::insert(&reg, (), None);
        let (b, _) = Registry::insert(&reg, (), None);
        let (mut idle, mut ended) = (None, None);
        assert!(reg.poll_idle(&waker, &mut idle).is_pending());
        assert!(reg.poll_ended(a.cell(), &waker, &mut ended).is_pending());
        let a_cell = a.cell().clone();
        drop(a);
        assert_eq!(
            count.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "ended"
        );
        assert!(reg.poll_ended(&a_cell, &waker, &mut ended).is_ready());
        drop(b);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2, "idle");
        assert!(reg.poll_idle(&waker, &mut idle).is_ready());
        reg.release_idle(&mut idle);
        reg.release_ended(a_cell.id, &mut ended);
    }
}
