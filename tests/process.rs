//! Scoped child processes, with real processes (`sh` and `sleep` only): group
//! teardown reaches the grandchildren and leaves no zombie, SIGTERM escalates
//! to SIGKILL, orphans are reaped without touching live sessions.
//!
//! State is read from `/proc`, never inferred from timings. `reap_orphans` is
//! process-wide, so the tests that make orphans hold `ORPHAN_TESTS`.
#![cfg(all(unix, feature = "process"))]

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use cancel_scope::{
    ChildEnd, ProcessPolicy, ProcessStats, ScopedChild, ShutdownPolicy, SpawnError, TaskError,
    TaskGroup, TaskHandle, TaskMap, TaskOutcome, process_stats, reap_orphans,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{ChildStdout, Command};
use tokio::sync::oneshot;

/// Serializes the tests that make orphans (`reap_orphans` would take another
/// test's orphan) and every test that signals or compares the process-wide
/// counters ([`ProcessStats::sigterms_sent`], `sigkills_sent`): a test that
/// counts signals sees only its own.
static ORPHAN_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    state: char,
    pgrp: u32,
}

/// Every process (zombies included) whose process group is `pgid`.
fn members(pgid: u32) -> Vec<Proc> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc is mounted") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // The process may be gone by now: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid pgrp ...": comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields[0].chars().next().unwrap_or('?');
        let pgrp: u32 = fields[2].parse().unwrap_or(0);
        if pgrp == pgid {
            found.push(Proc { pid, state, pgrp });
        }
    }
    found
}

/// Members of the group that are running (not zombies, not dead).
fn running(pgid: u32) -> Vec<Proc> {
    members(pgid)
        .into_iter()
        .filter(|p| !matches!(p.state, 'Z' | 'X'))
        .collect()
}

/// `sh -c script` with stdout piped (the script says `ready` when set up).
fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Waits for the child's `ready` line, so the test starts from a known state
/// (traps installed, background jobs forked).
async fn ready(stdout: &mut Option<ChildStdout>) -> BufReader<ChildStdout> {
    let mut lines = BufReader::new(stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    lines.read_line(&mut line).await.expect("read ready");
    assert_eq!(line.trim(), "ready");
    lines
}

/// Grandchildren re-parented on their parent's death must be reaped by us: the
/// sandbox's PID 1 does not reap.
fn setup() {
    cancel_scope::become_subreaper().expect("prctl(PR_SET_CHILD_SUBREAPER)");
}

#[tokio::test]
async fn cancelling_the_group_kills_the_whole_process_group() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let group = TaskGroup::new();
    let mut child = group
        .spawn_process(sh("sleep 1000 & echo ready; sleep 1000"))
        .unwrap();
    let mut stdout = ready(&mut child.stdout).await;
    let pgid = child.id().expect("not reaped yet");
    // Leader plus its background sleep (and the foreground one, soon).
    assert!(running(pgid).len() >= 2, "{:?}", members(pgid));

    let owner = group.spawn(async move { child.wait().await });
    group.cancel();
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.processes, 1, "the ladder reaped the child: {report}");
    assert_eq!(group.stats().processes, 1);
    assert!(matches!(owner.await, Err(TaskError::Cancelled(_))));

    // No process of the group remains, zombies included.
    assert_eq!(members(pgid), Vec::new());
    // Every copy of the stdout pipe is closed: EOF.
    let mut rest = Vec::new();
    assert_eq!(stdout.read_to_end(&mut rest).await.unwrap(), 0);
    assert!(group.is_empty());
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_sigkilled_after_term_grace() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let group = TaskGroup::new();
    let policy = ProcessPolicy {
        exit_grace: Duration::from_millis(100),
        term_grace: Duration::from_millis(200),
    };
    // `trap "" TERM` ignores SIGTERM in the shell and, across exec, in sleep.
    let mut child = group
        .spawn_process_with(sh("trap '' TERM; sleep 1000 & echo ready; wait"), policy)
        .unwrap();
    let _stdout = ready(&mut child.stdout).await;
    let pgid = child.id().unwrap();

    group.cancel();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}: SIGTERM was ignored");
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(child.id(), None);
    assert!(group.shutdown().await.is_clean());
}

