//! [`TaskInfo`] and [`TaskState`]: one live task as a snapshot
//! ([`TaskGroup::snapshot`](crate::TaskGroup::snapshot),
//! [`TaskMap::snapshot`](crate::TaskMap::snapshot)) sees it, and
//! [`TaskInfo::read`], which reads one from the task's cell without changing
//! anything (DESIGN property 9: reads are pure), at one instant of the
//! tasks' clock ([`now_on`]).

use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::id::TaskId;
use super::meta::TrackedCell;
use crate::scope::CancelScope;

// ===== impl TaskInfo =====

/// One live task of a group or map, as a snapshot saw it
/// ([`TaskGroup::snapshot`](crate::TaskGroup::snapshot),
/// [`TaskMap::snapshot`](crate::TaskMap::snapshot)).
///
/// A copy: it holds nothing of the task (a name is a shared `Arc<str>`), so
/// keeping one keeps nothing alive, and it does not change as the task goes
/// on; take another snapshot for a later view.
///
/// Its `Display` is one line, as [`StuckTask`](crate::StuckTask)'s:
/// `task#3 name="listener" key=7 cancelled age=1.5s redeliveries=2 at
/// src/main.rs:10:5` (absent fields, and a zero re-delivery count, left
/// out; `blocking` before `at` for a blocking task).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::{TaskGroup, TaskState};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::new();
/// group.build_task().name("listener").spawn(std::future::pending::<()>());
/// tokio::time::sleep(Duration::from_millis(1500)).await;
///
/// let info = &group.snapshot()[0];
/// assert_eq!(info.name.as_deref(), Some("listener"));
/// assert_eq!(info.state, TaskState::Running);
/// assert_eq!(info.age, Duration::from_millis(1500));
/// assert_eq!(info.location.file(), file!()); // where `spawn` was called
/// assert!(info.to_string().starts_with(&format!("{} name=\"listener\" running age=1.5s at ", info.id)));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task's id, as its [`TaskHandle::id`](crate::TaskHandle::id);
    /// ids grow in spawn order, process-wide.
    pub id: TaskId,
    /// Its name, if it was spawned with
    /// [`TaskBuilder::name`](crate::TaskBuilder::name).
    pub name: Option<Arc<str>>,
    /// Its key's `Debug` form, for a task in a [`TaskMap`](crate::TaskMap)
    /// (`"alice"` for the key `"alice"`, `7` for the key `7`), as
    /// [`StuckTask::key`](crate::StuckTask::key); `None` in a group.
    pub key: Option<String>,
    /// Where it was spawned: the caller of the public spawn function
    /// (`spawn`, `spawn_with_scope`, a builder's, a map's), through
    /// `#[track_caller]`.
    pub location: &'static Location<'static>,
    /// Time since it was spawned, on tokio's clock (paused or not), at the
    /// moment of the snapshot: one clock read serves every task of it.
    pub age: Duration,
    /// Where it stands in its cancellation.
    pub state: TaskState,
    /// Re-deliveries of cancellation made to it so far, over its whole life
    /// and every ladder that ran over it (at most the policy's
    /// `max_redeliveries`).
    pub redeliveries: u32,
    /// A blocking closure (`spawn_blocking`): it is never polled, so never
    /// woken nor re-delivered to, and once it runs no abort can end it; its
    /// scope, if it was handed one, is its only delivery.
    pub blocking: bool,
}

impl TaskInfo {
    /// The task in `cell`, read at `now`, whose tracker's scope is
    /// `tracker_scope`; `key` is left `None` (a map sets it). `None` if the
    /// task ended since its cell was copied out of the registry: a snapshot
    /// never lists an ended task.
    ///
    /// Pure: one load of the state word (all its flags read together), the
    /// flags and deadlines of the task's own scope and of its tracker's
    /// ([`CancelScope::is_cancelled_or_due`], which runs no deadline's
    /// cancel), and clones of the name's `Arc` and of nothing else.
    pub(crate) fn read(
        cell: &TrackedCell,
        tracker_scope: &CancelScope,
        now: Instant,
    ) -> Option<TaskInfo> {
        let s = cell.snapshot();
        if s.is_ended() {
            return None;
        }
        let meta = &cell.meta;
        let state = if s.is_stuck() {
            TaskState::Stuck
        } else if s.is_escalated() {
            TaskState::Escalated
        } else if s.is_delivered()
            || s.is_closing()
            || s.is_cancel_requested()
            || meta
                .scope
                .as_ref()
                .is_some_and(CancelScope::is_cancelled_or_due)
            || tracker_scope.is_cancelled_or_due()
        {
            TaskState::Cancelled
        } else {
            TaskState::Running
        };
        Some(TaskInfo {
            id: cell.id,
            name: meta.name().cloned(),
            key: None,
            location: meta.location,
            age: meta.age_at(now),
            state,
            redeliveries: s.redeliveries(),
            blocking: s.is_blocking(),
        })
    }
}

