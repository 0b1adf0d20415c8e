//! [`ScopedChild`], the owner's handle, and the spawners: starting a command
//! in its own process group and handing it to a scope, a group task or a map
//! session. Imports `reap` and `orphans`.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::kill::signal_group;
use super::orphans::adopt_orphan;
use super::reap::{ALIVE, ChildCore, ChildEnd, ChildFlags, End, ProcessPolicy, reap};
use crate::builder::TaskBuilder;
use crate::group::TaskGroup;
use crate::map::TaskMap;
use crate::scope::CancelScope;
use crate::sync::lock;
use crate::task::{Linger, SpawnError, Stats, TaskHandle};
use crate::tracker::Tracker;
use crate::tracker::seam::{Extension, Tracks};

// ===== impl ScopedChild =====

/// A child process owned by a cancel scope, running in its own process group;
/// like tokio's `Child`, with a teardown that reaches the grandchildren.
///
/// From [`TaskGroup::spawn_process`], [`TaskGroup::spawn_with_process`] or
/// [`TaskMap::spawn_with_process`]. The child is stopped by its
/// [`ProcessPolicy`] (the grace to exit by itself, [`exit_grace`], then
/// `SIGTERM` to its group, [`term_grace`], `SIGKILL`, reaped) when its scope
/// is cancelled (for a task's child: once that task has ended, so that the
/// stdin it held is closed first), when [`shutdown`](Self::shutdown) is
/// called, or, once it is an orphan, by [`reap_orphans`](crate::reap_orphans)
/// (which skips `exit_grace`). [`end`](Self::end) says how it ended.
///
/// **Zombies:** the teardown reaps the child itself; grandchildren it killed
/// are re-parented to PID 1 and stay zombies until PID 1 reaps them, unless
/// this process called [`become_subreaper`](crate::become_subreaper) (Linux),
/// in which case the teardown reaps them too.
///
/// This handle is the child's *owner*. Dropping it never leaks the group: if
/// the child has ended or its scope is cancelled, nothing more is needed;
/// otherwise the child becomes an orphan, listed for [`reap_orphans`](crate::reap_orphans) and
/// still torn down when its scope is cancelled. Move it into the task that
/// uses the child, so that the task's end, however it ends, hands the child
/// over.
///
/// [`exit_grace`]: ProcessPolicy::exit_grace
/// [`term_grace`]: ProcessPolicy::term_grace
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
pub struct ScopedChild {
    /// The child's stdin, if the command had `stdin(Stdio::piped())`. Dropping
    /// it closes the pipe.
    pub stdin: Option<ChildStdin>,
    /// The child's stdout, if piped. Reads end (EOF) once the whole group is
    /// gone, since every member's copy of the pipe closes with it.
    pub stdout: Option<ChildStdout>,
    /// The child's stderr, if piped.
    pub stderr: Option<ChildStderr>,
    inner: Arc<ChildCore>,
    end: watch::Receiver<Option<End>>,
}

impl ScopedChild {
    /// The child's process id, which is also its process group's id; `None`
    /// once it has been reaped (the id may then belong to another process).
    #[must_use]
    pub fn id(&self) -> Option<u32> {
        (!lock(&self.inner.state).reaped).then_some(self.inner.pid)
    }

