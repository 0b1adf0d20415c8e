//! Models of the ladder (`ladder/driver.rs`'s `drive`, the loop that
//! `Tracker::run_ladder` runs on tokio): its wait for quiescence and its
//! escalation, two ladders over one task, and the negative control.
//!
//! The models drive the real driver; only its [`Rungs`], the part that needs
//! a runtime, are the model's: tokio's timer is replaced by a *step timer*
//! thread that fires the schedule's rungs in order at moments loom chooses,
//! as expired timers would ([`StepRungs`]; [`DueRungs`] for a ladder whose
//! timers all expired), escalation's hook is a count, and give-up's round
//! (tokio's `yield_now`) is immediate: loom tries every order anyway.
//! Everything else (the `Schedule`, `poll_idle` / `poll_ended` parked through
//! a waker, `TaskCell::redeliver` with the policy's limit, escalation's
//! `mark_escalated` and wake, the give-up rung's re-check, `mark_stuck`,
//! `release_*`, the ladder's counters) is the code that runs on tokio.
//!
//! The task is [`stubborn_task`]: it polls as `Tracked::poll` does, through
//! the real `TaskCell` calls, and ignores cancellation, so only escalation
//! ends it. Every library wake it can get is counted against the bound that
//! holds per cell, whatever number of ladders run over it: the first
//! delivery (1), the re-deliveries (at most the policy's limit, registry
//! invariant 3) and escalation's wake (1, `mark_escalated` is once). That no
//! wake is claimed for a task once it ended (registry invariant 1) is proven
//! for the same calls (`schedule`, `redeliver`) in `registry.rs`.

use std::cell::Cell;
use std::pin::pin;
use std::sync::Arc as StdArc;
use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use loom::future::block_on;
use loom::sync::Mutex;
use loom::sync::atomic::AtomicUsize;
use loom::thread;

use super::{CountingWaker, Seen, check};
use crate::ladder::driver::{self, Rungs};
use crate::ladder::{Backoff, Schedule, ShutdownPolicy, Step};
use crate::registry::{EntryGuard, LadderCounts, Registry, TaskCell, TaskOutcome};
use crate::sync::{Arc, Ordering};

/// Re-deliveries per policy, kept small: every rung is one more point where
/// loom interleaves. The per-key models use one fewer: `poll_ended` and the
/// per-task target checks add branch points, and two re-deliveries there
/// multiply the run time by ten for no new order of events.
const GROUP_REDELIVERIES: u32 = 2;
const KEY_REDELIVERIES: u32 = 1;

fn policy(max_redeliveries: u32) -> ShutdownPolicy {
    ShutdownPolicy {
        grace: Duration::from_millis(100),
        max_redeliveries,
        // Every re-delivery rung well inside the grace (the default's first
        // one comes after 1 s).
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_secs(1),
            multiplier: 2,
        },
        abort_grace: Duration::from_millis(100),
    }
}

/// The most library wakes one task can get, per cell and whatever number of
/// ladders run over it: first delivery + re-deliveries + escalation's wake.
fn wake_bound(limit: u32) -> usize {
    1 + limit as usize + 1
}

/// The task's side, as `Tracked::poll` for a task that ignores cancellation:
/// `begin_poll` with the task's waker; on `escalated`, end as aborted (the
/// guard prunes the entry); else the user's future returns `Pending`, and a
/// poll that began `delivered` calls `parked_after_delivery`. Runs until
/// escalation ends it; returns the wakes its waker got.
fn stubborn_task(guard: EntryGuard<(), ()>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut guard = Some(guard);
        let mut waker: Option<(StdArc<CountingWaker>, Waker)> = None;
        block_on(std::future::poll_fn(|cx| {
            // The runtime's waker, counted: the cell keeps it for its wakes.
            let (_, task_waker) = waker.get_or_insert_with(|| {
                let counting = CountingWaker::new(cx.waker());
                (counting.clone(), Waker::from(counting))
            });
            let g = guard.as_mut().expect("polled after the end");
            let start = g.cell().begin_poll(task_waker);
            if start.escalated {
                g.outcome = TaskOutcome::Aborted;
                drop(guard.take());
                return Poll::Ready(());
            }
            // The user's future ignores the cancellation and parks again.
            if start.delivered {
                g.cell().parked_after_delivery();
            }
            Poll::Pending
        }));
        waker.map_or(0, |(counting, _)| counting.wakes())
    })
}

