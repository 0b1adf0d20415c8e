//! Scoped child processes (feature `process`, unix only): a child runs in its
//! own process group, which is torn down with the scope that owns it, and
//! children left behind by an owner that ended are found and reaped as
//! orphans without touching any child whose owner is alive.
//!
//! # Design
//!
//! Each scoped child has four parts:
//!
//! - the **process group**: the child is started with `process_group(0)`, so
//!   its pid is also the id of a new group that its own children (the
//!   grandchildren) inherit. Every signal goes to the whole group.
//! - a **reaper** future that owns tokio's `Child`. It waits for the child's
//!   exit or for its *stop* to be due, then runs the *stop order* (below),
//!   reaps, and publishes how the child ended ([`ChildEnd`]). It is the only
//!   code that signals the group while the leader is unreaped (invariant 1).
//! - the **task around it**: the reaper is polled by the tracked task that
//!   owns the child, so the task ends only once the child is reaped, and
//!   every ladder over that task waits for the reap: a group's or map's
//!   `shutdown`, a key's `cancel`, [`TaskHandle::cancel`](crate::TaskHandle::cancel)
//!   and then awaiting the handle. For
//!   [`TaskGroup::spawn_with_process`](crate::TaskGroup::spawn_with_process),
//!   [`TaskMap::spawn_with_process`](crate::TaskMap::spawn_with_process) and
//!   [`TaskBuilder::spawn_with_process`](crate::TaskBuilder::spawn_with_process)
//!   that task is the user's (the `Session` future polls the reaper, then
//!   the user's future); for [`TaskGroup::spawn_process`](crate::TaskGroup::spawn_process)
//!   it is a small task of the group named `process <pid>`. Either way no
//!   extra entry appears: a map's `len()`, `keys()` and `snapshot()` show
//!   one task per session, in state `Cancelled` (or `Escalated`) while its
//!   child is being stopped.
//! - the [`ScopedChild`] handle: the *owner*'s. It carries the stdio pipes and
//!   reads the end the reaper published. Dropping it while the child is alive
//!   and its scope is not cancelled makes the child an **orphan**.
//!
//! ## The stop order
//!
//! As the MCP stdio transport asks of a client: the owner ends first (its
//! stdin closes with it), then the child gets [`ProcessPolicy::exit_grace`]
//! to exit by itself, then `SIGTERM` to the group,
//! [`ProcessPolicy::term_grace`], `SIGKILL` to the group, the reap of the
//! leader (`wait`), and the straggler sweep: members of the group that became
//! our children (see [`become_subreaper`]) are killed and reaped too.
//!
//! The stop is due when:
//!
//! - a task's child: its owner scope (the task's own) is cancelled **and**
//!   the task's future has returned or was dropped (or the `ScopedChild` was
//!   dropped). A task that returns on its own, its scope not cancelled, with
//!   its child running leaves the child be: its reaper goes on on a plain
//!   tokio task (not waited for by any ladder), and the child is an orphan
//!   once its handle is dropped;
//! - a group's own child (`spawn_process`): the group's scope is cancelled.
//!   The handle, and the stdin in it, are the user's: the stop does not
//!   wait for them, so close stdin first yourself if the child needs it;
//! - [`ScopedChild::shutdown`] was called: it drops the handle's stdin and
//!   runs the whole order;
//! - [`reap_orphans`]: the order **without `exit_grace`** (the owner is long
//!   gone), `SIGTERM` at once after a probe that sends no signal.
//!
//! ## Escalation and abort
//!
//! A task that ignores its cancellation is escalated by its ladder after
//! `grace`: its hook (the user's [`TaskBuilder::on_escalate`](crate::TaskBuilder::on_escalate))
//! runs on a thread of its own, and the task is aborted. A process-owning
//! task is aborted through its *linger* (the core's seam for this): the
//! user's future is dropped (its stdin closes), then the stop order begins,
//! with `SIGKILL` due at the latest **half an `abort_grace`** after the
//! escalation, so that the reap fits in the ladder's other half; the task
//! ends, as aborted, once the child is reaped. A stop order already under
//! way when the escalation comes (its owner ended in time, but
//! `exit_grace + term_grace` is longer than `grace`) is cut short the same
//! way. So a policy that cannot fit the ladder ends with the group killed
//! ([`ChildEnd::Killed`], counted in [`ProcessStats::sigkills_sent`]) and
//! reaped inside `grace + abort_grace`; only a child that does not die of
//! `SIGKILL` in time (uninterruptible sleep) leaves its task in the report's
//! `stuck` list, and that task prunes itself once the reap is done.
//! [`TaskMap::abort`](crate::TaskMap::abort) and `abort_all` use the same
//! path. [`TaskHandle::abort`](crate::TaskHandle::abort) is tokio's abort:
//! the task is dropped at once (its scope cancelled first), and the reaper
//! finishes the stop order on a plain tokio task, unwaited.
//!
//! A reaper dropped before the reap (its runtime shut down) sends `SIGKILL`
//! to the group from its drop guard ([`ChildEnd::Abandoned`]).
//!
//! The rejected alternatives: killing every tracked child on any teardown
//! kills children that live sessions still use (hence the orphan set, which
//! holds only children whose owner is gone); a reaper as a task of its own
//! beside the user's is escalated at the same rung as a stubborn owner (so
//! no `exit_grace` after the owner's end), and a key's ladder, which waits
//! for one task, would not wait for it.
//!
//! # Invariants
//!
//! 1. A group id is never signalled once it may have been freed for reuse.
//!    A group's id stays in use while any member, zombies included, is left;
//!    the leader is one until it is reaped. So the group is signalled
//!    - by its reaper while the leader is unreaped: the reaper sets `reaped`
//!      with no await after the `wait` that reaped the leader, and only the
//!      reaper (its teardown, or its drop guard, which runs when the reaper
//!      is dropped, never during its poll) reads `reaped` before signalling;
//!      no other task or thread signals a spawned child's group;
//!    - after the leader was reaped, by the straggler sweep only, and only
//!      while a member that is *our* child is alive (`waitpgid` with
//!      `WNOHANG` finds it): only we can reap it, so it keeps the id in use
//!      until then. Such members exist only where this process is a
//!      subreaper; otherwise nothing is signalled after the leader's reap.
//!      This assumes nothing else in the process reaps our children
//!      (`waitpid(-1)`, `SIGCHLD` set to be ignored);
//!    - or by a started child's guard before it is attached (never reaped).
//!
//!    The reaper is polled by one task at a time (the owning task, its
//!    linger, or the plain task it was handed to), so "the reaper" is one
//!    sequential signaller.
//! 2. A child is *seen* in the orphan set ([`reap_orphans`],
//!    [`process_stats`]) only while `orphaned && !ended`: the drop of
//!    [`ScopedChild`] inserts it under the state lock after checking `ended`;
//!    the reaper sets `ended` (and its lock-free mirror `gone`) under the same
//!    lock, and every use of the set first prunes the children that are
//!    `gone`. The reaper never touches the set (`reap` does not import
//!    `orphans`): an ended orphan stays listed, unseen, until that next use.
//! 3. `end` is published exactly once, by the reaper or by its drop guard.
//! 4. A task that owns a child does not end while its stop is due and its
//!    reaper has not finished: its future (`Session`) returns only once the
//!    reaper is done or was handed off (no stop due), and its linger only
//!    once the reaper is done. Every ladder over the task thus waits for the
//!    reap, or reports the task stuck.
//!
//! # Deadlock safety
//!
//! Lock order: a child's `state`, then `ORPHANS`. The reaper never takes
//! `ORPHANS`; pruning the set reads each child's atomic `gone`, not its
//! `state`; [`reap_orphans`] holds `ORPHANS` only to copy it.
//!
//! Both locks are taken with [`crate::sync::lock`] and follow its rule: under
//! either, only flags and the set are read or written, `Arc`s cloned, and
//! signals sent. No tracing event (which calls the user's subscriber) and no
//! drop of a `ChildCore` (a scope handle, a `watch::Sender`) happens under a
//! lock: entries pruned from the set are handed back and dropped, and events
//! logged, once every lock is released. A task's parts (the user's future,
//! the reaper), shared with its linger under a third lock, are taken out
//! for each poll and put back: nothing is polled or dropped under it.
//!
//! # Zombies of killed grandchildren
//!
//! **A killed grandchild stays a zombie until something reaps it.** The
//! teardown reaps the leader (the direct child) itself; the members of its
//! group that it started are re-parented when the leader dies, to PID 1, or
//! to the nearest *subreaper*. Where PID 1 reaps (an init, `tini`,
//! `docker run --init`, systemd), nothing is left. Where it does not (a
//! container whose PID 1 is your server), call [`become_subreaper`] (Linux)
//! once at start-up: the teardown then reaps those grandchildren too.
//!
//! The same subreaper is what lets the teardown kill members that outlive the
//! leader (invariant 1).
//!
//! # Layout
//!
//! One file per concept, imports one way: `kill` (signals and `waitpid` on a
//! group) ← `reap` (one child's state, its reaper and teardown) ← `orphans`
//! (the orphan set, [`reap_orphans`]) ← `child` ([`ScopedChild`], the task
//! around a child and its linger, and the spawners).

mod child;
mod kill;
mod orphans;
mod reap;

pub use child::ScopedChild;
#[cfg(target_os = "linux")]
pub use kill::become_subreaper;
pub use orphans::{ProcessStats, ReapReport, process_stats, reap_orphans};
pub use reap::{ChildEnd, ProcessPolicy};