    /// Waits for the child to end and be reaped, with the rest of its group,
    /// and returns its exit status. Closes stdin first, as tokio's
    /// `Child::wait` does, so a child reading it is not left waiting.
    ///
    /// # Errors
    ///
    /// The error of reaping the leader, or one saying its reaper was gone
    /// (runtime shut down, escalation aborted it) before it was reaped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the reaper does the work; a later `wait` sees the result.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        drop(self.stdin.take());
        // The sender lives in `inner`, which we hold: only `Some` ends this.
        let end = self
            .end
            .wait_for(Option::is_some)
            .await
            .map_err(|_| io::Error::other("scoped child: reaper state dropped"))?
            .clone()
            .expect("waited for Some");
        end_status(&end)
    }

    /// The exit status if the child has ended and been reaped, without
    /// waiting or signalling.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match &*self.end.borrow() {
            Some(end) => end_status(end).map(Some),
            None => Ok(None),
        }
    }

    /// Stops the child now with its whole stop order and waits for it:
    /// closes its stdin (drops [`stdin`](Self::stdin), if still here), gives
    /// it [`exit_grace`](ProcessPolicy::exit_grace) to exit by itself, then
    /// `SIGTERM` to the group, [`term_grace`](ProcessPolicy::term_grace),
    /// `SIGKILL`, reap. A child that has already exited is only reaped,
    /// never signalled. [`end`](Self::end) says which step ended it.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the stop, once requested, finishes in the reaper.
    pub async fn shutdown(&mut self) -> io::Result<ExitStatus> {
        self.inner.update(|st| st.stop = true);
        drop(self.stdin.take());
        self.wait().await
    }

    /// How the child ended, once it has: whether it exited by itself
    /// ([`ChildEnd::Exited`], [`ChildEnd::ExitedInGrace`]) or needed
    /// `SIGTERM` or `SIGKILL`; `None` while it runs (or is being stopped).
    /// A pure read.
    #[must_use]
    pub fn end(&self) -> Option<ChildEnd> {
        self.end.borrow().as_ref().map(|e| e.how)
    }
}

fn end_status(end: &End) -> io::Result<ExitStatus> {
    match &end.status {
        Ok(status) => Ok(*status),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

impl Drop for ScopedChild {
    fn drop(&mut self) {
        let inner = &self.inner;
        let pruned = {
            let mut st = lock(&inner.state);
            // The owner is gone: a cancelled scope now begins the stop.
            st.owner_gone = true;
            // A cancelled scope is already stopping the child: not an orphan.
            if st.ended || st.orphaned || inner.owner.is_cancelled() {
                None
            } else {
                // Under the state lock, so the reaper cannot end the child
                // between the check and the insertion (invariant 2; lock
                // order: state, ORPHANS).
                st.orphaned = true;
                Some(adopt_orphan(inner.clone()))
            }
        };
        inner.wake.notify_one();
        // Ended orphans pruned from the set, and the log, after the lock.
        if let Some(pruned) = pruned {
            drop(pruned);
            tracing::debug!(pid = inner.pid, "owner of a live child ended: orphaned");
        }
    }
}

impl fmt::Debug for ScopedChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedChild")
            .field("inner", &self.inner)
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

// ===== spawning =====

/// A started child, not yet owned by a scope. Dropped before
/// [`attach`](Started::attach) (a spawn refused after the start, when a
/// `close` raced with it), it kills the group: a started child is never left
/// running unowned.
struct Started {
    /// Taken by `attach`.
    child: Option<Child>,
    pid: u32,
    pgid: Pid,
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.child.is_some() {
            tracing::debug!(
                pid = self.pid,
                "started child never owned: SIGKILL to its group"
            );
            // Not reaped yet (tokio's `Child`, dropped right after this,
            // reaps the leader in the background), so the group id is ours.
            let _ = signal_group(self.pgid, Signal::KILL);
        }
    }
}

fn no_runtime() -> io::Error {
    io::Error::other(
        "cancel_scope: no tokio runtime: spawn scoped processes from inside a runtime \
         (within #[tokio::main], Runtime::block_on or Handle::enter)",
    )
}

/// The one check every process spawner makes before starting anything: a
/// closed or cancelled group or map refuses, and no child is started.
fn refuse_if_closed<K>(shared: &Tracker<K>) -> io::Result<()>
where
    K: Eq + std::hash::Hash + Clone + fmt::Debug + Send + Sync + 'static,
{
    if shared.is_closed() {
        return Err(io::Error::other(SpawnError::Closed));
    }
    if shared.scope.is_cancelled() {
        return Err(io::Error::other(
            "cancel_scope: the group or map is cancelled; no process was started",
        ));
    }
    Ok(())
}

// ===== the process count =====

/// How many children of one tracker's process spawners were reaped (their
/// reaper finished, not abandoned): the tracker's `Stats::processes`, and through two
/// stats a report's `processes`. Attached through the seam, so neither the
/// core nor the tracker counts processes.
#[derive(Debug, Default)]
struct ProcessCount(std::sync::atomic::AtomicU64);

impl ProcessCount {
    /// The count of `tracker`, attached at its first process.
    fn of<K>(tracker: &Tracker<K>) -> Arc<Self>
    where
        K: Eq + std::hash::Hash + Clone + fmt::Debug + Send + Sync + 'static,
    {
        tracker.extensions.get_or_attach(Self::default)
    }

    /// A child was reaped.
    fn one_more(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Extension for ProcessCount {
    fn add_to(&self, stats: &mut Stats) {
        stats.processes += self.0.load(Ordering::Relaxed);
    }
}

/// Starts `cmd` in a new process group.
fn start(mut cmd: Command) -> io::Result<Started> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(no_runtime());
    }
    // Group id 0: a new group whose id is the child's pid, inherited by its
    // descendants; this is what lets one signal reach the grandchildren.
    cmd.process_group(0);
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
    let pgid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("pid {pid} out of range")))?;
    Ok(Started {
        child: Some(child),
        pid,
        pgid,
    })
}

