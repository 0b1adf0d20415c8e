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
//!   [`TaskGroup::spawn_process`] the reaper is a tracked task of the group, so
//!   the group's shutdown ladder waits for it like for any other task.
//! - the [`ScopedChild`] handle: the *owner*. It carries the stdio pipes and
//!   reads the end the reaper published. Dropping it while the child is alive
//!   and its scope is not cancelled makes the child an **orphan**.
//!
//! Teardown: `SIGTERM` to the group; wait for the leader to exit, at most
//! `term_grace`; `SIGKILL` to the group; reap the leader (`wait`); reap any
//! member of the group that became our child (see [`become_subreaper`]). The
//! leader's exit ends the group's grace: whatever is left of the group then is
//! killed at once, also when the leader exits on its own.
//!
//! The rejected alternative, killing every tracked child on any teardown,
//! kills children that live sessions still use; hence the orphan set, which
//! holds only children whose owner is gone.
//!
//! # Invariants
//!
//! 1. The leader is signalled only by its reaper, before the reaper has reaped
//!    it (`reaped == false`), or by the escalation hook / drop guard under the
//!    same check: a pid is never signalled after it was freed for reuse.
//! 2. A child is *seen* in the orphan set ([`reap_orphans`],
//!    [`process_stats`]) only while `orphaned && !ended`: the drop of
//!    [`ScopedChild`] inserts it under the state lock after checking `ended`;
//!    the reaper sets `ended` (and its lock-free mirror `gone`) under the same
//!    lock, and every use of the set first drops the children that are `gone`.
//!    (The reaper never touches the set, so `reap` does not import `orphans`.)
//! 3. `end` is published exactly once, by the reaper or by its drop guard.
//!
//! # Deadlock safety
//!
//! Lock order: a child's `state`, then `ORPHANS`. The reaper never takes
//! `ORPHANS`; pruning the set reads each child's atomic `gone`, not its
//! `state`; [`reap_orphans`] holds `ORPHANS` only to copy it.
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
//! The process group id can be reused only after every member of the group
//! has been reaped; the one window in which a group signal could hit a new
//! group of the same number is the `SIGKILL` sent right after the leader was
//! reaped, when the group was already empty: microseconds, and only if the pid
//! space wrapped around in between.
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
pub use reap::ProcessPolicy;