/// Now, on tokio's clock as `runtime` reads it (the current runtime, or
/// else the one the tasks run on): a paused clock read from a thread outside
/// its runtime (an escalation hook's, a signal handler's) gives the tasks'
/// time, not the wall clock. Without a runtime, tokio's `Instant::now`.
pub(crate) fn now_on(runtime: Option<tokio::runtime::Handle>) -> Instant {
    let _in = runtime.as_ref().map(tokio::runtime::Handle::enter);
    Instant::now()
}

impl std::fmt::Display for TaskInfo {
    /// `task#3 name="listener" key=7 cancelled age=1.5s redeliveries=2 at
    /// src/main.rs:10:5`: the name quoted once, the key in its `Debug` form
    /// as stored (not quoted again), absent fields and a zero re-delivery
    /// count left out, `blocking` before `at` for a blocking task.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.id)?;
        if let Some(name) = &self.name {
            write!(f, " name={:?}", &**name)?;
        }
        if let Some(key) = &self.key {
            write!(f, " key={key}")?;
        }
        write!(f, " {} age={:?}", self.state, self.age)?;
        if self.redeliveries > 0 {
            write!(f, " redeliveries={}", self.redeliveries)?;
        }
        if self.blocking {
            f.write_str(" blocking")?;
        }
        write!(f, " at {}", self.location)
    }
}

// ===== impl TaskState =====

/// Where a live task stands in its cancellation, as a snapshot saw it.
///
/// A task moves only forward through these, `Running` to `Stuck`, and may
/// end at any of them (then it leaves the snapshot); a snapshot shows the
/// furthest it has reached. Non-exhaustive, as
/// [`TaskOutcome`](crate::TaskOutcome): a later version may tell more
/// states apart (a hook still running, a deadline), so a `match` needs a
/// `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskState {
    /// Not asked to stop: neither its own scope nor its group's (or map's)
    /// is cancelled, and nothing asked it alone.
    Running,
    /// Asked to stop, winding down: its scope or its group's (or map's) is
    /// cancelled (or past its deadline), cancellation was delivered to it,
    /// its [`TaskHandle::cancel`](crate::TaskHandle::cancel) was called, or a
    /// ladder (a shutdown, a key's cancel or replacement) marked it. A plain
    /// `spawn` task here ends at its next poll; a cooperative one
    /// (`spawn_with_scope`) when it decides, or is escalated at the end of
    /// the grace.
    Cancelled,
    /// It ignored cancellation for the whole grace (its escalation hook was
    /// started), or it was aborted by [`TaskGroup::abort_all`](crate::TaskGroup::abort_all)
    /// or [`TaskMap::abort`](crate::TaskMap::abort): its next poll ends it
    /// as aborted (a blocking closure that runs goes on). A task that stays here
    /// is not being polled (it blocks its thread, or its runtime stopped),
    /// and is reported stuck after the abort grace.
    Escalated,
    /// It outlived escalation and the abort grace, and a ladder reported it
    /// ([`StuckTask`](crate::StuckTask)). It stays tracked and prunes itself
    /// if it ever ends.
    Stuck,
}

impl TaskState {
    /// The state's name in lower case (`"running"`, `"cancelled"`,
    /// `"escalated"`, `"stuck"`), for logs and JSON; its `Display` too.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Cancelled => "cancelled",
            TaskState::Escalated => "escalated",
            TaskState::Stuck => "stuck",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::task::TaskMeta;

    /// A task that ends after its cell was copied out of the registry (the
    /// snapshot's lock released) is left out, not listed as live.
    #[test]
    fn a_task_ending_after_the_copy_is_left_out() {
        let reg = crate::sync::Arc::new(Registry::<TaskMeta, ()>::new(false));
        let meta = TaskMeta::new(
            Instant::now(),
            Location::caller(),
            None,
            None,
            None,
            None,
            None,
        );
        let guard = Registry::insert(&reg, meta, None).guard;
        let copied = reg.pending();
        let scope = CancelScope::new();
        let info = TaskInfo::read(&copied[0], &scope, Instant::now()).expect("live");
        assert_eq!(info.state, TaskState::Running);
        assert_eq!(info.location.file(), file!());
        drop(guard); // it ends
        assert_eq!(TaskInfo::read(&copied[0], &scope, Instant::now()), None);
    }
}