#[tokio::test]
async fn a_cooperative_child_ends_on_sigterm() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let group = TaskGroup::new();
    let mut child = group.spawn_process(sh("echo ready; sleep 1000")).unwrap();
    let _stdout = ready(&mut child.stdout).await;
    let pgid = child.id().unwrap();

    let status = child.shutdown().await.unwrap();
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert_eq!(members(pgid), Vec::new());
    // The reaper was a tracked task; it is gone.
    assert!(group.shutdown().await.is_clean());
    assert!(group.is_empty());
}

#[tokio::test]
async fn a_leader_that_exits_takes_its_stragglers_along() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let group = TaskGroup::new();
    // The leader exits at once, leaving a background sleep in its group.
    let mut child = group.spawn_process(sh("sleep 1000 & echo ready")).unwrap();
    let _stdout = ready(&mut child.stdout).await;
    let pgid = child.id().unwrap();

    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(members(pgid), Vec::new());
    assert!(group.shutdown().await.is_clean());
}

#[tokio::test]
async fn reap_orphans_kills_the_orphan_only() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let leftover = reap_orphans().await;
    assert!(leftover.is_clean(), "{leftover}");

    let sessions: TaskMap<&'static str> = TaskMap::new();
    let (a_tx, a_rx) = oneshot::channel();
    let (b_tx, b_rx) = oneshot::channel();
    // Session "a" ends on its own, leaving its child running.
    let a = sessions
        .spawn_with_process(
            "a",
            sh("echo ready; sleep 1000"),
            ProcessPolicy::default(),
            |_scope, mut child| async move {
                let _stdout = ready(&mut child.stdout).await;
                a_tx.send(child.id().unwrap()).unwrap();
            },
        )
        .unwrap();
    // Session "b" lives on, holding its child.
    sessions
        .spawn_with_process(
            "b",
            sh("echo ready; sleep 1000"),
            ProcessPolicy::default(),
            |scope, mut child| async move {
                let _stdout = ready(&mut child.stdout).await;
                b_tx.send(child.id().unwrap()).unwrap();
                scope.cancelled().await;
                drop(child);
            },
        )
        .unwrap();
    let (a_pid, b_pid) = (a_rx.await.unwrap(), b_rx.await.unwrap());
    a.await.unwrap();
    assert!(!sessions.contains_key(&"a"));

    // The orphan is alive, found, and is the only orphan.
    assert!(!running(a_pid).is_empty(), "{:?}", members(a_pid));
    let before = process_stats();
    assert_eq!(before.orphans, 1, "{before:?}");

    let report = reap_orphans().await;
    println!(
        "orphans before reap: {before:?}; reap: {report}; after: {:?}",
        process_stats()
    );
    assert_eq!(report.reaped, vec![a_pid], "{report}");
    assert!(
        report.already_gone.is_empty() && report.is_clean(),
        "{report}"
    );
    assert_eq!(members(a_pid), Vec::new());
    assert_eq!(process_stats().orphans, 0);

    // The live session's child is untouched.
    assert!(!running(b_pid).is_empty(), "{:?}", members(b_pid));
    assert!(sessions.contains_key(&"b"));

    // Cancelling the session tears its child down before `cancel` returns.
    assert_eq!(sessions.cancel(&"b").await, Some(TaskOutcome::Completed));
    assert_eq!(members(b_pid), Vec::new());
    assert!(sessions.shutdown().await.is_clean());
}

#[tokio::test]
async fn a_panicking_session_leaves_no_orphan_after_reap_orphans() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let _ = reap_orphans().await;

    let sessions: TaskMap<u32> = TaskMap::new();
    let (tx, rx) = oneshot::channel();
    let session = sessions
        .spawn_with_process(
            1,
            sh("sleep 1000 & echo ready; wait"),
            ProcessPolicy::default(),
            |_scope, mut child| async move {
                let _stdout = ready(&mut child.stdout).await;
                tx.send(child.id().unwrap()).unwrap();
                panic!("session bug");
            },
        )
        .unwrap();
    let pgid = rx.await.unwrap();
    assert!(matches!(session.await, Err(TaskError::Panicked(m)) if m == "session bug"));
    assert!(running(pgid).len() >= 2, "{:?}", members(pgid));

    let report = reap_orphans().await;
    assert_eq!(report.reaped, vec![pgid], "{report}");
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(process_stats().orphans, 0);
    assert!(sessions.shutdown().await.is_clean());
}