impl Started {
    /// Gives the child to `owner`: its handle, and the reaper to run (which
    /// counts the child in `count` once it reaped it).
    fn attach(
        mut self,
        owner: CancelScope,
        policy: ProcessPolicy,
        wait_for_owner: bool,
        count: Arc<ProcessCount>,
    ) -> (ScopedChild, Arc<ChildCore>, Reaper) {
        let (tx, rx) = watch::channel(None);
        let inner = Arc::new(ChildCore {
            pid: self.pid,
            pgid: self.pgid,
            policy,
            owner,
            wait_for_owner,
            state: Mutex::new(ChildFlags::default()),
            gone: std::sync::atomic::AtomicBool::new(false),
            wake: Notify::new(),
            end: tx,
        });
        ALIVE.fetch_add(1, Ordering::Relaxed);
        let mut child = self.child.take().expect("attached once");
        let handle = ScopedChild {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            inner: inner.clone(),
            end: rx,
        };
        let core = inner.clone();
        // Dropped before it finishes (abandoned), it counts nothing.
        let reaper: Reaper = Box::pin(async move {
            reap(child, core).await;
            count.one_more();
        });
        tracing::debug!(pid = self.pid, ?policy, "spawned scoped child");
        (handle, inner, reaper)
    }
}

// ===== the task around a child =====

/// A child's reaper, boxed: it moves from the task to its linger, or to a
/// plain tokio task when its owner ended with the child still running.
type Reaper = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a process-owning task and its [`Linger`] share. Both are polled by
/// that one task, never at once; each part is taken out for its poll and
/// put back (nothing of the user's is polled or dropped under the lock).
struct Parts<F> {
    /// The user's future, until it returned or was dropped.
    user: Option<Pin<Box<F>>>,
    /// Until it reaped the child (or was handed off).
    reaper: Option<Reaper>,
    /// Set when the child is attached (inside the spawn).
    core: Option<Arc<ChildCore>>,
}

type SharedParts<F> = Arc<Mutex<Parts<F>>>;

fn empty_parts<F>() -> SharedParts<F> {
    Arc::new(Mutex::new(Parts {
        user: None,
        reaper: None,
        core: None,
    }))
}

