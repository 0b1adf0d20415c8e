//! The reference model and the driver that runs a program of [`Op`]s against
//! the real `TaskGroup` and `TaskMap` on a paused-clock runtime, checking the
//! properties of DESIGN.md after every step. Shared by the proptest state
//! machine, the corpus replay and the fuzz target: a violation panics, with
//! the program's step in the message.
//!
//! Ground truth comes from probes inside each task's future (alive, completed,
//! panicked, polls) and inside its escalation hook (called, returned), never
//! from the library itself; the model adds what it can predict from the
//! operations (keys, cancellations, ladders, aborts, the clock) and from the
//! case's policy, which may be any value the types allow.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cancel_scope::{
    CancelScope, ShutdownPolicy, ShutdownReport, SpawnError, TaskBuilder, TaskError, TaskGroup,
    TaskHandle, TaskId, TaskMap, TaskOutcome,
};
use tokio::time::Instant;

use super::lang::{Behaviour, Hook, Op, Setup, Span};

/// Timer slack: a paused-clock sleep may fire up to one timer tick late.
const SLACK: Duration = Duration::from_millis(2);

/// How long the driver awaits a ladder that may never end (`grace:
/// Duration::MAX` over a task that ignores cancellation) before it calls
/// it "still pending". Every finite ladder of a case ends well before:
/// `grace + abort_grace + SLACK` is at most 50 ms (see `Span`).
const PATIENCE: Duration = Duration::from_millis(64);

/// Real time a released hook's thread gets to return.
const HOOK_RETURN: std::time::Duration = std::time::Duration::from_secs(10);

const PANIC_MESSAGE: &str = "model task panics on purpose";
const HOOK_PANIC_MESSAGE: &str = "model hook panics on purpose";

const _: () = assert!(
    2 * Span::SMALL_MAX_MS + 2 < 64,
    "a finite ladder must end within PATIENCE"
);

// ===== probes =====

/// What a task's own future (and its escalation hook) reports about itself.
#[derive(Debug, Default)]
struct Probe {
    alive: AtomicBool,
    completed: AtomicBool,
    panicked: AtomicBool,
    polls: AtomicUsize,
    /// The hook was entered (how many times: at most once) / has returned
    /// (or unwound).
    hook_calls: AtomicUsize,
    hook_returned: AtomicBool,
    /// Lets an `IgnoresCancel` task end (a grace that never ends would
    /// otherwise never see it go): it completes at its next poll.
    released: AtomicBool,
    release_waker: Mutex<Option<Waker>>,
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
    fn hook_calls(&self) -> usize {
        self.hook_calls.load(Ordering::SeqCst)
    }
    fn hook_returned(&self) -> bool {
        self.hook_returned.load(Ordering::SeqCst)
    }
    fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }
    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        if let Some(waker) = self.release_waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

/// Pending until [`Probe::release`]; never wakes the task otherwise, so the
/// task's polls stay the library's wakes.
struct Released(Arc<Probe>);

