//! CancelScope behaviour: the tree, shields, reasons, deadlines and their
//! timers, level-triggering, `run`, guards and the timeout helpers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cancel_scope::{
    CancelMessage, CancelReason, CancelScope, Elapsed, TaskGroup, fail_after, fail_at,
    move_on_after, move_on_at,
};
use common::alive_tasks;
use tokio::time::Instant;

#[test]
fn cancel_reaches_descendants_but_not_shields() {
    let root = CancelScope::new();
    let child = root.child();
    let grandchild = child.child();
    let shield = child.shielded_child();
    let under_shield = shield.child();
    root.cancel();
    assert!(child.is_cancelled() && grandchild.is_cancelled());
    assert!(!shield.is_cancelled() && !under_shield.is_cancelled());
    assert!(shield.is_shielded() && !child.is_shielded());
    shield.cancel();
    assert!(under_shield.is_cancelled());
}

#[test]
fn cancelling_a_child_leaves_the_parent_alone() {
    let root = CancelScope::new();
    let child = root.child();
    child.cancel();
    assert!(!root.is_cancelled());
    assert!(child.is_cancelled());
}

#[test]
fn first_reason_wins_and_stays() {
    let root = CancelScope::new();
    let child = root.child();
    child.cancel();
    root.cancel();
    assert_eq!(child.reason(), Some(CancelReason::Requested));
    // A child born under a cancelled parent inherits its reason.
    assert_eq!(root.child().reason(), Some(CancelReason::Requested));
    // A zero timeout on a cancelled scope does not change the reason.
    let root = root.with_timeout(Duration::ZERO);
    assert_eq!(root.reason(), Some(CancelReason::Requested));
}

#[tokio::test(start_paused = true)]
async fn reason_comes_from_the_origin_scope() {
    let parent = CancelScope::new().with_timeout(Duration::from_secs(1));
    let child = parent.child();
    child.cancelled().await;
    assert_eq!(child.reason(), Some(CancelReason::Deadline));
    assert_eq!(parent.reason(), Some(CancelReason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn zero_and_past_deadlines_cancel_at_once() {
    let zero = CancelScope::new().with_timeout(Duration::ZERO);
    assert_eq!(zero.reason(), Some(CancelReason::Deadline));
    let past = CancelScope::new().with_deadline(Instant::now() - Duration::from_secs(5));
    assert_eq!(past.reason(), Some(CancelReason::Deadline));
    let base = alive_tasks();
    past.cancelled().await;
    assert_eq!(
        alive_tasks(),
        base,
        "no timer for a scope already cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn effective_deadline_is_the_earliest_unshielded_one() {
    let now = Instant::now();
    let parent = CancelScope::new().with_deadline(now + Duration::from_secs(10));
    let later_child = parent.child().with_deadline(now + Duration::from_secs(20));
    let earlier_child = parent.child().with_deadline(now + Duration::from_secs(5));
    let shield = parent.shielded_child();
    assert_eq!(later_child.deadline(), Some(now + Duration::from_secs(10)));
    assert_eq!(earlier_child.deadline(), Some(now + Duration::from_secs(5)));
    assert_eq!(shield.deadline(), None);
    // Deadlines only tighten.
    let parent = parent.with_deadline(now + Duration::from_secs(30));
    assert_eq!(parent.deadline(), Some(now + Duration::from_secs(10)));
    // Tightening an ancestor reaches existing descendants.
    let parent = parent.with_deadline(now + Duration::from_secs(2));
    assert_eq!(later_child.deadline(), Some(now + Duration::from_secs(2)));
    later_child.cancelled().await;
    assert_eq!(Instant::now() - now, Duration::from_secs(2));
    assert!(parent.is_cancelled() && earlier_child.is_cancelled());
    assert!(!shield.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn is_cancelled_notices_a_passed_deadline_without_any_timer() {
    let base = alive_tasks();
    let scope = CancelScope::new().with_timeout(Duration::from_millis(10));
    assert_eq!(alive_tasks(), base, "no timer for a scope nobody waits on");
    assert!(!scope.is_cancelled());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(scope.is_cancelled());
    assert_eq!(scope.reason(), Some(CancelReason::Deadline));
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(start_paused = true)]
async fn one_timer_per_deadline_scope_however_many_waiters() {
    let base = alive_tasks();
    let scope = CancelScope::new().with_timeout(Duration::from_secs(1));
    let children: Vec<_> = (0..100).map(|_| scope.child()).collect();
    let mut waiters = Vec::new();
    for c in children
        .iter()
        .cloned()
        .chain(std::iter::repeat_n(scope.clone(), 100))
    {
        waiters.push(tokio::spawn(async move { c.cancelled().await }));
    }
    tokio::task::yield_now().await;
    // 200 waiter tasks + exactly one timer task.
    assert_eq!(alive_tasks(), base + 200 + 1);
    for w in waiters {
        w.await.unwrap();
    }
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base, "the timer ended with the deadline");
}

#[tokio::test(start_paused = true)]
async fn timer_ends_when_the_scope_is_cancelled_or_dropped() {
    let base = alive_tasks();
    let scope = CancelScope::new().with_timeout(Duration::from_secs(3600));
    let mut wait = tokio_test_poll(scope.cancelled());
    wait.poll_once();
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base + 1);
    scope.cancel();
    assert!(wait.poll_once());
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base, "cancel ends the timer");

    // move_on_after's scope is dropped when the future finishes first.
    assert_eq!(
        move_on_after(Duration::from_secs(3600), async { 1 }).await,
        Some(1)
    );
    let done = move_on_after(Duration::from_secs(3600), async {
        tokio::task::yield_now().await;
        2
    });
    assert_eq!(done.await, Some(2));
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base, "dropping the scope ends the timer");
}

#[tokio::test(start_paused = true)]
async fn cancelled_is_level_triggered() {
    let scope = CancelScope::new();
    scope.cancel();
    for _ in 0..1000 {
        scope.cancelled().await;
    }
    scope.clone().cancelled_owned().await;
    scope.child().cancelled().await;
}

#[test]
fn no_lost_wakeup_when_waiters_race_cancel() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..500 {
            let scope = CancelScope::new();
            let waiters: Vec<_> = (0..4)
                .map(|_| tokio::spawn(scope.clone().cancelled_owned()))
                .collect();
            tokio::task::yield_now().await;
            scope.cancel();
            for w in waiters {
                // A lost wakeup hangs here; the outer timeout turns it into a failure.
                tokio::time::timeout(Duration::from_secs(10), w)
                    .await
                    .expect("a waiter missed the cancel")
                    .unwrap();
            }
        }
    });
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn run_drops_the_future_at_its_await_on_cancel() {
    let scope = CancelScope::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let canceller = scope.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        canceller.cancel();
    });
    let run = scope.run(async move {
        let _flag = flag;
        std::future::pending::<()>().await
    });
    tokio::pin!(run);
    let err = (&mut run).await.unwrap_err();
    assert_eq!(err.reason(), CancelReason::Requested);
    assert!(
        dropped.load(Ordering::SeqCst),
        "dropped when `run` resolved"
    );
}

