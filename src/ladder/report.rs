//! What a shutdown did: [`ShutdownReport`], with a [`StuckTask`] for each
//! task that outlived the ladder.

use std::sync::Arc;
use std::time::Duration;

use crate::registry::TaskId;

/// A task that outlived escalation and abort grace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StuckTask {
    /// The task's id.
    pub id: TaskId,
    /// Its name, if it was spawned with [`TaskBuilder::name`](crate::TaskBuilder::name).
    pub name: Option<Arc<str>>,
    /// Its key's `Debug` form, for a task in a [`TaskMap`](crate::TaskMap):
    /// `"blocker"` for the key `"blocker"`, `7` for the key `7`.
    pub key: Option<String>,
    /// Time since it was spawned, at the moment it was reported.
    pub age: Duration,
    /// Where it was spawned: the caller of the spawn function (`spawn`,
    /// `spawn_with_scope`, a builder's, a map's), through `#[track_caller]`.
    pub location: &'static std::panic::Location<'static>,
    /// Its escalation hook was started and had not returned when the task
    /// was reported (a hook that blocks: it runs on a thread of its own, so
    /// it holds neither the ladder nor the runtime).
    pub hook_running: bool,
}

impl std::fmt::Display for StuckTask {
    /// `stuck task#3 name="listener" key="blocker" age=6s at src/main.rs:10:5`:
    /// the name quoted once, the key in its `Debug` form as stored (not
    /// quoted again), absent fields left out, `(hook still running)` at the
    /// end when it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stuck {}", self.id)?;
        if let Some(name) = &self.name {
            write!(f, " name={:?}", &**name)?;
        }
        if let Some(key) = &self.key {
            write!(f, " key={key}")?;
        }
        write!(f, " age={:?} at {}", self.age, self.location)?;
        if self.hook_running {
            f.write_str(" (hook still running)")?;
        }
        Ok(())
    }
}

/// What a shutdown did: how each task ended, what is stuck, how long it took.
///
/// Counts cover every task that ended since the group's (or map's) scope was
/// first cancelled, whoever cancelled it (the shutdown itself, `cancel`, an
/// enclosing scope, a deadline), so tasks that ended before `shutdown` was
/// called are in the report too. A stuck task is still tracked (it counts in
/// `len()`) and prunes itself when it finally ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks whose future returned a value.
    pub completed: u64,
    /// Tasks whose future was dropped at an await after cancellation.
    pub cancelled: u64,
    /// Tasks aborted (by escalation or otherwise).
    pub aborted: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks still alive at the end of the ladder.
    pub stuck: Vec<StuckTask>,
    /// Wall (or paused-clock) time the ladder took.
    pub elapsed: Duration,
    /// Wakes made by the first delivery of cancellation.
    pub deliveries: u64,
    /// Wakes made by re-delivery.
    pub redeliveries: u64,
    /// Escalation hooks run (tasks escalated).
    pub escalations: u64,
    /// Scoped child processes (feature `process`) reaped during the ladder;
    /// their reaper tasks also count as completed tasks.
    pub processes: u64,
    /// Escalation hooks this ladder started whose thread had not returned
    /// when the ladder ended. Each runs on a thread of its own, beside the
    /// abort, and the ladder does not wait for it, so a blocking hook never
    /// stretches the ladder; a hook that returns at once may still be
    /// counted here if its thread had not run yet when the abort ended the
    /// task. (A stuck task's [`StuckTask::hook_running`] had all of
    /// `abort_grace` to return.)
    pub hooks_running: u64,
}

impl ShutdownReport {
    /// Whether every task ended (nothing is stuck).
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.stuck.is_empty()
    }
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "completed {}, cancelled {}, aborted {}, panicked {}, stuck {} in {:?} \
             ({} deliveries, {} re-deliveries, {} escalations, {} processes)",
            self.completed,
            self.cancelled,
            self.aborted,
            self.panicked,
            self.stuck.len(),
            self.elapsed,
            self.deliveries,
            self.redeliveries,
            self.escalations,
            self.processes
        )?;
        if self.hooks_running > 0 {
            write!(
                f,
                ", {} escalation hooks not returned yet",
                self.hooks_running
            )?;
        }
        for s in &self.stuck {
            write!(f, "\n  {s}")?;
        }
        Ok(())
    }
}
