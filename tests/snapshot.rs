//! `TaskGroup::snapshot` and `TaskMap::snapshot`: what each live task shows
//! (id, name, key, spawn site, age, state, re-deliveries), in what order,
//! and that taking one is a pure read (DESIGN property 9): no counter of the
//! ladder, no poll and no deadline changes because of it.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use cancel_scope::{
    Backoff, CancelScope, ShutdownPolicy, ShutdownReport, Stats, TaskGroup, TaskId, TaskInfo,
    TaskMap, TaskState,
};
use common::{PollCounter, paused_runtime};
use futures::FutureExt;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A task body that never ends by itself.
fn idle() -> impl Future<Output = ()> + Send + 'static {
    std::future::pending()
}

fn ids(tasks: &[TaskInfo]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

fn states(tasks: &[TaskInfo]) -> Vec<TaskState> {
    tasks.iter().map(|t| t.state).collect()
}

/// `(file, line)` of a spawn site.
fn site(t: &TaskInfo) -> (&'static str, u32) {
    (t.location.file(), t.location.line())
}

// ===== what a task shows =====

/// Every public spawn function of a group records its caller's file and line
/// (`#[track_caller]` all the way down), with the id its handle has, the
/// name it was given and no key.
#[tokio::test(start_paused = true)]
async fn group_snapshot_shows_ids_names_and_each_spawn_functions_call_site() {
    let group = TaskGroup::new();
    let mut expected = Vec::new();
    let h = group.spawn(idle());
    expected.push((h.id(), None, line!() - 1));
    let h = group.try_spawn(idle()).unwrap();
    expected.push((h.id(), None, line!() - 1));
    let h = group.spawn_with_scope(|_scope| idle());
    expected.push((h.id(), None, line!() - 1));
    let h = group.try_spawn_with_scope(|_scope| idle()).unwrap();
    expected.push((h.id(), None, line!() - 1));
    let h = group.build_task().name("built").spawn(idle());
    expected.push((h.id(), Some("built"), line!() - 1));
    let h = group.build_task().name("tried").try_spawn(idle()).unwrap();
    expected.push((h.id(), Some("tried"), line!() - 1));
    let h = group
        .build_task()
        .name("scoped")
        .spawn_with_scope(|_s| idle());
    expected.push((h.id(), Some("scoped"), line!() - 1));
    let builder = group.build_task().name("tried-scoped");
    let h = builder.try_spawn_with_scope(|_s| idle()).unwrap();
    expected.push((h.id(), Some("tried-scoped"), line!() - 1));
    tokio::task::yield_now().await;

    let tasks = group.snapshot();
    assert_eq!(tasks.len(), expected.len(), "{tasks:#?}");
    for (task, (id, name, line)) in tasks.iter().zip(&expected) {
        assert_eq!(task.id, *id);
        assert_eq!(task.name.as_deref(), *name);
        assert_eq!(task.key, None, "a group's task has no key");
        assert_eq!(site(task), (file!(), *line), "{task}");
        assert_eq!(task.state, TaskState::Running);
        assert_eq!(task.redeliveries, 0);
        assert!(!task.blocking);
    }
}

/// The map's spawn functions record their caller too, and each task comes
/// with its key (the value and its `Debug` text).
#[tokio::test(start_paused = true)]
async fn map_snapshot_shows_keys_and_each_spawn_functions_call_site() {
    let map: TaskMap<String> = TaskMap::new();
    let mut expected = Vec::new();
    let h = map.spawn("plain".into(), idle());
    expected.push((h.id(), "plain", None, line!() - 1));
    let h = map.try_spawn("tried".into(), idle()).unwrap();
    expected.push((h.id(), "tried", None, line!() - 1));
    let h = map.spawn_with_scope("scoped".into(), |_s| idle());
    expected.push((h.id(), "scoped", None, line!() - 1));
    let h = map.build_task("built".into()).name("b").spawn(idle());
    expected.push((h.id(), "built", Some("b"), line!() - 1));
    let builder = map.build_task("built-scoped".into()).name("bs");
    let h = builder.spawn_with_scope(|_s| idle());
    expected.push((h.id(), "built-scoped", Some("bs"), line!() - 1));
    tokio::task::yield_now().await;

    let tasks = map.snapshot();
    assert_eq!(tasks.len(), expected.len(), "{tasks:#?}");
    for ((key, task), (id, want_key, name, line)) in tasks.iter().zip(&expected) {
        assert_eq!(task.id, *id);
        assert_eq!(key, want_key);
        assert_eq!(task.key.as_deref(), Some(format!("{want_key:?}").as_str()));
        assert_eq!(task.name.as_deref(), *name);
        assert_eq!(site(task), (file!(), *line), "{task}");
        assert_eq!(task.state, TaskState::Running);
    }
    let line = tasks[3].1.to_string();
    assert!(
        line.starts_with(&format!(
            "{} name=\"b\" key=\"built\" running age=",
            tasks[3].1.id
        )),
        "{line}"
    );
}

/// Oldest (lowest id) first, whatever slots the registry reuses: the task
/// spawned after an end takes the freed slot, and still comes last.
#[tokio::test(start_paused = true)]
async fn snapshot_lists_oldest_first_even_in_reused_slots() {
    let group = TaskGroup::new();
    let first = group.spawn(async {});
    let second = group.spawn(idle()).id();
    let third = group.spawn(idle()).id();
    first.await.unwrap();
    let fourth = group.spawn(idle()).id();
    let tasks = group.snapshot();
    assert_eq!(ids(&tasks), [second, third, fourth]);
}

/// Ages advance with tokio's (paused) clock, all read at one instant; read
/// from a thread outside the runtime, they are on the tasks' clock still.
#[tokio::test(start_paused = true)]
async fn age_advances_with_the_clock_even_read_from_another_thread() {
    let group = TaskGroup::new();
    group.spawn(idle());
    tokio::time::advance(Duration::from_secs(3)).await;
    group.spawn(idle());
    tokio::time::advance(Duration::from_secs(1)).await;
    let ages: Vec<Duration> = group.snapshot().iter().map(|t| t.age).collect();
    assert_eq!(ages, [Duration::from_secs(4), Duration::from_secs(1)]);

    let far = group.clone();
    let ages: Vec<Duration> = std::thread::spawn(move || far.snapshot())
        .join()
        .unwrap()
        .iter()
        .map(|t| t.age)
        .collect();
    assert_eq!(ages, [Duration::from_secs(4), Duration::from_secs(1)]);
}

/// Ended tasks never appear, however they ended; a map's replaced task is
/// listed (beside the newer one, under the same key) only while it is alive.
#[tokio::test(start_paused = true)]
async fn map_snapshot_after_a_replacement_lists_only_live_tasks_with_their_keys() {
    let map: TaskMap<&'static str> = TaskMap::new();
    // The first "a" takes 100 ms to clean up once cancelled.
    let old = map.spawn_with_scope("a", |scope| async move {
        scope.cancelled().await;
        tokio::time::sleep(ms(100)).await;
    });
    let b = map.spawn("b", idle()).id();
    let done = map.spawn("done", async {});
    tokio::task::yield_now().await;
    let new = map.spawn("a", idle()).id(); // replaces the first "a"
    done.await.unwrap();
    tokio::task::yield_now().await;

    let tasks = map.snapshot();
    let seen: Vec<(&str, TaskId, TaskState)> =
        tasks.iter().map(|(k, t)| (*k, t.id, t.state)).collect();
    assert_eq!(
        seen,
        [
            ("a", old.id(), TaskState::Cancelled),
            ("b", b, TaskState::Running),
            ("a", new, TaskState::Running),
        ]
    );
    assert!(tasks.iter().all(|(k, t)| t.key == Some(format!("{k:?}"))));

    old.await.unwrap();
    let seen: Vec<(&str, TaskId)> = map.snapshot().iter().map(|(k, t)| (*k, t.id)).collect();
    assert_eq!(seen, [("b", b), ("a", new)]);
    map.shutdown().await;
    assert!(map.snapshot().is_empty());
}

// ===== states =====

/// A task asked to stop alone (`TaskHandle::cancel`) shows as cancelled
/// while its sibling runs on.
#[tokio::test(start_paused = true)]
async fn a_per_task_cancel_shows_only_on_that_task() {
    let group = TaskGroup::new();
    let asked = group.spawn_with_scope(|_ignored| idle());
    let sibling = group.spawn_with_scope(|_ignored| idle());
    tokio::task::yield_now().await;
    asked.cancel();
    let tasks = group.snapshot();
    assert_eq!(ids(&tasks), [asked.id(), sibling.id()]);
    assert_eq!(states(&tasks), [TaskState::Cancelled, TaskState::Running]);
}

/// One stubborn task through every state: running; cancelled after
/// `group.cancel()` (it ignores it); escalated at grace (its hook runs);
/// stuck after the abort grace, in a shutdown.
///
/// An escalated task ends as aborted at its next poll, so to stay alive it
/// must not be polled again: the task runs on a second runtime that is
/// driven only for its first poll, as a task blocking its worker would
/// (which a paused clock's single thread cannot host). Its wakes go there
/// and are never served.
#[test]
fn a_stubborn_task_goes_running_cancelled_escalated_stuck() {
    let frozen = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    paused_runtime().block_on(async move {
        let group = TaskGroup::builder()
            .policy(ShutdownPolicy {
                grace: Duration::from_secs(1),
                abort_grace: Duration::from_secs(1),
                ..Default::default()
            })
            .build();
        let (hook_ran, hook_seen) = mpsc::channel::<()>();
        let (first_poll, polled) = tokio::sync::oneshot::channel::<()>();
        let stubborn = {
            let _on_frozen = frozen.enter();
            group
                .build_task()
                .name("stubborn")
                .on_escalate(move || hook_ran.send(()).unwrap())
                .spawn_with_scope(|_ignored| async move {
                    first_poll.send(()).unwrap();
                    idle().await;
                })
        };
        let running = group.spawn(idle()); // a plain task, on this runtime
        std::thread::scope(|s| {
            s.spawn(|| frozen.block_on(polled).unwrap());
        });
        tokio::task::yield_now().await;
        let state_of = |group: &TaskGroup| {
            let tasks = group.snapshot();
            assert_eq!(tasks[0].id, stubborn.id(), "{tasks:#?}");
            assert_eq!(tasks[0].name.as_deref(), Some("stubborn"));
            tasks[0].state
        };
        assert_eq!(states(&group.snapshot()), [TaskState::Running; 2]);

        group.cancel();
        assert_eq!(state_of(&group), TaskState::Cancelled);
        running.await.unwrap_err();
        assert_eq!(group.len(), 1);

        let ladder = tokio::spawn({
            let group = group.clone();
            async move { group.shutdown().await }
        });
        tokio::time::sleep(ms(500)).await;
        assert_eq!(state_of(&group), TaskState::Cancelled);
        tokio::time::sleep(ms(1000)).await; // 1.5 s: past grace
        hook_seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(state_of(&group), TaskState::Escalated);
        tokio::time::sleep(ms(1000)).await; // 2.5 s: past abort grace
        assert_eq!(state_of(&group), TaskState::Stuck);

        let report = ladder.await.unwrap();
        assert_eq!(report.stuck.len(), 1, "{report}");
        assert_eq!(report.stuck[0].id, stubborn.id());
        assert_eq!(group.stats().stuck, 1);

        // Its runtime goes away, dropping it: it ends, and leaves the list.
        frozen.shutdown_background();
        assert!(group.is_empty());
        assert!(group.snapshot().is_empty());
    });
}

/// Re-deliveries are counted per task, as the ladder makes them.
#[tokio::test(start_paused = true)]
async fn redeliveries_are_counted_as_the_ladder_makes_them() {
    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_secs(10),
            max_redeliveries: 3,
            backoff: Backoff {
                initial: ms(100),
                max: ms(100),
                multiplier: 1,
            },
            ..Default::default()
        })
        .build();
    let ignorer = group.spawn_with_scope(|_ignored| idle()).id();
    tokio::task::yield_now().await;
    let ladder = tokio::spawn({
        let group = group.clone();
        async move { group.shutdown().await }
    });
    let redeliveries = |group: &TaskGroup| {
        let tasks = group.snapshot();
        assert_eq!(ids(&tasks), [ignorer]);
        assert_eq!(tasks[0].state, TaskState::Cancelled);
        tasks[0].redeliveries
    };
    tokio::time::sleep(ms(50)).await;
    assert_eq!(redeliveries(&group), 0);
    tokio::time::sleep(ms(100)).await; // 150 ms: one made, at 100 ms
    assert_eq!(redeliveries(&group), 1);
    tokio::time::sleep(ms(1000)).await;
    assert_eq!(redeliveries(&group), 3);
    assert_eq!(group.stats().redeliveries, 3);
    ladder.abort();
}

