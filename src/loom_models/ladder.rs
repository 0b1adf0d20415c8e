//! Model of the ladder's wait for quiescence (`registry.rs` parking plus
//! `ladder.rs`'s `Schedule`), and its negative control.
//!
//! The tokio driver (`tracker.rs`) is not modelled: it needs tokio's timers.
//! [`ladder`] is a small in-model driver that follows the same `Schedule` rungs
//! as `run_ladder`, with the same core calls (`poll_idle` / `poll_ended` parked
//! through a waker, `TaskCell::redeliver` with the policy's limit,
//! `mark_escalated`, `release`). Time is replaced by a *step timer* thread that
//! fires the rungs in order at moments loom chooses, as expired timers would.

use std::sync::Arc as StdArc;
use std::task::{Poll, Waker};
use std::time::Duration;

use loom::future::block_on;
use loom::sync::Mutex;
use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::thread;

use super::{CountingWaker, Seen, check};
use crate::ladder::{Backoff, Schedule, ShutdownPolicy, Step};
use crate::registry::{Registry, TaskCell, TaskOutcome};
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

/// How the driver waits between rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// As `run_ladder`: park on the registry and the step timer.
    Parked,
    /// The bug this crate exists to prevent: re-deliver and re-check at once
    /// (a `yield_now` loop). Compiled only here, for the negative control.
    Busy,
}

/// What the ladder waits for, as `run_ladder`'s `one` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `TaskGroup::shutdown`: every task (`poll_idle`).
    All,
    /// `TaskMap::cancel`: one task (`poll_ended`).
    One,
}

/// A waker slot for the model's own plumbing (step timer, abort).
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

/// tokio's `AbortHandle` for the one task.
#[derive(Default)]
struct Abort {
    requested: AtomicBool,
    waker: Slot,
}

/// Which rungs the step timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fires {
    /// Every rung: the task's end races the give-up rung.
    All,
    /// Every rung but give-up (a long `abort_grace`): after escalation only
    /// the task's end can wake the ladder, so a lost wakeup deadlocks.
    WithholdGiveUp,
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

