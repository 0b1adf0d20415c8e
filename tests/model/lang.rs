//! The operation language shared by the proptest state machine
//! (`tests/model.rs`), the fuzz target (`fuzz/fuzz_targets/ops.rs`) and the
//! corpus replay (`tests/fuzz_corpus.rs`). Bytes decode into it through
//! `arbitrary`; every field is small and interpreted modulo a bound, so any
//! byte string is a valid (and short-running) program.

use arbitrary::Arbitrary;

/// A duration in paused-clock milliseconds: `0..=31`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct Ms(pub u8);

impl Ms {
    pub fn millis(self) -> u64 {
        u64::from(self.0 % 32)
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
    /// Takes its scope and never looks at it: parks until aborted.
    IgnoresCancel,
    /// Sleeps, then panics; dropped at its await on cancel.
    Panics(Ms),
    /// Blocks its worker thread briefly at every poll, then sleeps and
    /// returns; dropped at its await on cancel.
    BlocksWorker(Ms),
    /// Waits for its scope, then cleans up for `cleanup` in a shielded scope.
    Cooperative { cleanup: Ms },
}

/// One step of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// Into the `TaskGroup` without a key, into the `TaskMap` with one (an
    /// occupied key is replaced).
    Spawn {
        key: Option<Key>,
        behaviour: Behaviour,
    },
    /// Spawn on the key of a live keyed task, if any (replacement).
    Replace { pick: TaskRef, behaviour: Behaviour },
    /// `TaskGroup::cancel`.
    CancelGroup,
    /// Cancel the scope enclosing both the group and the map.
    CancelScope,
    /// `TaskMap::cancel(key)`, awaited (the per-key ladder).
    CancelKey(Key),
    /// `TaskHandle::abort`, if the handle is still held.
    Abort(TaskRef),
    /// Drop the `TaskHandle` (detaches; the task keeps running).
    DropHandle(TaskRef),
    /// `tokio::time::advance`.
    Advance(Ms),
    /// `shutdown()` of the group and then of the map, awaited.
    Shutdown,
    /// Park a `join()` (or, with `next`, a `join_next()`) of the group on a
    /// counting waker; it stays pending until re-polled.
    Wait { next: bool },
    /// Re-poll one of the parked waiters (modulo their number), in any
    /// order relative to the others, to idleness and to respawns.
    Repoll(TaskRef),
}

/// Decodes a fuzz input into a program (at most `max_ops` steps).
pub fn decode(bytes: &[u8], max_ops: usize) -> Vec<Op> {
    let mut u = arbitrary::Unstructured::new(bytes);
    let mut ops = Vec::new();
    while ops.len() < max_ops && !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}