/// How the ladder waits between rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The real driver (`ladder::driver::drive`) over the step timer: parked
    /// on the registry and the timer.
    Parked,
    /// The bug this crate exists to prevent: re-deliver and re-check at once
    /// (a `yield_now` loop). Compiled only here, for the negative control.
    Busy,
}

/// What the ladder waits for, as `drive`'s `one` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `TaskGroup::shutdown`: every task (`poll_idle`).
    All,
    /// `TaskMap::cancel`: one task (`poll_ended`).
    One,
}

/// A waker slot for the step timer.
#[derive(Default)]
struct Slot(Mutex<Option<Waker>>);

impl Slot {
    fn register(&self, waker: &Waker) {
        *self.0.lock().unwrap() = Some(waker.clone());
    }

    fn take(&self) -> Option<Waker> {
        self.0.lock().unwrap().take()
    }

    fn wake(&self) {
        if let Some(w) = self.take() {
            w.wake();
        }
    }
}

/// Fires the schedule's rungs in order: `fired` is how many are due.
#[derive(Default)]
struct StepTimer {
    fired: AtomicUsize,
    /// A copy of `fired` for the tally only: a `std` atomic, so reading it
    /// adds no branch to loom's exploration.
    fired_tally: std::sync::atomic::AtomicUsize,
    waker: Slot,
}

/// The step timer's thread: fires the first `n` rungs, in order.
fn ticker(timer: &Arc<StepTimer>, n: usize) -> thread::JoinHandle<()> {
    let timer = timer.clone();
    thread::spawn(move || {
        for k in 1..=n {
            // Release pairs with the driver's Acquire load of `fired`.
            timer.fired_tally.store(k, Ordering::Relaxed);
            timer.fired.store(k, Ordering::Release);
            timer.waker.wake();
        }
    })
}

/// Which rungs the step timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fires {
    /// Every rung: the task's end races the give-up rung.
    All,
    /// Every rung but give-up (a long `abort_grace`): after escalation only
    /// the task's end can wake the ladder, so a lost wakeup (of the task by
    /// escalation's `schedule`, or of the ladder by the end) deadlocks.
    WithholdGiveUp,
}

/// A moment of the step timer's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Rung `n` of the schedule: due once the timer fired `n + 1` rungs.
    Rung(usize),
    /// Give-up's last wait: due at once.
    Now,
}

/// The driver's [`Rungs`] over the [`StepTimer`]: a rung is due once the
/// timer fired it; else the driver's waker waits in the timer's slot (one
/// slot, as tokio's one `Sleep`), which is emptied when the driver drops
/// these rungs. Escalation's hook is a count.
struct StepRungs<'a> {
    timer: &'a StepTimer,
    /// The rungs found due so far: the index of the next one.
    next: &'a Cell<usize>,
    /// The driver reached give-up's last wait.
    rechecked: &'a Cell<bool>,
    hooks: &'a StdAtomicUsize,
}

impl Rungs<()> for StepRungs<'_> {
    type Moment = Moment;

    fn rung(&mut self, index: usize, _: Duration) -> Moment {
        Moment::Rung(index)
    }

    fn now(&mut self) -> Moment {
        self.rechecked.set(true);
        Moment::Now
    }

    fn poll_due(&mut self, at: Moment, cx: &mut Context<'_>) -> Poll<()> {
        let Moment::Rung(index) = at else {
            return Poll::Ready(());
        };
        self.timer.waker.register(cx.waker());
        // Acquire pairs with the ticker's Release store of `fired`.
        if index >= self.timer.fired.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        self.next.set(index + 1);
        Poll::Ready(())
    }

    fn escalate(&mut self, _: &Arc<TaskCell<()>>) -> bool {
        run_hook(self.hooks)
    }

    async fn round(&mut self) {}

    fn release(&mut self) {
        self.timer.waker.take();
    }
}

