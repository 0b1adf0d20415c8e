//! One child's shared state and its reaper: the future that owns tokio's
//! `Child`, waits for its exit or for its stop to be due (its owner ended
//! and its scope is cancelled, or a stop was asked for), runs the stop order
//! (`exit_grace`, `SIGTERM`, `term_grace`, `SIGKILL`), reaps, and publishes
//! the end once. Imports `kill` only.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::Child;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::kill::{reap_dying_members, reap_exited_members, signal_group};
use crate::scope::CancelScope;
use crate::sync::lock;

// ===== impl ProcessPolicy =====

/// How a scoped child is stopped: the grace it gets to exit by itself once
/// its owner ended, and the grace after `SIGTERM`.
///
/// The stop order, as the MCP stdio transport asks of a client: the owner
/// ends first (a task's future returns or is dropped, so the stdin it holds
/// closes), then the child gets [`exit_grace`](Self::exit_grace) to exit by
/// itself, then `SIGTERM` to its process group,
/// [`term_grace`](Self::term_grace), `SIGKILL` to the group, and the reap.
///
/// Public fields with a [`Default`] (`exit_grace` 1 s, `term_grace` 2 s), so
/// a policy reads
/// `ProcessPolicy { term_grace: Duration::from_millis(500), ..Default::default() }`.
///
/// Keep `exit_grace + term_grace` within the ladder's
/// [`ShutdownPolicy::grace`]: the ladder's escalation of the task that owns
/// the child (or of a group's reaper task) cuts the stop order short,
/// `SIGKILL` going out at the latest half an
/// [`abort_grace`](crate::ShutdownPolicy::abort_grace) after the escalation
/// (see [`ChildEnd::Killed`]).
///
/// [`ShutdownPolicy::grace`]: crate::ShutdownPolicy::grace
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessPolicy {
    /// How long the child may take to exit by itself once its stop began
    /// (its owner ended, its stdin closed), before `SIGTERM` (default 1 s).
    /// Zero sends `SIGTERM` at once.
    pub exit_grace: Duration,
    /// How long the process group may take to exit after `SIGTERM` before it
    /// gets `SIGKILL` (default 2 s). Zero sends `SIGKILL` right after `SIGTERM`.
    pub term_grace: Duration,
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            exit_grace: Duration::from_secs(1),
            term_grace: Duration::from_secs(2),
        }
    }
}

// ===== impl ChildEnd =====

/// How a scoped child ended, as its reaper saw it: what it took to stop the
/// leader (the child itself). From [`ScopedChild::end`](crate::ScopedChild::end).
///
/// The members of its group that outlive the leader are not described here:
/// where this process is a [subreaper](crate::become_subreaper) they are
/// killed and reaped with it (counted in
/// [`ProcessStats::sigkills_sent`](crate::ProcessStats::sigkills_sent)).
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChildEnd {
    /// It exited on its own before its stop began: no signal was sent.
    Exited,
    /// It exited within `exit_grace`, after its stop began (for a task's
    /// child: its owner ended, so the stdin it held closed) and before any
    /// signal.
    ExitedInGrace,
    /// It exited within `term_grace` after `SIGTERM` to its group.
    Terminated,
    /// It needed `SIGKILL` to its group: it outlived `term_grace`, or a
    /// ladder's escalation cut its stop order short (then `SIGTERM` may not
    /// have been sent).
    Killed,
    /// Its reaper was dropped before reaping it (the runtime shut down, or a
    /// reaper task was dropped): the group got `SIGKILL`, and tokio reaps
    /// the leader in the background.
    Abandoned,
}

// ===== shared state of one child =====

/// The end the reaper publishes once (invariant 3).
#[derive(Debug, Clone)]
pub(super) struct End {
    /// The leader's exit status; the error is shared because `io::Error` is
    /// not `Clone` and several handles may read it.
    pub(super) status: Result<ExitStatus, Arc<io::Error>>,
    pub(super) how: ChildEnd,
    /// A signal that could not be sent (other than "no such group").
    pub(super) failure: Option<String>,
}