impl Future for Released {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut waker = self.0.release_waker.lock().unwrap();
        if self.0.released() {
            return Poll::Ready(());
        }
        *waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Marks the hook returned however it leaves (a return or a panic).
struct HookReturn(Arc<Probe>);

impl Drop for HookReturn {
    fn drop(&mut self) {
        self.0.hook_returned.store(true, Ordering::SeqCst);
    }
}

/// The escalation hook of `kind`, reporting to `probe`; a blocking one
/// blocks its thread until the returned sender is dropped.
#[allow(clippy::type_complexity)]
fn hook(
    kind: Hook,
    probe: Arc<Probe>,
) -> (
    Option<Box<dyn FnOnce() + Send + 'static>>,
    Option<mpsc::Sender<()>>,
) {
    let (release, released) = mpsc::channel::<()>();
    let f: Box<dyn FnOnce() + Send> = match kind {
        Hook::None => return (None, None),
        Hook::Returns => Box::new(move || {
            probe.hook_calls.fetch_add(1, Ordering::SeqCst);
            let _done = HookReturn(probe);
        }),
        Hook::Panics => Box::new(move || {
            probe.hook_calls.fetch_add(1, Ordering::SeqCst);
            let _done = HookReturn(probe);
            panic!("{HOOK_PANIC_MESSAGE}");
        }),
        Hook::Blocks => Box::new(move || {
            probe.hook_calls.fetch_add(1, Ordering::SeqCst);
            let _done = HookReturn(probe);
            // Blocks this (the hook's own) thread until the program lets go.
            let _ = released.recv();
        }),
    };
    let sender = (kind == Hook::Blocks).then_some(release);
    (Some(f), sender)
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
                Released(probe.clone()).await;
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

/// Spawns from a builder (a task with a hook), in the mode its behaviour
/// needs.
fn built<K>(
    builder: TaskBuilder<'_, K>,
    behaviour: Behaviour,
    probe: Arc<Probe>,
) -> Result<TaskHandle<()>, SpawnError>
where
    K: Eq + std::hash::Hash + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    match behaviour {
        Behaviour::IgnoresCancel | Behaviour::Cooperative { .. } => {
            builder.try_spawn_with_scope(move |s| task_future(behaviour, probe, Some(s)))
        }
        _ => builder.try_spawn(task_future(behaviour, probe, None)),
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
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            let intended = matches!(message, Some(PANIC_MESSAGE | HOOK_PANIC_MESSAGE));
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
    /// Deliveries aimed at this task alone (`cancel(key)`, `begin_cancel`,
    /// replacement, `TaskHandle::cancel`).
    hits: usize,
    /// When the first ladder over it started (any of the above, or a
    /// shutdown of its tracker while it was alive).
    ladder_at: Option<Instant>,
    hook: Hook,
    /// Held while a blocking hook must stay blocked; dropped to release it.
    hook_release: Option<mpsc::Sender<()>>,
    /// An abort reached it while it was alive (its handle's, an abort
    /// handle's from another thread, `TaskGroup::abort_all`,
    /// `TaskMap::abort`): it ends as aborted, at once, its code never
    /// polled again (`polls_at_abort`), and its hook never runs.
    aborted: bool,
    polls_at_abort: usize,
    /// The interval (see `World::epoch`) in which the model saw it end.
    ended_epoch: Option<usize>,
    /// Its end was taken from the group's queue (`try_join_next`, or a
    /// parked `join_next` that returned it).
    taken: bool,
}

impl Task {
    /// An abort reached it: marked aborted if it was alive then.
    fn abort_reached(&mut self) {
        if self.probe.alive() && !self.aborted {
            self.aborted = true;
            self.polls_at_abort = self.probe.polls();
        }
    }

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

/// What a parked waiter returns: the end a `join_next()` took (`None` from
/// a `join()`, or from a `join_next()` on an idle group with nothing left).
type Taken = Option<(TaskId, TaskOutcome)>;

/// A parked `join()` / `join_next()` of the group, polled by hand.
struct Waiter {
    next: bool,
    fut: Pin<Box<dyn Future<Output = Taken> + Send>>,
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
    policy: ShutdownPolicy,
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

/// Runs `ops` under `setup` on a fresh paused-clock runtime, checking after
/// every step; panics on the first violation.
pub fn run(setup: &Setup, ops: &[Op]) {
    quiet_intended_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run_on_runtime(*setup, ops));
}

async fn run_on_runtime(setup: Setup, ops: &[Op]) {
    let policy = setup.policy();
    let scope = CancelScope::new();
    let group_scope = if setup.born_cancelled {
        // Born cancelled: every task it gets starts cancelled, and its
        // report counts them all (the scope was cancelled before any).
        let s = scope.child();
        s.cancel();
        s
    } else {
        scope.clone()
    };
    let group = Arc::new(
        TaskGroup::builder()
            .policy(policy)
            .scope(group_scope)
            .collect_outcomes(true)
            .build(),
    );
    let map = TaskMap::with_scope_and_policy(scope.clone(), policy);
    let mut w = World {
        policy,
        scope,
        group,
        waiters: Vec::new(),
        map,
        tasks: Vec::new(),
        latest: HashMap::new(),
        group_cancelled: setup.born_cancelled,
        map_cancelled: false,
        group_closed: false,
        map_closed: false,
        epoch: 0,
        group_mark: setup.born_cancelled.then_some((0, true)),
        map_mark: None,
        step: 0,
        op: Op::CancelGroup,
    };
    w.check();
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

    fn spawn(&mut self, key: Option<u8>, behaviour: Behaviour, hook_kind: Hook) {
        let probe = Arc::new(Probe {
            alive: AtomicBool::new(true),
            ..Probe::default()
        });
        let p = probe.clone();
        let cooperative = matches!(
            behaviour,
            Behaviour::IgnoresCancel | Behaviour::Cooperative { .. }
        );
        let (on_escalate, hook_release) = hook(hook_kind, probe.clone());
        let spawned = match (key, on_escalate) {
            // Without a hook, the plain spawners; with one, a builder.
            (None, None) if cooperative => self
                .group
                .try_spawn_with_scope(move |s| task_future(behaviour, p, Some(s))),
            (None, None) => self.group.try_spawn(task_future(behaviour, p, None)),
            (Some(k), None) if cooperative => self
                .map
                .build_task(k)
                .try_spawn_with_scope(move |s| task_future(behaviour, p, Some(s))),
            (Some(k), None) => self.map.try_spawn(k, task_future(behaviour, p, None)),
            (None, Some(f)) => built(self.group.build_task().on_escalate(f), behaviour, p),
            (Some(k), Some(f)) => built(self.map.build_task(k).on_escalate(f), behaviour, p),
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
            // Replacing a live task delivers to it (it is retired: its
            // ladder starts).
            if let Some(&old) = self.latest.get(&k) {
                self.hit(old);
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
            hits: 0,
            ladder_at: None,
            hook: hook_kind,
            hook_release,
            aborted: false,
            polls_at_abort: 0,
            ended_epoch: None,
            taken: false,
        });
    }

    /// A delivery aimed at task `i` alone, which starts a ladder over it
    /// (if it is alive: one that ended is a no-op).
    fn hit(&mut self, i: usize) {
        let t = &mut self.tasks[i];
        if t.probe.alive() {
            t.hits += 1;
            t.ladder_at.get_or_insert(Instant::now());
        }
    }

    /// The live task under key `k`, if any.
    fn keyed(&self, k: u8) -> Option<usize> {
        self.latest
            .get(&k)
            .copied()
            .filter(|&i| self.tasks[i].probe.alive())
    }

    /// Whether task `i` can only end by an abort or a release: alive, and
    /// deaf to cancellation.
    fn stubborn(&self, i: usize) -> bool {
        let t = &self.tasks[i];
        t.behaviour == Behaviour::IgnoresCancel && t.probe.alive() && !t.probe.released()
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Spawn {
                key,
                behaviour,
                hook,
            } => self.spawn(key.map(|k| k.get()), behaviour, hook),
            Op::Replace {
                pick,
                behaviour,
                hook,
            } => {
                let live: Vec<u8> = (0..4u8).filter(|k| self.map.contains_key(k)).collect();
                let key = if live.is_empty() {
                    pick.0 % 4
                } else {
                    live[usize::from(pick.0) % live.len()]
                };
                self.spawn(Some(key), behaviour, hook);
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
                let target = self.keyed(k);
                if let Some(i) = target {
                    self.hit(i);
                }
                let start = Instant::now();
                // Cancel safe: a timed-out wait leaves the ladder running.
                let outcome = tokio::time::timeout(PATIENCE, self.map.cancel(&k)).await;
                let took = start.elapsed();
                settle().await;
                let at = self.at();
                match (target, outcome) {
                    (None, Ok(None)) => {}
                    (Some(i), Ok(Some(outcome))) => {
                        self.check_outcome(i, outcome);
                        assert!(
                            took <= self.ladder_bound(),
                            "{at}: cancel(key) took {took:?}"
                        );
                    }
                    (Some(i), Err(_)) => {
                        // Still pending: only a ladder that never escalates,
                        // over a task that never ends by itself.
                        assert!(
                            self.policy.grace == Duration::MAX && self.stubborn(i),
                            "{at}: cancel(key) pending after {PATIENCE:?} under {:?}: {:?}",
                            self.policy,
                            self.tasks[i]
                        );
                    }
                    (t, o) => panic!("{at}: cancel(key) = {o:?} for live task {t:?}"),
                }
            }
            Op::BeginCancelKey(key) => {
                let k = key.get();
                let target = self.keyed(k);
                if let Some(i) = target {
                    self.hit(i);
                }
                let found = self.map.begin_cancel(&k);
                let at = self.at();
                assert_eq!(found, target.is_some(), "{at}: begin_cancel({k})");
            }
            Op::CancelTask(r) => {
                let n = self.tasks.len();
                if n > 0 {
                    let i = usize::from(r.0) % n;
                    if let Some(h) = &self.tasks[i].handle {
                        h.cancel();
                        self.hit(i);
                    }
                }
            }
            Op::ReleaseHook(r) => {
                if let Some(t) = self.pick(r.0) {
                    t.hook_release = None;
                }
            }
            Op::Abort(r) => {
                if let Some(t) = self.pick(r.0) {
                    if let Some(h) = &t.handle {
                        h.abort();
                        t.abort_reached();
                    }
                }
            }
            Op::AbortViaHandle(r) => self.abort_via_handle(r.0).await,
            Op::AbortAll => self.abort_all().await,
            Op::AbortKey(key) => {
                let live: Vec<u8> = (0..4u8).filter(|k| self.keyed(*k).is_some()).collect();
                let k = if key.0 & 4 == 0 || live.is_empty() {
                    key.get()
                } else {
                    live[usize::from(key.0) % live.len()]
                };
                self.abort_key(k).await;
            }
            Op::TryJoinNext => self.try_join_next(),
            Op::DropHandle(r) => {
                if let Some(t) = self.pick(r.0) {
                    t.handle = None;
                }
            }
            Op::Advance(t) => tokio::time::advance(ms(t.millis())).await,
            Op::Shutdown => self.shutdown_both().await,
            Op::Wait { next } => {
                let group = self.group.clone();
                let fut: Pin<Box<dyn Future<Output = Taken> + Send>> = if next {
                    Box::pin(async move { group.join_next().await })
                } else {
                    Box::pin(async move {
                        let _ = group.join().await;
                        None
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
            Poll::Ready(taken) => {
                let next = w.next;
                drop(self.waiters.swap_remove(i));
                if next {
                    if taken.is_none() {
                        assert!(empty, "{at}: join_next said None with live tasks");
                    }
                    self.take_end("join_next", taken);
                }
            }
            Poll::Pending => {
                assert!(!empty, "{at}: a waiter is pending on an empty group");
                w.wakes_at_park = w.wakes.0.load(Ordering::SeqCst);
                w.ends_at_park = ends_now;
            }
        }
    }

    /// Checks an end taken from the group's one queue (`try_join_next`, or
    /// a parked `join_next` that returned) against the reference, and marks
    /// it taken: a `Some` is a group task that ended, not taken before
    /// (never duplicated), with its real outcome (`Aborted` if an abort
    /// reached it alive), and the oldest end not yet taken (ends are ordered
    /// by the interval the model saw them in; within one, any order); a
    /// `None` leaves no end behind (never lost).
    fn take_end(&mut self, what: &str, taken: Taken) {
        let at = self.at();
        let epoch = self.epoch;
        let end_of = |t: &Task| t.ended_epoch.unwrap_or(epoch);
        let untaken: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| {
                let t = &self.tasks[i];
                t.home == Home::Group && !t.probe.alive() && !t.taken
            })
            .collect();
        let Some((id, outcome)) = taken else {
            assert!(
                untaken.is_empty(),
                "{at}: {what} said None, ends of tasks {untaken:?} not taken yet"
            );
            return;
        };
        let i = self
            .tasks
            .iter()
            .position(|t| t.id == id)
            .unwrap_or_else(|| panic!("{at}: {what} gave {id}, no task of the model"));
        let t = &self.tasks[i];
        assert_eq!(t.home, Home::Group, "{at}: {what} gave task {i}: {t:?}");
        assert!(!t.taken, "{at}: {what} gave task {i}'s end twice: {t:?}");
        self.check_outcome(i, outcome);
        assert!(
            !t.aborted || outcome == TaskOutcome::Aborted,
            "{at}: {what} says aborted task {i} ended {outcome:?}: {t:?}"
        );
        let oldest = untaken.iter().map(|&j| end_of(&self.tasks[j])).min();
        assert!(
            oldest.is_some_and(|e| end_of(t) <= e),
            "{at}: {what} gave task {i} (ended in interval {}) before an end of interval \
             {oldest:?}: {t:?}",
            end_of(t)
        );
        self.tasks[i].taken = true;
    }

    /// `TaskGroup::try_join_next`: checked as [`Self::take_end`]; it takes
    /// an end and nothing more (no wake of a task or a parked waiter, no
    /// counter moved, `len()` unchanged).
    fn try_join_next(&mut self) {
        let at = self.at();
        let before = (self.group.stats(), self.group.len(), self.waiter_wakes());
        let taken = self.group.try_join_next();
        let after = (self.group.stats(), self.group.len(), self.waiter_wakes());
        assert_eq!(
            before, after,
            "{at}: try_join_next did more than take an end"
        );
        self.take_end("try_join_next", taken);
    }

    fn waiter_wakes(&self) -> Vec<usize> {
        self.waiters
            .iter()
            .map(|w| w.wakes.0.load(Ordering::SeqCst))
            .collect()
    }

    /// The tasks alive now, by index.
    fn alive(&self) -> Vec<usize> {
        self.alive_in(|_| true)
    }

    /// `TaskGroup::abort_all`: every live task of the group, and only those,
    /// ends as aborted once the runtime settled (no clock moved), with no
    /// hook run and no delivery or escalation counted; the group stays open,
    /// its scope as it was; the map is not touched.
    async fn abort_all(&mut self) {
        let at = self.at();
        let live = self.alive_in(|h| h == Home::Group);
        let others = self.alive_in(|h| h != Home::Group);
        let before = self.group.stats();
        let (cancelled, closed) = (self.group.scope().is_cancelled(), self.group.is_closed());
        self.group.abort_all();
        for &i in &live {
            self.tasks[i].abort_reached();
        }
        settle().await;
        let after = self.group.stats();
        let n = live.len() as u64;
        assert_eq!(
            (after.aborted, after.spawned),
            (before.aborted + n, before.spawned),
            "{at}: abort_all of {n} live tasks: {before:?} -> {after:?}"
        );
        let unmoved = |s: &cancel_scope::Stats| {
            (
                s.completed,
                s.cancelled,
                s.panicked,
                s.deliveries,
                s.redeliveries,
                s.escalations,
            )
        };
        assert_eq!(
            unmoved(&after),
            unmoved(&before),
            "{at}: abort_all counted more than aborts: {before:?} -> {after:?}"
        );
        assert!(
            self.group.is_empty(),
            "{at}: group not empty after abort_all"
        );
        assert_eq!(
            (self.group.scope().is_cancelled(), self.group.is_closed()),
            (cancelled, closed),
            "{at}: abort_all cancelled or closed the group"
        );
        assert_eq!(
            self.alive_in(|h| h != Home::Group),
            others,
            "{at}: abort_all touched the map"
        );
    }

    /// `TaskMap::abort(key)`: says whether a live task was under the key,
    /// and that task (the newest under it), alone, ends as aborted once the
    /// runtime settled, with no hook run and no delivery or escalation
    /// counted; no other key (nor an older task under this one) is touched.
    async fn abort_key(&mut self, k: u8) {
        let at = self.at();
        let target = self.keyed(k);
        let mut alive = self.alive();
        let before = self.map.stats();
        let closing: Vec<bool> = (0..4u8).map(|key| self.map.is_closing(&key)).collect();
        let found = self.map.abort(&k);
        assert_eq!(found, target.is_some(), "{at}: abort({k}) for {target:?}");
        if let Some(i) = target {
            self.tasks[i].abort_reached();
            alive.retain(|&j| j != i);
        }
        settle().await;
        let after = self.map.stats();
        assert_eq!(
            after.aborted,
            before.aborted + u64::from(found),
            "{at}: abort({k}): {before:?} -> {after:?}"
        );
        assert_eq!(
            (after.escalations, after.deliveries, after.redeliveries),
            (before.escalations, before.deliveries, before.redeliveries),
            "{at}: abort({k}) counted more than an abort: {before:?} -> {after:?}"
        );
        assert_eq!(self.alive(), alive, "{at}: abort({k}) ended other tasks");
        for (other, &was) in closing.iter().enumerate() {
            if other != usize::from(k) || target.is_none() {
                let key = other as u8;
                assert_eq!(
                    self.map.is_closing(&key),
                    was,
                    "{at}: abort({k}) touched key {other}"
                );
            }
        }
    }

    /// `TaskHandle::abort_handle().abort()` from a plain thread, joined:
    /// as `TaskHandle::abort`. The abort handle names the task and agrees
    /// with it on whether it has finished, before and after.
    async fn abort_via_handle(&mut self, r: u8) {
        let at = self.at();
        let Some(t) = self.pick(r) else { return };
        let Some(h) = &t.handle else { return };
        let abort = h.abort_handle();
        let id = t.id;
        assert_eq!(abort.id(), id, "{at}: abort handle's id");
        assert_eq!(
            abort.is_finished(),
            !t.probe.alive(),
            "{at}: abort handle of {t:?}"
        );
        let kept = abort.clone();
        t.abort_reached();
        std::thread::spawn(move || abort.abort())
            .join()
            .expect("abort from a plain thread");
        settle().await;
        assert!(kept.is_finished(), "{at}: task {id} unfinished after abort");
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

    /// The longest a ladder of this case may take.
    fn ladder_bound(&self) -> Duration {
        self.policy
            .grace
            .saturating_add(self.policy.abort_grace)
            .saturating_add(SLACK)
    }

    /// Both shutdowns, each checked (see [`Self::shutdown_one`]). Each
    /// closes its tracker.
    async fn shutdown_both(&mut self) {
        self.observe();
        self.mark_group();
        let report = self.shutdown_one(true).await;
        self.group_cancelled = true;
        self.group_closed = true;
        self.check_report("group", |h| h == Home::Group, self.group_mark, &report);

        self.mark_map();
        let report = self.shutdown_one(false).await;
        self.map_cancelled = true;
        self.map_closed = true;
        self.check_report("map", |h| h != Home::Group, self.map_mark, &report);
    }

    /// One shutdown, of the group or of the map: it takes at most `grace +
    /// abort_grace`, whatever its tasks' hooks do; under a grace that never
    /// ends it is still pending after [`PATIENCE`] exactly when a task that
    /// ignores cancellation is alive, and returns once those are let go.
    /// Its `hooks_running` is checked against the hooks' probes.
    async fn shutdown_one(&mut self, group: bool) -> ShutdownReport {
        let at = self.at();
        let home = move |h: Home| (h == Home::Group) == group;
        let now = Instant::now();
        // Before: which tasks this ladder is the first over, whose hooks
        // may still run.
        let mut first_ladder = vec![false; self.tasks.len()];
        let mut hook_unreturned = vec![false; self.tasks.len()];
        for (i, t) in self.tasks.iter_mut().enumerate() {
            if !home(t.home) {
                continue;
            }
            hook_unreturned[i] = t.hook != Hook::None && !t.probe.hook_returned();
            if t.probe.alive() {
                first_ladder[i] = t.ladder_at.is_none();
                t.ladder_at.get_or_insert(now);
            }
        }
        let mut fut: Pin<Box<dyn Future<Output = ShutdownReport> + Send>> = if group {
            let g = self.group.clone();
            Box::pin(async move { g.shutdown().await })
        } else {
            let m = self.map.clone();
            Box::pin(async move { m.shutdown().await })
        };
        let report = match tokio::time::timeout(PATIENCE, &mut fut).await {
            Ok(report) => report,
            Err(_) => {
                let stubborn: Vec<usize> = (0..self.tasks.len())
                    .filter(|&i| home(self.tasks[i].home) && self.stubborn(i))
                    .collect();
                assert!(
                    self.policy.grace == Duration::MAX && !stubborn.is_empty(),
                    "{at}: shutdown pending after {PATIENCE:?} under {:?}",
                    self.policy
                );
                for i in stubborn {
                    self.tasks[i].probe.release();
                }
                fut.await
            }
        };
        let took = now.elapsed();
        settle().await;
        self.observe();
        let bound = self.ladder_bound();
        assert!(
            report.elapsed <= bound && took <= bound,
            "{at}: shutdown took {took:?}, reports {:?}, bound {bound:?}",
            report.elapsed
        );
        // Hooks: a blocking hook that this ladder started (the first over its
        // task) is still running when the ladder ends, and it never delayed
        // the ladder (above); no hook is counted that could not be running.
        let (mut least, mut most) = (0u64, 0u64);
        for (i, t) in self.tasks.iter().enumerate() {
            if !home(t.home) {
                continue;
            }
            if first_ladder[i]
                && t.hook == Hook::Blocks
                && t.hook_release.is_some()
                && t.probe.hook_calls() > 0
            {
                least += 1;
            }
            if hook_unreturned[i] {
                most += 1;
            }
        }
        assert!(
            least <= report.hooks_running
                && report.hooks_running <= most
                && report.hooks_running <= report.escalations,
            "{at}: hooks_running {} not within {least}..={most}: {report}",
            report.hooks_running
        );
        report
    }

    fn alive_in(&self, home: impl Fn(Home) -> bool) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&i| home(self.tasks[i].home) && self.tasks[i].probe.alive())
            .collect()
    }

    /// The report partitions the tasks that ended since the scope was first
    /// cancelled (each kind, and their total), and those alive at the end
    /// are its stuck list (none: every behaviour here ends when aborted).
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
        let total: u64 = got.iter().sum();
        let (sure_total, maybe_total): (u64, u64) = (sure.iter().sum(), maybe.iter().sum());
        assert!(
            sure_total <= total && total <= sure_total + maybe_total,
            "{at}: {what} reports {total} ends, the probes saw {sure_total} \
             (+ {maybe_total} maybe): {report}"
        );
        let mut stuck: Vec<TaskId> = report.stuck.iter().map(|s| s.id).collect();
        stuck.sort();
        alive.sort();
        assert_eq!(
            stuck, alive,
            "{at}: {what} stuck list vs live tasks: {report}"
        );
        for s in &report.stuck {
            let t = self.tasks.iter().find(|t| t.id == s.id).expect("a task");
            assert!(
                !s.hook_running || t.hook != Hook::None,
                "{at}: {what} says the hook of {} runs: {t:?}",
                s.id
            );
        }
        assert!(report.is_clean(), "{at}: {what} left tasks stuck: {report}");
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
        let max = u64::from(self.policy.max_redeliveries);
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
        // Re-delivery is capped per task over its life, whatever number of
        // ladders: at most `max_redeliveries` for each task that any cancel
        // reached (its tracker's, or one aimed at it alone).
        for (what, stats, mark, in_home) in [
            (
                "group",
                self.group.stats(),
                self.group_mark,
                &(|h: Home| h == Home::Group) as &dyn Fn(Home) -> bool,
            ),
            ("map", self.map.stats(), self.map_mark, &|h: Home| {
                h != Home::Group
            }),
        ] {
            let reached = self
                .tasks
                .iter()
                .filter(|t| in_home(t.home))
                .filter(|t| {
                    t.hits > 0 || mark.is_some_and(|(m, _)| t.ended_epoch.is_none_or(|e| e >= m))
                })
                .count() as u64;
            assert!(
                stats.redeliveries <= max.saturating_mul(reached),
                "{at}: {what} made {} re-deliveries to {reached} tasks (limit {max} each)",
                stats.redeliveries
            );
        }
        for (i, t) in self.tasks.iter().enumerate() {
            let p = &t.probe;
            let tracker_cancelled = match t.home {
                Home::Group => group_cancelled,
                Home::Map(_) => map_cancelled,
            };
            // Property 1: a task that never wakes itself is polled by its
            // spawn, then woken by the library at most `max_redeliveries + 3`
            // times (first delivery, one per-task cancel after another cancel
            // reached it, the re-deliveries, escalation), however many
            // ladders and cancel paths reach it; a release adds its own wake.
            if t.behaviour == Behaviour::IgnoresCancel {
                let bound = max.saturating_add(4 + u64::from(p.released()));
                let polls = p.polls() as u64;
                assert!(
                    polls <= bound,
                    "{at}: task {i} polled {polls} times (bound {bound}): {t:?}"
                );
            }
            // Property 2: every ladder ends. A task some ladder reached is
            // gone by `grace + abort_grace` (all of them end when aborted),
            // and its hook runs no earlier than `grace`.
            if let Some(start) = t.ladder_at {
                let end = start.checked_add(self.ladder_bound());
                assert!(
                    !p.alive() || end.is_none_or(|end| now < end),
                    "{at}: task {i} outlived its ladder (from {:?} ago, policy {:?}): {t:?}",
                    now - start,
                    self.policy
                );
            }
            let calls = p.hook_calls();
            assert!(calls <= 1, "{at}: task {i}'s hook ran {calls} times: {t:?}");
            if calls > 0 {
                let escalation = t
                    .ladder_at
                    .and_then(|start| start.checked_add(self.policy.grace));
                assert!(
                    escalation.is_some_and(|e| now >= e),
                    "{at}: task {i}'s hook ran before any ladder's grace ran out: {t:?}"
                );
            }
            // Abort has no grace: an aborted task's code is not polled
            // again (its next poll ends it), and its hook never runs.
            assert!(
                !t.aborted || (calls == 0 && p.polls() == t.polls_at_abort),
                "{at}: aborted task {i} was polled or its hook ran: {t:?}"
            );
            // Delivery works: a cancelled drop-mode task, or an aborted one,
            // is gone once the runtime settled.
            if p.alive() {
                assert!(!t.aborted, "{at}: task {i} alive after abort: {t:?}");
                if t.drop_mode() {
                    assert!(
                        !tracker_cancelled && t.hits == 0,
                        "{at}: cancelled task {i} still alive: {t:?}"
                    );
                    if let Some(end) = t.natural_end() {
                        assert!(
                            now < end + SLACK,
                            "{at}: task {i} outlived its sleep: {t:?}"
                        );
                    }
                }
            } else if t.drop_mode() && !tracker_cancelled && t.hits == 0 && !t.aborted {
                // Nothing cancelled it: it ended on its own, not early.
                let end = t.natural_end().expect("drop mode");
                assert!(now >= end, "{at}: task {i} ended early: {t:?}");
            }
        }
    }

    /// Releases every blocked hook, and waits (real time: hooks run on
    /// threads of their own) until every hook that ran has returned. An
    /// escalated task (one that ignores cancellation and ended neither by
    /// its handle's abort nor by a release) had its hook run.
    fn release_hooks(&mut self) {
        let at = self.at();
        for t in &mut self.tasks {
            t.hook_release = None;
        }
        let deadline = std::time::Instant::now() + HOOK_RETURN;
        for (i, t) in self.tasks.iter().enumerate() {
            let p = &t.probe;
            let escalated = t.behaviour == Behaviour::IgnoresCancel
                && !p.alive()
                && !t.aborted
                && !p.released();
            let done = || {
                let ran = p.hook_calls() > 0;
                (!ran || p.hook_returned()) && (ran || !escalated || t.hook == Hook::None)
            };
            while !done() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(
                done(),
                "{at}: task {i}'s hook (escalated: {escalated}) ran {} times, returned: {}: {t:?}",
                p.hook_calls(),
                p.hook_returned()
            );
        }
    }

    /// Ends the program: both shutdowns, every task gone, every handle's
    /// verdict consistent with the probe, every hook released and returned,
    /// and no library task left on the runtime (no ladder, timer or
    /// deliverer outlives the last task).
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
                    _ if t.aborted => matches!(result, Err(TaskError::Aborted)),
                    Ok(()) => p.completed(),
                    Err(TaskError::Panicked(_)) => p.panicked(),
                    Err(_) => !p.completed() && !p.panicked(),
                };
                assert!(ok, "{at}: task {i} handle said {result:?}: {t:?}");
            }
        }
        // Every end of a group task is in the queue, once: drained here,
        // oldest first, until `None`.
        for _ in 0..=self.tasks.len() {
            let taken = self.group.try_join_next();
            let done = taken.is_none();
            self.take_end("try_join_next (drain)", taken);
            if done {
                break;
            }
        }
        self.release_hooks();
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
