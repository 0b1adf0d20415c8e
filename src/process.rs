//! Scoped child processes (feature `process`, unix only): a child runs in its
//! own process group, which is torn down with the scope that owns it, and
//! children left behind by an owner that ended are found and reaped as
//! orphans without touching any child whose owner is alive.
//!
//! # Design
//!
//! Each scoped child has three parts:
//!
//! - the **process group**: the child is started with `process_group(0)`, so
//!   its pid is also the id of a new group that its own children (the
//!   grandchildren) inherit. Every signal goes to the whole group.
//! - a **reaper** future that owns tokio's `Child`. It waits for the first of:
//!   the child's exit, the owner scope's cancellation, or a teardown request
//!   ([`reap_orphans`], [`ScopedChild::shutdown`]); then it runs the *teardown*
//!   (below) and publishes how the child ended. For
//!   [`TaskGroup::spawn_process`](crate::TaskGroup::spawn_process) the reaper
//!   is a tracked task of the group, so the group's shutdown ladder waits for
//!   it like for any other task.
//! - the [`ScopedChild`] handle: the *owner*. It carries the stdio pipes and
//!   reads the end the reaper published. Dropping it while the child is alive
//!   and its scope is not cancelled makes the child an **orphan**.
//!
//! Teardown: `SIGTERM` to the group; wait for the leader to exit, at most
//! `term_grace`; `SIGKILL` to the group; reap the leader (`wait`); reap any
//! member of the group that became our child (see [`become_subreaper`]). The
//! leader's exit ends the group's grace: if a member that is our child is
//! still alive then (only possible where this process is a subreaper), the
//! rest of the group is killed at once and reaped, also when the leader
//! exited on its own. Without a subreaper, members that outlive the leader
//! (a background job of a leader that exited on its own, one that ignores
//! `SIGTERM` when the leader did not) are not signalled after the leader was
//! reaped (invariant 1).
//!
//! The rejected alternative, killing every tracked child on any teardown,
//! kills children that live sessions still use; hence the orphan set, which
//! holds only children whose owner is gone.
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
//! 2. A child is *seen* in the orphan set ([`reap_orphans`],
//!    [`process_stats`]) only while `orphaned && !ended`: the drop of
//!    [`ScopedChild`] inserts it under the state lock after checking `ended`;
//!    the reaper sets `ended` (and its lock-free mirror `gone`) under the same
//!    lock, and every use of the set first prunes the children that are
//!    `gone`. The reaper never touches the set (`reap` does not import
//!    `orphans`): an ended orphan stays listed, unseen, until that next use.
//! 3. `end` is published exactly once, by the reaper or by its drop guard.
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
//! drop of an `ChildCore` (a scope handle, a `watch::Sender`) happens under a
//! lock: entries pruned from the set are handed back and dropped, and events
//! logged, once every lock is released.
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
//! (the orphan set, [`reap_orphans`]) ← `child` ([`ScopedChild`] and the
//! spawners).

mod child;
mod kill;
mod orphans;
mod reap;

pub use child::ScopedChild;
#[cfg(target_os = "linux")]
pub use kill::become_subreaper;
pub use orphans::{ProcessStats, ReapReport, process_stats, reap_orphans};
pub use reap::{ChildEnd, ProcessPolicy};