#[tokio::test]
async fn a_panicking_owner_in_a_group_is_torn_down_by_the_group() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let _ = reap_orphans().await;

    let group = TaskGroup::builder().cancel_on_panic(false).build();
    let mut child = group
        .spawn_process(sh("sleep 1000 & echo ready; wait"))
        .unwrap();
    let _stdout = ready(&mut child.stdout).await;
    let pgid = child.id().unwrap();
    let owner = group.spawn(async move {
        let _child = child;
        panic!("owner bug");
    });
    assert!(matches!(owner.await, Err(TaskError::Panicked(_))));
    // The owner is gone and the group not cancelled: an orphan.
    assert_eq!(process_stats().orphans, 1);
    assert!(running(pgid).len() >= 2, "{:?}", members(pgid));

    // Shutdown tears it down through the ladder, no reap_orphans needed.
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.completed, 1, "the reaper task: {report}");
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(process_stats().orphans, 0);
    let none = reap_orphans().await;
    assert_eq!(none, Default::default());
}

#[tokio::test]
async fn spawning_is_refused_on_a_cancelled_group_and_for_a_missing_program() {
    let group = TaskGroup::new();
    let err = group
        .spawn_process(Command::new("/nonexistent/program"))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    group.cancel();
    assert!(group.spawn_process(sh("sleep 1000")).is_err());
    assert!(group.is_empty());
}

#[test]
fn spawning_outside_a_runtime_is_an_error_naming_the_fix() {
    let group = TaskGroup::new();
    let err = group.spawn_process(sh("sleep 1000")).unwrap_err();
    assert!(err.to_string().contains("runtime"), "{err}");
}

#[tokio::test]
async fn many_children_leave_no_process_behind() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let group = TaskGroup::new();
    let mut pgids = HashSet::new();
    let mut stdouts = Vec::new();
    for _ in 0..8 {
        let mut child = group
            .spawn_process(sh("sleep 1000 & echo ready; sleep 1000"))
            .unwrap();
        stdouts.push(ready(&mut child.stdout).await);
        pgids.insert(child.id().unwrap());
        group.spawn(async move { child.wait().await });
    }
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    for pgid in pgids {
        assert_eq!(members(pgid), Vec::new());
    }
}

#[tokio::test]
async fn a_named_task_owning_a_child_shuts_down_with_its_group() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let group = TaskGroup::new();
    let (tx, rx) = oneshot::channel();
    group
        .build_task()
        .name("tool-server")
        .spawn_with_process(
            sh("sleep 1000 & echo ready; wait"),
            ProcessPolicy::default(),
            |scope, mut child| async move {
                let _stdout = ready(&mut child.stdout).await;
                tx.send(child.id().unwrap()).unwrap();
                scope.cancelled().await;
            },
        )
        .unwrap();
    let pgid = rx.await.unwrap();
    assert!(running(pgid).len() >= 2, "{:?}", members(pgid));

    // The task waits for its child's teardown, so the ladder covers it.
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(members(pgid), Vec::new());
}

