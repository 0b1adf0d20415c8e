//! The tokio layer of `TaskGroup` and `TaskMap`: a [`Tracker`] is the scope,
//! the registry and the policy that a group's (or map's) handles, tasks and
//! ladders share.
//!
//! One concept per file, data flowing one way:
//!
//! - `spawn.rs`: [`Tracker::spawn`], a user future into the registry and
//!   onto the runtime, as a [`Tracked`](tracked::Tracked) future;
//! - `tracked.rs`: the tracked future's poll, where a task sees its
//!   cancellation, records how it ended, and whose guard prunes its entry;
//! - `deliver.rs`: delivery, the one callback waker a tracker registers on
//!   its scope, and a per-task cancel;
//! - `ladder.rs`: the shutdown ladder's tokio side (timers, escalation
//!   hooks on their own threads, the report).
//!
//! The handles ([`TaskGroup`](crate::TaskGroup), [`TaskMap`](crate::TaskMap))
//! hold a [`TrackerHandle`], whose drop is the drop of the last one.

pub(crate) mod deliver;
mod ladder;
pub(crate) mod seam;
mod spawn;
pub(crate) use spawn::{LocalPlace, Place};
pub(crate) mod tracked;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::ladder::{ShutdownPolicy, ShutdownReport};
use crate::registry::{HoldsRegistry, LadderCounts, Registry};
use crate::scope::{CancelScope, Waiter};
use crate::sync::lock;
use crate::task::{Stats, TaskMeta};
use crate::wait_list::WaitKey;

use seam::Extensions;
pub(crate) use seam::Tracks;
use tracked::POLLING;

/// What `TaskGroup` and `TaskMap` share with their tasks.
pub(crate) struct Tracker<K: Eq + Hash + Clone> {
    pub(crate) scope: CancelScope,
    /// Embedded: each task's guard holds the `Arc<Tracker>`, one reference
    /// per task for both.
    pub(crate) registry: Registry<TaskMeta, K>,
    pub(crate) policy: ShutdownPolicy,
    cancel_on_panic: bool,
    first_panic: Mutex<Option<String>>,
    /// The deliverer's registration on `scope`: held while the tracker has
    /// tasks (and always for a scope without a deadline, whose registration
    /// costs no timer), so an idle group under a deadline leaves no timer
    /// behind. Changed only under this mutex.
    deliverer: Mutex<Waiter>,
    /// Whether `deliverer` is registered (or the scope was found cancelled,
    /// which is final). SeqCst, see `disarm_deliverer`.
    deliverer_armed: AtomicBool,
    /// The runtime of the first spawn, for ladders started outside one.
    runtime: OnceLock<tokio::runtime::Handle>,
    /// One group-wide ladder at a time, holding the report of the one that
    /// finished last: a `shutdown` that finds one running waits for it and
    /// returns its report, so concurrent calls never count an escalation or
    /// an abort twice.
    shutdown: tokio::sync::Mutex<Option<ShutdownReport>>,
    /// Ladders of `shutdown` that ran to the end.
    shutdowns_finished: AtomicU64,
    /// No task may be spawned any more: `close`, `shutdown`, or the last user
    /// handle dropped. Never cleared. SeqCst, see `spawn`.
    closed: AtomicBool,
    /// The counters when the scope was first seen cancelled (by the
    /// deliverer, or by `shutdown` / the last handle's drop if it came
    /// first): a report counts what ended since then, not only what ended
    /// while the ladder ran.
    baseline: OnceLock<Stats>,
    /// What feature layers attach (see `seam.rs`); their counters are part
    /// of [`stats`](Self::stats).
    pub(crate) extensions: Extensions,
}

impl<K: Eq + Hash + Clone> HoldsRegistry<TaskMeta, K> for Arc<Tracker<K>> {
    fn registry(&self) -> &Registry<TaskMeta, K> {
        &self.registry
    }

    fn became_idle(&self) {
        self.disarm_deliverer();
    }
}