/// Both model clocks' escalation hook: counts that it ran; a hook was
/// started.
fn run_hook(hooks: &StdAtomicUsize) -> bool {
    hooks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    true
}

/// How the ladder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The target ended; `parked`: the ladder was parked with no rung due,
    /// so the end's own wakeup brought it back.
    Ended {
        parked: bool,
    },
    Stuck,
}

/// What one ladder did, as the model checks it.
struct Run {
    verdict: Verdict,
    redelivered: usize,
    escalation_wakes: usize,
    /// Escalated targets whose hook the ladder reported started.
    hooked: usize,
    /// The ladder's own waker, counted, for the check that none is left.
    own: Option<(StdArc<CountingWaker>, Waker)>,
}

/// The real driver over the step timer, polled through a counting waker.
/// Each poll after the first needs a wake: one per rung fired, and one from
/// the registry when the task ends. More means a re-check loop.
fn parked_ladder(
    registry: &Registry<(), ()>,
    cell: &Arc<TaskCell<()>>,
    target: Target,
    max: u32,
    timer: &StepTimer,
    hooks: &StdAtomicUsize,
) -> Run {
    let rungs_in_schedule = Schedule::new(policy(max)).count();
    let (next, rechecked) = (Cell::new(0), Cell::new(false));
    let rungs = StepRungs {
        timer,
        next: &next,
        rechecked: &rechecked,
        hooks,
    };
    let one = match target {
        Target::All => None,
        Target::One => Some(cell),
    };
    let mut rungs = rungs;
    let policy = policy(max);
    let mut ladder = pin!(driver::drive(registry, one, &policy, &mut rungs));
    let mut polls = 0;
    let mut own: Option<(StdArc<CountingWaker>, Waker)> = None;
    let (finished, parked) = block_on(std::future::poll_fn(|cx| {
        polls += 1;
        let parked = polls > 1 && next.get() >= timer.fired_tally.load(Ordering::Relaxed);
        assert!(
            polls <= rungs_in_schedule + 2,
            "the ladder's wait re-checked in a loop ({polls} polls for {rungs_in_schedule} rungs)"
        );
        let (_, waker) = own.get_or_insert_with(|| {
            let counting = CountingWaker::new(cx.waker());
            (counting.clone(), Waker::from(counting))
        });
        ladder
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .map(|finished| (finished, parked))
    }));
    let verdict = match (finished.ended, rechecked.get()) {
        (false, _) => Verdict::Stuck,
        // Seen by give-up's re-check, after the rung.
        (true, true) => Verdict::Ended { parked: false },
        (true, false) => Verdict::Ended { parked },
    };
    Run {
        verdict,
        redelivered: finished.redelivered as usize,
        escalation_wakes: finished.escalation_wakes as usize,
        hooked: finished.hooked.len(),
        own,
    }
}

/// The negative control's driver: instead of parking, re-deliver to every
/// live task and re-check at once. Kept here, deliberately wrong; the same
/// poll bound as the real driver's must catch it.
fn busy_ladder(
    registry: &Registry<(), ()>,
    cell: &Arc<TaskCell<()>>,
    target: Target,
    max: u32,
    timer: &StepTimer,
    delivered: usize,
) -> Run {
    let rungs_in_schedule = Schedule::new(policy(max)).count();
    let mut polls = 0;
    let mut busy_wakes = 0;
    let (mut idle_slot, mut ended_slot) = (None, None);
    let mut own: Option<(StdArc<CountingWaker>, Waker)> = None;
    let verdict = block_on(std::future::poll_fn(|cx| {
        polls += 1;
        // It never waits for a rung: none is ever found due.
        let parked = polls > 1 && timer.fired_tally.load(Ordering::Relaxed) == 0;
        assert!(
            polls <= rungs_in_schedule + 2,
            "the ladder's wait re-checked in a loop ({polls} polls for {rungs_in_schedule} rungs)"
        );
        let (_, waker) = own.get_or_insert_with(|| {
            let counting = CountingWaker::new(cx.waker());
            (counting.clone(), Waker::from(counting))
        });
        let done = match target {
            Target::All => registry.poll_idle(waker, &mut idle_slot).is_ready(),
            Target::One => registry.poll_ended(cell, waker, &mut ended_slot).is_ready(),
        };
        if done {
            return Poll::Ready(Verdict::Ended { parked });
        }
        // Re-deliver right away and come back at once.
        for c in registry.pending() {
            busy_wakes += usize::from(c.schedule());
        }
        assert!(
            delivered + busy_wakes <= wake_bound(max),
            "{} wakes claimed for one task",
            delivered + busy_wakes
        );
        waker.wake_by_ref();
        Poll::Pending
    }));
    // Not reached: only escalation ends the task, and this loop never
    // escalates; the poll bound or the wake bound fails first.
    Run {
        verdict,
        redelivered: 0,
        escalation_wakes: busy_wakes,
        hooked: 0,
        own,
    }
}

