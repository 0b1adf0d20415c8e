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
//! 2. A child is in the orphan set only while `orphaned && !ended`: the drop of
//!    [`ScopedChild`] inserts it under the state lock after checking `ended`,
//!    and the reaper removes it after setting `ended` under the same lock.
//! 3. `end` is published exactly once, by the reaper or by its drop guard.
//!
//! # Deadlock safety
//!
//! Lock order: a child's `state`, then `ORPHANS`. The reaper releases `state`
//! before it takes `ORPHANS`; [`reap_orphans`] holds `ORPHANS` only to copy it.
//!
//! The process group id can be reused only after every member of the group
//! has been reaped; the one window in which a group signal could hit a new
//! group of the same number is the `SIGKILL` sent right after the leader was
//! reaped, when the group was already empty: microseconds, and only if the pid
//! space wrapped around in between.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{Notify, watch};

use crate::builder::TaskBuilder;
use crate::group::TaskGroup;
use crate::map::TaskMap;
use crate::scope::CancelScope;
use crate::task::TaskHandle;

// ===== impl ProcessPolicy =====

/// How a scoped child is torn down.
///
/// Public fields with a [`Default`], so a policy reads
/// `ProcessPolicy { term_grace: Duration::from_millis(500), ..Default::default() }`.
///
/// Keep `term_grace` below the group's [`ShutdownPolicy::grace`]: past that
/// grace the ladder escalates on the child's reaper, which sends `SIGKILL` to
/// the group at once and leaves the reaping of the leader to tokio.
///
/// [`ShutdownPolicy::grace`]: crate::ShutdownPolicy::grace
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessPolicy {
    /// How long the process group may take to exit after `SIGTERM` before it
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

/// How a child ended, as the reaper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
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

/// The end the reaper publishes once (invariant #3).
#[derive(Debug, Clone)]
struct End {
    /// The leader's exit status; the error is shared because `io::Error` is
    /// not `Clone` and several handles may read it.
    status: Result<ExitStatus, Arc<io::Error>>,
    how: How,
    /// A signal that could not be sent (other than "no such group").
    failure: Option<String>,
}

/// Flags of one child, under `Inner::state`.
#[derive(Debug, Default)]
struct State {
    /// The reaper has reaped the leader: its pid may be reused, so nothing may
    /// signal it any more (invariant #1).
    reaped: bool,
    /// The end is published. Implies `reaped`, except for `How::Abandoned`.
    ended: bool,
    /// The owner (`ScopedChild`) was dropped while the child was alive and its
    /// scope not cancelled. `orphaned && ended` is transient: the reaper
    /// removes such a child from `ORPHANS` right after setting `ended`.
    orphaned: bool,
}

struct Inner {
    pid: u32,
    /// The group's id: the leader's pid.
    pgid: Pid,
    policy: ProcessPolicy,
    /// The scope that owns the child; cancelling it tears the group down.
    owner: CancelScope,
    state: Mutex<State>,
    /// Asks the reaper for a teardown now. `notify_one` keeps a permit, so a
    /// request made before the reaper waits is not lost.
    teardown: Notify,
    end: watch::Sender<Option<End>>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `SIGKILL` to the group unless the leader was reaped (invariant #1); for
    /// the escalation hook and the reaper's drop guard.
    fn kill_now(&self, why: &str) {
        let st = self.state();
        if st.reaped {
            return;
        }
        tracing::warn!(pid = self.pid, why, "SIGKILL to the process group");
        if let Err(e) = signal_group(self.pgid, Signal::KILL) {
            tracing::error!(pid = self.pid, error = %e, "SIGKILL to the process group failed");
        }
    }

    /// Publishes the end and leaves the orphan set (invariants #2, #3).
    fn finish(&self, end: End) {
        let was_orphan = {
            let mut st = self.state();
            if st.ended {
                return;
            }
            st.ended = true;
            st.orphaned
        };
        tracing::debug!(pid = self.pid, how = ?end.how, status = ?end.status, "scoped child ended");
        self.end.send_replace(Some(end));
        // Relaxed: a statistic; nothing is ordered by it.
        ALIVE.fetch_sub(1, Ordering::Relaxed);
        if was_orphan {
            orphans().retain(|o| !std::ptr::eq(Arc::as_ptr(o), self));
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("Inner")
            .field("pid", &self.pid)
            .field("policy", &self.policy)
            .field("owner", &self.owner.id())
            .field("reaped", &st.reaped)
            .field("ended", &st.ended)
            .field("orphaned", &st.orphaned)
            .finish()
    }
}

// ===== the orphan set =====

/// Children whose owner ended while they were alive. Process-global: orphans
/// outlive the groups, maps and tasks that spawned them, which is the point.
static ORPHANS: Mutex<Vec<Arc<Inner>>> = Mutex::new(Vec::new());

/// Scoped children whose end is not published yet.
static ALIVE: AtomicUsize = AtomicUsize::new(0);

fn orphans() -> MutexGuard<'static, Vec<Arc<Inner>>> {
    ORPHANS.lock().unwrap_or_else(|e| e.into_inner())
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
}

/// A snapshot of the process-wide [`ProcessStats`].
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
#[must_use]
pub fn process_stats() -> ProcessStats {
    ProcessStats {
        alive: ALIVE.load(Ordering::Relaxed),
        orphans: orphans().len(),
    }
}

/// Tears down every orphan: each scoped child whose owner ([`ScopedChild`])
/// was dropped while the child was alive and its scope not cancelled (the
/// owning task completed, panicked, was aborted or dropped). A child whose
/// owner is alive is never touched.
///
/// Each orphan's reaper first probes it without a signal (`waitpid` with
/// `WNOHANG`): one that has exited is only reaped ([`ReapReport::already_gone`]).
/// The others get the teardown of their [`ProcessPolicy`] (`SIGTERM` to the
/// group, `term_grace`, `SIGKILL`, reap), all at once; this returns when each
/// has ended, so within the longest `term_grace` plus scheduling noise.
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
    let found: Vec<Arc<Inner>> = orphans().clone();
    let mut ends = Vec::with_capacity(found.len());
    for orphan in &found {
        // The reaper probes before it signals; asking is all we do here.
        orphan.teardown.notify_one();
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
            (How::Abandoned, None) => report.failed.push((
                pid,
                "reaper gone (runtime shut down?): group sent SIGKILL, left to tokio to reap"
                    .to_owned(),
            )),
            (How::OnItsOwn, None) => report.already_gone.push(pid),
            (How::Terminated | How::Killed, None) => report.reaped.push(pid),
        }
    }
    if !report.reaped.is_empty() || !report.is_clean() {
        tracing::info!(%report, "reaped orphaned child processes");
    }
    report
}