#[tokio::test]
async fn run_never_polls_when_already_cancelled() {
    let scope = CancelScope::new();
    scope.cancel();
    let polled = AtomicUsize::new(0);
    let res = scope
        .run(async {
            polled.fetch_add(1, Ordering::SeqCst);
        })
        .await;
    assert!(res.is_err());
    assert_eq!(polled.load(Ordering::SeqCst), 0);
}

#[test]
fn drop_guard_cancels_unless_disarmed() {
    let scope = CancelScope::new();
    let guard = scope.clone().drop_guard();
    assert_eq!(guard.scope().id(), scope.id());
    let kept = guard.disarm();
    assert!(!kept.is_cancelled());
    drop(kept.drop_guard());
    assert!(scope.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn timeout_helpers() {
    let slow = || tokio::time::sleep(Duration::from_secs(1));
    assert_eq!(move_on_after(Duration::from_millis(10), slow()).await, None);
    assert_eq!(
        move_on_at(Instant::now() + Duration::from_secs(2), slow()).await,
        Some(())
    );
    let e: Elapsed = fail_after(Duration::ZERO, async {}).await.unwrap_err();
    assert_eq!(e.to_string(), "deadline has elapsed");
    let _: &dyn std::error::Error = &e;
    assert_eq!(
        fail_at(Instant::now() + Duration::from_secs(2), slow()).await,
        Ok(())
    );
}

#[test]
fn a_deep_tree_cancels_and_drops_without_recursion() {
    let root = CancelScope::new();
    let mut leaf = root.child();
    let mut chain = Vec::new();
    for _ in 0..100_000 {
        let next = leaf.child();
        chain.push(std::mem::replace(&mut leaf, next));
    }
    drop(chain); // the leaf keeps every ancestor attached
    root.cancel();
    assert!(leaf.is_cancelled());
    drop(root);
    drop(leaf); // unwinds 100,000 parents
}

#[test]
fn debug_shows_state() {
    let scope = CancelScope::new();
    scope.cancel();
    let s = format!("{scope:?}");
    assert!(s.contains("Requested"), "{s}");
    let scope = CancelScope::new();
    scope.cancel_with("bye");
    let s = format!("{scope:?}");
    assert!(s.contains("message: Some(\"bye\")"), "{s}");
}

/// Polls a future by hand, from inside a runtime, to observe registration.
fn tokio_test_poll<F: std::future::Future<Output = ()>>(fut: F) -> ManualPoll<F> {
    ManualPoll(Box::pin(fut))
}

struct ManualPoll<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future<Output = ()>> ManualPoll<F> {
    fn poll_once(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        self.0.as_mut().poll(&mut cx).is_ready()
    }
}

#[test]
fn a_woken_waiter_sees_the_whole_subtree_cancelled() {
    use std::future::Future;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..50 {
            let root = CancelScope::new();
            let kids: Vec<_> = (0..2_000).map(|_| root.child()).collect();
            let last = kids.last().unwrap().child();
            let (registered, ready) = tokio::sync::oneshot::channel();
            let watcher = {
                let root = root.clone();
                tokio::spawn(async move {
                    let mut wait = std::pin::pin!(root.cancelled());
                    // Registered with a waker that flags its wake, and polled
                    // again only once it came: a poll without a wake may see
                    // the subtree half marked (as `cancel` documents).
                    let woken = Arc::new(WakeFlag::default());
                    let mut sent = Some(registered);
                    std::future::poll_fn(|cx| {
                        if let Some(registered) = sent.take() {
                            woken.task.lock().unwrap().replace(cx.waker().clone());
                            let flagging = std::task::Waker::from(woken.clone());
                            let mut cx = std::task::Context::from_waker(&flagging);
                            assert!(wait.as_mut().poll(&mut cx).is_pending());
                            registered.send(()).unwrap();
                            return std::task::Poll::Pending;
                        }
                        if !woken.flag.load(Ordering::SeqCst) {
                            return std::task::Poll::Pending;
                        }
                        let noop = std::task::Waker::noop();
                        let mut cx = std::task::Context::from_waker(noop);
                        assert!(wait.as_mut().poll(&mut cx).is_ready());
                        std::task::Poll::Ready(())
                    })
                    .await;
                    last.is_cancelled()
                })
            };
            ready.await.unwrap();
            root.cancel();
            assert!(
                watcher.await.unwrap(),
                "woken before its subtree was marked"
            );
        }
    });
}