/// One run of the model: [`stubborn_task`], the ladder over it, and the step
/// timer.
fn ladder(variant: Variant, target: Target, fires: Fires, seen: &Seen) {
    let max = match target {
        Target::All => GROUP_REDELIVERIES,
        Target::One => KEY_REDELIVERIES,
    };
    seen.iteration();
    let steps: Vec<Step> = Schedule::new(policy(max)).map(|(_, s)| s).collect();
    assert_eq!(steps.len(), max as usize + 2, "{steps:?}");

    let registry = Arc::new(Registry::<(), ()>::new(false));
    let guard = Registry::insert(&registry, (), None).guard;
    let cell = guard.cell().clone();
    let task = stubborn_task(guard);

    let timer = Arc::new(StepTimer::default());
    let ticker = ticker(
        &timer,
        match fires {
            Fires::All => steps.len(),
            Fires::WithholdGiveUp => steps.len() - 1,
        },
    );

    // First delivery, as `Tracker::shutdown` / a per-task cancel: mark, then
    // one wake.
    registry.mark_closing(&cell);
    let delivered = usize::from(cell.deliver());
    let hooks = StdAtomicUsize::new(0);
    let run = match variant {
        Variant::Parked => parked_ladder(&registry, &cell, target, max, &timer, &hooks),
        Variant::Busy => busy_ladder(&registry, &cell, target, max, &timer, delivered),
    };
    seen.hit(match run.verdict {
        Verdict::Ended { parked: true } => "woken_by_the_end",
        Verdict::Ended { parked: false } => "end_seen_after_a_rung",
        Verdict::Stuck => "reported_stuck",
    });

    let task_wakes = task.join().unwrap();
    ticker.join().unwrap();

    // The wake bound, part by part: one first delivery, the re-deliveries
    // the cell counted (at most the limit), one wake from escalation, which
    // ran its hook once. The registry's counters, which the report reads,
    // agree with the driver.
    let redelivered = run.redelivered;
    assert_eq!(redelivered, cell.redeliveries() as usize);
    assert_eq!(
        LadderCounts::get(&registry.ladder.redeliveries),
        redelivered as u64
    );
    assert!(redelivered <= max as usize, "{redelivered} re-deliveries");
    assert_eq!(hooks.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(LadderCounts::get(&registry.ladder.escalations), 1);
    assert_eq!(run.hooked, 1, "the escalated task's hook was not reported");
    assert!(run.escalation_wakes <= 1);
    let claims = delivered + redelivered + run.escalation_wakes;
    assert!(claims <= wake_bound(max), "{claims} wakes claimed");
    // A claim can reach the task twice when it races the task's own
    // re-registration (loom's waker slot wakes the newcomer rather than lose
    // it).
    assert!(
        task_wakes <= 2 * claims,
        "{task_wakes} wakes for {claims} claims"
    );
    // The task ended at the poll after its escalation, as aborted, and
    // pruned itself, even when it had been reported stuck.
    assert_eq!(registry.len(), 0);
    assert_eq!(cell.outcome(), Some(TaskOutcome::Aborted));
    let totals = registry.task_counts();
    assert_eq!((totals.aborted, totals.stuck, totals.closing), (1, 0, 0));
    // No wakeup of the ladder is left anywhere once it returned: the registry
    // and the timer dropped every clone of its waker.
    let (counting, waker) = run.own.expect("the ladder was polled");
    drop(waker);
    assert_eq!(
        StdArc::strong_count(&counting),
        1,
        "a wakeup of the ladder is still registered after it returned"
    );
}

/// Runs the parked ladder model for one target and timer configuration.
fn shutdown_model(target: Target, fires: Fires, name: &str) {
    let outcomes: &'static [&'static str] = match fires {
        Fires::All => &[
            "woken_by_the_end",
            "end_seen_after_a_rung",
            "reported_stuck",
        ],
        Fires::WithholdGiveUp => &["woken_by_the_end", "end_seen_after_a_rung"],
    };
    let seen = Seen::new(outcomes);
    let tally = seen.clone();
    check(name, &seen, move || {
        ladder(Variant::Parked, target, fires, &tally)
    });
}