/// The future of a process-owning task: the user's future, then the child's
/// stop. Polls the reaper (so the child's own exit is reaped while the task
/// runs) and the user's future; once that returned (dropping the
/// `ScopedChild` and stdin it held), the task ends when the child is reaped,
/// or at once if no stop is due (the child was left running: the reaper
/// goes on on a plain tokio task, the child an orphan if its handle was
/// dropped).
struct Session<F: Future> {
    parts: SharedParts<F>,
    core: Arc<ChildCore>,
    out: Option<F::Output>,
    /// The user's task owns the child (`spawn_with_process`); `false` for a
    /// group's reaper task (`spawn_process`), whose "user future" is a
    /// `ready(())` and which always waits for the reap.
    task_owned: bool,
}

// Nothing is pinned in place: the user's future is boxed, the output moved.
impl<F: Future> Unpin for Session<F> {}

impl<F: Future> Future for Session<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // The reaper first, and back in place before the user's poll: if that
        // panics, the drop below still finds the reaper.
        let reaper = lock(&this.parts).reaper.take();
        if let Some(mut reaper) = reaper {
            if reaper.as_mut().poll(cx).is_pending() {
                lock(&this.parts).reaper = Some(reaper);
            }
        }
        if this.out.is_none() {
            let user = lock(&this.parts).user.take();
            if let Some(mut user) = user {
                match user.as_mut().poll(cx) {
                    Poll::Ready(out) => {
                        this.out = Some(out);
                        // The owner ends first: what it held (the child's
                        // stdin) is dropped here, once the reaper can see
                        // that the stop began (an exit on EOF is then
                        // `ExitedInGrace`, not `Exited`).
                        if this.task_owned {
                            this.core.owner_ended();
                        }
                        drop(user);
                    }
                    Poll::Pending => lock(&this.parts).user = Some(user),
                }
            }
        }
        if this.out.is_none() {
            return Poll::Pending;
        }
        let reaper = lock(&this.parts).reaper.take();
        let Some(reaper) = reaper else {
            return Poll::Ready(this.out.take().expect("checked above"));
        };
        if this.task_owned && !this.core.stop_is_due() {
            // The task ended on its own with its child running: not ours to
            // stop (as before; `reap_orphans` or the scope's cancel will).
            tokio::spawn(reaper);
            return Poll::Ready(this.out.take().expect("checked above"));
        }
        // Stopping: the task lives until the reap (the owner-ended wake
        // above, or the reaper's own, brings the next poll).
        lock(&this.parts).reaper = Some(reaper);
        Poll::Pending
    }
}

impl<F: Future> Drop for Session<F> {
    fn drop(&mut self) {
        // Dropped before the end (tokio's abort, a panic, the runtime
        // shutting down; after a linger, both parts are gone already).
        let (user, reaper) = {
            let mut parts = lock(&self.parts);
            (parts.user.take(), parts.reaper.take())
        };
        if self.task_owned {
            self.core.owner_ended();
        }
        drop(user);
        if let Some(reaper) = reaper {
            // Not left without a reaper: on a plain task (an aborted task's
            // scope was cancelled as it was dropped, so the stop begins). A
            // runtime that is shutting down drops it at once, and its guard
            // kills the group.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(reaper)),
                Err(_) => drop(reaper),
            }
        }
    }
}

/// The [`Linger`] of a process-owning task: once the task is escalated or
/// aborted, drops the user's future (the owner ends first: its stdin
/// closes), asks for the stop with `SIGKILL` due within `budget` (half the
/// ladder's `abort_grace`, so the reap fits in the other half), and drives
/// the reaper to the end; the task ends, as aborted, once the child is
/// reaped.
fn linger<F>(parts: SharedParts<F>, budget: Duration) -> Linger
where
    F: Future + Send + 'static,
{
    let mut begun = false;
    Box::new(move |cx: &mut Context<'_>| {
        if !begun {
            begun = true;
            let (user, core) = {
                let mut p = lock(&parts);
                (p.user.take(), p.core.clone())
            };
            if let Some(core) = core {
                let kill_by = Instant::now()
                    .checked_add(budget)
                    .unwrap_or_else(crate::scope::far_future);
                core.update(|st| {
                    st.owner_gone = true;
                    st.stop = true;
                    st.kill_by = Some(st.kill_by.map_or(kill_by, |k| k.min(kill_by)));
                });
                tracing::debug!(
                    pid = core.pid,
                    ?budget,
                    "the task that owns a child was escalated or aborted: stopping the child, \
                     SIGKILL at the latest after the budget"
                );
            }
            // After the flags, as in the session's own end.
            drop(user);
        }
        let reaper = lock(&parts).reaper.take();
        match reaper {
            None => Poll::Ready(()),
            Some(mut reaper) => {
                if reaper.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                lock(&parts).reaper = Some(reaper);
                Poll::Pending
            }
        }
    })
}

