//! Session leases of a [`TaskMap`](crate::TaskMap): an idle deadline and a
//! ready deadline per task, one deadline queue and one driver per map.
//!
//! A feature on top of the map, through the seam (`tracker/seam.rs`): the
//! registry and the tracker know nothing of leases. A leased map's
//! [`TaskBuilder`](crate::TaskBuilder) wraps each task's future (or blocking
//! closure) in a [`LeaseGuard`] and registers the task's lease once the
//! spawn returned; the guard, dropped with the future however the task ends,
//! removes the lease again. Expiries are counted in a [`LeaseCounts`]
//! extension, which adds them to the map's [`Stats`].
//!
//! # Design
//!
//! - **The table** maps each key to the lease of its newest task (the key
//!   lives once, inside the lease: [`ByKey`] borrows it for lookups), and
//!   remembers where that lease sits in the queue.
//! - **The queue** (`BTreeMap<(Instant, seq), lease>`) holds at most one
//!   entry per lease, at the earliest deadline the lease had when it was
//!   armed. [`touch`](Leases::touch) only moves the lease's last activity (an
//!   atomic) and never the queue: the entry fires at the old, earlier
//!   instant, and the driver reads the real deadline and re-arms (lazy
//!   re-arm), so a busy session costs one lock and one atomic per touch.
//! - **The driver** is one plain tokio task per map, running only while the
//!   queue is not empty. It holds the leases weakly (it never keeps a map
//!   alive, and it is no task of the map: `len()` does not count it), sleeps
//!   until the queue's first instant, and is woken early (a [`Notify`]) only
//!   when an earlier deadline comes in or the queue empties. The rejected
//!   alternative, a timer task per key, costs a task and a timer per session.
//!
//! # Invariants
//!
//! 1. A lease is in the table under its key only while it is the newest
//!    lease of that key and its task has not ended; a task's end (its guard)
//!    and a newer spawn (its registration) both remove it.
//! 2. A lease is in the queue only while it is in the table, and the table
//!    records its one queue entry: whoever removes it from the table removes
//!    that entry too. So an old generation's deadline can never fire for a
//!    newer task under the same key; on top, an expiry names the task's cell
//!    (its generation), never the key.
//! 3. The driver runs (`running`) exactly while the queue is not empty or a
//!    registration has just started it: it stops, under the lock, when it
//!    finds the queue empty, and the registration that finds it stopped
//!    starts a new one. So once the last leased task ends, no timer and no
//!    task of the layer is left (DESIGN property 1).
//!
//! Everything above changes under the one `state` lock, so `touch` and the
//! driver's re-arm agree on each lease's last activity.
//!
//! # Deadlock safety
//!
//! One lock, `state`, never held across another lock of the crate, an
//! await, a wake or a cancel. Under it nothing of the user's runs but the
//! key's `Hash` and `Eq` of a lookup (the exception [`crate::sync::lock`]
//! documents): keys are cloned before it (one `K::clone` per spawn), and
//! leases leaving the table or the queue (which own a key and a task cell)
//! are dropped after it.

mod due;

use due::Verdict;
pub(crate) use due::{Expiry, Timeouts};

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sync::lock;
use crate::task::{SpawnError, Stats, TaskHandle, TrackedCell};
use crate::tracker::Tracker;
use crate::tracker::seam::Extension;

// ===== the lease of one task =====

/// One task's lease: its key, its spawn instant, its last activity and
/// whether it was marked ready.
struct Lease<K> {
    key: K,
    /// The spawn, on tokio's clock: both deadlines count from here.
    spawned: Instant,
    /// The last activity, in nanoseconds after `spawned` (saturating).
    /// Relaxed: written (`touch`) and read (the driver) under the state
    /// lock, which orders them.
    last_activity: AtomicU64,
    /// Marked ready: the ready deadline no longer applies. Relaxed, under
    /// the state lock as `last_activity`.
    ready: AtomicBool,
    /// The task's future is gone (its guard dropped). Set and read under the
    /// state lock: a registration that comes after the task ended sees it
    /// and registers nothing.
    ended: AtomicBool,
    /// The task's cell, set once its spawn returned (before the lease is
    /// registered, so every lease in the table has one): how an expiry and
    /// `touch` tell this generation's state (closing, ended) without a key.
    cell: OnceLock<Arc<TrackedCell>>,
}