impl<K> Tracker<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    pub(crate) fn new(
        scope: CancelScope,
        policy: ShutdownPolicy,
        cancel_on_panic: bool,
        record_ends: bool,
    ) -> Arc<Self> {
        let shared = Arc::new(Tracker {
            scope,
            registry: Registry::new(record_ends),
            policy,
            cancel_on_panic,
            first_panic: Mutex::new(None),
            deliverer: Mutex::new(Waiter::default()),
            deliverer_armed: AtomicBool::new(false),
            runtime: OnceLock::new(),
            shutdown: tokio::sync::Mutex::new(None),
            shutdowns_finished: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            baseline: OnceLock::new(),
            extensions: Extensions::default(),
        });
        shared.arm_deliverer();
        shared
    }
    pub(crate) fn len(&self) -> usize {
        self.registry.len()
    }

    #[inline]
    pub(crate) fn stats(&self) -> Stats {
        let c = &self.registry.ladder;
        let t = self.registry.task_counts();
        let mut stats = Stats {
            spawned: t.spawned,
            completed: t.completed,
            cancelled: t.cancelled,
            aborted: t.aborted,
            panicked: t.panicked,
            stuck: t.stuck,
            closing: t.closing,
            deliveries: LadderCounts::get(&c.deliveries),
            redeliveries: LadderCounts::get(&c.redeliveries),
            escalations: LadderCounts::get(&c.escalations),
            processes: 0,
            tracked: t.tracked,
            idle_expired: 0,
            ready_expired: 0,
        };
        self.extensions.add_to(&mut stats);
        stats
    }

    /// Refuses every later spawn (`SpawnError::Closed`); idempotent.
    pub(crate) fn close(&self) {
        // SeqCst, paired with the two loads in `spawn`: a spawn that raced
        // with this store either sees it, or inserted its task before it.
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The counters to diff a report from: since the scope was first cancelled.
    fn baseline(&self, now: Stats) -> Stats {
        *self.baseline.get_or_init(|| now)
    }
    fn record_panic(&self, message: &str) {
        let mut first = lock(&self.first_panic);
        if first.is_none() {
            *first = Some(message.to_owned());
        }
    }

    pub(crate) fn take_panic(&self) -> Option<String> {
        lock(&self.first_panic).take()
    }
    /// The current runtime, or else the one the tracker's tasks run on.
    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Handle> {
        tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.get().cloned())
    }

    /// Panics if the current thread is polling a task of this tracker: a
    /// wait for the tracker's tasks there would wait for itself. `what`
    /// names the call, for the message.
    pub(crate) fn assert_not_own_task(self: &Arc<Self>, what: &str) {
        let me = Arc::as_ptr(self) as *const () as usize;
        if POLLING.with(std::cell::Cell::get) == me {
            panic!(
                "cancel_scope: {what} was awaited inside a task of the same group or map, which \
                 would wait for itself: await it from outside the group (the code that owns \
                 it), or end the task by returning and call cancel() / close() from inside"
            );
        }
    }
}

// ===== impl TrackerHandle =====

/// The users' share of a tracker. `TaskGroup` and `TaskMap` are one
/// `Arc<TrackerHandle>`, so their clones share it, and its drop is the drop of the
/// last user handle. Tasks, task handles and ladders hold the [`Tracker`]
/// itself, so they never keep a group open.
pub(crate) struct TrackerHandle<K: Eq + Hash + Clone + Debug + Send + Sync + 'static> {
    pub(crate) tracker: Arc<Tracker<K>>,
}

impl<K> Drop for TrackerHandle<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.tracker.last_handle_dropped();
    }
}

impl<K: Eq + Hash + Clone + Debug + Send + Sync + 'static> Debug for TrackerHandle<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.tracker.fmt(f)
    }
}

impl<K: Eq + Hash + Clone> Debug for Tracker<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("scope", &self.scope)
            .field("tracked", &self.registry.len())
            .field("policy", &self.policy)
            .field("cancel_on_panic", &self.cancel_on_panic)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Ready once no task of the registry is alive; for `join`.
pub(crate) async fn idle<K: Eq + Hash + Clone>(registry: &Registry<TaskMeta, K>) {
    struct Idle<'a, K: Eq + Hash + Clone> {
        registry: &'a Registry<TaskMeta, K>,
        key: Option<WaitKey>,
    }
    impl<K: Eq + Hash + Clone> Drop for Idle<'_, K> {
        fn drop(&mut self) {
            self.registry.release_idle(&mut self.key);
        }
    }
    let mut w = Idle {
        registry,
        key: None,
    };
    std::future::poll_fn(|cx| w.registry.poll_idle(cx.waker(), &mut w.key)).await;
}