/// Half the ladder's `abort_grace` of `tracker`: how long an escalated or
/// aborted process-owning task's child may take to stop before `SIGKILL`.
fn kill_budget<K>(tracker: &Tracker<K>) -> Duration
where
    K: Eq + std::hash::Hash + Clone + fmt::Debug + Send + Sync + 'static,
{
    tracker.policy.abort_grace / 2
}

#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
impl TaskGroup {
    /// Spawns `cmd` as a child process owned by the group's scope, in its own
    /// process group, with the default [`ProcessPolicy`] (`exit_grace` 1 s,
    /// `term_grace` 2 s).
    ///
    /// The child is stopped, grandchildren included, when the group is
    /// cancelled or shut down: up to `exit_grace` for it to exit by itself,
    /// `SIGTERM` to its process group, up to `term_grace`, `SIGKILL` to the
    /// group, then reaped, so no zombie of the leader remains and every copy
    /// of its stdio pipes is closed. The stop does not wait for the returned
    /// handle: its stdin stays open unless you drop it (or call
    /// [`ScopedChild::shutdown`], which closes it first). **Killed grandchildren stay zombies until reaped**: PID 1 reaps
    /// them where it is an init; where it is not (a container running your
    /// server as PID 1), call [`become_subreaper`](crate::become_subreaper)
    /// at start-up and the teardown reaps them too. A small
    /// tracked task of the group (named `process <pid>`) does this, so
    /// [`shutdown`](Self::shutdown) waits for it within the ladder (the report
    /// counts it in `processes`, and as one completed task, or as aborted if
    /// the ladder's grace ran out first: the escalation then cuts the stop
    /// order short, `SIGKILL` within half the `abort_grace`, and the ladder
    /// still waits for the reap). The child's own
    /// exit is reaped the same way; what is left of its group is then killed
    /// where this process is a subreaper, and left alone otherwise (its
    /// group id may be free once the child is reaped, and is never signalled).
    ///
    /// The returned [`ScopedChild`] is the owner: if it is dropped while the
    /// child runs and the group is not cancelled, the child becomes an orphan
    /// for [`reap_orphans`](crate::reap_orphans).
    ///
    /// `cmd`'s stdio settings are kept (pipe what you want to talk over); its
    /// process group setting is replaced.
    ///
    /// Unix only (with the `process` feature); the API does not exist on other
    /// targets.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::process::ExitStatusExt;
    /// use cancel_scope::{ChildEnd, TaskGroup};
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = TaskGroup::new();
    /// let mut cmd = Command::new("sh");
    /// cmd.args(["-c", "sleep 100"]);
    /// let mut child = group.spawn_process(cmd)?;
    ///
    /// let report = group.shutdown().await; // exit_grace, SIGTERM, reaped
    /// assert!(report.is_clean());
    /// assert_eq!(child.wait().await?.signal(), Some(15)); // SIGTERM
    /// assert_eq!(child.end(), Some(ChildEnd::Terminated));
    /// assert_eq!(child.id(), None); // reaped
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As every process spawner: the error of starting `cmd` (e.g.
    /// `NotFound`), or an error outside a tokio runtime or on a cancelled or
    /// [closed](Self::close) group (wrapping [`SpawnError::Closed`]); then no
    /// process was started.
    #[track_caller]
    pub fn spawn_process(&self, cmd: Command) -> io::Result<ScopedChild> {
        self.spawn_process_with(cmd, ProcessPolicy::default())
    }

    /// As [`spawn_process`](Self::spawn_process), torn down by `policy`.
    ///
    /// # Errors
    ///
    /// As [`spawn_process`](Self::spawn_process).
    #[track_caller]
    pub fn spawn_process_with(
        &self,
        cmd: Command,
        policy: ProcessPolicy,
    ) -> io::Result<ScopedChild> {
        refuse_if_closed(Tracks::tracker(self))?;
        let count = ProcessCount::of(Tracks::tracker(self));
        let budget = kill_budget(Tracks::tracker(self));
        let started = start(cmd)?;
        let pid = started.pid;
        let (handle, core, reaper) = started.attach(self.scope().clone(), policy, false, count);
        let parts = Arc::new(Mutex::new(Parts {
            user: Some(Box::pin(std::future::ready(()))),
            reaper: Some(reaper),
            core: Some(core.clone()),
        }));
        // No escalation hook (a hook runs on another thread, and only the
        // reaper signals: invariant 1): past the ladder's grace, the linger
        // cuts the stop order short and drives the reaper to the reap.
        let session = Session {
            parts: parts.clone(),
            core: core.clone(),
            out: None,
            task_owned: false,
        };
        let spawned = self
            .build_task()
            .name(format!("process {pid}"))
            .linger(linger(parts.clone(), budget))
            // Cooperative: the reaper must survive the cancellation it reacts to.
            .try_spawn_with_scope(|_task_scope| session);
        if let Err(e) = spawned {
            // A `close` raced with this call: stop the child at once on a
            // plain tokio task, so it is neither left running nor leaked.
            core.update(|st| st.no_exit_grace = true);
            let reaper = lock(&parts).reaper.take();
            if let Some(reaper) = reaper {
                tokio::spawn(reaper);
            }
            drop(handle);
            return Err(io::Error::other(e));
        }
        Ok(handle)
    }

    /// Starts `cmd` as a child process and spawns the task `f(scope, child)`
    /// in the group, the child owned by that task's own scope, as
    /// [`TaskMap::spawn_with_process`] without a key (this is
    /// [`TaskBuilder::spawn_with_process`] on [`build_task`](Self::build_task)).
    ///
    /// The process follows the task, in the stop order of `policy`: once the
    /// task is cancelled ([`TaskHandle::cancel`], or the group's
    /// [`cancel`](Self::cancel) / [`shutdown`](Self::shutdown)) **and its
    /// future has returned** (dropping the `ScopedChild` and the stdin it
    /// holds), the child gets `policy.exit_grace` to exit by itself, then
    /// `SIGTERM` to its group, `policy.term_grace`, `SIGKILL`, reaped. The
    /// task stays alive until the child is reaped, so the group's ladder (and
    /// awaiting the handle) covers the stop. A task the ladder escalates (it
    /// ignored its cancellation) has its hook run and its future dropped;
    /// then the stop order runs, `SIGKILL` due within half the ladder's
    /// `abort_grace`, and the task ends, aborted, after the reap. Aborting it
    /// ([`TaskHandle::abort`], tokio's abort) drops it at once; the stop order
    /// then finishes in the background. A task that returns on its own, not
    /// cancelled, leaves its child running (an orphan once the handle is
    /// dropped). Use
    /// [`spawn_process`](Self::spawn_process) for a child owned by the group
    /// itself, without a task of yours around it.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{ProcessPolicy, TaskGroup};
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = TaskGroup::new();
    /// let mut cmd = Command::new("sh");
    /// cmd.args(["-c", "sleep 100"]);
    /// let job = group.spawn_with_process(cmd, ProcessPolicy::default(), |scope, mut child| async move {
    ///     tokio::select! {
    ///         _ = scope.cancelled() => "cancelled",
    ///         _ = child.wait() => "exited",
    ///     }
    /// })?;
    /// job.cancel(); // this task only: it returns, then its child is stopped
    /// assert_eq!(job.await.unwrap(), "cancelled"); // after exit_grace and SIGTERM
    /// assert!(group.is_empty()); // the child was reaped before the task ended
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As every process spawner: the error of starting `cmd`, or an error
    /// outside a tokio runtime or on a cancelled or [closed](Self::close)
    /// group (wrapping [`SpawnError::Closed`]); then no process was started
    /// and nothing was spawned.
    #[track_caller]
    pub fn spawn_with_process<F, Fut>(
        &self,
        cmd: Command,
        policy: ProcessPolicy,
        f: F,
    ) -> io::Result<TaskHandle<Fut::Output>>
    where
        F: FnOnce(CancelScope, ScopedChild) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.build_task().spawn_with_process(cmd, policy, f)
    }
}