/// One run of the model: a task that ignores cancellation (it ends only when
/// aborted by escalation), the ladder over it, and the step timer.
fn ladder(variant: Variant, target: Target, fires: Fires, seen: &Seen) {
    let max = match target {
        Target::All => GROUP_REDELIVERIES,
        Target::One => KEY_REDELIVERIES,
    };
    seen.iteration();
    let steps: Vec<Step> = Schedule::new(policy(max)).map(|(_, s)| s).collect();
    assert_eq!(steps.len(), max as usize + 2, "{steps:?}");

    let registry = Arc::new(Registry::<(), ()>::new(false));
    let (guard, _) = Registry::insert(&registry, (), None);
    let cell = guard.cell().clone();
    let abort = Arc::new(Abort::default());
    let ended = Arc::new(AtomicBool::new(false));

    let task = {
        let (abort, ended) = (abort.clone(), ended.clone());
        thread::spawn(move || {
            let mut guard = Some(guard);
            let mut waker: Option<(StdArc<CountingWaker>, Waker)> = None;
            block_on(std::future::poll_fn(|cx| {
                let (_, cell_waker) = waker.get_or_insert_with(|| {
                    let counting = CountingWaker::new(cx.waker());
                    (counting.clone(), Waker::from(counting))
                });
                let g = guard.as_ref().expect("polled after the end");
                let start = g.cell().begin_poll(cell_waker);
                // Register before checking, so an abort is never missed.
                abort.waker.register(cx.waker());
                if abort.requested.load(Ordering::Acquire) {
                    let mut g = guard.take().unwrap();
                    g.outcome = TaskOutcome::Aborted;
                    drop(g);
                    // SeqCst pairs with the driver's loads before each claim.
                    ended.store(true, Ordering::SeqCst);
                    return Poll::Ready(());
                }
                // Ignores cancellation: every wake is answered by parking
                // again (as `Tracked::poll`, which marks it re-deliverable).
                if start.delivered {
                    g.cell().parked_after_delivery();
                }
                Poll::Pending
            }));
            waker.map_or(0, |(counting, _)| counting.wakes())
        })
    };

    let timer = Arc::new(StepTimer::default());
    let ticker = {
        let timer = timer.clone();
        let n = match fires {
            Fires::All => steps.len(),
            Fires::WithholdGiveUp => steps.len() - 1,
        };
        thread::spawn(move || {
            for k in 1..=n {
                // Release pairs with the driver's Acquire load of `fired`.
                timer.fired_tally.store(k, Ordering::Relaxed);
                timer.fired.store(k, Ordering::Release);
                timer.waker.wake();
            }
        })
    };

    // First delivery, as `Shared::shutdown` / `retire`: mark, then one wake.
    registry.mark_closing(&cell);
    let mut claims = usize::from(cell.deliver());

    let mut next = 0;
    let mut polls = 0;
    let (mut idle_slot, mut ended_slot) = (None, None);
    let mut own: Option<(StdArc<CountingWaker>, Waker)> = None;
    let verdict = block_on(std::future::poll_fn(|cx| {
        polls += 1;
        let parked = polls > 1 && next >= timer.fired_tally.load(Ordering::Relaxed);
        // Each poll after the first needs a wake: one per rung fired, and one
        // from the registry when the task ends. More means a re-check loop.
        assert!(
            polls <= steps.len() + 2,
            "the ladder's wait re-checked in a loop ({polls} polls for {} rungs)",
            steps.len()
        );
        let (_, waker) = own.get_or_insert_with(|| {
            let counting = CountingWaker::new(cx.waker());
            (counting.clone(), Waker::from(counting))
        });
        loop {
            let done = match target {
                Target::All => registry.poll_idle(waker, &mut idle_slot),
                Target::One => registry.poll_ended(&cell, waker, &mut ended_slot),
            };
            if done.is_ready() {
                timer.waker.take();
                return Poll::Ready(Verdict::Ended { parked });
            }
            if variant == Variant::Busy {
                // Re-deliver right away and come back at once.
                for c in registry.pending() {
                    claims += usize::from(c.schedule());
                }
                assert!(
                    claims <= 1 + max as usize,
                    "{claims} wakes claimed for one task"
                );
                waker.wake_by_ref();
                return Poll::Pending;
            }
            timer.waker.register(waker);
            if next >= timer.fired.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            let step = steps[next];
            next += 1;
            let live: Vec<Arc<TaskCell<()>>> = match target {
                Target::All => registry.pending(),
                Target::One if cell.is_ended() => Vec::new(),
                Target::One => vec![cell.clone()],
            };
            match step {
                Step::Redeliver => {
                    for c in &live {
                        let was_ended = ended.load(Ordering::SeqCst);
                        let woke = c.redeliver(max);
                        assert!(!(was_ended && woke), "re-delivered to an ended task");
                        claims += usize::from(woke);
                    }
                }
                Step::Escalate => {
                    for c in &live {
                        if c.mark_escalated() {
                            abort.requested.store(true, Ordering::Release);
                            abort.waker.wake();
                        }
                    }
                }
                Step::GiveUp => {
                    registry.release_idle(&mut idle_slot);
                    registry.release_ended(cell.id, &mut ended_slot);
                    timer.waker.take();
                    return Poll::Ready(Verdict::Stuck);
                }
            }
        }
    }));
    seen.hit(match verdict {
        Verdict::Ended { parked: true } => "woken_by_the_end",
        Verdict::Ended { parked: false } => "end_seen_after_a_rung",
        Verdict::Stuck => "reported_stuck",
    });

    let task_wakes = task.join().unwrap();
    ticker.join().unwrap();

    // Property 1: at most one delivery plus the policy's re-deliveries.
    assert!(claims <= 1 + max as usize, "{claims} wakes claimed");
    assert!(cell.redeliveries() <= max);
    // A claim can reach the task twice when it races the task's own
    // re-registration (the waker slot wakes the newcomer rather than lose it).
    assert!(
        task_wakes <= 2 * claims,
        "{task_wakes} wakes for {claims} claims"
    );
    // The stuck task pruned itself when it finally ended.
    assert_eq!(registry.len(), 0);
    assert_eq!(cell.outcome(), Some(TaskOutcome::Aborted));
    // No wakeup of the ladder is left anywhere once it returned: the registry
    // and the timer dropped every clone of its waker.
    let (counting, waker) = own.expect("the ladder was polled");
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

/// Proves property 1 for the core's wait for quiescence (group shutdown,
/// `poll_idle`): with one task that ignores cancellation, the ladder parks
/// between rungs (it is polled only when a rung fires or the task ends),
/// claims at most `1 + max_redeliveries` wakes for the task and none once it
/// ended, and leaves no wakeup registered once it returns, whether the task's
/// end or the give-up rung comes first.
#[test]
fn shutdown_waits_without_spinning() {
    shutdown_model(Target::All, Fires::All, "shutdown_waits_without_spinning");
}

/// As [`shutdown_waits_without_spinning`], with the give-up rung withheld:
/// after escalation only the task's end can wake the parked ladder, so a lost
/// wakeup of `poll_idle` deadlocks the model.
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
/// a lost wakeup of `poll_ended` deadlocks the model.
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
