//! The orphan set: children whose owner ended while they were alive, and
//! [`reap_orphans`], which tears them down without touching any child whose
//! owner is alive. Imports `reap` (a child's state) only.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::reap::{ALIVE, ChildCore, ChildEnd, SIGKILLS, SIGTERMS};
use crate::sync::lock;

// ===== the orphan set =====

/// Children whose owner ended while they were alive. Process-global: orphans
/// outlive the groups, maps and tasks that spawned them, which is the point.
/// The reaper never takes this lock: a child that ended stays listed until the
/// next use of the set ([`with_orphans`]) prunes it.
static ORPHANS: Mutex<Vec<Arc<ChildCore>>> = Mutex::new(Vec::new());

/// Runs `f` on the orphans that have not ended, after pruning the ended ones
/// (their `gone` flag, not their state lock: lock order, state then the set).
/// Only `f` runs under the set's lock, and the callers' `f` only push, count or
/// clone `Arc`s; the pruned entries are returned, for the caller to drop after
/// every lock it holds (dropping the last `ChildCore` drops its scope handle and
/// its `watch::Sender`).
fn with_orphans<R>(f: impl FnOnce(&mut Vec<Arc<ChildCore>>) -> R) -> (R, Vec<Arc<ChildCore>>) {
    let mut pruned = Vec::new();
    let mut set = lock(&ORPHANS);
    let mut i = 0;
    while i < set.len() {
        if set[i].is_gone() {
            pruned.push(set.swap_remove(i));
        } else {
            i += 1;
        }
    }
    (f(&mut set), pruned)
}

/// Lists `child` as an orphan. The caller holds the child's state lock and
/// checked that it has not ended (invariant 2; lock order: state, then the
/// set); it drops the returned entries (the ended ones pruned) after
/// releasing that lock.
#[must_use = "drop the pruned entries after the state lock is released"]
pub(super) fn adopt_orphan(child: Arc<ChildCore>) -> Vec<Arc<ChildCore>> {
    with_orphans(|set| set.push(child)).1
}

/// What [`reap_orphans`] did, by process id (each also the id of the child's
/// process group).
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReapReport {
    /// Orphans torn down (`SIGTERM`, and `SIGKILL` if needed) and reaped.
    pub reaped: Vec<u32>,
    /// Orphans that had exited on their own: found by a probe that sends no
    /// signal (`waitpid` with `WNOHANG`), reaped, never signalled.
    pub already_gone: Vec<u32>,
    /// Orphans that could not be torn down cleanly, with the reason: a signal
    /// was refused (`EPERM`), or the child's reaper was gone (its runtime shut
    /// down), in which case the group got `SIGKILL` and tokio reaps it.
    pub failed: Vec<(u32, String)>,
}

impl ReapReport {
    /// Whether nothing failed.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for ReapReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "orphans: {} reaped, {} already gone, {} failed",
            self.reaped.len(),
            self.already_gone.len(),
            self.failed.len()
        )?;
        for (pid, why) in &self.failed {
            write!(f, "\n  failed {pid}: {why}")?;
        }
        Ok(())
    }
}

/// Counts of scoped children in this process, for dashboards and leak checks.
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessStats {
    /// Scoped children not yet reaped (owned and orphaned).
    pub alive: usize,
    /// Of those, orphans: their owner ended while they were alive.
    pub orphans: usize,
    /// `SIGTERM`s sent to a scoped child's process group since this process
    /// started (the stop order's, one per child at most), counting only
    /// those that reached a live group.
    pub sigterms_sent: u64,
    /// `SIGKILL`s sent to a scoped child's process group since this process
    /// started, counting only those that reached a live group: the stop
    /// order's (a child that outlived `term_grace`, or whose stop a ladder
    /// cut short), the straggler sweep's (members left when the leader
    /// exited, where this process is a subreaper), and those of a reaper
    /// dropped before the reap. A server's `/stats` shows how often children
    /// had to be killed.
    pub sigkills_sent: u64,
}

/// A snapshot of the process-wide [`ProcessStats`].
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[must_use]
pub fn process_stats() -> ProcessStats {
    // Relaxed: statistics; nothing is ordered by them.
    ProcessStats {
        alive: ALIVE.load(Ordering::Relaxed),
        orphans: with_orphans(|set| set.len()).0,
        sigterms_sent: SIGTERMS.load(Ordering::Relaxed),
        sigkills_sent: SIGKILLS.load(Ordering::Relaxed),
    }
}

/// Tears down every orphan: each scoped child whose owner ([`ScopedChild`](crate::ScopedChild))
/// was dropped while the child was alive and its scope not cancelled (the
/// owning task completed, panicked, was aborted or dropped). A child whose
/// owner is alive is never touched.
///
/// Each orphan's reaper first probes it without a signal (`waitpid` with
/// `WNOHANG`): one that has exited is only reaped ([`ReapReport::already_gone`]).
/// The others get the end of their stop order, **without `exit_grace`**
/// (their owner is long gone, their stdin long closed): `SIGTERM` to the
/// group, their [`ProcessPolicy::term_grace`](crate::ProcessPolicy::term_grace),
/// `SIGKILL`, reap, all at once; this returns when each has ended, so within
/// the longest `term_grace` plus scheduling noise. An orphan already in its
/// `exit_grace` (its scope was cancelled) skips the rest of it.
///
/// The set is process-wide: orphans of every group and map, on every runtime.
/// Orphans that appear while this runs are left for the next call. An orphan
/// is also torn down, without this call, when its scope is cancelled (the
/// group or map shuts down).
///
/// # Examples
///
/// ```
/// use cancel_scope::{TaskGroup, reap_orphans};
/// use tokio::process::Command;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let group = TaskGroup::new();
/// let mut cmd = Command::new("sh");
/// cmd.args(["-c", "sleep 100"]);
/// let child = group.spawn_process(cmd)?;
/// let pid = child.id().unwrap();
/// drop(child); // the owner is gone, the group lives on: an orphan
///
/// let report = reap_orphans().await;
/// assert!(report.reaped.contains(&pid));
/// # group.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the future stops waiting, not the teardowns already requested;
/// those finish in their reapers.
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
pub async fn reap_orphans() -> ReapReport {
    let (found, pruned) = with_orphans(|set| set.clone());
    drop(pruned);
    let mut ends = Vec::with_capacity(found.len());
    for orphan in &found {
        // The reaper probes before it signals; asking is all we do here.
        orphan.update(|st| st.no_exit_grace = true);
        ends.push((orphan.pid, orphan.end.subscribe()));
    }
    let mut report = ReapReport::default();
    for (pid, mut end) in ends {
        // `found` keeps each sender alive, so this ends only with `Some`.
        let end = match end.wait_for(Option::is_some).await {
            Ok(end) => end.clone().expect("waited for Some"),
            Err(_) => {
                report.failed.push((pid, "reaper state dropped".to_owned()));
                continue;
            }
        };
        match (end.how, end.failure) {
            (_, Some(why)) => report.failed.push((pid, why)),
            (ChildEnd::Abandoned, None) => report.failed.push((
                pid,
                "reaper gone (runtime shut down?): group sent SIGKILL, left to tokio to reap"
                    .to_owned(),
            )),
            (ChildEnd::Exited | ChildEnd::ExitedInGrace, None) => report.already_gone.push(pid),
            (ChildEnd::Terminated | ChildEnd::Killed, None) => report.reaped.push(pid),
        }
    }
    if !report.reaped.is_empty() || !report.is_clean() {
        tracing::info!(%report, "reaped orphaned child processes");
    }
    report
}