impl<K> Lease<K> {
    /// Whether the lease's task is alive and not being torn down.
    fn is_live(&self) -> bool {
        !self.ended.load(Ordering::Relaxed)
            && self
                .cell
                .get()
                .is_some_and(|c| !c.is_closing() && !c.is_ended())
    }

    fn last_activity(&self) -> Duration {
        Duration::from_nanos(self.last_activity.load(Ordering::Relaxed))
    }
}

/// A lease as a table key: hashed and compared by its task's key, so the
/// table is looked up with a `&K` and holds no second copy of it.
struct ByKey<K>(Arc<Lease<K>>);

impl<K> Borrow<K> for ByKey<K> {
    fn borrow(&self) -> &K {
        &self.0.key
    }
}

impl<K: Hash> Hash for ByKey<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `K`'s own, which `Borrow` requires.
        self.0.key.hash(state);
    }
}

impl<K: Eq> PartialEq for ByKey<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl<K: Eq> Eq for ByKey<K> {}

/// Where a lease sits in the queue: its instant, then a sequence number
/// that keeps entries of one instant apart.
type QueueKey = (Instant, u64);

// ===== the map's leases =====

/// The lease layer of one map: configuration, table, queue, driver state.
pub(crate) struct Leases<K: Eq + Hash + Clone> {
    timeouts: Timeouts,
    state: Mutex<State<K>>,
    /// Wakes the driver early: an earlier deadline came in, or the queue
    /// emptied. Its own `Arc`, so the sleeping driver holds no lease.
    wake: Arc<Notify>,
    counts: Arc<LeaseCounts>,
    /// Weak: the tracker holds `counts` (an extension), the tasks hold the
    /// tracker; nothing here keeps a map alive.
    tracker: Weak<Tracker<K>>,
}

struct State<K> {
    /// Key -> its newest task's lease and that lease's queue entry
    /// (invariants 1, 2).
    table: HashMap<ByKey<K>, Option<QueueKey>>,
    queue: BTreeMap<QueueKey, Arc<Lease<K>>>,
    next_seq: u64,
    driver: DriverState,
}

/// The driver's state, under the state lock (invariant 3).
#[derive(Debug, Default)]
struct DriverState {
    /// A driver task runs (or was just started).
    running: bool,
    /// Which driver: a driver's exit guard clears `running` only if it is
    /// still the one running.
    epoch: u64,
    /// The instant the running driver sleeps until, if it sleeps.
    armed_at: Option<Instant>,
}

/// What one run of the driver found.
struct Due<K> {
    /// Leases whose deadline passed, with the one that did.
    fire: Vec<(Arc<Lease<K>>, Expiry)>,
    /// Leases that left the table or the queue, to drop after the lock.
    gone: Vec<Arc<Lease<K>>>,
    /// The next instant to wake at; `None`: the queue is empty and the
    /// driver stopped.
    next: Option<Instant>,
}