/// Sets `flag` on a wake, then wakes the task stored in `task`.
#[derive(Default)]
struct WakeFlag {
    flag: AtomicBool,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(w) = self.task.lock().unwrap().take() {
            w.wake();
        }
    }
}

// ===== cancel messages =====

#[test]
fn a_message_is_visible_from_every_cancelled_descendant() {
    let root = CancelScope::new();
    let mut deep = root.child();
    let mid = deep.clone();
    for _ in 0..50 {
        deep = deep.child();
    }
    // An intermediate scope whose handles are all gone still links the leaf
    // to the origin.
    let leaf = mid.child().child();
    drop(mid);
    assert_eq!(deep.cancel_message(), None, "not cancelled yet");
    root.cancel_with("shutting down");
    for scope in [&root, &deep, &leaf] {
        assert_eq!(scope.reason(), Some(CancelReason::Requested));
        assert_eq!(scope.cancel_message().as_deref(), Some("shutting down"));
    }
    // Born under a cancelled parent: same message.
    assert_eq!(
        deep.child().child().cancel_message().unwrap(),
        "shutting down"
    );
}

#[test]
fn plain_cancel_has_no_message() {
    let root = CancelScope::new();
    let child = root.child();
    root.cancel();
    assert!(child.is_cancelled());
    assert_eq!(child.cancel_message(), None);
    assert_eq!(root.cancel_message(), None);
}

