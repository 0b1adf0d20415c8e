//! [`TaskMap`]: a keyed registry of tracked tasks, one live task per key
//! (per-session work in a server), its builder, and its session leases
//! (`lease.rs`: idle and ready deadlines per key, one driver per map).

mod builder;
pub(crate) mod lease;

pub use builder::TaskMapBuilder;

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use crate::builder::TaskBuilder;
use crate::ladder::{ShutdownPolicy, ShutdownReport};
use crate::registry::LiveEntry;
use crate::registry::{TaskId, TaskOutcome};
use crate::scope::CancelScope;
use crate::task::TaskInfo;
use crate::task::{SpawnError, Stats, TaskHandle};
use crate::tracker::{Tracker, TrackerHandle, Tracks};
use lease::{Leases, Timeouts};

/// Tracked tasks by key, one live task per key: the session registry of a
/// server, with the shutdown ladder per key.
///
/// Each task runs in its own child of the map's scope, so one key can be
/// cancelled alone. Spawning on a key that is taken cancels the old task (its
/// ladder runs in the background) and installs the new one at once. Entries
/// prune themselves when their task ends, and an old task's end never removes a
/// newer task under the same key.
///
/// A key names a *slot*, not a task: after a reconnect the same key holds a
/// newer task. Code that means one task (a connection's disconnect guard)
/// keeps its [`TaskId`] and uses [`cancel_task`](Self::cancel_task) /
/// [`begin_cancel_task`](Self::begin_cancel_task), or its
/// [`TaskHandle::cancel`], which never touch a newer task under the key.
///
/// **Session leases**: a map from [`TaskMap::builder`] with an
/// [`idle_timeout`](TaskMapBuilder::idle_timeout) or a
/// [`ready_timeout`](TaskMapBuilder::ready_timeout) cancels a key's task
/// whose client went quiet ([`touch`](Self::touch) it on activity) or never
/// finished its handshake ([`mark_ready`](Self::mark_ready)), each with its
/// own ladder; see [`TaskMapBuilder`].
///
/// `TaskMap` is a cheap handle (one `Arc`), `Clone`: clones share one map.
/// Dropping the last handle [closes](Self::close) the map, cancels its scope
/// and finishes the ladder in the background (never blocking); tasks and
/// their handles do not keep the map open.
///
/// # Examples
///
/// ```
/// use cancel_scope::{TaskMap, TaskOutcome};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let sessions: TaskMap<u64> = TaskMap::new();
/// sessions.spawn(7, std::future::pending::<()>());
/// assert!(sessions.contains_key(&7));
///
/// // The client left: tear its session down, boundedly.
/// assert_eq!(sessions.cancel(&7).await, Some(TaskOutcome::Cancelled));
/// assert!(!sessions.contains_key(&7));
/// assert_eq!(sessions.cancel(&7).await, None); // unknown key
/// # }
/// ```
pub struct TaskMap<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    handle: Arc<MapHandle<K>>,
}

/// What a map's handles share: the users' share of its tracker and, on a
/// leased map, its lease layer (one `Arc` per handle either way).
struct MapHandle<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    users: TrackerHandle<K>,
    leases: Option<Arc<Leases<K>>>,
}