/// Flags of one child, under `ChildCore::state`.
#[derive(Debug, Default)]
pub(super) struct ChildFlags {
    /// The reaper has reaped the leader: its pid may be reused, so nothing may
    /// signal it any more (invariant 1).
    pub(super) reaped: bool,
    /// The end is published. Implies `reaped`, except for `ChildEnd::Abandoned`.
    pub(super) ended: bool,
    /// The owner (`ScopedChild`) was dropped while the child was alive and its
    /// scope not cancelled; the child was then listed in `ORPHANS`.
    /// `orphaned && ended` can last: the reaper never touches the set, and the
    /// child stays listed (unseen, invariant 2) until the next use of the set
    /// prunes it. Implies `owner_gone`.
    pub(super) orphaned: bool,
    /// The owner ended: the `ScopedChild` was dropped, or the task that owns
    /// the child ended (its future returned or was dropped). Only read where
    /// `ChildCore::wait_for_owner`.
    pub(super) owner_gone: bool,
    /// A stop was asked for whatever the owner scope says
    /// ([`ScopedChild::shutdown`](crate::ScopedChild::shutdown), an
    /// escalation or abort of the owning task, a dropped session).
    pub(super) stop: bool,
    /// Skip `exit_grace`: `SIGTERM` at once ([`reap_orphans`](crate::reap_orphans),
    /// whose orphans' owners are long gone). Implies nothing else; read once
    /// the stop began (it also begins it).
    pub(super) no_exit_grace: bool,
    /// `SIGKILL` no later than this (an escalation or abort cut the stop
    /// order short). Also begins the stop.
    pub(super) kill_by: Option<Instant>,
}

impl ChildFlags {
    /// Whether the stop order is due, given whether the owner scope is
    /// cancelled and whether the child waits for its owner to end first.
    fn stop_due(&self, cancelled: bool, wait_for_owner: bool) -> bool {
        self.stop
            || self.no_exit_grace
            || self.kill_by.is_some()
            || (cancelled && (self.owner_gone || !wait_for_owner))
    }
}

pub(super) struct ChildCore {
    pub(super) pid: u32,
    /// The group's id: the leader's pid.
    pub(super) pgid: Pid,
    pub(super) policy: ProcessPolicy,
    /// The scope that owns the child; its cancellation begins the stop order
    /// (once the owner ended, where `wait_for_owner`).
    pub(super) owner: CancelScope,
    /// The child belongs to a task (`spawn_with_process`): its stop waits
    /// for that task to end, so the stdin the task holds is closed first.
    /// `false` for a group's own child (`spawn_process`), whose stdin is the
    /// user's handle's.
    pub(super) wait_for_owner: bool,
    /// The flags, locked with `crate::sync::lock` like every lock of the
    /// crate. Under it only flags are read or written and signals sent: no
    /// tracing event, no drop of anything but the guard.
    pub(super) state: Mutex<ChildFlags>,
    /// `state.ended`, readable without the state lock: the orphan set prunes
    /// by it while holding its own lock (lock order: state, then the set).
    pub(super) gone: AtomicBool,
    /// Wakes the reaper to read the flags again (owner gone, a stop asked
    /// for). `notify_one` keeps a permit, so a wake sent before the reaper
    /// waits is not lost.
    pub(super) wake: Notify,
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
        if let Ok(true) = sent {
            SIGKILLS.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(pid = self.pid, why, "SIGKILL to the process group");
        if let Err(e) = sent {
            tracing::error!(pid = self.pid, error = %e, "SIGKILL to the process group failed");
        }
    }

    /// Changes the flags and wakes the reaper to read them (after the lock).
    pub(super) fn update(&self, f: impl FnOnce(&mut ChildFlags)) {
        f(&mut lock(&self.state));
        self.wake.notify_one();
    }

    /// The owner ended (its task's future returned or was dropped): a
    /// cancelled owner scope now begins the stop.
    pub(super) fn owner_ended(&self) {
        self.update(|st| st.owner_gone = true);
    }

    /// Whether the stop order is due (or under way): the reaper's own test.
    pub(super) fn stop_is_due(&self) -> bool {
        let cancelled = self.owner.is_cancelled();
        lock(&self.state).stop_due(cancelled, self.wait_for_owner)
    }