/// Makes this process the *subreaper* of its descendants (Linux,
/// `prctl(PR_SET_CHILD_SUBREAPER)`): a grandchild whose parent dies is then
/// re-parented to this process instead of to init, and the teardown of a
/// scoped child reaps the members of its group that became ours, so no zombie
/// of the group is left even where PID 1 does not reap (minimal containers
/// whose PID 1 is not an init).
///
/// This is process-wide and affects every orphaned descendant, not only
/// scoped children: other orphans re-parented here stay zombies unless
/// something reaps them. Call it once at start-up if your init does not reap.
///
/// # Errors
///
/// The `prctl` error, e.g. on kernels older than 3.4.
#[cfg(target_os = "linux")]
#[cfg_attr(docsrs, doc(cfg(all(target_os = "linux", feature = "process"))))]
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

// ===== impl ScopedChild =====

/// A child process owned by a cancel scope, running in its own process group;
/// like tokio's `Child`, with a teardown that reaches the grandchildren.
///
/// From [`TaskGroup::spawn_process`] or [`TaskMap::spawn_with_process`]. The
/// child is torn down (`SIGTERM` to its group, [`term_grace`], `SIGKILL`,
/// reaped) when its scope is cancelled, when [`shutdown`](Self::shutdown) is
/// called, or, once it is an orphan, by [`reap_orphans`].
///
/// This handle is the child's *owner*. Dropping it never leaks the group: if
/// the child has ended or its scope is cancelled, nothing more is needed;
/// otherwise the child becomes an orphan, listed for [`reap_orphans`] and
/// still torn down when its scope is cancelled. Move it into the task that
/// uses the child, so that the task's end, however it ends, hands the child
/// over.
///
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
    inner: Arc<Inner>,
    end: watch::Receiver<Option<End>>,
}

