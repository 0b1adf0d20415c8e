//! One child's shared state and its reaper: the future that owns tokio's
//! `Child`, waits for its exit, its owner's cancellation or a teardown
//! request, tears the group down (`SIGTERM`, `term_grace`, `SIGKILL`) and
//! publishes the end once. Imports `kill` only.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::Child;
use tokio::sync::{Notify, watch};

use super::kill::{reap_dying_members, reap_exited_members, signal_group};
use crate::scope::CancelScope;
use crate::sync::lock;

// ===== impl ProcessPolicy =====

/// ExitCause a scoped child is torn down.
///
/// Public fields with a [`Default`], so a policy reads
/// `ProcessPolicy { term_grace: Duration::from_millis(500), ..Default::default() }`.
///
/// Keep `term_grace` below the group's [`ShutdownPolicy::grace`]: past that
/// grace the ladder aborts the child's reaper, whose drop sends `SIGKILL` to
/// the group at once (unless the leader was reaped) and leaves the reaping of
/// the leader to tokio.
///
/// [`ShutdownPolicy::grace`]: crate::ShutdownPolicy::grace
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessPolicy {
    /// ExitCause long the process group may take to exit after `SIGTERM` before it
    /// gets `SIGKILL` (default 2 s). Zero sends `SIGKILL` right after `SIGTERM`.
    pub term_grace: Duration,
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            term_grace: Duration::from_secs(2),
        }
    }
}

// ===== shared state of one child =====

/// ExitCause a child ended, as the reaper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExitCause {
    /// The leader had exited before any signal was sent.
    OnItsOwn,
    /// The leader exited within `term_grace` after `SIGTERM`.
    Terminated,
    /// The leader needed `SIGKILL`.
    Killed,
    /// The reaper was dropped first (aborted, runtime shut down): the group
    /// got `SIGKILL`, tokio reaps the leader in the background.
    Abandoned,
}

/// The end the reaper publishes once (invariant 3).
#[derive(Debug, Clone)]
pub(super) struct End {
    /// The leader's exit status; the error is shared because `io::Error` is
    /// not `Clone` and several handles may read it.
    pub(super) status: Result<ExitStatus, Arc<io::Error>>,
    pub(super) how: ExitCause,
    /// A signal that could not be sent (other than "no such group").
    pub(super) failure: Option<String>,
}

/// Flags of one child, under `ChildCore::state`.
#[derive(Debug, Default)]
pub(super) struct ChildFlags {
    /// The reaper has reaped the leader: its pid may be reused, so nothing may
    /// signal it any more (invariant 1).
    pub(super) reaped: bool,
    /// The end is published. Implies `reaped`, except for `ExitCause::Abandoned`.
    pub(super) ended: bool,
    /// The owner (`ScopedChild`) was dropped while the child was alive and its
    /// scope not cancelled; the child was then listed in `ORPHANS`.
    /// `orphaned && ended` can last: the reaper never touches the set, and the
    /// child stays listed (unseen, invariant 2) until the next use of the set
    /// prunes it.
    pub(super) orphaned: bool,
}

pub(super) struct ChildCore {
    pub(super) pid: u32,
    /// The group's id: the leader's pid.
    pub(super) pgid: Pid,
    pub(super) policy: ProcessPolicy,
    /// The scope that owns the child; cancelling it tears the group down.
    pub(super) owner: CancelScope,
    /// The flags, locked with `crate::sync::lock` like every lock of the
    /// crate. Under it only flags are read or written and signals sent: no
    /// tracing event, no drop of anything but the guard.
    pub(super) state: Mutex<ChildFlags>,
    /// `state.ended`, readable without the state lock: the orphan set prunes
    /// by it while holding its own lock (lock order: state, then the set).
    pub(super) gone: AtomicBool,
    /// Asks the reaper for a teardown now. `notify_one` keeps a permit, so a
    /// request made before the reaper waits is not lost.
    pub(super) teardown: Notify,
    pub(super) end: watch::Sender<Option<End>>,
}

impl ChildCore {
    /// `SIGKILL` to the group unless the leader was reaped (invariant 1); for
    /// the reaper's drop guard only. Logs after the lock is released.
    fn kill_now(&self, why: &str) {
        let sent = {
            let st = lock(&self.state);
            if st.reaped {
                return;
            }
            signal_group(self.pgid, Signal::KILL)
        };
        tracing::warn!(pid = self.pid, why, "SIGKILL to the process group");
        if let Err(e) = sent {
            tracing::error!(pid = self.pid, error = %e, "SIGKILL to the process group failed");
        }
    }

    /// Whether the end is published (the child left the orphan set, if it
    /// was in it: invariant 2).
    pub(super) fn is_gone(&self) -> bool {
        // Acquire pairs with the Release in `finish`.
        self.gone.load(Ordering::Acquire)
    }