#[test]
fn a_runtime_shut_down_under_a_live_child_kills_its_group() {
    setup();
    // The reaper dropped with the runtime counts the child an orphan until
    // its guard reaps it: serialized with the tests that compare the count.
    let _serial = ORPHAN_TESTS.blocking_lock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let group = rt.block_on(async { TaskGroup::new() });
    let (pgid, mut child) = rt.block_on(async {
        let mut child = group
            .spawn_process(sh("sleep 1000 & echo ready; wait"))
            .unwrap();
        let _stdout = ready(&mut child.stdout).await;
        (child.id().unwrap(), child)
    });
    assert!(running(pgid).len() >= 2, "{:?}", members(pgid));
    // The reaper task is dropped with the runtime: its guard kills the group.
    drop(rt);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !running(pgid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(running(pgid), Vec::new());
    // The handle learns that its reaper is gone instead of hanging.
    let err = child.try_wait().unwrap_err();
    assert!(err.to_string().contains("reaper"), "{err}");
    drop(child);
    drop(group);
}

// ===== processes follow their task (issue 11) =====

/// Polls `/proc` until no member of `pgid` is left (zombies included), for at
/// most 5 s; returns what is left.
async fn gone(pgid: u32) -> Vec<Proc> {
    for _ in 0..500 {
        if members(pgid).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    members(pgid)
}

#[tokio::test]
async fn aborting_a_task_that_owns_a_child_tears_its_group_down() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let orphans_before = process_stats().orphans;
    let group = TaskGroup::new();
    let (pgid_tx, pgid_rx) = oneshot::channel();
    let task = group
        .spawn_with_process(
            sh("sleep 1000 & echo ready; sleep 1000"),
            ProcessPolicy {
                exit_grace: Duration::from_millis(100),
                term_grace: Duration::from_millis(200),
            },
            move |_scope, mut child| async move {
                let _lines = ready(&mut child.stdout).await;
                let _ = pgid_tx.send(child.id().expect("alive"));
                std::future::pending::<()>().await; // holds the child
            },
        )
        .unwrap();
    let pgid = pgid_rx.await.unwrap();
    assert!(running(pgid).len() >= 2, "{:?}", members(pgid));

    task.abort();
    assert!(matches!(task.await, Err(TaskError::Aborted)));
    assert_eq!(gone(pgid).await, Vec::new(), "the group followed the task");
    assert_eq!(
        process_stats().orphans,
        orphans_before,
        "not left behind as an orphan"
    );
    assert!(group.is_empty());
}

#[tokio::test]
async fn cancelling_one_session_by_handle_tears_down_its_child_only() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let sessions = TaskMap::new();
    let policy = ProcessPolicy {
        exit_grace: Duration::from_millis(100),
        term_grace: Duration::from_millis(200),
    };
    let mut handles = Vec::new();
    let mut pgids = Vec::new();
    for key in ["a", "b"] {
        let (pgid_tx, pgid_rx) = oneshot::channel();
        let h = sessions
            .spawn_with_process(
                key,
                sh("sleep 1000 & echo ready; sleep 1000"),
                policy,
                move |scope, mut child| async move {
                    let _lines = ready(&mut child.stdout).await;
                    let _ = pgid_tx.send(child.id().expect("alive"));
                    scope.cancelled().await;
                    key
                },
            )
            .unwrap();
        pgids.push(pgid_rx.await.unwrap());
        handles.push(h);
    }
    let b = handles.pop().unwrap();
    let a = handles.pop().unwrap();
    a.cancel();
    assert_eq!(a.await.unwrap(), "a");
    // The session stayed alive until its child was reaped.
    assert_eq!(members(pgids[0]), Vec::new());
    assert!(running(pgids[1]).len() >= 2, "b's child untouched");
    assert!(!b.is_finished());
    let report = sessions.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(b.await.unwrap(), "b");
    assert_eq!(members(pgids[1]), Vec::new());
}

#[tokio::test]
async fn every_process_spawner_refuses_a_closed_or_cancelled_group_without_starting() {
    let marker = std::env::temp_dir().join(format!("cancel-scope-refused-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let touch = || {
        let mut cmd = Command::new("touch");
        cmd.arg(&marker);
        cmd
    };
    let is_closed = |e: &std::io::Error| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<SpawnError>())
            == Some(&SpawnError::Closed)
    };
    let policy = ProcessPolicy::default();

    let closed = TaskGroup::new();
    closed.close();
    assert!(is_closed(&closed.spawn_process(touch()).unwrap_err()));
    let called = std::sync::atomic::AtomicBool::new(false);
    let err = closed
        .spawn_with_process(touch(), policy, |_, _| {
            called.store(true, std::sync::atomic::Ordering::SeqCst);
            async {}
        })
        .unwrap_err();
    assert!(is_closed(&err), "{err}");
    assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
    let err = closed
        .build_task()
        .spawn_with_process(touch(), policy, |_, _| async {})
        .unwrap_err();
    assert!(is_closed(&err), "{err}");

    let map: TaskMap<u8> = TaskMap::new();
    map.close();
    let err = map
        .spawn_with_process(1, touch(), policy, |_, _| async {})
        .unwrap_err();
    assert!(is_closed(&err), "{err}");

    // Cancelled, not closed: refused the same way (the builder used to start
    // the child and tear it down at once).
    let cancelled = TaskGroup::new();
    cancelled.cancel();
    assert!(cancelled.spawn_process(touch()).is_err());
    assert!(
        cancelled
            .spawn_with_process(touch(), policy, |_, _| async {})
            .is_err()
    );
    assert!(
        cancelled
            .build_task()
            .spawn_with_process(touch(), policy, |_, _| async {})
            .is_err()
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!marker.exists(), "no process was started");
    assert!(closed.is_empty() && cancelled.is_empty() && map.is_empty());
}

