//! The operation language shared by the proptest state machine
//! (`tests/model.rs`), the fuzz target (`fuzz/fuzz_targets/ops.rs`) and the
//! corpus replay (`tests/fuzz_corpus.rs`). Bytes decode into it through
//! `arbitrary`; every field is small and interpreted modulo a bound, so any
//! byte string is a valid (and short-running) program.
//!
//! A program is a [`Setup`] (the case's `ShutdownPolicy` and how the group
//! is born) and a list of [`Op`]s.

use std::time::Duration;

use arbitrary::Arbitrary;
use cancel_scope::{Backoff, ShutdownPolicy};

/// A duration in paused-clock milliseconds: `0..=31`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct Ms(pub u8);

impl Ms {
    pub fn millis(self) -> u64 {
        u64::from(self.0 % 32)
    }
}

/// A policy duration: zero, a few paused-clock milliseconds (`1..=24`), or
/// `Duration::MAX` ("never").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Span {
    Zero,
    Small(u8),
    Max,
}

impl Span {
    /// The longest `Small` span: `grace + abort_grace` of two stays well
    /// under the driver's patience (`machine::PATIENCE`).
    pub const SMALL_MAX_MS: u64 = 24;

    pub fn get(self) -> Duration {
        match self {
            Span::Zero => Duration::ZERO,
            Span::Small(n) => Duration::from_millis(1 + u64::from(n) % Self::SMALL_MAX_MS),
            Span::Max => Duration::MAX,
        }
    }
}

/// A back-off multiplier: the edges of `u32` and the usual values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Factor {
    Zero,
    One,
    Two,
    Max,
}

impl Factor {
    pub fn get(self) -> u32 {
        match self {
            Factor::Zero => 0,
            Factor::One => 1,
            Factor::Two => 2,
            Factor::Max => u32::MAX,
        }
    }
}

/// What a case fixes before its first op: the policy of the group and of the
/// map (any value the types allow), and whether the group is built with an
/// already cancelled scope (`TaskGroup::with_scope(cancelled)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct Setup {
    pub max_redeliveries: u32,
    pub grace: Span,
    pub abort_grace: Span,
    pub initial: Span,
    pub max: Span,
    pub multiplier: Factor,
    pub born_cancelled: bool,
}

impl Default for Setup {
    /// A short ladder: 20 ms grace, 3 re-deliveries 1 ms doubling to 4 ms,
    /// 5 ms abort grace.
    fn default() -> Self {
        Setup {
            max_redeliveries: 3,
            grace: Span::Small(19),
            abort_grace: Span::Small(4),
            initial: Span::Small(0),
            max: Span::Small(3),
            multiplier: Factor::Two,
            born_cancelled: false,
        }
    }
}

impl Setup {
    /// Re-delivery rungs closer than this come too fast for a huge limit to be
    /// bounded by the program's clock (a zero back-off is 1 ns apart).
    const DENSE: Duration = Duration::from_millis(1);
    /// The limit of a policy with dense rungs: with 1 ns rungs a `u32::MAX`
    /// limit would be billions of rungs per ladder, bounded by nothing.
    const DENSE_LIMIT: u32 = 16;

    /// The case's policy. A back-off whose rungs can come closer than 1 ms
    /// gets its limit cut to [`Self::DENSE_LIMIT`]; with rungs at least 1 ms
    /// apart every `u32` limit is bounded by the grace and the clock.
    pub fn policy(&self) -> ShutdownPolicy {
        let backoff = Backoff {
            initial: self.initial.get(),
            max: self.max.get(),
            multiplier: self.multiplier.get(),
        };
        let dense = backoff.initial.min(backoff.max) < Self::DENSE;
        ShutdownPolicy {
            grace: self.grace.get(),
            max_redeliveries: if dense {
                self.max_redeliveries.min(Self::DENSE_LIMIT)
            } else {
                self.max_redeliveries
            },
            backoff,
            abort_grace: self.abort_grace.get(),
        }
    }
}

/// One of four keys of the `TaskMap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Arbitrary)]
pub struct Key(pub u8);

impl Key {
    pub fn get(self) -> u8 {
        self.0 % 4
    }
}

/// Picks one of the tasks spawned so far (modulo their number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct TaskRef(pub u8);