    /// Whether the end is published (the child left the orphan set, if it
    /// was in it: invariant 2).
    pub(super) fn is_gone(&self) -> bool {
        // Acquire pairs with the Release in `finish`.
        self.gone.load(Ordering::Acquire)
    }

    /// The end, if published.
    pub(super) fn end_how(&self) -> Option<ChildEnd> {
        self.end.borrow().as_ref().map(|e| e.how)
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
        let (reaped, ended, orphaned, owner_gone, stop, no_exit_grace, kill_by) = {
            let st = lock(&self.state);
            (
                st.reaped,
                st.ended,
                st.orphaned,
                st.owner_gone,
                st.stop,
                st.no_exit_grace,
                st.kill_by,
            )
        };
        f.debug_struct("ChildCore")
            .field("pid", &self.pid)
            .field("policy", &self.policy)
            .field("owner", &self.owner.id())
            .field("wait_for_owner", &self.wait_for_owner)
            .field("reaped", &reaped)
            .field("ended", &ended)
            .field("orphaned", &orphaned)
            .field("owner_gone", &owner_gone)
            .field("stop", &stop)
            .field("no_exit_grace", &no_exit_grace)
            .field("kill_by", &kill_by)
            .field("end", &self.end_how())
            .finish()
    }
}

/// Scoped children whose end is not published yet.
pub(super) static ALIVE: AtomicUsize = AtomicUsize::new(0);
/// `SIGTERM`s sent to a scoped child's group (that reached it), process-wide.
pub(super) static SIGTERMS: AtomicU64 = AtomicU64::new(0);
/// `SIGKILL`s sent to a scoped child's group (that reached it), process-wide:
/// the stop order's, the straggler sweep's, the drop guard's.
pub(super) static SIGKILLS: AtomicU64 = AtomicU64::new(0);

// ===== the reaper =====

/// Publishes `ChildEnd::Abandoned` if the reaper is dropped before it finished,
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
            how: ChildEnd::Abandoned,
            failure: None,
        });
    }
}

/// Owns the child until it is reaped: waits for its exit or for its stop to
/// be due, then runs the stop order.
pub(super) async fn reap(mut child: Child, inner: Arc<ChildCore>) {
    // Declared after `child`, so dropped before it: the group is killed before
    // tokio's `Child` hands the leader to its background reaper.
    let mut guard = AbandonGuard {
        inner: &inner,
        armed: true,
    };
    let end = run(&mut child, &inner).await;
    guard.armed = false;
    inner.finish(end);
}

/// How long a phase of the reaper lasts, read from the flags.
enum Until {
    /// The phase is over: go on to the next.
    Over,
    /// Wait for the leader's exit until this moment (`None`: no timer).
    At(Option<Instant>),
}

/// Waits for the leader's exit while `phase` says the phase lasts, reading
/// the flags again at every wake (and when the owner scope is cancelled).
/// `Some(status)` if the leader exited (and was reaped by tokio's `wait`),
/// `None` when the phase is over or its moment came.
async fn wait_exit(
    child: &mut Child,
    inner: &ChildCore,
    phase: impl Fn(&ChildFlags, bool) -> Until,
) -> Option<io::Result<ExitStatus>> {
    loop {
        // Enabled before the flags are read, so a change made after the read
        // wakes this wait.
        let mut woken = pin!(inner.wake.notified());
        woken.as_mut().enable();
        let cancelled = inner.owner.is_cancelled();
        let until = phase(&lock(&inner.state), cancelled);
        let at = match until {
            Until::Over => return None,
            Until::At(at) => at,
        };
        let mut sleep = pin!(at.map(tokio::time::sleep_until));
        let mut exit = pin!(child.wait());
        let mut cancel = pin!(inner.owner.cancelled());
        // All cancel safe; the ones not ready are dropped here.
        let polled = poll_fn(|cx| {
            if let Poll::Ready(status) = exit.as_mut().poll(cx) {
                return Poll::Ready(Some(Some(status)));
            }
            if woken.as_mut().poll(cx).is_ready()
                || (!cancelled && cancel.as_mut().poll(cx).is_ready())
            {
                return Poll::Ready(None);
            }
            if let Some(sleep) = sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_ready() {
                    return Poll::Ready(Some(None));
                }
            }
            Poll::Pending
        })
        .await;
        match polled {
            Some(Some(status)) => return Some(status),
            Some(None) => return None,
            None => {} // the flags or the scope changed: read them again
        }
    }
}

