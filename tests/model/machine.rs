//! The reference model and the driver that runs a program of [`Op`]s against
//! the real `TaskGroup` and `TaskMap` on a paused-clock runtime, checking the
//! properties of DESIGN.md after every step. Shared by the proptest state
//! machine, the corpus replay and the fuzz target: a violation panics, with
//! the program's step in the message.
//!
//! Ground truth comes from probes inside each task's future (alive, completed,
//! panicked, polls), never from the library itself; the model adds what it can
//! predict from the operations (keys, cancellations, aborts, the clock).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use cancel_scope::{
    Backoff, CancelScope, ShutdownPolicy, ShutdownReport, SpawnError, TaskError, TaskGroup,
    TaskHandle, TaskId, TaskMap, TaskOutcome,
};
use tokio::time::Instant;

use super::lang::{Behaviour, Op};

/// The ladder every case runs under: short, so that programs stay fast.
pub fn policy() -> ShutdownPolicy {
    ShutdownPolicy {
        grace: Duration::from_millis(20),
        max_redeliveries: 3,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            multiplier: 2,
        },
        abort_grace: Duration::from_millis(5),
    }
}

/// Timer slack: a paused-clock sleep may fire up to one timer tick late.
const SLACK: Duration = Duration::from_millis(2);

const PANIC_MESSAGE: &str = "model task panics on purpose";

// ===== probes =====

/// What a task's own future reports about itself.
#[derive(Debug)]
struct Probe {
    alive: AtomicBool,
    completed: AtomicBool,
    panicked: AtomicBool,
    polls: AtomicUsize,
}

impl Probe {
    fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
    fn completed(&self) -> bool {
        self.completed.load(Ordering::SeqCst)
    }
    fn panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }
    fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }
}

/// Marks the task dead when its future is dropped, however that happens.
struct Live(Arc<Probe>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

/// Counts the polls of the task's future (library wakeups, for tasks that
/// never wake themselves).
struct Counted<F> {
    probe: Arc<Probe>,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.probe.polls.fetch_add(1, Ordering::SeqCst);
        self.fut.as_mut().poll(cx)
    }
}

/// Blocks the worker thread at every poll, as a task doing sync work would.
struct Blocking<F>(Pin<Box<F>>);

impl<F: Future> Future for Blocking<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        std::thread::sleep(Duration::from_micros(50));
        self.0.as_mut().poll(cx)
    }
}

fn task_future(
    behaviour: Behaviour,
    probe: Arc<Probe>,
    scope: Option<CancelScope>,
) -> impl Future<Output = ()> + Send + 'static {
    let live = Live(probe.clone());
    let counted = probe.clone();
    let body = async move {
        let _live = live;
        match behaviour {
            Behaviour::EndsAfter(t) => tokio::time::sleep(ms(t.millis())).await,
            Behaviour::Panics(t) => {
                tokio::time::sleep(ms(t.millis())).await;
                probe.panicked.store(true, Ordering::SeqCst);
                panic!("{PANIC_MESSAGE}");
            }
            Behaviour::BlocksWorker(t) => {
                Blocking(Box::pin(tokio::time::sleep(ms(t.millis())))).await;
            }
            Behaviour::IgnoresCancel => {
                // Holds its scope and never looks at it.
                let _scope = scope;
                std::future::pending::<()>().await;
            }
            Behaviour::Cooperative { cleanup } => {
                let scope = scope.expect("cooperative tasks get a scope");
                scope.cancelled().await;
                let shield = scope.shielded_child();
                let _ = shield.run(tokio::time::sleep(ms(cleanup.millis()))).await;
            }
        }
        probe.completed.store(true, Ordering::SeqCst);
    };
    Counted {
        probe: counted,
        fut: Box::pin(body),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Hides the panics that `Behaviour::Panics` tasks raise on purpose (the
/// library catches them; the default hook would still print each one).
fn quiet_intended_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let intended = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|s| s == PANIC_MESSAGE);
            if !intended {
                default(info);
            }
        }));
    });
}

// ===== the reference model =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    Group,
    Map(u8),
}

#[derive(Debug)]
struct Task {
    home: Home,
    behaviour: Behaviour,
    probe: Arc<Probe>,
    handle: Option<TaskHandle<()>>,
    id: TaskId,
    spawned_at: Instant,
    /// Deliveries aimed at this task alone (`cancel(key)`, replacement).
    key_hits: usize,
    /// `abort()` was called through its handle.
    aborted: bool,
    /// The interval (see `World::epoch`) in which the model saw it end.
    ended_epoch: Option<usize>,
}