/// What a spawned task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Behaviour {
    /// Sleeps, then returns; dropped at its await on cancel.
    EndsAfter(Ms),
    /// Takes its scope and never looks at it: parks until aborted (or let go
    /// by the driver, where a ladder that never escalates must see it end).
    IgnoresCancel,
    /// Sleeps, then panics; dropped at its await on cancel.
    Panics(Ms),
    /// Blocks its worker thread briefly at every poll, then sleeps and
    /// returns; dropped at its await on cancel.
    BlocksWorker(Ms),
    /// Waits for its scope, then cleans up for `cleanup` in a shielded scope.
    Cooperative { cleanup: Ms },
}

/// A task's escalation hook (`build_task().on_escalate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Hook {
    /// Spawned without one.
    None,
    /// Returns at once.
    Returns,
    /// Panics (the library catches it; the abort still happens).
    Panics,
    /// Blocks its thread until the program releases it (`Op::ReleaseHook`,
    /// or the end of the case).
    Blocks,
}

/// One step of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// Into the `TaskGroup` without a key, into the `TaskMap` with one (an
    /// occupied key is replaced).
    Spawn {
        key: Option<Key>,
        behaviour: Behaviour,
        hook: Hook,
    },
    /// Spawn on the key of a live keyed task, if any (replacement).
    Replace {
        pick: TaskRef,
        behaviour: Behaviour,
        hook: Hook,
    },
    /// `TaskGroup::cancel`.
    CancelGroup,
    /// Cancel the scope enclosing both the group and the map.
    CancelScope,
    /// `TaskMap::cancel(key)`, awaited (the per-key ladder); under a grace
    /// that never ends, awaited for a while only.
    CancelKey(Key),
    /// `TaskMap::begin_cancel(key)`: the per-key ladder, in the background.
    BeginCancelKey(Key),
    /// `TaskHandle::cancel`, if the handle is still held: that task's own
    /// ladder, whatever reached it before.
    CancelTask(TaskRef),
    /// Unblock the escalation hook of a task, if it has a blocking one.
    ReleaseHook(TaskRef),
    /// `TaskHandle::abort`, if the handle is still held.
    Abort(TaskRef),
    /// Drop the `TaskHandle` (detaches; the task keeps running).
    DropHandle(TaskRef),
    /// `tokio::time::advance`.
    Advance(Ms),
    /// `shutdown()` of the group and then of the map, awaited (under a grace
    /// that never ends, for a while; then the tasks that ignore cancellation
    /// are let go, and it must return).
    Shutdown,
    /// Park a `join()` (or, with `next`, a `join_next()`) of the group on a
    /// counting waker; it stays pending until re-polled.
    Wait { next: bool },
    /// Re-poll one of the parked waiters (modulo their number), in any
    /// order relative to the others, to idleness and to respawns.
    Repoll(TaskRef),
    /// `TaskGroup::abort_all`: every live task of the group ends as aborted
    /// at its next poll, with no grace, no hook and no escalation counted;
    /// the group stays open and its scope is not cancelled.
    AbortAll,
    /// `TaskMap::abort(key)`: the task the key maps to (the newest under
    /// it), if one is alive, ends as aborted; no other task is touched.
    /// With bit 2 of the key set, on a key that has a live task if any
    /// (picked by the key's value, as `Replace` picks), so that most of
    /// these aborts find a task; otherwise on the key as it is.
    AbortKey(Key),
    /// `TaskGroup::try_join_next`: the oldest end not yet taken, or `None`,
    /// at once; one queue with the parked `join_next`s (`Wait { next: true }`).
    TryJoinNext,
    /// `TaskHandle::abort_handle().abort()`, called from a plain thread
    /// (joined before the step goes on), if the handle is still held: as
    /// [`Op::Abort`].
    AbortViaHandle(TaskRef),
}

/// Decodes a fuzz input into a program (its setup, then at most `max_ops`
/// steps).
pub fn decode(bytes: &[u8], max_ops: usize) -> (Setup, Vec<Op>) {
    let mut u = arbitrary::Unstructured::new(bytes);
    let setup = Setup::arbitrary(&mut u).unwrap_or_default();
    let mut ops = Vec::new();
    while ops.len() < max_ops && !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    (setup, ops)
}