#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
impl<K> TaskMap<K>
where
    K: Eq + std::hash::Hash + Clone + fmt::Debug + Send + Sync + 'static,
{
    /// Starts `cmd` as a child process and spawns the session task `f(scope,
    /// child)` under `key`, the child owned by that task's scope: cancelling
    /// the key ([`cancel`](Self::cancel), a replacement, or the map's
    /// [`shutdown`](Self::shutdown)) stops the child once the session's
    /// future has returned (its stdin closed with it): `policy.exit_grace`,
    /// `SIGTERM` to its group, `policy.term_grace`, `SIGKILL`, reaped.
    ///
    /// A cancelled session stays alive until its child is reaped (the reaper
    /// runs inside the session's task: no other entry is added, so `len()`,
    /// [`keys`](Self::keys) and [`snapshot`](Self::snapshot) show the one
    /// session), so the map's ladder, and the `TaskOutcome` of `cancel`,
    /// cover the stop. A session that ignores its cancellation is escalated
    /// (its hook runs, its future is dropped) and ends as
    /// [`Aborted`](crate::TaskOutcome::Aborted) once its child, stopped with
    /// `SIGKILL` due within half the map's `abort_grace`, is reaped. A
    /// session that ends on its own (or panics) while its child runs leaves
    /// it an orphan: [`reap_orphans`](crate::reap_orphans) reaps it, and the
    /// other sessions' children are not touched; such a child's reaper goes
    /// on on a plain tokio task, which no ladder waits for.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{ProcessPolicy, TaskMap, TaskOutcome};
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let sessions = TaskMap::new();
    /// let mut cmd = Command::new("sh");
    /// cmd.args(["-c", "sleep 100"]);
    /// sessions.spawn_with_process("alice", cmd, ProcessPolicy::default(), |scope, mut child| async move {
    ///     // Talk to the child until the session is cancelled.
    ///     tokio::select! {
    ///         _ = scope.cancelled() => {}
    ///         _ = child.wait() => {}
    ///     }
    /// })?;
    /// // Returns once the session and its whole process group are gone.
    /// assert_eq!(sessions.cancel(&"alice").await, Some(TaskOutcome::Completed));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The error of starting `cmd`, or an error outside a tokio runtime or on
    /// a cancelled or [closed](Self::close) map (wrapping
    /// [`SpawnError::Closed`]); then no process was started, nothing was
    /// spawned, and the task under `key`, if any, is left alone.
    #[track_caller]
    pub fn spawn_with_process<F, Fut>(
        &self,
        key: K,
        cmd: Command,
        policy: ProcessPolicy,
        f: F,
    ) -> io::Result<TaskHandle<Fut::Output>>
    where
        F: FnOnce(CancelScope, ScopedChild) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.build_task(key).spawn_with_process(cmd, policy, f)
    }
}