/// Proves property 1 for the ladder's driver and its wait for quiescence
/// (group shutdown, `poll_idle`): with one task that ignores cancellation,
/// the ladder parks between rungs (it is polled only when a rung fires or
/// the task ends); the task gets at most first delivery (1) + re-deliveries
/// (at most `max_redeliveries`) + escalation's wake (1) library wakes (none
/// once it ended: `registry.rs` proves it for the same calls), and the
/// registry's ladder counters agree; escalation (`mark_escalated`, then
/// `schedule`) ends it as aborted
/// at its next poll; and the ladder leaves no wakeup registered once it
/// returns, whether the task's end or the give-up rung comes first.
#[test]
fn shutdown_waits_without_spinning() {
    shutdown_model(Target::All, Fires::All, "shutdown_waits_without_spinning");
}

/// As [`shutdown_waits_without_spinning`], with the give-up rung withheld:
/// after escalation only the task's end can wake the parked ladder, so a lost
/// wakeup (escalation's `schedule` missing the task's poll, or `poll_idle`
/// missing the end) deadlocks the model.
#[test]
fn shutdown_waits_without_spinning_until_the_end() {
    shutdown_model(
        Target::All,
        Fires::WithholdGiveUp,
        "shutdown_waits_without_spinning_until_the_end",
    );
}

/// As [`shutdown_waits_without_spinning`], for one key's ladder
/// (`TaskMap::cancel`, `poll_ended`).
#[test]
fn cancel_key_waits_without_spinning() {
    shutdown_model(Target::One, Fires::All, "cancel_key_waits_without_spinning");
}

/// As [`cancel_key_waits_without_spinning`], with the give-up rung withheld:
/// a lost wakeup (of the task by escalation, or of `poll_ended` by the end)
/// deadlocks the model.
#[test]
fn cancel_key_waits_without_spinning_until_the_end() {
    shutdown_model(
        Target::One,
        Fires::WithholdGiveUp,
        "cancel_key_waits_without_spinning_until_the_end",
    );
}

/// The negative control's model: `shutdown_waits_without_spinning` over a
/// driver that re-delivers and re-checks at once instead of parking. It must
/// fail; loom aborts the process while unwinding out of a failed model, so
/// [`busy_redelivery_is_caught`] runs it in a child process.
#[test]
#[ignore = "negative control: must fail; run by busy_redelivery_is_caught in a child process"]
fn busy_redelivery_model() {
    let seen = Seen::new(&[
        "woken_by_the_end",
        "end_seen_after_a_rung",
        "reported_stuck",
    ]);
    let tally = seen.clone();
    check("busy_redelivery_model", &seen, move || {
        ladder(Variant::Busy, Target::All, Fires::All, &tally)
    });
}

/// Negative control for `shutdown_waits_without_spinning`: the same model over
/// a busy re-delivery loop fails, so the model does catch the bug it targets.
#[test]
fn busy_redelivery_is_caught() {
    super::negative_control(
        "loom_models::ladder::busy_redelivery_model",
        &["re-checked in a loop", "wakes claimed for one task"],
    );
}