impl<K> Leases<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// The lease layer of the map of `tracker`, counting its expiries in the
    /// tracker's stats (through its extensions).
    pub(crate) fn new(timeouts: Timeouts, tracker: &Arc<Tracker<K>>) -> Arc<Self> {
        Arc::new(Leases {
            timeouts,
            state: Mutex::new(State {
                table: HashMap::new(),
                queue: BTreeMap::new(),
                next_seq: 0,
                driver: DriverState::default(),
            }),
            wake: Arc::new(Notify::new()),
            counts: tracker.extensions.get_or_attach(LeaseCounts::default),
            tracker: Arc::downgrade(tracker),
        })
    }

    /// A lease for a task about to be spawned under `key`, spawned now: the
    /// guard goes into the task, the admission registers the lease once the
    /// spawn returned. Clones `key` (no lock is held).
    pub(crate) fn prepare(self: &Arc<Self>, key: &K) -> (LeaseGuard<K>, Admission<K>) {
        let lease = Arc::new(Lease {
            key: key.clone(),
            spawned: Instant::now(),
            last_activity: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            cell: OnceLock::new(),
        });
        let guard = LeaseGuard {
            leases: self.clone(),
            lease: lease.clone(),
        };
        let admission = Admission {
            leases: self.clone(),
            lease,
        };
        (guard, admission)
    }

    /// Activity on `key`: restarts its idle deadline. Whether a live task
    /// that is not being torn down is under `key`.
    pub(crate) fn touch(&self, key: &K) -> bool {
        let now = Instant::now();
        let st = lock(&self.state);
        let Some((lease, _)) = st.table.get_key_value(key) else {
            return false;
        };
        let lease = &lease.0;
        if !lease.is_live() {
            return false;
        }
        if self.timeouts.idle.is_some() {
            let since = now.saturating_duration_since(lease.spawned);
            let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
            // Monotonic: two touches that read the clock in one order may
            // take the lock in the other.
            lease.last_activity.fetch_max(nanos, Ordering::Relaxed);
        }
        true
    }

    /// The session under `key` is established: its ready deadline no longer
    /// applies. Whether it was (a live task not being torn down, on a map
    /// with a ready timeout).
    pub(crate) fn mark_ready(&self, key: &K) -> bool {
        if self.timeouts.ready.is_none() {
            return false;
        }
        let st = lock(&self.state);
        match st.table.get_key_value(key) {
            Some((lease, _)) if lease.0.is_live() => {
                lease.0.ready.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Leases in the table and entries in the queue, for tests and `Debug`.
    pub(crate) fn lens(&self) -> (usize, usize) {
        let st = lock(&self.state);
        (st.table.len(), st.queue.len())
    }

    /// Registers `lease` (its task spawned, `cell`), replacing the lease of
    /// an older task under its key; starts the driver, or wakes it if this
    /// deadline comes before the one it sleeps until.
    fn register(
        self: &Arc<Self>,
        lease: Arc<Lease<K>>,
        cell: Arc<TrackedCell>,
        tracker: &Arc<Tracker<K>>,
    ) {
        // Set before the lease is reachable from the table.
        let _ = lease.cell.set(cell);
        let arm_at =
            match self
                .timeouts
                .verdict(lease.spawned, lease.spawned, Duration::ZERO, false)
            {
                // A zero timeout: due at once, at the driver's first run.
                Verdict::Expire(_) => Some(lease.spawned),
                Verdict::WakeAt(at) => Some(at),
                Verdict::Never => None,
            };
        // Declared before the guard: dropped after the lock (the lock rule).
        let mut replaced: Vec<Arc<Lease<K>>> = Vec::new();
        let (start, notify) = {
            let mut st = lock(&self.state);
            if lease.ended.load(Ordering::Relaxed) {
                // The task ended before its spawn returned: its guard found
                // nothing to remove, and there is nothing to add.
                return;
            }
            let st = &mut *st;
            if let Some((old, armed)) = st.table.remove_entry(&lease.key) {
                replaced.push(old.0);
                replaced.extend(armed.and_then(|at| st.queue.remove(&at)));
            }
            let armed = arm_at.map(|at| {
                let entry = (at, st.next_seq);
                st.next_seq += 1;
                st.queue.insert(entry, lease.clone());
                entry
            });
            st.table.insert(ByKey(lease), armed);
            match arm_at {
                None => (None, false),
                Some(_) if !st.driver.running => {
                    st.driver.running = true;
                    st.driver.epoch += 1;
                    st.driver.armed_at = None;
                    (Some(st.driver.epoch), false)
                }
                // A driver that has not slept yet reads the queue first.
                Some(at) => match st.driver.armed_at {
                    Some(sleeping) if at < sleeping => {
                        st.driver.armed_at = Some(at);
                        (None, true)
                    }
                    _ => (None, false),
                },
            }
        };
        if notify {
            self.wake.notify_one();
        }
        if let Some(epoch) = start {
            self.start_driver(tracker, epoch);
        }
    }

    /// The guard of `lease`'s task dropped: removes its lease and queue
    /// entry, if still the newest of its key (invariants 1, 2), and wakes
    /// the driver to stop if the queue emptied.
    fn end(&self, lease: &Arc<Lease<K>>) {
        // Declared before the guard: dropped after the lock.
        let mut removed: Vec<Arc<Lease<K>>> = Vec::new();
        let notify = {
            let mut st = lock(&self.state);
            lease.ended.store(true, Ordering::Relaxed);
            let ours = st
                .table
                .get_key_value(&lease.key)
                .is_some_and(|(newest, _)| Arc::ptr_eq(&newest.0, lease));
            if !ours {
                return;
            }
            let st = &mut *st;
            if let Some((newest, armed)) = st.table.remove_entry(&lease.key) {
                removed.push(newest.0);
                removed.extend(armed.and_then(|at| st.queue.remove(&at)));
            }
            // The driver sleeps for nothing now: let it stop (invariant 3).
            st.queue.is_empty() && st.driver.armed_at.take().is_some()
        };
        if notify {
            self.wake.notify_one();
        }
    }

    /// One run of the driver at `now`: pops what is due, decides each
    /// (expire, re-arm, or keep without a deadline), and stops the driver
    /// if the queue is empty.
    fn run_due(&self, now: Instant, epoch: u64) -> Due<K> {
        let mut due = Due {
            fire: Vec::new(),
            gone: Vec::new(),
            next: None,
        };
        let mut st = lock(&self.state);
        let st = &mut *st;
        if !st.driver.running || st.driver.epoch != epoch {
            // Not the current driver (cannot happen: one runs at a time).
            return due;
        }
        while let Some(entry) = st.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let lease = entry.remove();
            let verdict = if lease.is_live() {
                self.timeouts.verdict(
                    now,
                    lease.spawned,
                    lease.last_activity(),
                    lease.ready.load(Ordering::Relaxed),
                )
            } else {
                // Being torn down by someone else (a replacement, a cancel):
                // its lease is over, its guard will find nothing.
                Verdict::Never
            };
            // By invariant 2 the table holds this very lease under its key;
            // checked anyway, so that no bug of ours can let an old
            // generation's entry change a newer lease.
            let newest = st
                .table
                .get_key_value(&lease.key)
                .is_some_and(|(newest, _)| Arc::ptr_eq(&newest.0, &lease));
            debug_assert!(newest, "a queued lease is its key's newest (invariant 2)");
            if !newest {
                due.gone.push(lease);
                continue;
            }
            match verdict {
                Verdict::WakeAt(at) => {
                    let entry = (at, st.next_seq);
                    st.next_seq += 1;
                    if let Some(slot) = st.table.get_mut(&lease.key) {
                        *slot = Some(entry);
                    }
                    st.queue.insert(entry, lease);
                }
                Verdict::Never if lease.is_live() => {
                    // Ready, and no finite idle deadline: stays in the table
                    // for `touch`, out of the queue.
                    if let Some(slot) = st.table.get_mut(&lease.key) {
                        *slot = None;
                    }
                    due.gone.push(lease);
                }
                verdict => {
                    if let Some((newest, _)) = st.table.remove_entry(&lease.key) {
                        due.gone.push(newest.0);
                    }
                    match verdict {
                        Verdict::Expire(expiry) => due.fire.push((lease, expiry)),
                        _ => due.gone.push(lease),
                    }
                }
            }
        }
        due.next = st.queue.first_key_value().map(|(at, _)| at.0);
        match due.next {
            None => {
                st.driver.running = false;
                st.driver.armed_at = None;
            }
            Some(at) => st.driver.armed_at = Some(at),
        }
        due
    }

    /// Cancels the tasks of expired leases, each with its message, and
    /// counts those whose teardown this began (a task already being torn
    /// down, or ended meanwhile, is not counted).
    fn fire(&self, fire: &[(Arc<Lease<K>>, Expiry)]) {
        if fire.is_empty() {
            return;
        }
        let Some(tracker) = self.tracker.upgrade() else {
            return;
        };
        for (lease, expiry) in fire {
            let Some(cell) = lease.cell.get() else {
                continue;
            };
            tracker.begin_cancel_with(cell.clone(), expiry.message(), || {
                self.counts.bump(*expiry);
            });
        }
    }

    fn start_driver(self: &Arc<Self>, tracker: &Arc<Tracker<K>>, epoch: u64) {
        let Some(rt) = tracker.runtime() else {
            // A spawn that returned had a runtime; should it be gone, let
            // the next registration try again.
            let mut st = lock(&self.state);
            if st.driver.epoch == epoch {
                st.driver.running = false;
            }
            return;
        };
        rt.spawn(drive(Arc::downgrade(self), self.wake.clone(), epoch));
    }
}

/// The driver: runs what is due, sleeps until the next instant or an early
/// wake, and stops when the queue is empty or the leases are gone.
async fn drive<K>(leases: Weak<Leases<K>>, wake: Arc<Notify>, epoch: u64)
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    let _exit = DriverExit {
        leases: leases.clone(),
        epoch,
    };
    loop {
        let Some(strong) = leases.upgrade() else {
            return;
        };
        let due = strong.run_due(Instant::now(), epoch);
        strong.fire(&due.fire);
        let next = due.next;
        // The expired and removed leases (keys, cells), then the leases
        // themselves: nothing is held while sleeping.
        drop(due);
        drop(strong);
        let Some(next) = next else {
            return;
        };
        let _ = tokio::time::timeout_at(next, wake.notified()).await;
    }
}