// ===== a pure read =====

/// What one run of a ladder over a group and a map did, observed from
/// outside.
#[derive(Debug, PartialEq)]
struct Run {
    group: Stats,
    map: Stats,
    group_report: ShutdownReport,
    map_report: ShutdownReport,
    polls: Vec<usize>,
}

/// A group and a map with plain, stubborn and slow-to-clean-up tasks, torn
/// down by their ladders (re-deliveries, escalation, abort); with
/// `snapshots`, a task on the runtime and a thread outside it take
/// snapshots of both in a loop all along. Returns what the run did, and the
/// states the snapshots saw.
fn ladder_run(snapshots: bool) -> (Run, Vec<TaskState>, usize) {
    paused_runtime().block_on(async move {
        let policy = ShutdownPolicy {
            grace: ms(500),
            max_redeliveries: 3,
            backoff: Backoff {
                initial: ms(50),
                max: ms(100),
                multiplier: 2,
            },
            abort_grace: ms(200),
        };
        let group = TaskGroup::builder().policy(policy).build();
        let map: TaskMap<u32> = TaskMap::with_policy(policy);
        let counters: Vec<Arc<AtomicUsize>> = (0..12).map(|_| Arc::default()).collect();
        let counted = |i: usize, fut| PollCounter::new(counters[i].clone(), fut);
        for i in 0..3 {
            group.spawn(counted(i, idle().boxed()));
        }
        for i in 3..5 {
            group.spawn_with_scope(|_ignored| counted(i, idle().boxed()));
        }
        for i in 5..7 {
            group.spawn_with_scope(|scope| {
                counted(
                    i,
                    async move {
                        scope.cancelled().await;
                        tokio::time::sleep(ms(120)).await;
                    }
                    .boxed(),
                )
            });
        }
        for i in 7..10 {
            map.spawn(i as u32, counted(i, idle().boxed()));
        }
        map.spawn_with_scope(10, |_ignored| counted(10, idle().boxed()));
        map.spawn_with_scope(11, |_ignored| counted(11, idle().boxed()));
        tokio::time::sleep(ms(10)).await;

        let seen = Arc::new(Mutex::new(Vec::new()));
        let taken = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::new();
        if snapshots {
            let (g, m, seen, taken) = (group.clone(), map.clone(), seen.clone(), taken.clone());
            loops.push(tokio::spawn(async move {
                loop {
                    let tasks = g.snapshot();
                    let keyed = m.snapshot();
                    {
                        let mut seen = seen.lock().unwrap();
                        seen.extend(states(&tasks));
                        seen.extend(keyed.iter().map(|(_, t)| t.state));
                    }
                    taken.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(ms(1)).await;
                }
            }));
        }
        let far = snapshots.then(|| {
            let (g, m, stop) = (group.clone(), map.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let _ = (g.snapshot(), m.snapshot());
                    std::thread::yield_now();
                }
            })
        });

        let (group_report, map_report) = tokio::join!(group.shutdown(), map.shutdown());
        stop.store(true, Ordering::SeqCst);
        if let Some(far) = far {
            far.join().unwrap();
        }
        for l in loops {
            l.abort();
        }
        let run = Run {
            group: group.stats(),
            map: map.stats(),
            group_report,
            map_report,
            polls: counters.iter().map(|c| c.load(Ordering::SeqCst)).collect(),
        };
        let seen = seen.lock().unwrap().clone();
        (run, seen, taken.load(Ordering::SeqCst))
    })
}