#[test]
fn the_first_cancel_wins_the_message() {
    // A later message does not replace an earlier one, nor fill in a cancel
    // that had none.
    let a = CancelScope::new();
    a.cancel_with("first");
    a.cancel_with("second");
    assert_eq!(a.cancel_message().unwrap(), "first");
    let b = CancelScope::new();
    b.cancel();
    b.cancel_with("late");
    assert_eq!(b.cancel_message(), None);
    // A child cancelled on its own keeps its message when the parent goes
    // later; a sibling gets the parent's.
    let root = CancelScope::new();
    let early = root.child();
    let under_early = early.child();
    let sibling = root.child();
    early.cancel_with("child closed");
    root.cancel_with(String::from("server closed"));
    assert_eq!(early.cancel_message().unwrap(), "child closed");
    assert_eq!(under_early.cancel_message().unwrap(), "child closed");
    assert_eq!(sibling.cancel_message().unwrap(), "server closed");
    assert_eq!(root.cancel_message().unwrap(), "server closed");
}

#[tokio::test(start_paused = true)]
async fn deadline_and_message_race_first_wins() {
    // Deadline first: a later message changes nothing.
    let timed = CancelScope::new().with_timeout(Duration::from_secs(1));
    let child = timed.child();
    child.cancelled().await;
    timed.cancel_with("too late");
    assert_eq!(child.reason(), Some(CancelReason::Deadline));
    assert_eq!(child.cancel_message(), None);
    assert_eq!(timed.cancel_message(), None);
    // Message first: the deadline passing later changes nothing either.
    let timed = CancelScope::new().with_timeout(Duration::from_secs(1));
    let child = timed.child();
    timed.cancel_with("operator said stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(child.reason(), Some(CancelReason::Requested));
    assert_eq!(child.cancel_message().unwrap(), "operator said stop");
    // A child's own deadline, once it cancelled the child, is its origin: the
    // parent's later message does not reach it.
    let root = CancelScope::new();
    let child = root.child().with_timeout(Duration::from_millis(10));
    child.cancelled().await;
    root.cancel_with("after the child's deadline");
    assert_eq!(child.reason(), Some(CancelReason::Deadline));
    assert_eq!(child.cancel_message(), None);
    assert_eq!(root.cancel_message().unwrap(), "after the child's deadline");
}

#[test]
fn static_str_string_and_shared_messages_all_work() {
    let scopes: Vec<CancelScope> = (0..4).map(|_| CancelScope::new()).collect();
    scopes[0].cancel_with("static");
    scopes[1].cancel_with(format!("owned {}", 1));
    scopes[2].cancel_with(Arc::<str>::from("shared"));
    scopes[3].cancel_with(CancelMessage::from_static("const"));
    let got: Vec<String> = scopes
        .iter()
        .map(|s| s.cancel_message().unwrap().to_string())
        .collect();
    assert_eq!(got, ["static", "owned 1", "shared", "const"]);
}

#[test]
fn shields_do_not_see_the_parents_message() {
    let root = CancelScope::new();
    let shield = root.shielded_child();
    let under_shield = shield.child();
    root.cancel_with("parent");
    assert!(!shield.is_cancelled());
    assert_eq!(shield.cancel_message(), None);
    assert_eq!(under_shield.cancel_message(), None);
    // Cancelled on its own, a shield is the origin of its own message.
    shield.cancel_with("cleanup budget spent");
    assert_eq!(
        under_shield.cancel_message().unwrap(),
        "cleanup budget spent"
    );
    assert_eq!(root.cancel_message().unwrap(), "parent");
}

#[tokio::test(start_paused = true)]
async fn run_errors_carry_the_message() {
    let server = CancelScope::new();
    let request = server.child();
    let canceller = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        canceller.cancel_with("draining");
    });
    let err = request.run(std::future::pending::<()>()).await.unwrap_err();
    assert_eq!(err.reason(), CancelReason::Requested);
    assert_eq!(err.message(), Some("draining"));
    assert_eq!(err.to_string(), "cancel scope was cancelled: draining");
    // Already cancelled: same error without polling.
    assert_eq!(request.run(async {}).await.unwrap_err(), err);
    // A deadline has no message.
    let timed = CancelScope::new().with_timeout(Duration::from_millis(1));
    let err = timed.run(std::future::pending::<()>()).await.unwrap_err();
    assert_eq!(err.message(), None);
    assert_eq!(err.to_string(), "cancel scope deadline passed");
}

