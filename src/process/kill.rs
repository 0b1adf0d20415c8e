//! Signals to a whole process group, and reaping its members: the only code
//! that calls `kill` or `waitpid` on a group. Imports nothing of the other
//! process modules.

use std::io;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};

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

/// Reaps every child of ours in the group that has exited (only
/// grandchildren, once the leader is reaped, and only if we are a
/// [subreaper](become_subreaper)); never blocks. Returns whether a child of
/// ours in the group is still alive: it keeps the group id in use until we
/// reap it, so the group can then be signalled safely. This assumes nothing
/// else in the process reaps our children (`waitpid(-1)`, `SIGCHLD` ignored).
pub(super) fn reap_exited_members(pgid: Pid) -> bool {
    loop {
        match rustix::process::waitpgid(pgid, WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(Errno::INTR) => {} // reaped one (or interrupted): again
            Ok(None) => return true,             // some are still alive
            Err(_) => return false,              // ECHILD: none of ours left
        }
    }
}

/// Reaps the children of ours in the group as they die (after `SIGKILL`),
/// waiting with a timer back-off of 1 ms doubling, at most 10 times (about
/// 1 s).
pub(super) async fn reap_dying_members(pgid: Pid) {
    let mut delay = Duration::from_millis(1);
    for _ in 0..10 {
        if !reap_exited_members(pgid) {
            return;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// Sends `sig` to the process group. `Ok(false)` if the group is empty.
pub(super) fn signal_group(pgid: Pid, sig: Signal) -> io::Result<bool> {
    match rustix::process::kill_process_group(pgid, sig) {
        Ok(()) => Ok(true),
        Err(Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