/// `now + d`, saturating far in the future (any `Duration` is a valid grace).
fn after(d: Duration) -> Instant {
    Instant::now()
        .checked_add(d)
        .unwrap_or_else(crate::scope::far_future)
}

/// The earlier of `at` and the flags' `kill_by`.
fn capped(at: Instant, st: &ChildFlags) -> Until {
    Until::At(Some(st.kill_by.map_or(at, |k| k.min(at))))
}

/// The reaper's body: watch, then the stop order (`exit_grace`, `SIGTERM`,
/// `term_grace`, `SIGKILL`), then the reap of the leader and the straggler
/// sweep.
async fn run(child: &mut Child, inner: &ChildCore) -> End {
    let wait_for_owner = inner.wait_for_owner;
    // Watch: the leader's exit, or the stop becoming due.
    let watched = wait_exit(child, inner, |st, cancelled| {
        if st.stop_due(cancelled, wait_for_owner) {
            Until::Over
        } else {
            Until::At(None)
        }
    })
    .await;
    if let Some(status) = watched {
        // Seen exiting once its stop began (its stdin closed just before):
        // within the grace, not on its own.
        let how = if inner.stop_is_due() {
            ChildEnd::ExitedInGrace
        } else {
            ChildEnd::Exited
        };
        return exited(inner, status, how, None).await;
    }
    tracing::debug!(pid = inner.pid, "stopping the scoped child");
    // The grace to exit by itself (its stdin closed with its owner).
    let exit_end = after(inner.policy.exit_grace);
    let graced = wait_exit(child, inner, |st, _| {
        if st.no_exit_grace {
            Until::Over
        } else {
            capped(exit_end, st)
        }
    })
    .await;
    if let Some(status) = graced {
        return exited(inner, status, ChildEnd::ExitedInGrace, None).await;
    }
    let mut failure = None;
    // The liveness probe sends no signal: `waitpid(WNOHANG)`.
    if let Ok(Some(status)) = child.try_wait() {
        return exited(inner, Ok(status), ChildEnd::ExitedInGrace, None).await;
    }
    let kill_by = lock(&inner.state).kill_by;
    if kill_by.is_none_or(|k| Instant::now() < k) {
        tracing::debug!(pid = inner.pid, "SIGTERM to the process group");
        match signal_group(inner.pgid, Signal::TERM) {
            Ok(true) => {
                SIGTERMS.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => failure = Some(format!("SIGTERM to group {}: {e}", inner.pid)),
        }
        let term_end = after(inner.policy.term_grace);
        let termed = wait_exit(child, inner, |st, _| capped(term_end, st)).await;
        if let Some(status) = termed {
            return exited(inner, status, ChildEnd::Terminated, failure).await;
        }
    }
    let grace = inner.policy.term_grace;
    tracing::warn!(
        pid = inner.pid,
        ?grace,
        cut_short = kill_by.is_some(),
        "scoped child did not stop: SIGKILL to the process group"
    );
    match signal_group(inner.pgid, Signal::KILL) {
        Ok(true) => {
            SIGKILLS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {}
        Err(e) => failure = Some(format!("SIGKILL to group {}: {e}", inner.pid)),
    }
    let status = child.wait().await;
    exited(inner, status, ChildEnd::Killed, failure).await
}

/// The leader was reaped: marks it (no await since the wait that reaped it,
/// invariant 1), sweeps the stragglers, and gives the end.
async fn exited(
    inner: &ChildCore,
    status: io::Result<ExitStatus>,
    how: ChildEnd,
    failure: Option<String>,
) -> End {
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
        SIGKILLS.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pid = inner.pid, "killed the rest of the process group");
        reap_dying_members(inner.pgid).await;
    }
}