#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
impl<K> TaskBuilder<'_, K>
where
    K: Eq + std::hash::Hash + Clone + fmt::Debug + Send + Sync + 'static,
{
    /// Starts `cmd` as a child process and spawns `f(scope, child)` as this
    /// task, the child owned by the task's own scope, as
    /// [`TaskMap::spawn_with_process`] (which is this on
    /// [`TaskMap::build_task`]), with the builder's name and escalation hook.
    /// In a [`TaskGroup`], the task's scope is cancelled with the group.
    ///
    /// Cancelling the task ([`TaskHandle::cancel`], its key, its group) or
    /// aborting it stops the child's process group once the task's future
    /// has ended, in the stop order of `policy`: the process follows the
    /// task, and the task ends after the reap (see
    /// [`TaskGroup::spawn_with_process`]).
    ///
    /// With [`on_escalate`](Self::on_escalate), the hook runs as for any
    /// task when the ladder escalates (close the child's stdin there, or the
    /// transport the task is blocked on); the task's future is then dropped
    /// and the child's stop order runs within the ladder's `abort_grace`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::{ChildEnd, ProcessPolicy, ShutdownPolicy, TaskMap, TaskOutcome};
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let sessions = TaskMap::with_policy(ShutdownPolicy {
    ///     grace: Duration::from_millis(100),
    ///     ..Default::default()
    /// });
    /// let mut cmd = Command::new("cat"); // exits when its stdin closes
    /// cmd.stdin(std::process::Stdio::piped());
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// sessions
    ///     .build_task("upstream")
    ///     .on_escalate(|| { /* close the upstream's transport */ })
    ///     .spawn_with_process(cmd, ProcessPolicy::default(), |_scope, mut child| {
    ///         let stdin = child.stdin.take();
    ///         let _ = tx.send(child); // keep the handle, to read its end
    ///         async move {
    ///             let _stdin = stdin;
    ///             std::future::pending::<()>().await // ignores its scope
    ///         }
    ///     })?;
    /// let mut child = rx.await.unwrap();
    /// // Escalated after 100 ms: the hook ran, the future (and stdin) dropped,
    /// // `cat` saw EOF and exited within exit_grace; reaped before this returns.
    /// assert_eq!(sessions.cancel(&"upstream").await, Some(TaskOutcome::Aborted));
    /// assert_eq!(child.end(), Some(ChildEnd::ExitedInGrace));
    /// assert!(child.wait().await?.success());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As every process spawner: the error of starting `cmd`, or an error
    /// outside a tokio runtime or on a cancelled or closed group or map
    /// (wrapping [`SpawnError::Closed`]); then no process was started and
    /// nothing was spawned.
    #[track_caller]
    pub fn spawn_with_process<F, Fut>(
        self,
        cmd: Command,
        policy: ProcessPolicy,
        f: F,
    ) -> io::Result<TaskHandle<Fut::Output>>
    where
        F: FnOnce(CancelScope, ScopedChild) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        refuse_if_closed(Tracks::tracker(&self))?;
        let count = ProcessCount::of(Tracks::tracker(&self));
        let budget = kill_budget(Tracks::tracker(&self));
        let mut started = Some(start(cmd)?);
        // Filled inside the spawn, where the task's own scope is handed out
        // (the child's owner); the linger shares them.
        let parts: SharedParts<Fut> = empty_parts();
        let theirs = parts.clone();
        // `try_spawn_with_scope` calls this at once, with the task's own
        // scope: the only place that scope is handed out. If it refuses (a
        // `close` raced with this call) `started` is left here and its drop
        // kills the group.
        let spawned = self
            .linger(linger(parts.clone(), budget))
            .try_spawn_with_scope(|scope| {
                let started = started.take().expect("called once");
                let (child, core, reaper) = started.attach(scope.clone(), policy, true, count);
                let user = f(scope, child);
                {
                    let mut p = lock(&theirs);
                    p.user = Some(Box::pin(user));
                    p.reaper = Some(reaper);
                    p.core = Some(core.clone());
                }
                Session {
                    parts: theirs,
                    core,
                    out: None,
                    task_owned: true,
                }
            });
        spawned.map_err(io::Error::other)
    }
}