impl Task {
    /// Dropped at its next await once cancelled (`spawn`, not
    /// `spawn_with_scope`).
    fn drop_mode(&self) -> bool {
        matches!(
            self.behaviour,
            Behaviour::EndsAfter(_) | Behaviour::Panics(_) | Behaviour::BlocksWorker(_)
        )
    }

    /// When a drop-mode task ends on its own, if nothing cancels it.
    fn natural_end(&self) -> Option<Instant> {
        match self.behaviour {
            Behaviour::EndsAfter(t) | Behaviour::Panics(t) | Behaviour::BlocksWorker(t) => {
                Some(self.spawned_at + ms(t.millis()))
            }
            _ => None,
        }
    }
}

/// A parked `join()` / `join_next()` of the group, polled by hand.
struct Waiter {
    next: bool,
    fut: Pin<Box<dyn Future<Output = bool> + Send>>,
    wakes: Arc<WakeCount>,
    /// Wakes, and ends of group tasks, when it last returned `Pending`.
    wakes_at_park: usize,
    ends_at_park: u64,
}

/// Counts the wakes of a parked waiter.
#[derive(Default)]
struct WakeCount(AtomicUsize);

impl std::task::Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn ends(group: &TaskGroup) -> u64 {
    let s = group.stats();
    s.completed + s.cancelled + s.aborted + s.panicked
}

struct World {
    scope: CancelScope,
    group: Arc<TaskGroup>,
    /// Parked waiters, re-polled by `Op::Repoll` in any order.
    waiters: Vec<Waiter>,
    map: TaskMap<u8>,
    tasks: Vec<Task>,
    /// Key → index of the task spawned last under it.
    latest: HashMap<u8, usize>,
    /// Cancellations the model issued (the group is also cancelled by a
    /// panicking task, which the model checks but does not predict).
    group_cancelled: bool,
    map_cancelled: bool,
    /// Shut down: spawns must be refused with `SpawnError::Closed`.
    group_closed: bool,
    map_closed: bool,
    /// Ends are observed between steps (and around each shutdown) and
    /// stamped with the interval they fell in; `*_mark` is the interval in
    /// which the group's / map's scope was first cancelled, and whether the
    /// cancel came at its very start (a model op) or somewhere inside it (a
    /// panicking task: ends in that interval may fall before or after it).
    epoch: usize,
    group_mark: Option<(usize, bool)>,
    map_mark: Option<(usize, bool)>,
    step: usize,
    op: Op,
}

/// Runs `ops` on a fresh paused-clock runtime, checking after every step;
/// panics on the first violation.
pub fn run(ops: &[Op]) {
    quiet_intended_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run_on_runtime(ops));
}

async fn run_on_runtime(ops: &[Op]) {
    let scope = CancelScope::new();
    let group = Arc::new(
        TaskGroup::builder()
            .policy(policy())
            .scope(scope.clone())
            .collect_outcomes(true)
            .build(),
    );
    let map = TaskMap::with_scope_and_policy(scope.clone(), policy());
    let mut w = World {
        scope,
        group,
        waiters: Vec::new(),
        map,
        tasks: Vec::new(),
        latest: HashMap::new(),
        group_cancelled: false,
        map_cancelled: false,
        group_closed: false,
        map_closed: false,
        epoch: 0,
        group_mark: None,
        map_mark: None,
        step: 0,
        op: Op::CancelGroup,
    };
    for (step, &op) in ops.iter().enumerate() {
        w.step = step;
        w.op = op;
        w.observe();
        w.apply(op).await;
        settle().await;
        if w.group_mark.is_none() && w.group.scope().is_cancelled() {
            // Not by an op (those mark themselves): by a panicking task.
            w.group_mark = Some((w.epoch, false));
        }
        w.check();
    }
    w.quiesce().await;
}

/// Lets every task that is ready run (aborts, wakes, prunes) without moving
/// the paused clock.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

impl World {
    fn at(&self) -> String {
        format!("step {} ({:?})", self.step, self.op)
    }

    /// Stamps the ends since the last call, and starts a new interval.
    fn observe(&mut self) {
        for t in &mut self.tasks {
            if t.ended_epoch.is_none() && !t.probe.alive() {
                t.ended_epoch = Some(self.epoch);
            }
        }
        self.epoch += 1;
    }

    fn mark_group(&mut self) {
        self.group_mark.get_or_insert((self.epoch, true));
    }

    fn mark_map(&mut self) {
        self.map_mark.get_or_insert((self.epoch, true));
    }