impl ScopedChild {
    /// The child's process id, which is also its process group's id; `None`
    /// once it has been reaped (the id may then belong to another process).
    #[must_use]
    pub fn id(&self) -> Option<u32> {
        (!self.inner.state().reaped).then_some(self.inner.pid)
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

    /// Tears the child down now, as a cancellation of its scope would
    /// (`SIGTERM` to the group, `term_grace`, `SIGKILL`, reap), and waits for
    /// it. A child that has already exited is only reaped, never signalled.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the teardown, once requested, finishes in the reaper.
    pub async fn shutdown(&mut self) -> io::Result<ExitStatus> {
        self.inner.teardown.notify_one();
        self.wait().await
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
        let mut st = inner.state();
        // A cancelled scope is already tearing the child down: not an orphan.
        if st.ended || st.orphaned || inner.owner.is_cancelled() {
            return;
        }
        // Under the state lock, so the reaper cannot end the child between the
        // check and the insertion (invariant #2; lock order: state, ORPHANS).
        st.orphaned = true;
        orphans().push(inner.clone());
        tracing::debug!(pid = inner.pid, "owner of a live child ended: orphaned");
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

/// A started child, not yet owned by a scope.
struct Started {
    child: Child,
    pid: u32,
    pgid: Pid,
}

fn no_runtime() -> io::Error {
    io::Error::other(
        "cancel_scope: no tokio runtime: spawn scoped processes from inside a runtime \
         (within #[tokio::main], Runtime::block_on or Handle::enter)",
    )
}

fn scope_cancelled() -> io::Error {
    io::Error::other("cancel_scope: the scope is cancelled; no process was started")
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
    Ok(Started { child, pid, pgid })
}

impl Started {
    /// Gives the child to `owner`: its handle, and the reaper to run.
    fn attach(
        mut self,
        owner: CancelScope,
        policy: ProcessPolicy,
    ) -> (
        ScopedChild,
        Arc<Inner>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = watch::channel(None);
        let inner = Arc::new(Inner {
            pid: self.pid,
            pgid: self.pgid,
            policy,
            owner,
            state: Mutex::new(State::default()),
            teardown: Notify::new(),
            end: tx,
        });
        ALIVE.fetch_add(1, Ordering::Relaxed);
        let handle = ScopedChild {
            stdin: self.child.stdin.take(),
            stdout: self.child.stdout.take(),
            stderr: self.child.stderr.take(),
            inner: inner.clone(),
            end: rx,
        };
        let reaper = reap(self.child, inner.clone());
        tracing::debug!(pid = self.pid, ?policy, "spawned scoped child");
        (handle, inner, reaper)
    }
}

#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "process"))))]
impl TaskGroup {
    /// Spawns `cmd` as a child process owned by the group's scope, in its own
    /// process group, with the default [`ProcessPolicy`] (`term_grace` 2 s).
    ///
    /// The child is torn down, grandchildren included, when the group is
    /// cancelled or shut down: `SIGTERM` to its process group, up to
    /// `term_grace` for it to exit, `SIGKILL` to the group, then reaped, so no
    /// zombie remains and every copy of its stdio pipes is closed. (Killed
    /// grandchildren are re-parented and reaped by init, or by this process
    /// after [`become_subreaper`] where init does not reap.) A small
    /// tracked task of the group (named `process <pid>`) does this, so
    /// [`shutdown`](Self::shutdown) waits for it within the ladder (the report
    /// counts it in `processes`, and as one completed task). The child's own exit is reaped
    /// the same way, and what is left of its group is killed.
    ///
    /// The returned [`ScopedChild`] is the owner: if it is dropped while the
    /// child runs and the group is not cancelled, the child becomes an orphan
    /// for [`reap_orphans`].
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
    /// use cancel_scope::TaskGroup;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = TaskGroup::new();
    /// let mut cmd = Command::new("sh");
    /// cmd.args(["-c", "sleep 100"]);
    /// let mut child = group.spawn_process(cmd)?;
    ///
    /// let report = group.shutdown().await; // SIGTERM to the group, reaped
    /// assert!(report.is_clean());
    /// assert_eq!(child.wait().await?.signal(), Some(15)); // SIGTERM
    /// assert_eq!(child.id(), None); // reaped
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The error of starting `cmd` (e.g. `NotFound`); an error if called
    /// outside a tokio runtime or after the group was cancelled (then no
    /// process is started).
    pub fn spawn_process(&self, cmd: Command) -> io::Result<ScopedChild> {
        self.spawn_process_with(cmd, ProcessPolicy::default())
    }

    /// As [`spawn_process`](Self::spawn_process), torn down by `policy`.
    ///
    /// # Errors
    ///
    /// As [`spawn_process`](Self::spawn_process).
    pub fn spawn_process_with(
        &self,
        cmd: Command,
        policy: ProcessPolicy,
    ) -> io::Result<ScopedChild> {
        if self.scope().is_cancelled() {
            return Err(scope_cancelled());
        }
        let started = start(cmd)?;
        let pid = started.pid;
        let (handle, inner, reaper) = started.attach(self.scope().clone(), policy);
        let hook = inner.clone();
        let spawned = self
            .build_task()
            .name(format!("process {pid}"))
            .owns_process()
            // Past the ladder's grace the reaper is aborted: kill the group
            // first, so the abort cannot leave it running.
            .on_escalate(move || hook.kill_now("ladder escalated on the reaper"))
            // Cooperative: the reaper must survive the cancellation it reacts to.
            .try_spawn_with_scope(move |_task_scope| reaper);
        if let Err(e) = spawned {
            // Not reachable after `start` found a runtime; never leak the group.
            inner.kill_now("reaper could not be spawned");
            return Err(io::Error::other(e));
        }
        Ok(handle)
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
    /// [`shutdown`](Self::shutdown)) tears the child's process group down
    /// (`SIGTERM`, `policy.term_grace`, `SIGKILL`, reaped).
    ///
    /// A cancelled session stays alive until its child is reaped, so the
    /// map's ladder, and the `TaskOutcome` of `cancel`, cover the teardown. A
    /// session that ends on its own (or panics, or is aborted) while its
    /// child runs leaves it an orphan: [`reap_orphans`] reaps it, and the other
    /// sessions' children are not touched. The reaper itself is a plain tokio
    /// task (a map tracks keyed tasks only).
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
    /// a cancelled map; then nothing was spawned and the task under `key`, if
    /// any, is left alone.
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
        if self.scope().is_cancelled() {
            return Err(scope_cancelled());
        }
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
    /// On a cancelled group or map the child starts and is torn down at once;
    /// [`TaskMap::spawn_with_process`] refuses that case instead.
    ///
    /// # Errors
    ///
    /// The error of starting `cmd`, or an error outside a tokio runtime; then
    /// nothing was spawned.
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
        let started = start(cmd)?;
        // `spawn_with_scope` calls this at once, with the task's own scope:
        // the only place that scope is handed out. `start` found a runtime,
        // so it does not panic.
        // The session task waits for the teardown, so its end counts the child.
        let handle = self.owns_process().spawn_with_scope(move |scope| {
            let (child, inner, reaper) = started.attach(scope.clone(), policy);
            tokio::spawn(reaper);
            let session = f(scope.clone(), child);
            async move {
                let out = session.await;
                if scope.is_cancelled() {
                    // Keep the session alive until the teardown is done, so
                    // whoever waits for the session waits for the group too.
                    let mut end = inner.end.subscribe();
                    let _ = end.wait_for(Option::is_some).await;
                }
                out
            }
        });
        Ok(handle)
    }
}

// ===== the reaper =====

/// Publishes `How::Abandoned` if the reaper is dropped before it finished,
/// after sending `SIGKILL` to the group (invariant #1 guards the pid).
struct AbandonGuard<'a> {
    inner: &'a Inner,
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
            how: How::Abandoned,
            failure: None,
        });
    }
}