/// Clears `running` if the driver is dropped without stopping itself (its
/// runtime shut down), so a later registration starts a new one.
struct DriverExit<K: Eq + Hash + Clone> {
    leases: Weak<Leases<K>>,
    epoch: u64,
}

impl<K: Eq + Hash + Clone> Drop for DriverExit<K> {
    fn drop(&mut self) {
        if let Some(leases) = self.leases.upgrade() {
            let mut st = lock(&leases.state);
            if st.driver.epoch == self.epoch {
                st.driver.running = false;
                st.driver.armed_at = None;
            }
        }
    }
}

impl<K: Eq + Hash + Clone> Debug for Leases<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (leases, queued, running) = {
            let st = lock(&self.state);
            (st.table.len(), st.queue.len(), st.driver.running)
        };
        f.debug_struct("Leases")
            .field("idle_timeout", &self.timeouts.idle)
            .field("ready_timeout", &self.timeouts.ready)
            .field("leases", &leases)
            .field("queued", &queued)
            .field("driver", &running)
            .finish()
    }
}

// ===== spawn side =====

/// Registers a prepared lease once its task's spawn returned.
pub(crate) struct Admission<K: Eq + Hash + Clone> {
    leases: Arc<Leases<K>>,
    lease: Arc<Lease<K>>,
}

