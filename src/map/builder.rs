//! [`TaskMapBuilder`]: a [`TaskMap`]'s policy, parent scope and session
//! leases.

use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Duration;

use super::TaskMap;
use super::lease::Timeouts;
use crate::ladder::ShutdownPolicy;
use crate::scope::CancelScope;

// ===== impl TaskMapBuilder =====

/// Configures a [`TaskMap`] before it is built: its shutdown policy, the
/// scope it runs in, and **session leases**, deadlines that tear a session
/// down when its client went quiet or never finished its handshake.
/// From [`TaskMap::builder`].
///
/// Leases exist for the stuck sessions of long-lived servers: a client that
/// vanished without closing its transport, or connected and never completed
/// its handshake, keeps its session task (and what it holds: a child
/// process, a subscription) alive forever unless someone times it out (as in
/// the MCP Rust SDK's rmcp#1244 and #808, streamable-HTTP sessions that are
/// never reaped). With [`idle_timeout`](Self::idle_timeout) a task whose key
/// saw no [`touch`](TaskMap::touch) for that long is cancelled with the
/// message `"idle timeout"`; with [`ready_timeout`](Self::ready_timeout) a
/// task not [marked ready](TaskMap::mark_ready) that long after its spawn is
/// cancelled with `"not ready in time"`. Either is torn down by its own
/// ladder (re-delivery, grace, escalation with its hook, the stuck verdict),
/// as [`TaskMap::begin_cancel_task`] would, counted in
/// [`Stats::idle_expired`](crate::Stats::idle_expired) /
/// [`Stats::ready_expired`](crate::Stats::ready_expired), and its message is
/// its scope's [`cancel_message`](CancelScope::cancel_message) (and in its
/// handle's [`TaskError::Cancelled`](crate::TaskError::Cancelled)).
///
/// Every task spawned under a key of a leased map, by any spawn function of
/// the map or of its [`build_task`](TaskMap::build_task) builder, gets a
/// fresh lease at its spawn (both deadlines count from there); a lease
/// belongs to that task only, so a reconnect's new task under the same key
/// is never expired by the old task's deadline. A lease ends with its task,
/// however it ends; once no leased task is left, no timer is.
///
/// Cost: no timer or task per key. One deadline queue and one driver task
/// per map, running only while a lease has a deadline; a
/// [`touch`](TaskMap::touch) is one lock and one atomic and never moves the
/// queue.
///
/// Timeouts follow the durations' rules of [`ShutdownPolicy`]: any
/// `Duration` is valid; `Duration::ZERO` expires a task at once (at the
/// driver's first run after its spawn), and a timeout whose deadline
/// overflows `Instant` (`Duration::MAX`) never expires. Time is tokio's
/// clock, so a paused clock drives it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::{TaskError, TaskMap};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let sessions = TaskMap::builder()
///     .idle_timeout(Duration::from_secs(300))
///     .ready_timeout(Duration::from_secs(10))
///     .build();
///
/// // A client that sends `initialize`, then `notifications/initialized`.
/// let alive = sessions.spawn("alice", std::future::pending::<()>());
/// assert!(sessions.mark_ready(&"alice"));
/// // A client that connects and never finishes its handshake.
/// let stuck = sessions.spawn("bob", std::future::pending::<()>());
///
/// tokio::time::sleep(Duration::from_secs(11)).await;
/// match stuck.await {
///     Err(TaskError::Cancelled(why)) => assert_eq!(why.message(), Some("not ready in time")),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(sessions.stats().ready_expired, 1);
/// assert!(!alive.is_finished());
///
/// // Alice goes quiet: 300 s after her last activity (her spawn) she is gone.
/// tokio::time::sleep(Duration::from_secs(300)).await;
/// assert!(alive.is_finished());
/// assert_eq!(sessions.stats().idle_expired, 1);
/// assert!(sessions.is_empty());
/// # }
/// ```
#[must_use = "a TaskMapBuilder does nothing until built"]
pub struct TaskMapBuilder<K> {
    policy: ShutdownPolicy,
    scope: Option<CancelScope>,
    timeouts: Timeouts,
    _keys: PhantomData<fn() -> K>,
}

impl<K> TaskMapBuilder<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        TaskMapBuilder {
            policy: ShutdownPolicy::default(),
            scope: None,
            timeouts: Timeouts::default(),
            _keys: PhantomData,
        }
    }

    /// The policy of the map's ladders (per key, on replacement, at
    /// shutdown, and after an expiry); [`ShutdownPolicy::default`] if not
    /// set.
    pub fn policy(mut self, policy: ShutdownPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Runs the map in a child of `scope`, as
    /// [`TaskMap::with_scope_and_policy`]: cancelling `scope` cancels every
    /// task of the map; dropping the map does not cancel `scope`. Without
    /// it the map has a root scope of its own.
    pub fn scope(mut self, scope: CancelScope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Cancels a task that saw no activity ([`TaskMap::touch`] on its key;
    /// its spawn counts as the first) for `timeout`, with the message
    /// `"idle timeout"`. Not set: tasks never expire for idleness.
    ///
    /// `Duration::ZERO` expires each task at once; a `timeout` too long for
    /// `Instant` (`Duration::MAX`) never expires, as if unset (but
    /// [`touch`](TaskMap::touch) still answers).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.idle = Some(timeout);
        self
    }

    /// Cancels a task not [marked ready](TaskMap::mark_ready) within
    /// `timeout` of its spawn, with the message `"not ready in time"`. Not
    /// set: tasks need no marking, and [`mark_ready`](TaskMap::mark_ready)
    /// returns `false`.
    ///
    /// `Duration::ZERO` expires each task at once, unless it is marked ready
    /// before the driver's first run; `Duration::MAX` never expires.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.ready = Some(timeout);
        self
    }

    /// The map. Leased if an idle or a ready timeout was set; else the map
    /// of [`TaskMap::with_scope_and_policy`]. Needs no runtime (the lease
    /// driver starts at the first leased spawn, on that spawn's runtime).
    #[must_use]
    pub fn build(self) -> TaskMap<K> {
        let scope = self.scope.unwrap_or_default();
        TaskMap::with_parts(&scope, self.policy, self.timeouts)
    }
}

impl<K> Debug for TaskMapBuilder<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskMapBuilder")
            .field("policy", &self.policy)
            .field("scope", &self.scope)
            .field("idle_timeout", &self.timeouts.idle)
            .field("ready_timeout", &self.timeouts.ready)
            .finish()
    }
}