/// Owns the child until it is reaped: waits for its exit, its owner's
/// cancellation or a teardown request, then tears its group down.
async fn reap(mut child: Child, inner: Arc<Inner>) {
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
            inner.state().reaped = true;
            sweep_stragglers(&inner).await;
            End {
                status: status.map_err(Arc::new),
                how: How::OnItsOwn,
                failure: None,
            }
        }
        None => teardown(&mut child, &inner).await,
    };
    guard.armed = false;
    inner.finish(end);
}

/// `SIGTERM`, `term_grace`, `SIGKILL`, reap.
async fn teardown(child: &mut Child, inner: &Inner) -> End {
    // The liveness probe sends no signal: `waitpid(WNOHANG)`.
    if let Ok(Some(status)) = child.try_wait() {
        inner.state().reaped = true;
        sweep_stragglers(inner).await;
        return End {
            status: Ok(status),
            how: How::OnItsOwn,
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
        Ok(status) => (status, How::Terminated),
        Err(_) => {
            tracing::debug!(
                pid = inner.pid,
                ?grace,
                "term grace over: SIGKILL to the process group"
            );
            if let Err(e) = signal_group(inner.pgid, Signal::KILL) {
                failure = Some(format!("SIGKILL to group {}: {e}", inner.pid));
            }
            (child.wait().await, How::Killed)
        }
    };
    inner.state().reaped = true;
    sweep_stragglers(inner).await;
    End {
        status: status.map_err(Arc::new),
        how,
        failure,
    }
}

/// After the leader was reaped: reaps the members that are already our
/// zombies, kills what is left of the group (the leader's exit ends the
/// group's grace), and reaps those that were re-parented to us.
async fn sweep_stragglers(inner: &Inner) {
    reap_members(inner.pgid, false).await;
    if let Ok(true) = signal_group(inner.pgid, Signal::KILL) {
        tracing::debug!(pid = inner.pid, "killed the rest of the process group");
        reap_members(inner.pgid, true).await;
    }
}

/// Reaps every child of ours in the group (only grandchildren, once the leader
/// is reaped, and only if we are a [subreaper](become_subreaper)). Never
/// blocks; with `wait_dying`, members still dying (after `SIGKILL`) are waited
/// for with a timer back-off of 1 ms doubling, at most 10 times (about 1 s).
async fn reap_members(pgid: Pid, wait_dying: bool) {
    let mut delay = Duration::from_millis(1);
    for _ in 0..10 {
        loop {
            match rustix::process::waitpgid(pgid, WaitOptions::NOHANG) {
                Ok(Some(_)) | Err(Errno::INTR) => {} // reaped one (or interrupted): again
                Ok(None) => break,                   // some are still alive
                Err(_) => return,                    // ECHILD: none of ours left
            }
        }
        if !wait_dying {
            return;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// Sends `sig` to the process group. `Ok(false)` if the group is empty.
fn signal_group(pgid: Pid, sig: Signal) -> io::Result<bool> {
    match rustix::process::kill_process_group(pgid, sig) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