impl<K> Admission<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// Registers the lease of the task `spawned`, if it was spawned and has
    /// not ended yet; passes the spawn's result on.
    pub(crate) fn admit<T>(
        self,
        tracker: &Arc<Tracker<K>>,
        spawned: Result<TaskHandle<T>, SpawnError>,
    ) -> Result<TaskHandle<T>, SpawnError> {
        let handle = spawned?;
        if let Some(cell) = handle.cell().upgrade() {
            self.leases.register(self.lease, cell, tracker);
        }
        Ok(handle)
    }
}

/// In a leased task, dropped with its future or closure however the task
/// ends: ends the task's lease.
pub(crate) struct LeaseGuard<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    leases: Arc<Leases<K>>,
    lease: Arc<Lease<K>>,
}

impl<K> LeaseGuard<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// `fut` with this guard inside.
    pub(crate) fn wrap<F>(self, fut: F) -> Leased<F, K> {
        Leased { fut, _guard: self }
    }
}

impl<K> Drop for LeaseGuard<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.leases.end(&self.lease);
    }
}

pin_project_lite::pin_project! {
    /// A leased task's future: the user's, then the guard (dropped after
    /// it, so the lease ends once the future is gone).
    pub(crate) struct Leased<F, K>
    where
        K: Eq,
        K: Hash,
        K: Clone,
        K: Debug,
        K: Send,
        K: Sync,
        K: 'static,
    {
        #[pin]
        fut: F,
        _guard: LeaseGuard<K>,
    }
}

impl<F, K> Future for Leased<F, K>
where
    F: Future,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

// ===== counters, through the seam =====

/// Expiries of a map's leases, added to its [`Stats`] as `idle_expired`
/// and `ready_expired`.
#[derive(Debug, Default)]
pub(crate) struct LeaseCounts {
    idle: AtomicU64,
    ready: AtomicU64,
}

impl LeaseCounts {
    /// Relaxed: a counter; the teardown it counts is begun after the bump
    /// (under the registry lock's ordering), so whoever sees the task end
    /// sees the count.
    fn bump(&self, expiry: Expiry) {
        let counter = match expiry {
            Expiry::Idle => &self.idle,
            Expiry::Ready => &self.ready,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Extension for LeaseCounts {
    fn add_to(&self, stats: &mut Stats) {
        stats.idle_expired += self.idle.load(Ordering::Relaxed);
        stats.ready_expired += self.ready.load(Ordering::Relaxed);
    }
}