    fn spawn(&mut self, key: Option<u8>, behaviour: Behaviour) {
        let probe = Arc::new(Probe {
            alive: AtomicBool::new(true),
            completed: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            polls: AtomicUsize::new(0),
        });
        let p = probe.clone();
        let cooperative = matches!(
            behaviour,
            Behaviour::IgnoresCancel | Behaviour::Cooperative { .. }
        );
        let spawned = match (key, cooperative) {
            (None, false) => self.group.try_spawn(task_future(behaviour, p, None)),
            (None, true) => self
                .group
                .try_spawn_with_scope(move |s| task_future(behaviour, p, Some(s))),
            (Some(k), false) => self.map.try_spawn(k, task_future(behaviour, p, None)),
            (Some(k), true) => self
                .map
                .build_task(k)
                .try_spawn_with_scope(move |s| task_future(behaviour, p, Some(s))),
        };
        let closed = match key {
            None => self.group_closed,
            Some(_) => self.map_closed,
        };
        if closed {
            // Shut down: closed, nothing spawned, the key's task untouched.
            let at = self.at();
            assert_eq!(spawned.err(), Some(SpawnError::Closed), "{at}");
            return;
        }
        let handle = spawned.expect("an open group or map spawns");
        if let Some(k) = key {
            // Replacing a live task delivers to it (it is retired).
            if let Some(&old) = self.latest.get(&k) {
                if self.tasks[old].probe.alive() {
                    self.tasks[old].key_hits += 1;
                }
            }
            self.latest.insert(k, self.tasks.len());
        }
        self.tasks.push(Task {
            home: key.map_or(Home::Group, Home::Map),
            behaviour,
            probe,
            id: handle.id(),
            handle: Some(handle),
            spawned_at: Instant::now(),
            key_hits: 0,
            aborted: false,
            ended_epoch: None,
        });
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Spawn { key, behaviour } => self.spawn(key.map(|k| k.get()), behaviour),
            Op::Replace { pick, behaviour } => {
                let live: Vec<u8> = (0..4u8).filter(|k| self.map.contains_key(k)).collect();
                let key = if live.is_empty() {
                    pick.0 % 4
                } else {
                    live[usize::from(pick.0) % live.len()]
                };
                self.spawn(Some(key), behaviour);
            }
            Op::CancelGroup => {
                self.mark_group();
                self.group.cancel();
                self.group_cancelled = true;
            }
            Op::CancelScope => {
                self.mark_group();
                self.mark_map();
                self.scope.cancel();
                self.group_cancelled = true;
                self.map_cancelled = true;
            }
            Op::CancelKey(key) => {
                let k = key.get();
                let target = self
                    .latest
                    .get(&k)
                    .copied()
                    .filter(|&i| self.tasks[i].probe.alive());
                if let Some(i) = target {
                    self.tasks[i].key_hits += 1;
                }
                let outcome = self.map.cancel(&k).await;
                settle().await;
                match (target, outcome) {
                    (None, None) => {}
                    (Some(i), Some(outcome)) => self.check_outcome(i, outcome),
                    (t, o) => panic!("{}: cancel(key) = {o:?} for live task {t:?}", self.at()),
                }
            }
            Op::Abort(r) => {
                if let Some(t) = self.pick(r.0) {
                    if let Some(h) = &t.handle {
                        h.abort();
                        t.aborted = true;
                    }
                }
            }
            Op::DropHandle(r) => {
                if let Some(t) = self.pick(r.0) {
                    t.handle = None;
                }
            }
            Op::Advance(t) => tokio::time::advance(ms(t.millis())).await,
            Op::Shutdown => self.shutdown_both().await,
            Op::Wait { next } => {
                let group = self.group.clone();
                let fut: Pin<Box<dyn Future<Output = bool> + Send>> = if next {
                    Box::pin(async move { group.join_next().await.is_some() })
                } else {
                    Box::pin(async move {
                        let _ = group.join().await;
                        true
                    })
                };
                let waiter = Waiter {
                    next,
                    fut,
                    wakes: Arc::default(),
                    wakes_at_park: 0,
                    ends_at_park: 0,
                };
                self.waiters.push(waiter);
                let last = self.waiters.len() - 1;
                self.repoll(last);
            }
            Op::Repoll(r) => {
                if !self.waiters.is_empty() {
                    let i = usize::from(r.0) % self.waiters.len();
                    self.repoll(i);
                }
            }
        }
    }

    /// Polls waiter `i`; a ready one is checked and dropped, a pending one
    /// remembers what it has seen.
    fn repoll(&mut self, i: usize) {
        let at = self.at();
        let ends_now = ends(&self.group);
        let empty = self.group.is_empty();
        let w = &mut self.waiters[i];
        let waker = std::task::Waker::from(w.wakes.clone());
        match w.fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(took_one) => {
                if w.next && !took_one {
                    assert!(empty, "{at}: join_next said None with live tasks");
                }
                drop(self.waiters.swap_remove(i));
            }
            Poll::Pending => {
                assert!(!empty, "{at}: a waiter is pending on an empty group");
                w.wakes_at_park = w.wakes.0.load(Ordering::SeqCst);
                w.ends_at_park = ends_now;
            }
        }
    }

    fn pick(&mut self, r: u8) -> Option<&mut Task> {
        let n = self.tasks.len();
        (n > 0).then(|| &mut self.tasks[usize::from(r) % n])
    }

    /// How a task the library says ended with `outcome` really ended.
    fn check_outcome(&self, i: usize, outcome: TaskOutcome) {
        let t = &self.tasks[i];
        let p = &t.probe;
        assert!(
            !p.alive(),
            "{}: task {i} reported {outcome:?} but alive",
            self.at()
        );
        let ok = match outcome {
            TaskOutcome::Completed => p.completed(),
            TaskOutcome::Panicked => p.panicked(),
            TaskOutcome::Cancelled | TaskOutcome::Aborted => !p.completed() && !p.panicked(),
            _ => false,
        };
        assert!(ok, "{}: task {i} ({t:?}) reported {outcome:?}", self.at());
    }

    /// Both shutdowns, each checked: the report partitions the tasks that
    /// ended since the scope was first cancelled (and those alive at the
    /// end, none: every behaviour here ends when aborted), and it took at
    /// most `grace + abort_grace`. Each closes its tracker.
    async fn shutdown_both(&mut self) {
        self.observe();
        self.mark_group();
        let report = self.group.shutdown().await;
        settle().await;
        self.group_cancelled = true;
        self.group_closed = true;
        self.observe();
        self.check_report("group", |h| h == Home::Group, self.group_mark, &report);

        self.mark_map();
        let report = self.map.shutdown().await;
        settle().await;
        self.map_cancelled = true;
        self.map_closed = true;
        self.observe();
        self.check_report("map", |h| h != Home::Group, self.map_mark, &report);
    }

    fn alive_in(&self, home: impl Fn(Home) -> bool) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&i| home(self.tasks[i].home) && self.tasks[i].probe.alive())
            .collect()
    }

    fn check_report(
        &self,
        what: &str,
        home: impl Fn(Home) -> bool,
        mark: Option<(usize, bool)>,
        report: &ShutdownReport,
    ) {
        let at = self.at();
        let (mark, exact) = mark.expect("a shut down scope is cancelled");
        // [completed, panicked, dropped]: surely counted, and maybe counted
        // (ended in the interval of a cancel by a panicking task).
        let (mut sure, mut maybe, mut alive) = ([0u64; 3], [0u64; 3], Vec::new());
        for t in self.tasks.iter().filter(|t| home(t.home)) {
            let p = &t.probe;
            if p.alive() {
                alive.push(t.id);
                continue;
            }
            let e = t.ended_epoch.expect("observed after the shutdown");
            let bucket = if e > mark || (e == mark && exact) {
                &mut sure
            } else if e == mark {
                &mut maybe
            } else {
                continue; // ended before the cancel: not in the report
            };
            let kind = if p.panicked() {
                1
            } else if p.completed() {
                0
            } else {
                2
            };
            bucket[kind] += 1;
        }
        let got = [
            report.completed,
            report.panicked,
            report.cancelled + report.aborted,
        ];
        for k in 0..3 {
            assert!(
                sure[k] <= got[k] && got[k] <= sure[k] + maybe[k],
                "{at}: {what} [completed, panicked, dropped] {got:?} not within \
                 {sure:?} + {maybe:?}: {report}"
            );
        }
        let mut stuck: Vec<TaskId> = report.stuck.iter().map(|s| s.id).collect();
        stuck.sort();
        alive.sort();
        assert_eq!(
            stuck, alive,
            "{at}: {what} stuck list vs live tasks: {report}"
        );
        assert!(report.is_clean(), "{at}: {what} left tasks stuck: {report}");
        let bound = policy().grace + policy().abort_grace + SLACK;
        assert!(
            report.elapsed <= bound,
            "{at}: {what} took {:?}",
            report.elapsed
        );
    }

    /// The checks after every step.
    fn check(&self) {
        let at = self.at();
        // Property 4 for waiters: a parked `join` is woken once the group is
        // idle, a parked `join_next` once a task ended since it parked,
        // whatever order waiters were re-polled in and whatever was spawned
        // between (tokio-util's `notify_many`).
        let ends_now = ends(&self.group);
        for (i, w) in self.waiters.iter().enumerate() {
            let due = if w.next {
                ends_now > w.ends_at_park || self.group.is_empty()
            } else {
                self.group.is_empty()
            };
            let woken = w.wakes.0.load(Ordering::SeqCst) > w.wakes_at_park;
            assert!(
                !due || woken,
                "{at}: parked waiter {i} (join_next: {}) was never woken",
                w.next
            );
        }
        let now = Instant::now();
        let max = policy().max_redeliveries as usize;
        let group_alive = self.alive_in(|h| h == Home::Group).len();
        let map_alive = self.alive_in(|h| h != Home::Group).len();
        // Property 3: len() is the number of live task futures.
        assert_eq!(
            self.group.len(),
            group_alive,
            "{at}: group len vs live tasks"
        );
        assert_eq!(self.map.len(), map_alive, "{at}: map len vs live tasks");
        // No entry for an ended task; a key maps to its newest task.
        for k in 0..4u8 {
            let expect = self
                .latest
                .get(&k)
                .is_some_and(|&i| self.tasks[i].probe.alive());
            assert_eq!(self.map.contains_key(&k), expect, "{at}: key {k}");
        }
        // The model's cancels took effect; any other group cancel came from a
        // panicking task (cancel_on_panic).
        let group_cancelled = self.group.scope().is_cancelled();
        let map_cancelled = self.map.scope().is_cancelled();
        assert!(
            !self.group_cancelled || group_cancelled,
            "{at}: group not cancelled"
        );
        assert_eq!(self.map_cancelled, map_cancelled, "{at}: map scope state");
        if group_cancelled && !self.group_cancelled {
            let any_panic = self
                .tasks
                .iter()
                .any(|t| t.home == Home::Group && t.probe.panicked());
            assert!(any_panic, "{at}: group cancelled by nobody");
        }
        for (i, t) in self.tasks.iter().enumerate() {
            let p = &t.probe;
            let tracker_cancelled = match t.home {
                Home::Group => group_cancelled,
                Home::Map(_) => map_cancelled,
            };
            // Property 1: a task that never wakes itself is polled once, then
            // at most once by the first delivery, however many cancel paths
            // reach it (its tracker's scope, key cancels, replacement), plus
            // the re-delivery cap.
            if t.behaviour == Behaviour::IgnoresCancel {
                let bound = 1 + 1 + max;
                assert!(
                    p.polls() <= bound,
                    "{at}: task {i} polled {} times (bound {bound}): {t:?}",
                    p.polls()
                );
            }
            // Delivery works: a cancelled drop-mode task, or an aborted one,
            // is gone once the runtime settled.
            if p.alive() {
                assert!(!t.aborted, "{at}: task {i} alive after abort: {t:?}");
                if t.drop_mode() {
                    assert!(
                        !tracker_cancelled && t.key_hits == 0,
                        "{at}: cancelled task {i} still alive: {t:?}"
                    );
                    if let Some(end) = t.natural_end() {
                        assert!(
                            now < end + SLACK,
                            "{at}: task {i} outlived its sleep: {t:?}"
                        );
                    }
                }
            } else if t.drop_mode() && !tracker_cancelled && t.key_hits == 0 && !t.aborted {
                // Nothing cancelled it: it ended on its own, not early.
                let end = t.natural_end().expect("drop mode");
                assert!(now >= end, "{at}: task {i} ended early: {t:?}");
            }
        }
    }

    /// Ends the program: both shutdowns, every task gone, every handle's
    /// verdict consistent with the probe, and no library task left on the
    /// runtime (no ladder, timer or deliverer outlives the last task).
    async fn quiesce(mut self) {
        self.step = usize::MAX;
        self.op = Op::Shutdown;
        self.shutdown_both().await;
        self.check();
        let at = self.at();
        for (i, t) in self.tasks.iter_mut().enumerate() {
            assert!(
                !t.probe.alive(),
                "{at}: task {i} alive after shutdown: {t:?}"
            );
            if let Some(h) = t.handle.take() {
                let result = h.await;
                let p = &t.probe;
                let ok = match &result {
                    Ok(()) => p.completed(),
                    Err(TaskError::Panicked(_)) => p.panicked(),
                    Err(_) => !p.completed() && !p.panicked(),
                };
                assert!(ok, "{at}: task {i} handle said {result:?}: {t:?}");
            }
        }
        let World {
            group,
            map,
            waiters,
            ..
        } = self;
        drop(waiters);
        drop(group);
        drop(map);
        settle().await;
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(
            alive, 0,
            "{at}: {alive} runtime tasks left after quiescence"
        );
    }
}
