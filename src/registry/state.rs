//! A task cell's state word: one bit per flag, the outcome, the watch and
//! the re-delivery count in one `u64`, read and written through [`Snapshot`]
//! (as tokio's `runtime/task/state.rs`).

use crate::task::TaskOutcome;

/// Which scope's cancellation ends a task at its next poll; kept in the
/// state word (two bits), so the task's future carries nothing for it and
/// its poll reads it in the same load as the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Watch {
    /// Its tracker's scope (a group's plain `spawn`).
    Tracker = 0,
    /// Its own scope, kept in its cell (a map's tasks).
    Own = 1,
    /// None: the task was handed its scope and decides (cooperative).
    Nothing = 2,
    /// A blocking closure (`spawn_blocking`): never polled, so never woken
    /// nor re-delivered to; its scope, if it has one, is its delivery, and
    /// it cannot be aborted once it runs (DESIGN property 10).
    Blocking = 3,
}

// ===== the state word =====

/// A wake was issued since the task's last poll began (invariant 2).
pub(super) const SCHEDULED: u64 = 1 << 0;
/// The task's future is gone and its entry removed (invariant 1).
pub(super) const ENDED: u64 = 1 << 1;
/// A canceller started the ladder for this task (`TaskMap::is_closing`).
pub(super) const CLOSING: u64 = 1 << 2;
/// The task was escalated: its hook was started (it may still run, see
/// `HOOK_RUNNING`) and its next poll ends it as aborted; set once.
pub(super) const ESCALATED: u64 = 1 << 3;
/// The task outlived escalation and abort grace: it is reported stuck.
pub(super) const STUCK: u64 = 1 << 4;
/// A canceller made the task's first delivery (at most one per task, whatever
/// number of cancel paths reach it: group, parent scope, key, replacement).
pub(super) const DELIVERED: u64 = 1 << 5;
/// A poll that began after `DELIVERED` was set returned `Pending`, and no poll
/// or wake came since: the task saw the cancellation and parked again, so a
/// re-delivery may wake it (invariant 3). Never set while a poll runs (the
/// poll's start clears it), never set without `DELIVERED`.
pub(super) const PARKED: u64 = 1 << 6;
/// This one task was asked to cancel (`TaskHandle::cancel`); set once, read
/// by the task's next poll, which ends a plain task or starts the task's
/// ladder.
pub(super) const CANCEL_REQUESTED: u64 = 1 << 7;
/// Outcome code, written together with `ENDED` (never without it).
pub(super) const OUTCOME_SHIFT: u32 = 8;
pub(super) const OUTCOME_MASK: u64 = 0b111 << OUTCOME_SHIFT;
/// The task's [`Watch`], written at creation and never changed (two bits).
pub(super) const WATCH_SHIFT: u32 = 12;
pub(super) const WATCH_MASK: u64 = 0b11 << WATCH_SHIFT;
/// The task's escalation hook was started and has not returned yet (set
/// only with `ESCALATED`; cleared by whoever runs the hook).
pub(super) const HOOK_RUNNING: u64 = 1 << 14;
/// Re-deliveries made so far (invariant 3): the whole high half, so every
/// `u32` limit fits and the count never wraps ([`Snapshot::redelivered`]
/// refuses to pass `u32::MAX`).
pub(super) const REDELIVERY_SHIFT: u32 = 32;

/// A decoded copy of a cell's state word, as tokio's `runtime/task/state.rs`
/// `Snapshot`: every read of the word goes through one, and every
/// transition is a `#[must_use]` method that returns the next word (or
/// `None` when the transition is not allowed), so a field that cannot hold
/// its range cannot be written and a computed transition cannot be dropped
/// by mistake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot(pub(super) u64);

impl Snapshot {
    /// A new task's word: scheduled (its first poll is on its way), with its
    /// `watch`.
    pub(super) fn new(watch: Watch) -> Self {
        Snapshot(SCHEDULED | ((watch as u64) << WATCH_SHIFT))
    }

    pub(super) fn has(self, bit: u64) -> bool {
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

    /// What the task's poll treats as its cancellation, given at insertion.
    pub(crate) fn watch(self) -> Watch {
        match (self.0 & WATCH_MASK) >> WATCH_SHIFT {
            0 => Watch::Tracker,
            1 => Watch::Own,
            2 => Watch::Nothing,
            _ => Watch::Blocking,
        }
    }

    /// Whether the task is a blocking closure ([`Watch::Blocking`]).
    pub(crate) fn is_blocking(self) -> bool {
        self.watch() == Watch::Blocking
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
    pub(super) fn delivered(self) -> Option<Snapshot> {
        (!self.has(DELIVERED | ENDED)).then_some(Snapshot(self.0 | DELIVERED | SCHEDULED))
    }

    /// A counted re-delivery: only from `PARKED` (not scheduled, not ended),
    /// only while fewer than `limit` were made, and never past `u32::MAX`
    /// (invariant 3). Clears `PARKED`, sets `SCHEDULED`, counts one.
    #[must_use]
    pub(super) fn redelivered(self, limit: u32) -> Option<Snapshot> {
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
    pub(super) fn ended(self, outcome: TaskOutcome) -> Snapshot {
        debug_assert!(!self.is_ended(), "a task ends once");
        Snapshot((self.0 & !OUTCOME_MASK) | ENDED | outcome_code(outcome))
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
            .field("watch", &self.watch())
            .field("redeliveries", &self.redeliveries())
            .finish()
    }
}

/// The outcome's code in the state word (decoded by [`Snapshot::outcome`]).
fn outcome_code(outcome: TaskOutcome) -> u64 {
    (match outcome {
        TaskOutcome::Completed => 1,
        TaskOutcome::Cancelled => 2,
        TaskOutcome::Aborted => 3,
        TaskOutcome::Panicked => 4,
        // A verdict of the ladder, never an end: recorded as an abort.
        TaskOutcome::Stuck => 3,
    }) << OUTCOME_SHIFT
}