#[tokio::test(start_paused = true)]
async fn fail_after_inside_a_cancelled_scope_reports_the_scope_message() {
    // `fail_after` runs in a scope of its own, cancelled only by its deadline,
    // so its error is `Elapsed`; a message given to an enclosing scope shows
    // in that scope's `run` error, which drops the `fail_after` future whole.
    let outer = CancelScope::new();
    let canceller = outer.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        canceller.cancel_with("client went away");
    });
    let res = outer
        .run(fail_after(
            Duration::from_secs(10),
            std::future::pending::<()>(),
        ))
        .await;
    assert_eq!(res.unwrap_err().message(), Some("client went away"));
    let inner: Result<(), Elapsed> =
        fail_after(Duration::from_millis(1), std::future::pending()).await;
    assert!(inner.is_err());
}

#[test]
fn concurrent_cancels_agree_on_reason_and_message() {
    for _ in 0..200 {
        let root = CancelScope::new();
        let child = root.child().child();
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let root = root.clone();
                let child = child.clone();
                std::thread::spawn(move || {
                    match i {
                        0 => root.cancel_with("a"),
                        1 => root.cancel_with(String::from("b")),
                        _ => root.cancel(),
                    }
                    (child.reason(), child.cancel_message())
                })
            })
            .collect();
        let seen: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winner = (root.reason(), root.cancel_message());
        assert!(seen.iter().all(|s| *s == winner), "{seen:?} vs {winner:?}");
    }
}

// ===== what a shield protects =====