impl<K> TaskMap<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// A [`TaskMapBuilder`]: policy, parent scope, and the session leases
    /// ([`idle_timeout`](TaskMapBuilder::idle_timeout),
    /// [`ready_timeout`](TaskMapBuilder::ready_timeout)) that
    /// [`new`](Self::new) and [`with_policy`](Self::with_policy) leave out.
    pub fn builder() -> TaskMapBuilder<K> {
        TaskMapBuilder::new()
    }

    /// An empty map with its own root scope and the default policy (no
    /// leases).
    #[must_use]
    pub fn new() -> Self {
        Self::with_policy(ShutdownPolicy::default())
    }

    /// An empty map whose ladders follow `policy` (no leases).
    #[must_use]
    pub fn with_policy(policy: ShutdownPolicy) -> Self {
        Self::with_scope_and_policy(CancelScope::new(), policy)
    }

    /// An empty map running in a child of `scope` (cancelling `scope` cancels
    /// every task of the map; dropping the map does not cancel `scope`; no
    /// leases).
    #[must_use]
    pub fn with_scope_and_policy(scope: CancelScope, policy: ShutdownPolicy) -> Self {
        Self::with_parts(&scope, policy, Timeouts::default())
    }

    /// The map of every constructor and of the builder.
    fn with_parts(scope: &CancelScope, policy: ShutdownPolicy, timeouts: Timeouts) -> Self {
        // A panicking session must not cancel the others.
        let tracker = Tracker::new(scope.child(), policy, false, false);
        let leases = timeouts.any().then(|| Leases::new(timeouts, &tracker));
        TaskMap {
            handle: Arc::new(MapHandle {
                users: TrackerHandle { tracker },
                leases,
            }),
        }
    }

    /// The map's scope: cancelling it cancels every task.
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        &self.tracker().scope
    }

    /// Spawns `fut` under `key`; it is dropped at its next await once its
    /// scope is cancelled. A task already under `key` is cancelled (its ladder
    /// runs in the background) and no longer reachable by key.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a [closed](Self::close) map, with a
    /// message naming the fix; see [`try_spawn`](Self::try_spawn).
    #[track_caller]
    pub fn spawn<F>(&self, key: K, fut: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.build_task(key).spawn(fut)
    }

    /// As [`spawn`](Self::spawn), returning an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a [closed](Self::close) map; nothing is
    /// tracked and the task under `key`, if any, is left alone.
    #[track_caller]
    pub fn try_spawn<F>(&self, key: K, fut: F) -> Result<TaskHandle<F::Output>, SpawnError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.build_task(key).try_spawn(fut)
    }

    /// Spawns `f(scope)` under `key`, handing the task its own scope
    /// (cooperative cancellation, as [`TaskGroup::spawn_with_scope`]).
    ///
    /// [`TaskGroup::spawn_with_scope`]: crate::TaskGroup::spawn_with_scope
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime or on a [closed](Self::close) map, with a
    /// message naming the fix.
    #[track_caller]
    pub fn spawn_with_scope<F, Fut>(&self, key: K, f: F) -> TaskHandle<Fut::Output>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.build_task(key).spawn_with_scope(f)
    }

    /// As [`spawn_with_scope`](Self::spawn_with_scope), returning an error
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SpawnError::NoRuntime`] outside a tokio runtime,
    /// [`SpawnError::Closed`] on a [closed](Self::close) map; `f` is not
    /// called, nothing is tracked and the task under `key`, if any, is left
    /// alone.
    #[track_caller]
    pub fn try_spawn_with_scope<F, Fut>(
        &self,
        key: K,
        f: F,
    ) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(CancelScope) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.build_task(key).try_spawn_with_scope(f)
    }

    /// A [`TaskBuilder`] for a task under `key` (name, escalation hook).
    /// On a leased map every spawn of the builder, blocking and local ones
    /// included, gets a fresh lease (see [`touch`](Self::touch)).
    pub fn build_task(&self, key: K) -> TaskBuilder<'_, K> {
        TaskBuilder::new(self.tracker(), Some(key)).with_leases(self.handle.leases.as_ref())
    }

    /// Activity on the session under `key`: restarts its idle deadline (on a
    /// map built with an [`idle_timeout`](TaskMapBuilder::idle_timeout)).
    /// Call it on each request or message of the session.
    ///
    /// Returns whether a live task that is not [closing](Self::is_closing)
    /// is under `key`; `false` (and nothing changes) for an unknown key, a
    /// key whose task is being cancelled, replaced or expired, or one whose
    /// task ended. On a map without an idle timeout it changes nothing and
    /// returns the same answer, so code that touches needs no check of how
    /// the map was built.
    ///
    /// Names the key, so it reaches the *newest* task under it: a task that
    /// was replaced is closing and never touched again, and a reconnect's new
    /// task starts with a fresh lease.
    ///
    /// Cost: one lock (the lease table's, which no other map shares), one
    /// lookup, one clock read and one atomic; the deadline queue is not
    /// touched (the driver re-arms lazily). On a map without leases: one
    /// registry lookup.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::TaskMap;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let sessions = TaskMap::builder()
    ///     .idle_timeout(Duration::from_secs(30))
    ///     .build();
    /// sessions.spawn("alice", std::future::pending::<()>());
    /// tokio::time::sleep(Duration::from_secs(20)).await;
    /// assert!(sessions.touch(&"alice")); // a request: 30 s again from now
    /// tokio::time::sleep(Duration::from_secs(20)).await;
    /// assert!(sessions.contains_key(&"alice"));
    /// assert!(!sessions.touch(&"bob")); // unknown key
    /// # }
    /// ```
    pub fn touch(&self, key: &K) -> bool {
        match &self.handle.leases {
            Some(leases) => leases.touch(key),
            None => self
                .tracker()
                .registry
                .get(key)
                .is_some_and(|c| !c.is_closing()),
        }
    }

    /// The session under `key` is established (in MCP: the client sent
    /// `notifications/initialized` after `initialize`): its
    /// [`ready_timeout`](TaskMapBuilder::ready_timeout) no longer applies,
    /// only its idle timeout does. Idempotent.
    ///
    /// Returns whether the map has a ready timeout and a live task that is
    /// not [closing](Self::is_closing) is under `key` (so the call took
    /// effect, now or before); `false`, changing nothing, for an unknown key,
    /// a key whose task is being cancelled, replaced or expired, or a map
    /// built without a ready timeout.
    ///
    /// Cost: as [`touch`](Self::touch), without the clock read.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::TaskMap;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let sessions = TaskMap::builder()
    ///     .ready_timeout(Duration::from_secs(10))
    ///     .build();
    /// sessions.spawn(1u64, std::future::pending::<()>()); // initialized in time
    /// sessions.spawn(2u64, std::future::pending::<()>()); // never initialized
    /// assert!(sessions.mark_ready(&1));
    /// tokio::time::sleep(Duration::from_secs(11)).await;
    /// assert!(sessions.contains_key(&1));
    /// assert!(!sessions.contains_key(&2));
    /// assert_eq!(sessions.stats().ready_expired, 1);
    /// # }
    /// ```
    pub fn mark_ready(&self, key: &K) -> bool {
        self.handle
            .leases
            .as_ref()
            .is_some_and(|leases| leases.mark_ready(key))
    }

    /// Leases in the table and entries in the deadline queue: `(0, 0)`
    /// once every leased task ended. For tests; not part of the API.
    #[doc(hidden)]
    #[must_use]
    pub fn lease_queue_len(&self) -> (usize, usize) {
        self.handle.leases.as_ref().map_or((0, 0), |l| l.lens())
    }

    /// Tears down the task under `key` with the ladder and returns how it
    /// ended, or `None` if no task is under `key`.
    ///
    /// The key is marked [closing](Self::is_closing) before anything is
    /// delivered, then the task's scope is cancelled and it is woken once;
    /// re-delivery, escalation (its hook, abort) and the stuck verdict follow
    /// the map's policy. Returns within `grace + abort_grace`; a task still
    /// alive then is [`TaskOutcome::Stuck`], stays under its key (see
    /// [`stuck_keys`](Self::stuck_keys)) and prunes itself when it ends.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the ladder runs on its own tokio task, so dropping this
    /// future does not stop the teardown.
    ///
    pub async fn cancel(&self, key: &K) -> Option<TaskOutcome> {
        let cell = self.tracker().registry.get(key)?;
        match self.tracker().begin_cancel(cell.clone()) {
            // The ladder task is ours and never panics; a runtime shutting
            // down is the only way it cannot answer.
            Some(ladder) => ladder.await.unwrap_or_else(|_| cell.outcome()),
            None => cell.outcome(),
        }
    }

    /// Starts the teardown of the task under `key` in the background and
    /// returns at once: for `Drop` impls (a response body, a connection) that
    /// cannot await. Returns whether a task was under `key`.
    ///
    /// Works outside a runtime too: the ladder then runs on the runtime the
    /// map's tasks were spawned on.
    pub fn begin_cancel(&self, key: &K) -> bool {
        match self.tracker().registry.get(key) {
            Some(cell) => {
                drop(self.tracker().begin_cancel(cell));
                true
            }
            None => false,
        }
    }

    /// Tears down the task under `key` as [`cancel`](Self::cancel) does, but
    /// only if `key` still maps to task `id`: a stale id (the key was taken
    /// over by a newer task, or the task ended) does nothing and returns
    /// `None`, and a newer task under the key is never touched.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`cancel`](Self::cancel).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskMap, TaskOutcome};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let sessions = TaskMap::new();
    /// let old = sessions.spawn(7, std::future::pending::<()>()).id();
    /// let new = sessions.spawn(7, std::future::pending::<()>()).id(); // reconnect
    /// // The old connection's late cleanup names its own task: a no-op.
    /// assert_eq!(sessions.cancel_task(&7, old).await, None);
    /// assert_eq!(sessions.task_id(&7), Some(new));
    /// assert_eq!(sessions.cancel_task(&7, new).await, Some(TaskOutcome::Cancelled));
    /// # }
    /// ```
    pub async fn cancel_task(&self, key: &K, id: TaskId) -> Option<TaskOutcome> {
        let cell = self.tracker().registry.get(key).filter(|c| c.id == id)?;
        match self.tracker().begin_cancel(cell.clone()) {
            Some(ladder) => ladder.await.unwrap_or_else(|_| cell.outcome()),
            None => cell.outcome(),
        }
    }

    /// Starts the teardown of task `id` under `key` in the background, as
    /// [`begin_cancel`](Self::begin_cancel), but only if `key` still maps to
    /// `id`. Returns whether it did; `false` for a stale id or an unknown key.
    /// For `Drop` impls of a connection that must not tear down the session of
    /// a client that reconnected under the same key.
    pub fn begin_cancel_task(&self, key: &K, id: TaskId) -> bool {
        match self.tracker().registry.get(key).filter(|c| c.id == id) {
            Some(cell) => {
                drop(self.tracker().begin_cancel(cell));
                true
            }
            None => false,
        }
    }

    /// Aborts the task under `key` now, with no grace and no hook, as
    /// tokio-util's `JoinMap::abort`: its future is dropped at its next poll
    /// and its handle gives [`TaskError::Aborted`](crate::TaskError::Aborted);
    /// its own scope is cancelled as it is dropped, so a child process it
    /// owns is torn down. Returns whether a task was under `key`. Returns at
    /// once; the key stays mapped until the task's future is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskError, TaskMap};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let sessions = TaskMap::new();
    /// let session = sessions.spawn("alice", std::future::pending::<()>());
    /// assert!(sessions.abort(&"alice"));
    /// assert!(matches!(session.await, Err(TaskError::Aborted)));
    /// assert!(!sessions.abort(&"alice"));
    /// # }
    /// ```
    pub fn abort(&self, key: &K) -> bool {
        match self.tracker().registry.get(key) {
            Some(cell) => {
                self.tracker().abort(&cell);
                true
            }
            None => false,
        }
    }

    /// The id of the task under `key`, if any: keep it to cancel that task
    /// later without touching a newer one (see
    /// [`cancel_task`](Self::cancel_task)).
    #[must_use]
    pub fn task_id(&self, key: &K) -> Option<TaskId> {
        self.tracker().registry.get(key).map(|c| c.id)
    }

    /// The keys with a live task (closing and stuck ones included), in no
    /// particular order; a snapshot.
    #[must_use]
    pub fn keys(&self) -> Vec<K> {
        self.tracker().registry.keys_where(|_| true)
    }

    /// Closes the map: every later spawn is refused ([`SpawnError::Closed`]
    /// from `try_spawn*`, a panic from `spawn*`, an error from
    /// [`spawn_with_process`](Self::spawn_with_process)), while the running
    /// tasks go on. Idempotent. [`shutdown`](Self::shutdown) closes first;
    /// dropping the last handle closes too. See
    /// [`TaskGroup::close`](crate::TaskGroup::close).
    pub fn close(&self) {
        self.tracker().close();
    }

    /// Whether the map is [closed](Self::close).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.tracker().is_closed()
    }

    /// Whether the task under `key` is being torn down (marked before the
    /// first delivery, kept until it ends).
    #[must_use]
    pub fn is_closing(&self, key: &K) -> bool {
        self.tracker()
            .registry
            .get(key)
            .is_some_and(|c| c.is_closing())
    }

    /// Whether a live task is under `key` (closing or stuck ones included).
    #[must_use]
    pub fn contains_key(&self, key: &K) -> bool {
        self.tracker().registry.get(key).is_some()
    }

    /// Live tasks, including replaced ones still winding down.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tracker().len()
    }

    /// Whether no task is alive.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys whose task a ladder reported stuck and that are still alive.
    #[must_use]
    pub fn stuck_keys(&self) -> Vec<K> {
        self.tracker().registry.keys_where(|c| c.is_stuck())
    }

    /// Closes the map and tears down every task with the ladder (see
    /// [`TaskGroup::shutdown`](crate::TaskGroup::shutdown)).
    ///
    /// # Panics
    ///
    /// When awaited inside a task of this same map, as
    /// [`TaskGroup::shutdown`](crate::TaskGroup::shutdown).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the ladder where it is (the map's scope
    /// stays cancelled).
    pub async fn shutdown(&self) -> ShutdownReport {
        self.tracker().shutdown("TaskMap::shutdown").await
    }

    /// A snapshot of the map's counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.tracker().stats()
    }

    /// The map's live tasks with their keys, oldest (lowest id) first; each
    /// [`TaskInfo`] carries its key's `Debug` form too. A replaced task that
    /// is still winding down is listed beside the newer task under its key
    /// (both are live; the older one is
    /// [`Cancelled`](crate::TaskState::Cancelled) or further); ended tasks
    /// never are.
    ///
    /// A pure read, at the cost and with the reach of
    /// [`TaskGroup::snapshot`](crate::TaskGroup::snapshot), plus, per task,
    /// one `K::clone` and one `Debug` format of its key, both after the
    /// registry lock (nothing of a user's runs under it).
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{TaskMap, TaskState};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let sessions: TaskMap<&str> = TaskMap::new();
    /// sessions.spawn("alice", std::future::pending::<()>());
    /// sessions.spawn("bob", std::future::pending::<()>());
    /// sessions.spawn("alice", std::future::pending::<()>()); // reconnect
    /// tokio::task::yield_now().await; // the old "alice" ends at its next poll
    ///
    /// let live = sessions.snapshot();
    /// let keys: Vec<&str> = live.iter().map(|(k, _)| *k).collect();
    /// assert_eq!(keys, ["bob", "alice"]);
    /// assert_eq!(live[1].1.key.as_deref(), Some("\"alice\""));
    /// assert!(live.iter().all(|(_, t)| t.state == TaskState::Running));
    /// # }
    /// ```
    #[must_use]
    pub fn snapshot(&self) -> Vec<(K, TaskInfo)> {
        let tracker = self.tracker();
        // The one lock: keys come out as shared `Arc`s; the user's `Clone`
        // and `Debug` run below, after it (the lock rule).
        let mut live = tracker.registry.pending_keyed();
        let now = crate::task::now_on(tracker.runtime());
        live.sort_unstable_by_key(|entry| entry.cell.id);
        live.into_iter()
            .filter_map(|LiveEntry { cell, key }| {
                // Every task of a map has a key.
                let key = key?;
                let mut info = TaskInfo::read(&cell, &tracker.scope, now)?;
                info.key = Some(format!("{:?}", *key));
                Some((K::clone(&key), info))
            })
            .collect()
    }
}

impl<K> Tracks<K> for TaskMap<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    fn tracker(&self) -> &Arc<Tracker<K>> {
        &self.handle.users.tracker
    }
}

impl<K> Clone for TaskMap<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// Another handle to the same map.
    fn clone(&self) -> Self {
        TaskMap {
            handle: self.handle.clone(),
        }
    }
}

impl<K> Default for TaskMap<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K> Debug for TaskMap<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskMap")
            .field("tracker", &self.tracker())
            .field("leases", &self.handle.leases)
            .finish()
    }
}