/// The reaper of `spawn_process` has no escalation hook (a hook would signal
/// from another thread, racing the reaper's reap): when the ladder's grace
/// ends before the stop order does, the escalation cuts it short (`SIGKILL`
/// within half the `abort_grace`) and the ladder still waits for the reap.
#[tokio::test]
async fn a_ladder_that_escalates_on_a_reaper_kills_and_reaps_its_group() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_millis(100),
            abort_grace: Duration::from_secs(2),
            ..Default::default()
        })
        .build();
    let policy = ProcessPolicy {
        exit_grace: Duration::from_secs(30),
        term_grace: Duration::from_secs(30),
    };
    let mut child = group
        .spawn_process_with(sh("trap '' TERM; sleep 1000 & echo ready; wait"), policy)
        .unwrap();
    let _stdout = ready(&mut child.stdout).await;
    let pgid = child.id().unwrap();

    let report = group.shutdown().await;
    assert!(report.stuck.is_empty(), "{report}");
    assert_eq!((report.escalations, report.processes), (1, 1), "{report}");
    // Reaped within the ladder, by the reaper itself.
    assert_eq!(members(pgid), Vec::new(), "SIGKILL reached the group");
    assert_eq!(child.end(), Some(ChildEnd::Killed));
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    let after = process_stats();
    assert_eq!(
        after.sigterms_sent, before.sigterms_sent,
        "exit_grace was cut short: no SIGTERM"
    );
    assert!(after.sigkills_sent > before.sigkills_sent);
    assert!(group.is_empty());
}

/// A session that owns a child counts one process in its map's stats and in
/// the report of the ladder that tore it down, as a group's reaper does; a
/// map or group without processes counts none (the count belongs to the
/// process layer, attached to a tracker at its first process).
#[tokio::test]
async fn a_session_that_owns_a_child_counts_one_process_in_stats_and_the_report() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let sessions = TaskMap::new();
    let plain = TaskMap::new();
    plain.spawn("idle", std::future::pending::<()>());
    sessions
        .spawn_with_process(
            "alice",
            sh("sleep 1000"),
            ProcessPolicy {
                exit_grace: Duration::from_millis(100),
                term_grace: Duration::from_millis(200),
            },
            |scope, _child| async move { scope.cancelled().await },
        )
        .unwrap();
    assert_eq!(sessions.stats().processes, 0, "still running");
    let report = sessions.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.processes, 1, "{report}");
    assert_eq!(sessions.stats().processes, 1);
    assert_eq!(plain.shutdown().await.processes, 0);
    assert_eq!(plain.stats().processes, 0);
}

// ===== the stop order (issue 21) =====