    /// Publishes the end (invariants 2, 3). The orphan set drops the child
    /// at its next use (it prunes ended children), so the reaper never
    /// touches the set and this module does not import it. Logs and sends
    /// after the lock is released.
    fn finish(&self, end: End) {
        {
            let mut st = lock(&self.state);
            if st.ended {
                return;
            }
            st.ended = true;
            // Release: whoever sees `gone` sees `ended` (pairs with `is_gone`).
            self.gone.store(true, Ordering::Release);
        }
        tracing::debug!(pid = self.pid, how = ?end.how, status = ?end.status, "scoped child ended");
        self.end.send_replace(Some(end));
        // Relaxed: a statistic; nothing is ordered by it.
        ALIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for ChildCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Copied out: the formatter writes to the caller's sink, not under our lock.
        let (reaped, ended, orphaned) = {
            let st = lock(&self.state);
            (st.reaped, st.ended, st.orphaned)
        };
        f.debug_struct("ChildCore")
            .field("pid", &self.pid)
            .field("policy", &self.policy)
            .field("owner", &self.owner.id())
            .field("reaped", &reaped)
            .field("ended", &ended)
            .field("orphaned", &orphaned)
            .finish()
    }
}

/// Scoped children whose end is not published yet.
pub(super) static ALIVE: AtomicUsize = AtomicUsize::new(0);

// ===== the reaper =====

/// Publishes `ExitCause::Abandoned` if the reaper is dropped before it finished,
/// after sending `SIGKILL` to the group (invariant 1 guards the pid).
struct AbandonGuard<'a> {
    inner: &'a ChildCore,
    armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.inner
            .kill_now("reaper dropped before the child was reaped");
        self.inner.finish(End {
            status: Err(Arc::new(io::Error::other(
                "scoped child: its reaper was dropped (runtime shut down or aborted) before \
                 reaping it; the group got SIGKILL and tokio reaps the leader",
            ))),
            how: ExitCause::Abandoned,
            failure: None,
        });
    }
}

/// Owns the child until it is reaped: waits for its exit, its owner's
/// cancellation or a teardown request, then tears its group down.
pub(super) async fn reap(mut child: Child, inner: Arc<ChildCore>) {
    // Declared after `child`, so dropped before it: the group is killed before
    // tokio's `Child` hands the leader to its background reaper.
    let mut guard = AbandonGuard {
        inner: &inner,
        armed: true,
    };
    // Whichever comes first; `None`: tear down. All three are cancel safe,
    // and the ones not ready are dropped before the teardown starts.
    let exited = {
        let mut status = pin!(child.wait());
        let mut cancelled = pin!(inner.owner.cancelled());
        let mut requested = pin!(inner.teardown.notified());
        poll_fn(|cx| {
            if let Poll::Ready(status) = status.as_mut().poll(cx) {
                return Poll::Ready(Some(status));
            }
            if cancelled.as_mut().poll(cx).is_ready() || requested.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    };
    let end = match exited {
        Some(status) => {
            // No await since the wait that reaped the leader (invariant 1).
            lock(&inner.state).reaped = true;
            sweep_stragglers(&inner).await;
            End {
                status: status.map_err(Arc::new),
                how: ExitCause::OnItsOwn,
                failure: None,
            }
        }
        None => teardown(&mut child, &inner).await,
    };
    guard.armed = false;
    inner.finish(end);
}

/// `SIGTERM`, `term_grace`, `SIGKILL`, reap.
async fn teardown(child: &mut Child, inner: &ChildCore) -> End {
    // The liveness probe sends no signal: `waitpid(WNOHANG)`.
    if let Ok(Some(status)) = child.try_wait() {
        lock(&inner.state).reaped = true;
        sweep_stragglers(inner).await;
        return End {
            status: Ok(status),
            how: ExitCause::OnItsOwn,
            failure: None,
        };
    }
    let mut failure = None;
    tracing::debug!(pid = inner.pid, "SIGTERM to the process group");
    if let Err(e) = signal_group(inner.pgid, Signal::TERM) {
        failure = Some(format!("SIGTERM to group {}: {e}", inner.pid));
    }
    let grace = inner.policy.term_grace;
    let (status, how) = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => (status, ExitCause::Terminated),
        Err(_) => {
            tracing::debug!(
                pid = inner.pid,
                ?grace,
                "term grace over: SIGKILL to the process group"
            );
            if let Err(e) = signal_group(inner.pgid, Signal::KILL) {
                failure = Some(format!("SIGKILL to group {}: {e}", inner.pid));
            }
            (child.wait().await, ExitCause::Killed)
        }
    };
    lock(&inner.state).reaped = true;
    sweep_stragglers(inner).await;
    End {
        status: status.map_err(Arc::new),
        how,
        failure,
    }
}

/// After the leader was reaped: reaps the members that are already our
/// zombies and, if a member that is our child is still alive, kills what is
/// left of the group (the leader's exit ends the group's grace) and reaps
/// those members. Members are our children only once they were re-parented
/// to us, i.e. if this process is a [subreaper](super::kill::become_subreaper);
/// otherwise nothing is signalled here (invariant 1).
async fn sweep_stragglers(inner: &ChildCore) {
    // A live child of ours in the group keeps the group id in use until we
    // reap it, so this signal cannot reach a recycled group (invariant 1).
    if !reap_exited_members(inner.pgid) {
        return;
    }
    if let Ok(true) = signal_group(inner.pgid, Signal::KILL) {
        tracing::debug!(pid = inner.pid, "killed the rest of the process group");
        reap_dying_members(inner.pgid).await;
    }
}
