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
//! escalation's wake. A slot nothing empties cannot lose a waker.) The
//! slot needs no lock nor `Once` of its own: the first poll writes it before
//! its `fetch_and` clears `SCHEDULED`, every cell starts `SCHEDULED`, and a
//! library wake reads it only after its read-modify-write of the state word
//! saw the bit clear, so the write happens before every such read (the
//! crate's one `unsafe`, which the loom models check through loom's
//! `UnsafeCell`).
//!
//! A blocking closure (`Watch::Blocking`) is never polled: its cell stays
//! `SCHEDULED` with an empty slot, so no library wake ever reaches it, its
//! first delivery is counted without a wake, and it never parks, so it is
//! never re-delivered to.
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
//!    ([`Snapshot::redelivered`](state::Snapshot::redelivered), checked, never wrapping). A re-delivery is
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
//! and woken or dropped after it is released ([`AfterUnlock`](crate::sync::AfterUnlock)); keys live in
//! `std::sync::Arc`s, so the lock only moves and counts references, and a
//! removed key is dropped after it, once every waiter has been woken. A key's
//! `Hash` runs before the lock; only its `Eq` runs under it, in a lookup that
//! comes before any write, so a panic there fails one call and changes
//! nothing (invariant 4).
//!
//! Waiter registrations (`join`, `join_next`, the ladder's waits) are
//! generation-checked [`WaitList`](crate::wait_list::WaitList) keys, so a waiter that was woken but has not
//! re-polled yet can never overwrite a later waiter's registration.
//!
//! # Layout
//!
//! One concept per file, imports one way: `state` (the state word and its
//! decoding [`Snapshot`](state::Snapshot)) ← `cell` (one task's [`TaskCell`]: its wakes and
//! poll bookkeeping) ← `set` (the [`Registry`]: live entries, the key index,
//! waits, the outcome log) ← `guard` (the [`EntryGuard`] that prunes an
//! entry); `counts` holds the counters both feed.

pub(crate) mod cell;
mod counts;
mod guard;
mod set;
pub(crate) mod state;
#[cfg(all(test, not(loom)))]
mod tests;

pub(crate) use crate::task::{TaskId, TaskOutcome};
pub(crate) use cell::TaskCell;
pub(crate) use counts::LadderCounts;
pub(crate) use guard::{EntryGuard, HoldsRegistry};
pub(crate) use set::{Inserted, LiveEntry, Registry};
pub(crate) use state::Watch;