/// `program args` with stdin piped (the stop order closes it) and stdout
/// piped (for a `ready` line).
fn piped(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

fn policy(exit_grace_ms: u64, term_grace_ms: u64) -> ProcessPolicy {
    ProcessPolicy {
        exit_grace: Duration::from_millis(exit_grace_ms),
        term_grace: Duration::from_millis(term_grace_ms),
    }
}

/// Spawns `cmd` as a task of `group` that holds the child's stdin until its
/// scope is cancelled, and hands the rest of the `ScopedChild` (and its pid)
/// to the test, which reads its end: the task is the owner, so the stop
/// waits for it to end.
fn session_holding_stdin(
    group: &TaskGroup,
    cmd: Command,
    policy: ProcessPolicy,
) -> (TaskHandle<()>, oneshot::Receiver<(u32, ScopedChild)>) {
    let (tx, rx) = oneshot::channel();
    let task = group
        .spawn_with_process(cmd, policy, move |scope, mut child| {
            let stdin = child.stdin.take().expect("stdin is piped");
            let pid = child.id().expect("not reaped at the spawn");
            let _ = tx.send((pid, child));
            async move {
                let _stdin = stdin;
                scope.cancelled().await;
            }
        })
        .unwrap();
    (task, rx)
}

/// Signals sent since `before`: (SIGTERMs, SIGKILLs).
fn signals_since(before: ProcessStats) -> (u64, u64) {
    let now = process_stats();
    (
        now.sigterms_sent - before.sigterms_sent,
        now.sigkills_sent - before.sigkills_sent,
    )
}

#[tokio::test]
async fn a_child_that_exits_at_start_ends_exited_with_no_signal() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let group = TaskGroup::new();
    let (_task, rx) =
        session_holding_stdin(&group, piped("sh", &["-c", "exit 3"]), policy(5000, 5000));
    let (pgid, mut child) = rx.await.unwrap();
    assert_eq!(child.wait().await.unwrap().code(), Some(3));
    assert_eq!(child.end(), Some(ChildEnd::Exited));
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(signals_since(before), (0, 0));
}

#[tokio::test]
async fn a_child_that_exits_on_stdin_eof_ends_within_exit_grace_with_no_signal() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let group = TaskGroup::new();
    // Real clock, generous graces: only the signal count is asserted.
    let (task, rx) = session_holding_stdin(&group, piped("cat", &[]), policy(10_000, 10_000));
    let (pgid, mut child) = rx.await.unwrap();
    assert!(!running(pgid).is_empty(), "cat waits for its stdin");

    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.processes, 1,
        "the ladder waited for the reap: {report}"
    );
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(child.end(), Some(ChildEnd::ExitedInGrace));
    assert!(child.wait().await.unwrap().success());
    assert_eq!(signals_since(before), (0, 0), "closing stdin was enough");
    task.await.unwrap();
}

#[tokio::test]
async fn a_child_that_never_reads_stdin_is_terminated_after_exit_grace() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let group = TaskGroup::new();
    let (_task, rx) = session_holding_stdin(&group, piped("sleep", &["100"]), policy(100, 10_000));
    let (pgid, mut child) = rx.await.unwrap();

    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(child.end(), Some(ChildEnd::Terminated));
    assert_eq!(child.wait().await.unwrap().signal(), Some(15));
    assert_eq!(signals_since(before), (1, 0));
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_and_counted() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let group = TaskGroup::new();
    let (_task, rx) = session_holding_stdin(
        &group,
        sh_piped("trap '' TERM; echo ready; exec sleep 1000"),
        policy(100, 300),
    );
    let (pgid, mut child) = rx.await.unwrap();
    let _stdout = ready(&mut child.stdout).await;

    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(child.end(), Some(ChildEnd::Killed));
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    assert_eq!(signals_since(before), (1, 1));
}

#[tokio::test]
async fn a_child_that_forks_and_exits_takes_its_grandchild_along() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let group = TaskGroup::new();
    let (_task, rx) = session_holding_stdin(
        &group,
        piped("sh", &["-c", "sleep 100 & echo ready; exit 0"]),
        policy(5000, 5000),
    );
    let (pgid, mut child) = rx.await.unwrap();
    let _stdout = ready(&mut child.stdout).await;
    assert!(child.wait().await.unwrap().success());
    assert_eq!(child.end(), Some(ChildEnd::Exited));
    // The leader's exit ended the group's grace: the straggler was killed
    // and reaped (this process is a subreaper) before the end was published.
    assert_eq!(members(pgid), Vec::new());
    assert!(group.shutdown().await.is_clean());
}