/// The driver's [`Rungs`] for a ladder whose timers all expired: every
/// moment is due, and escalation's hook is a count.
struct DueRungs<'a> {
    hooks: &'a StdAtomicUsize,
}

impl Rungs<()> for DueRungs<'_> {
    type Moment = ();

    fn rung(&mut self, _: usize, _: Duration) {}

    fn now(&mut self) {}

    fn poll_due(&mut self, (): (), _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }

    fn escalate(&mut self, _: &Arc<TaskCell<()>>) -> bool {
        run_hook(self.hooks)
    }

    async fn round(&mut self) {}

    fn release(&mut self) {}
}

/// One ladder that fires its rungs back to back (its timers already
/// expired): `mark_closing` and `deliver`, then the real driver over
/// [`DueRungs`] (it returns once the target ended, or after give-up).
/// Returns the wakes it claimed, its re-deliveries, and whether it
/// escalated.
fn unparked_ladder(
    registry: &Registry<(), ()>,
    cell: &Arc<TaskCell<()>>,
    target: Target,
    hooks: &StdAtomicUsize,
) -> (usize, usize, bool) {
    const LIMIT: u32 = KEY_REDELIVERIES;
    registry.mark_closing(cell);
    let delivered = usize::from(cell.deliver());
    let one = match target {
        Target::All => None,
        Target::One => Some(cell),
    };
    let finished = block_on(driver::drive(
        registry,
        one,
        &policy(LIMIT),
        &mut DueRungs { hooks },
    ));
    let redelivered = finished.redelivered as usize;
    let wakes = delivered + redelivered + finished.escalation_wakes as usize;
    (wakes, redelivered, !finished.hooked.is_empty())
}

/// Proves registry invariant 3 and escalation's once-per-cell rule across
/// ladders: a task's own ladder (`TaskMap::cancel`, one target) and the
/// group's (`TaskGroup::shutdown`, all), two runs of the real driver, run
/// over the same stubborn task at once. The cell's re-delivery count stays within the limit, the hook runs
/// once, and the task gets at most first delivery (1) + re-deliveries (at
/// most the limit) + escalation's wake (1) library wakes in all, not per
/// ladder; it ends as aborted.
#[test]
fn two_ladders_share_one_cell() {
    let seen = Seen::new(&[
        "group_escalated_key_redelivered",
        "group_escalated_group_redelivered",
        "group_escalated_none_redelivered",
        "key_escalated_key_redelivered",
        "key_escalated_group_redelivered",
        "key_escalated_none_redelivered",
    ]);
    let tally = seen.clone();
    check("two_ladders_share_one_cell", &seen, move || {
        tally.iteration();
        let registry = Arc::new(Registry::<(), ()>::new(false));
        let guard = Registry::insert(&registry, (), None).guard;
        let cell = guard.cell().clone();
        let task = stubborn_task(guard);
        let hooks = StdArc::new(StdAtomicUsize::new(0));
        let key_ladder = {
            let (registry, cell, hooks) = (registry.clone(), cell.clone(), hooks.clone());
            thread::spawn(move || unparked_ladder(&registry, &cell, Target::One, &hooks))
        };
        let group = unparked_ladder(&registry, &cell, Target::All, &hooks);
        let key = key_ladder.join().unwrap();
        let task_wakes = task.join().unwrap();

        tally.hit(match (group.2, group.1 > 0, key.1 > 0) {
            (true, _, true) => "group_escalated_key_redelivered",
            (true, true, _) => "group_escalated_group_redelivered",
            (true, false, false) => "group_escalated_none_redelivered",
            (false, _, true) => "key_escalated_key_redelivered",
            (false, true, _) => "key_escalated_group_redelivered",
            (false, false, false) => "key_escalated_none_redelivered",
        });
        assert!(group.2 != key.2, "escalated by both ladders or by none");
        assert_eq!(hooks.load(std::sync::atomic::Ordering::Relaxed), 1);
        let redelivered = group.1 + key.1;
        assert_eq!(redelivered, cell.redeliveries() as usize);
        assert_eq!(
            LadderCounts::get(&registry.ladder.redeliveries),
            redelivered as u64
        );
        assert_eq!(LadderCounts::get(&registry.ladder.escalations), 1);
        assert!(
            cell.redeliveries() <= KEY_REDELIVERIES,
            "{redelivered} re-deliveries over two ladders"
        );
        let claims = group.0 + key.0;
        assert!(
            claims <= wake_bound(KEY_REDELIVERIES),
            "{claims} wakes claimed over two ladders"
        );
        assert!(
            task_wakes <= 2 * claims,
            "{task_wakes} wakes for {claims} claims"
        );
        assert_eq!(cell.outcome(), Some(TaskOutcome::Aborted));
        assert_eq!(registry.len(), 0);
        let totals = registry.task_counts();
        assert_eq!((totals.aborted, totals.stuck, totals.closing), (1, 0, 0));
    });
}