#[tokio::test(start_paused = true)]
async fn a_shield_inside_a_dropped_future_does_not_save_it() {
    // The trap: a shielded scope's `run` nested inside an outer `run` is part
    // of the outer future, and cancelling the outer scope drops it whole.
    let outer = CancelScope::new();
    let flushed = Arc::new(AtomicBool::new(false));
    let work = {
        let outer = outer.clone();
        let flushed = flushed.clone();
        tokio::spawn(async move {
            let shield = outer.shielded_child();
            outer
                .run(async {
                    shield
                        .run(async {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            flushed.store(true, Ordering::SeqCst);
                        })
                        .await
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    outer.cancel();
    assert!(work.await.unwrap().is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !flushed.load(Ordering::SeqCst),
        "the shielded part was dropped with the outer future"
    );
}

#[tokio::test(start_paused = true)]
async fn spawned_shielded_cleanup_survives_its_starter_and_is_bounded() {
    // The documented way: spawn the cleanup as its own cooperative task and
    // run it in a shielded child with its own deadline.
    let group = Arc::new(TaskGroup::new());
    let flushed = Arc::new(AtomicBool::new(false));
    let (handles_tx, handles_rx) = tokio::sync::oneshot::channel();
    let starter = {
        let group = group.clone();
        let flushed = flushed.clone();
        tokio::spawn(async move {
            let quick = group.spawn_with_scope(move |scope| async move {
                scope
                    .shielded_child()
                    .with_timeout(Duration::from_millis(100))
                    .run(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        flushed.store(true, Ordering::SeqCst);
                        "flushed"
                    })
                    .await
            });
            let slow = group.spawn_with_scope(|scope| async move {
                scope
                    .shielded_child()
                    .with_timeout(Duration::from_millis(100))
                    .run(tokio::time::sleep(Duration::from_secs(3600)))
                    .await
            });
            handles_tx.send((quick, slow)).unwrap();
            std::future::pending::<()>().await
        })
    };
    let (quick, slow) = handles_rx.await.unwrap();
    let start = Instant::now();
    // Cancel everything above the cleanup: the group's scope, and the task
    // that started it (dropped whole).
    group.cancel_with("shutting down");
    starter.abort();
    assert!(starter.await.unwrap_err().is_cancelled());
    assert_eq!(quick.await.unwrap().unwrap(), "flushed");
    assert!(flushed.load(Ordering::SeqCst));
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    // Bounded: the slow cleanup is cut at its own deadline, not the group's
    // cancel, and never by the parent's message.
    let cut = slow.await.unwrap().unwrap_err();
    assert_eq!(cut.reason(), CancelReason::Deadline);
    assert_eq!(cut.message(), None);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(group.is_empty());
}

// ===== reads are pure (property 9) =====

/// A waker that counts its wakes.
#[derive(Default)]
struct CountWakes(AtomicUsize);

impl std::task::Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `Debug` of a scope whose deadline passed before its timer fired (the
/// runtime is not driven) reads; it does not run the cancel, its wakes, or
/// the group's deliveries.
#[test]
fn debug_of_a_passed_deadline_neither_cancels_nor_delivers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (scope, group) = rt.block_on(async {
        let scope = CancelScope::new().with_timeout(Duration::from_millis(20));
        let group = TaskGroup::with_scope(scope.clone());
        for _ in 0..5 {
            group.spawn(std::future::pending::<()>());
        }
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        (scope, group)
    });
    let wakes = Arc::new(CountWakes::default());
    let waker = std::task::Waker::from(wakes.clone());
    let mut wait = Box::pin(scope.cancelled());
    let mut cx = std::task::Context::from_waker(&waker);
    // Registered before the deadline passes (inside the runtime's context,
    // though the runtime is not driven: the group's deliverer started the
    // timer already).
    let _guard = rt.enter();
    assert!(wait.as_mut().poll(&mut cx).is_pending());
    std::thread::sleep(Duration::from_millis(50));

    let s = format!("{scope:?}");
    let g = format!("{group:?}");
    assert_eq!(group.stats().deliveries, 0, "Debug delivered: {g}");
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "Debug woke a waiter");
    assert!(s.contains("deadline_passed: true"), "{s}");
    assert!(s.contains("Deadline"), "{s}");

    // `is_cancelled` still does the cancel it notices (documented).
    assert!(scope.is_cancelled());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert_eq!(group.stats().deliveries, 5);
    drop(wait);
    drop(_guard);
    drop(group);
    drop(rt);
}

// ===== the deadline timer follows its waiters =====

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_idle_scope_keeps_no_timer_and_a_new_waiter_restarts_it() {
    let base = alive_tasks();
    let scope = CancelScope::new().with_timeout(Duration::from_secs(3600));
    let start = Instant::now();
    let mut first = tokio_test_poll(scope.cancelled());
    assert!(!first.poll_once());
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base + 1, "a waiter starts the timer");
    drop(first);
    tokio::task::yield_now().await;
    assert_eq!(
        alive_tasks(),
        base,
        "the last waiter's leaving ends the timer"
    );

    // A second waiter re-arms it, and the deadline still fires at 1 h.
    scope.cancelled().await;
    assert_eq!(start.elapsed(), Duration::from_secs(3600));
    assert_eq!(scope.reason(), Some(CancelReason::Deadline));
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_child_waiting_on_an_ancestors_deadline_arms_and_disarms_it() {
    let base = alive_tasks();
    let parent = CancelScope::new().with_timeout(Duration::from_secs(3600));
    let child = parent.child();
    let start = Instant::now();
    for _ in 0..3 {
        let mut wait = tokio_test_poll(child.cancelled());
        let mut other = tokio_test_poll(parent.cancelled());
        assert!(!wait.poll_once() && !other.poll_once());
        tokio::task::yield_now().await;
        assert_eq!(alive_tasks(), base + 1, "one timer, at the parent");
        drop(wait);
        tokio::task::yield_now().await;
        assert_eq!(alive_tasks(), base + 1, "a waiter is left");
        drop(other);
        tokio::task::yield_now().await;
        assert_eq!(alive_tasks(), base, "no waiter left, no timer");
    }
    child.cancelled().await;
    assert_eq!(start.elapsed(), Duration::from_secs(3600));
    assert_eq!(child.reason(), Some(CancelReason::Deadline));
    assert!(parent.is_cancelled());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_deadline_tightened_under_a_waiter_fires_on_time() {
    let base = alive_tasks();
    let parent = CancelScope::new().with_timeout(Duration::from_secs(3600));
    let child = parent.child();
    let wakes = Arc::new(CountWakes::default());
    let waker = std::task::Waker::from(wakes.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut wait = Box::pin(child.clone().cancelled_owned());
    assert!(wait.as_mut().poll(&mut cx).is_pending());
    // Tightened while the child is waited on (armed at the parent): a timer
    // for the child's own deadline starts and wakes the waiter on time.
    let child = child.with_timeout(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1001)).await;
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "the tightened deadline fired"
    );
    assert!(wait.as_mut().poll(&mut cx).is_ready());
    assert_eq!(child.reason(), Some(CancelReason::Deadline));
    assert!(!parent.is_cancelled());
    drop(wait);
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base, "both timers ended");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_repolled_waiter_arms_once() {
    let base = alive_tasks();
    let scope = CancelScope::new().with_timeout(Duration::from_secs(3600));
    let mut a = tokio_test_poll(scope.clone().cancelled_owned());
    let mut b = tokio_test_poll(scope.clone().cancelled_owned());
    for _ in 0..3 {
        assert!(!a.poll_once() && !b.poll_once());
    }
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base + 1);
    drop(a);
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base + 1, "b still arms it");
    drop(b);
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base);
}