/// Snapshots taken in a loop during a ladder, from the runtime and from a
/// thread, change nothing: the same deliveries, re-deliveries, escalations,
/// outcomes, reports and polls as the same run without them.
#[test]
fn snapshots_in_a_loop_during_a_ladder_change_no_counter_and_no_poll() {
    let (quiet, _, _) = ladder_run(false);
    let (watched, seen, taken) = ladder_run(true);
    // The run is not trivial: it re-delivers and escalates.
    assert!(
        quiet.group.redeliveries > 0 && quiet.group.escalations == 2,
        "{quiet:?}"
    );
    assert!(
        quiet.map.redeliveries > 0 && quiet.map.escalations == 2,
        "{quiet:?}"
    );
    // The snapshots ran all along, and saw the ladder.
    assert!(taken > 400, "{taken} snapshots");
    assert!(seen.contains(&TaskState::Cancelled), "{seen:?}");
    assert_eq!(watched, quiet);
}

/// A deadline that passed before its timer fired is seen (the task shows as
/// cancelled) but not run: the snapshot delivers nothing; the first
/// `is_cancelled` does.
#[tokio::test(start_paused = true)]
async fn a_passed_deadline_is_seen_but_not_run_by_a_snapshot() {
    let group = TaskGroup::with_scope(CancelScope::new().with_timeout(Duration::from_secs(1)));
    let polls = Arc::new(AtomicUsize::new(0));
    group.spawn(PollCounter::new(polls.clone(), idle()));
    tokio::task::yield_now().await;
    assert_eq!(states(&group.snapshot()), [TaskState::Running]);

    // Move the clock past the deadline without yielding: its timer has not
    // run, and nothing else has.
    assert!(
        tokio::time::advance(Duration::from_secs(2))
            .now_or_never()
            .is_none()
    );
    assert_eq!(states(&group.snapshot()), [TaskState::Cancelled]);
    assert_eq!(group.stats().deliveries, 0, "a snapshot delivers nothing");
    assert_eq!(polls.load(Ordering::SeqCst), 1);

    assert!(group.scope().is_cancelled()); // this read runs the deadline's cancel
    assert_eq!(group.stats().deliveries, 1);
    let _ = group.join().await;
    assert!(group.snapshot().is_empty());
}