/// Proves DESIGN property 10 for a blocking closure (`spawn_blocking`),
/// which is never polled: a group ladder over one (its cell is
/// `Watch::Blocking`) while the closure returns at any moment loom picks,
/// before, during or after escalation and give-up. The closure's delivery
/// is counted once and wakes nothing; it is never re-delivered to (it never
/// parks) and escalation's wake claims nothing; the hook runs at most once;
/// the ladder returns, parked between rungs, with no wakeup left; and the
/// closure's end is counted as completed (never aborted, as abort cannot
/// stop blocking code), leaving no stuck or closing gauge behind, whether
/// the ladder reported it stuck or saw it end.
#[test]
fn a_blocking_task_ends_while_the_ladder_escalates_it() {
    let seen = Seen::new(&[
        "ended_before_escalation",
        "ended_after_escalation",
        "reported_stuck",
    ]);
    let tally = seen.clone();
    check(
        "a_blocking_task_ends_while_the_ladder_escalates_it",
        &seen,
        move || {
            tally.iteration();
            let max = KEY_REDELIVERIES;
            let registry = Arc::new(Registry::<(), ()>::new(false));
            let mut guard = Registry::insert_as(
                &registry,
                crate::task::TaskId::next(),
                crate::registry::Watch::Blocking,
                (),
                None,
            )
            .guard;
            let cell = guard.cell().clone();
            // The closure's thread: it returns, and its guard prunes the entry.
            let closure = thread::spawn(move || {
                guard.outcome = TaskOutcome::Completed;
                drop(guard);
            });
            let timer = Arc::new(StepTimer::default());
            let steps = Schedule::new(policy(max)).count();
            let ticker = ticker(&timer, steps);
            registry.mark_closing(&cell);
            let delivered = cell.deliver();
            let hooks = StdAtomicUsize::new(0);
            let run = parked_ladder(&registry, &cell, Target::All, max, &timer, &hooks);
            closure.join().unwrap();
            ticker.join().unwrap();

            let escalated = LadderCounts::get(&registry.ladder.escalations);
            tally.hit(match (run.verdict, escalated) {
                (Verdict::Stuck, _) => "reported_stuck",
                (_, 0) => "ended_before_escalation",
                _ => "ended_after_escalation",
            });
            // Delivered once if it had not ended first; nothing woken by any
            // rung: it has no waker and never parks.
            assert!(delivered || cell.is_ended());
            assert_eq!(run.redelivered, 0, "a blocking task was re-delivered to");
            assert_eq!(cell.redeliveries(), 0);
            assert_eq!(run.escalation_wakes, 0, "escalation woke a blocking task");
            assert!(escalated <= 1);
            assert_eq!(
                hooks.load(std::sync::atomic::Ordering::Relaxed) as u64,
                escalated
            );
            assert_eq!(registry.len(), 0);
            assert_eq!(cell.outcome(), Some(TaskOutcome::Completed));
            let totals = registry.task_counts();
            assert_eq!(
                (
                    totals.completed,
                    totals.aborted,
                    totals.stuck,
                    totals.closing
                ),
                (1, 0, 0, 0)
            );
            let (counting, waker) = run.own.expect("the ladder was polled");
            drop(waker);
            assert_eq!(
                StdArc::strong_count(&counting),
                1,
                "a wakeup of the ladder is still registered after it returned"
            );
        },
    );
}