/// The stop order on tokio's paused clock, with a child that ignores
/// `SIGTERM` and never exits: the owning task ends, `exit_grace` passes with
/// no signal, then exactly one `SIGTERM`, `term_grace`, exactly one `SIGKILL`.
#[tokio::test(start_paused = true)]
async fn the_stop_order_waits_exit_grace_then_sigterm_then_sigkill() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    // `cancel` only (no ladder, so no ladder timer jumps the paused clock
    // while the killed child dies in real time).
    let group = TaskGroup::new();
    let (task, rx) = session_holding_stdin(
        &group,
        // `exec`: one process, no stragglers for the sweep to kill.
        sh_piped("trap '' TERM; echo ready; exec sleep 1000"),
        ProcessPolicy {
            exit_grace: Duration::from_secs(10),
            term_grace: Duration::from_secs(20),
        },
    );
    let (pgid, mut child) = rx.await.unwrap();
    let _stdout = ready(&mut child.stdout).await;
    let before = process_stats();
    let start = tokio::time::Instant::now();

    // The task lives until the reap: awaited at the end.
    group.cancel();
    tokio::time::sleep_until(start + Duration::from_secs(9)).await;
    assert_eq!(signals_since(before), (0, 0), "still in exit_grace");
    assert_eq!(child.end(), None);
    tokio::time::sleep_until(start + Duration::from_secs(11)).await;
    assert_eq!(
        signals_since(before),
        (1, 0),
        "SIGTERM once exit_grace ran out"
    );
    tokio::time::sleep_until(start + Duration::from_secs(29)).await;
    assert_eq!(signals_since(before), (1, 0), "still in term_grace");
    tokio::time::sleep_until(start + Duration::from_secs(31)).await;
    assert_eq!(
        signals_since(before),
        (1, 1),
        "SIGKILL once term_grace ran out"
    );
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    assert_eq!(child.end(), Some(ChildEnd::Killed));
    assert_eq!(signals_since(before), (1, 1), "one of each in all");
    assert_eq!(members(pgid), Vec::new());
    task.await.unwrap();
}

/// `sh -c script`, stdin and stdout piped.
fn sh_piped(script: &str) -> Command {
    piped("sh", &["-c", script])
}

/// The MCP gateway's shape: a session that ignores its cancellation, whose
/// escalation hook the user set: the ladder runs the hook, drops the
/// session's future, and `cancel(&key)` returns only once the child is
/// stopped and reaped (its stop order from `exit_grace` on).
#[tokio::test]
async fn an_escalated_session_runs_its_hook_and_its_key_cancel_waits_for_the_reap() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let sessions: TaskMap<&'static str> = TaskMap::with_policy(ShutdownPolicy {
        grace: Duration::from_millis(100),
        abort_grace: Duration::from_secs(4),
        ..Default::default()
    });
    let hooked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hook_flag = hooked.clone();
    let (tx, rx) = oneshot::channel();
    sessions
        .build_task("upstream")
        .on_escalate(move || hook_flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .spawn_with_process(
            piped("sleep", &["100"]),
            policy(100, 1000),
            move |_scope, child| {
                let _ = tx.send(child.id().unwrap());
                async move {
                    let _child = child;
                    std::future::pending::<()>().await; // ignores its scope
                }
            },
        )
        .unwrap();
    let pgid = rx.await.unwrap();
    assert!(!running(pgid).is_empty());

    assert_eq!(
        sessions.cancel(&"upstream").await,
        Some(TaskOutcome::Aborted)
    );
    assert!(
        hooked.load(std::sync::atomic::Ordering::SeqCst),
        "the user's hook ran"
    );
    assert_eq!(members(pgid), Vec::new(), "reaped before cancel returned");
    assert_eq!(signals_since(before), (1, 0), "exit_grace, then SIGTERM");
    assert!(sessions.is_empty());
    assert_eq!(sessions.stats().processes, 1);
}

/// A stop order longer than the ladder (`exit_grace + term_grace` past
/// `grace`): the escalation cuts it short, `SIGKILL` goes out within half
/// the `abort_grace`, and the ladder still ends with the group reaped, the
/// session reported aborted, nothing stuck.
#[tokio::test]
async fn a_stop_order_that_cannot_fit_the_ladder_ends_killed_and_reaped_within_it() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let sessions: TaskMap<u32> = TaskMap::with_policy(ShutdownPolicy {
        grace: Duration::from_millis(100),
        abort_grace: Duration::from_secs(2),
        ..Default::default()
    });
    let (tx, rx) = oneshot::channel();
    sessions
        .spawn_with_process(
            7,
            sh_piped("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
            policy(60_000, 60_000),
            move |scope, mut child| async move {
                let _stdout = ready(&mut child.stdout).await;
                let _ = tx.send((child.id().unwrap(), child));
                scope.cancelled().await; // ends at once when cancelled
            },
        )
        .unwrap();
    let (pgid, mut child) = rx.await.unwrap();

    let report = sessions.shutdown().await;
    assert!(report.stuck.is_empty(), "{report}");
    assert_eq!((report.aborted, report.processes), (1, 1), "{report}");
    // Within `grace + abort_grace` (2.1 s), plus scheduling noise.
    assert!(report.elapsed < Duration::from_secs(3), "{report}");
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(child.end(), Some(ChildEnd::Killed));
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
}

#[tokio::test]
async fn scoped_child_shutdown_closes_stdin_first() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let group = TaskGroup::new();
    let mut child = group
        .spawn_process_with(piped("cat", &[]), policy(10_000, 10_000))
        .unwrap();
    let pgid = child.id().unwrap();
    assert!(child.shutdown().await.unwrap().success());
    assert_eq!(child.end(), Some(ChildEnd::ExitedInGrace));
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(signals_since(before), (0, 0));
    assert!(group.shutdown().await.is_clean());
}

/// A group's own child (`spawn_process`) does not wait for its handle: the
/// group's cancel begins its stop (`exit_grace`, then `SIGTERM`) while the
/// user still holds the handle and its stdin.
#[tokio::test]
async fn a_groups_own_child_is_stopped_while_its_handle_is_held() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let group = TaskGroup::new();
    let child = group
        .spawn_process_with(piped("sleep", &["100"]), policy(100, 10_000))
        .unwrap();
    let pgid = child.id().unwrap();
    let report = group.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.processes, 1);
    assert!(child.stdin.is_some(), "still held");
    assert_eq!(child.end(), Some(ChildEnd::Terminated));
    assert_eq!(members(pgid), Vec::new());
    assert_eq!(signals_since(before), (1, 0));
}

/// While a session's child is being stopped, the map shows that one session
/// (the reaper runs inside it: no extra entry), closing; it leaves once the
/// child is reaped.
#[tokio::test]
async fn a_stopping_session_is_one_entry_until_its_child_is_reaped() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let sessions: TaskMap<&'static str> = TaskMap::new();
    let (tx, rx) = oneshot::channel();
    sessions
        .spawn_with_process(
            "s",
            piped("sleep", &["100"]),
            policy(2000, 5000),
            move |scope, child| {
                let _ = tx.send(child.id().unwrap());
                async move {
                    let _child = child;
                    scope.cancelled().await;
                }
            },
        )
        .unwrap();
    let pgid = rx.await.unwrap();
    assert!(sessions.begin_cancel(&"s"));
    tokio::time::sleep(Duration::from_millis(200)).await; // inside exit_grace
    assert!(!running(pgid).is_empty(), "not signalled yet");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions.keys(), vec!["s"]);
    assert!(sessions.is_closing(&"s"));
    let live = sessions.snapshot();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].0, "s");
    assert_eq!(sessions.cancel(&"s").await, Some(TaskOutcome::Completed));
    assert_eq!(members(pgid), Vec::new());
    assert!(sessions.is_empty());
}

/// `TaskMap::abort` drops the session's future with no grace; its child is
/// still stopped in order (stdin closed, `exit_grace`, `SIGTERM`) and the
/// handle resolves, aborted, only after the reap.
#[tokio::test]
async fn aborting_a_key_stops_its_child_before_the_handle_resolves() {
    setup();
    let _serial = ORPHAN_TESTS.lock().await;
    let before = process_stats();
    let sessions: TaskMap<u8> = TaskMap::new();
    let (tx, rx) = oneshot::channel();
    let session = sessions
        .spawn_with_process(
            1,
            piped("sleep", &["100"]),
            policy(100, 5000),
            move |_scope, child| {
                let _ = tx.send(child.id().unwrap());
                async move {
                    let _child = child;
                    std::future::pending::<()>().await;
                }
            },
        )
        .unwrap();
    let pgid = rx.await.unwrap();
    assert!(sessions.abort(&1));
    assert!(matches!(session.await, Err(TaskError::Aborted)));
    assert_eq!(
        members(pgid),
        Vec::new(),
        "reaped before the handle resolved"
    );
    assert_eq!(signals_since(before), (1, 0));
    assert_eq!(sessions.stats().processes, 1);
    assert!(sessions.is_empty());
}
