//! [`CancelScope`]: the handle to a node of the cancellation tree (one `Arc`
//! of it), with its `Clone`, `Drop`, `Default` and `Debug`. Its methods make,
//! cancel and read scopes through the tree's free functions, and hand out the
//! futures and the guard that act on it (`interop.rs` adds the token
//! methods). Also the deadline-aware `is_cancelled` that the futures share.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::clock::{far_future, from_ticks, now_ticks, to_ticks};
use super::guard::DropGuard;
use super::message::CancelMessage;
use super::timer::spawn_timer;
use super::tree::{self, CancelReason, NO_DEADLINE, Node};
use super::wait::{Run, WaitCancelled, WaitCancelledOwned, Waiter};
use crate::sync::Arc;

// ===== impl CancelScope =====

/// A node of the cancellation tree: cancelling it cancels every non-shielded
/// descendant. Cheap to clone; clones are handles to the same scope.
///
/// Cancellation is *level-triggered*, as in Trio: once a scope is cancelled it
/// stays cancelled, [`is_cancelled`](Self::is_cancelled) returns `true` and
/// every [`cancelled`](Self::cancelled) future resolves at once, forever. A
/// scope can also be cancelled by its [deadline](Self::with_deadline); its
/// [`reason`](Self::reason) says which, taken from the scope where the
/// cancellation started.
///
/// A [shielded child](Self::shielded_child) is a scope that its ancestors'
/// cancellation does not reach; see [below](#what-a-shield-protects) for what
/// that does and does not protect.
///
/// # What a shield protects
///
/// A shield protects a scope's *state*, not the code around it. A shielded
/// scope stays uncancelled when its ancestors are cancelled, so its
/// `is_cancelled`, `cancelled()` and `run` behave as if nothing happened, and
/// code that *observes* scopes (the body of a
/// [`spawn_with_scope`](crate::TaskGroup::spawn_with_scope) task, or any code
/// that checks a scope instead of being dropped by one) can do its cleanup
/// under it.
///
/// It does not protect code nested inside a future that a cancel *drops*: the
/// future given to an outer [`run`](Self::run), or to a plain
/// [`TaskGroup::spawn`](crate::TaskGroup::spawn), is dropped whole at its next
/// await once that scope is cancelled, shielded parts included. This is where
/// Trio differs: there cancellation is an exception raised at the next
/// checkpoint, and a shielded block inside the cancelled one keeps running;
/// here nothing inside a dropped future can run again.
///
/// To run cleanup that must outlive the code (or task) that starts it, move
/// the cleanup out of that code's future: spawn it as its own
/// `spawn_with_scope` task, and run it in a shielded child with its own
/// deadline. The group tracks it (its `shutdown` waits for it, bounded by the
/// grace like any task), the shield keeps the group's cancel from reaching it,
/// and the deadline bounds it:
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::{CancelScope, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let group = TaskGroup::new();
/// // Inside some request handler that may be cancelled or dropped any time:
/// let cleanup = group.spawn_with_scope(|scope: CancelScope| async move {
///     scope
///         .shielded_child()
///         .with_timeout(Duration::from_millis(500)) // bounded: 500 ms at most
///         .run(async { /* flush, close, notify */ "flushed" })
///         .await
/// });
/// group.cancel(); // the handler's whole world goes away...
/// // ...the cleanup still runs to its end or its deadline.
/// assert_eq!(cleanup.await.unwrap(), Ok("flushed"));
/// # }
/// ```
///
/// # Examples
///
/// ```
/// use cancel_scope::{CancelReason, CancelScope};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let root = CancelScope::new();
/// let child = root.child();
/// let cleanup = root.shielded_child();
///
/// root.cancel();
/// assert!(child.is_cancelled());
/// assert_eq!(child.reason(), Some(CancelReason::Requested));
/// assert!(!cleanup.is_cancelled());
/// child.cancelled().await; // resolves at once, forever
/// # }
/// ```
pub struct CancelScope {
    pub(super) node: Arc<Node>,
}

impl CancelScope {
    /// A new root scope: not cancelled, no deadline.
    #[must_use]
    pub fn new() -> Self {
        CancelScope {
            node: tree::new_root(),
        }
    }

    /// A child scope, cancelled whenever `self` is (and, if `self` already is,
    /// born cancelled with the same reason). It inherits `self`'s effective
    /// deadline and may add an earlier one of its own.
    #[must_use]
    pub fn child(&self) -> CancelScope {
        CancelScope {
            node: tree::new_child(&self.node),
        }
    }

    /// A shielded child: not cancelled by its ancestors, nor bound by their
    /// deadlines (the scope state of Trio's `CancelScope(shield=True)`). It
    /// can still be cancelled directly or by a deadline of its own, which is
    /// how bounded cleanup reads.
    ///
    /// The shield protects this scope, not the future its code runs in: if
    /// that future is dropped by an outer cancel (it runs inside an outer
    /// [`run`](Self::run) or a plain `TaskGroup::spawn`), the shielded part
    /// goes with it. Cleanup that must outlive its caller goes into its own
    /// `spawn_with_scope` task; see
    /// [What a shield protects](CancelScope#what-a-shield-protects).
    ///
    /// # Examples
    ///
    /// The code below awaits the shielded scope directly, so nothing drops it:
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::CancelScope;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let task = CancelScope::new();
    /// task.cancel();
    /// // Cleanup runs despite the cancel, but for 100 ms at most.
    /// let cleanup = task.shielded_child().with_timeout(Duration::from_millis(100));
    /// let flushed = cleanup.run(async { /* flush buffers */ 42 }).await;
    /// assert_eq!(flushed.unwrap(), 42);
    /// # }
    /// ```
    #[must_use]
    pub fn shielded_child(&self) -> CancelScope {
        CancelScope {
            node: tree::new_shielded(&self.node),
        }
    }

    /// Gives the scope a deadline: from `at` on, it counts as cancelled with
    /// reason [`CancelReason::Deadline`], and so do its non-shielded descendants.
    ///
    /// Deadlines only tighten: if the scope already has an earlier own deadline,
    /// that one stays (as nested Trio `move_on_at` scopes: the earliest wins).
    /// A deadline at or before now cancels the scope at once.
    ///
    /// No timer exists until somebody waits on the scope (or a descendant);
    /// then exactly one timer task runs for it, and it ends when the deadline
    /// fires, the scope is cancelled or dropped, or the last waiter leaves (a
    /// later waiter starts it again), so an idle scope schedules nothing. A
    /// deadline given while somebody already waits on the scope or a
    /// descendant starts a timer that ends only when the deadline fires or
    /// the scope is cancelled or dropped.
    ///
    /// # Panics
    ///
    /// Waiting for a deadline needs a tokio runtime with its time driver. If the
    /// scope is already being waited on and this is called outside such a
    /// runtime, it panics, naming the fix.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::{CancelReason, CancelScope};
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let scope = CancelScope::new().with_deadline(Instant::now() + Duration::from_secs(1));
    /// scope.cancelled().await; // the paused clock jumps 1 s
    /// assert_eq!(scope.reason(), Some(CancelReason::Deadline));
    /// # }
    /// ```
    #[track_caller]
    #[must_use]
    pub fn with_deadline(self, at: Instant) -> Self {
        let ticks = to_ticks(at);
        let start_timer = tree::tighten_deadline(&self.node, ticks);
        if ticks <= now_ticks() {
            tree::cancel(&self.node, CancelReason::Deadline);
        } else if start_timer {
            spawn_timer(self.node.clone());
        }
        self
    }

    /// [`with_deadline`](Self::with_deadline)`(Instant::now() + after)`; a zero
    /// duration cancels at once.
    ///
    /// # Panics
    ///
    /// As [`with_deadline`](Self::with_deadline).
    #[track_caller]
    #[must_use]
    pub fn with_timeout(self, after: Duration) -> Self {
        let at = Instant::now().checked_add(after).unwrap_or_else(far_future);
        self.with_deadline(at)
    }

    /// The effective deadline: the earliest of this scope's own and its
    /// non-shielded ancestors'. `None` if there is none.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        let d = tree::deadline(&self.node);
        (d != NO_DEADLINE).then(|| from_ticks(d))
    }

    /// Cancels this scope and every non-shielded descendant, waking whoever
    /// waits on them, once. Idempotent: a second call (or a later deadline)
    /// changes nothing, and the first reason stays. O(descendants).
    ///
    /// Waiters are woken only after the whole subtree is marked, so a woken
    /// waiter sees every descendant cancelled. The marking itself is not one
    /// atomic step: while `cancel` runs, another thread that *polls* (without
    /// having been woken) may see this scope cancelled and a deep descendant
    /// not yet; once `cancel` returns, the whole subtree is.
    pub fn cancel(&self) {
        tree::cancel(&self.node, CancelReason::Requested);
    }

    /// As [`cancel`](Self::cancel), with a message saying why (as Trio's
    /// `CancelScope.cancel(reason=...)`): every scope this cancel reaches
    /// reports it through [`cancel_message`](Self::cancel_message), and so do
    /// the [`Cancelled`](crate::Cancelled) errors of [`run`](Self::run) and the
    /// [`TaskError`](crate::TaskError)s of tasks it drops.
    ///
    /// The first cancel wins, whatever its kind: on a scope already cancelled
    /// (by a call, with or without a message, or by a deadline) this changes
    /// nothing and the message is dropped. Takes a `&'static str` (no
    /// allocation), a `String`, or anything else that is
    /// `Into<`[`CancelMessage`]`>`; the message is stored once, at this scope,
    /// not copied into each descendant.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::{CancelReason, CancelScope};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = CancelScope::new();
    /// let request = server.child().child();
    /// server.cancel_with("shutting down");
    /// assert_eq!(request.reason(), Some(CancelReason::Requested));
    /// assert_eq!(request.cancel_message().as_deref(), Some("shutting down"));
    ///
    /// let err = request.run(std::future::pending::<()>()).await.unwrap_err();
    /// assert_eq!(err.message(), Some("shutting down"));
    ///
    /// server.cancel_with(String::from("too late")); // the first cancel won
    /// assert_eq!(server.cancel_message().as_deref(), Some("shutting down"));
    /// # }
    /// ```
    pub fn cancel_with(&self, message: impl Into<CancelMessage>) {
        tree::cancel_with(&self.node, CancelReason::Requested, Some(message.into()));
    }

    /// The message of the cancel that reached this scope, if the scope is
    /// cancelled and that cancel had one: taken from the scope where the
    /// cancellation started, as [`reason`](Self::reason). `None` for a scope
    /// not cancelled, cancelled by [`cancel`](Self::cancel) or by a deadline.
    /// A [shielded child](Self::shielded_child) never sees its ancestors'.
    ///
    /// Cheap: a clone of a [`CancelMessage`] never allocates; finding it
    /// walks up to the scope where the cancel started, without a lock.
    ///
    /// Checks the state as [`is_cancelled`](Self::is_cancelled) does, and so,
    /// like it, runs the cancel of a deadline that passed before its timer
    /// fired (whose message is `None`); the `Debug` output does not.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::CancelScope;
    ///
    /// let root = CancelScope::new();
    /// let child = root.child();
    /// let cleanup = root.shielded_child();
    /// root.cancel_with(format!("session {} closed", 7));
    /// assert_eq!(child.cancel_message().unwrap(), "session 7 closed");
    /// assert_eq!(cleanup.cancel_message(), None);
    /// ```
    #[must_use]
    pub fn cancel_message(&self) -> Option<CancelMessage> {
        if is_cancelled(&self.node) {
            tree::message(&self.node).cloned()
        } else {
            None
        }
    }

    /// Whether the scope is cancelled, by a call or by a passed deadline.
    ///
    /// A deadline that passed before its timer fired (nobody waits, or the
    /// runtime has not run the timer yet) is noticed here: this call then
    /// cancels the scope the deadline belongs to, with reason
    /// [`Deadline`](CancelReason::Deadline), waking its waiters as the timer
    /// would have. [`reason`](Self::reason) and
    /// [`cancel_message`](Self::cancel_message) do the same; `Debug` never does.
    ///
    /// One atomic load on a cancelled scope, two (the flag, then the
    /// deadline) on one that is not, plus a clock read when it has a
    /// deadline; never takes a lock unless it is the call that notices a
    /// passed deadline.
    #[must_use]
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        is_cancelled(&self.node)
    }

    /// Why the scope is cancelled, or `None` if it is not: taken from the scope
    /// where the cancellation started (a child cancelled through its parent's
    /// deadline says [`CancelReason::Deadline`]).
    ///
    /// Reads the state as [`is_cancelled`](Self::is_cancelled) does, and so,
    /// like it, runs the cancel of a deadline that passed before its timer
    /// fired (waking that scope's waiters and its group's tasks). The
    /// [`Debug`](#impl-Debug-for-CancelScope) output shows the same reason
    /// without running anything.
    #[must_use]
    pub fn reason(&self) -> Option<CancelReason> {
        if is_cancelled(&self.node) {
            tree::reason(&self.node)
        } else {
            None
        }
    }

    /// A process-unique id for this scope (shared by all its handles), for logs.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// Whether this scope was made with [`shielded_child`](Self::shielded_child).
    #[must_use]
    pub fn is_shielded(&self) -> bool {
        self.node.shielded
    }

    /// A future that resolves when the scope is cancelled: at once if it already
    /// is, forever after (level-triggered).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it only removes its registration.
    ///
    /// # Panics
    ///
    /// Polling it on a scope with a deadline outside a tokio runtime with a time
    /// driver panics (the deadline needs a timer), naming the fix.
    pub fn cancelled(&self) -> WaitCancelled<'_> {
        WaitCancelled {
            scope: self,
            waiter: Waiter::default(),
        }
    }

    /// As [`cancelled`](Self::cancelled), but owning a handle, for `'static`
    /// contexts such as `axum::serve(..).with_graceful_shutdown(..)`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub fn cancelled_owned(self) -> WaitCancelledOwned {
        WaitCancelledOwned {
            scope: self,
            waiter: Waiter::default(),
        }
    }

    /// Runs `fut` until it finishes or the scope is cancelled, whichever comes
    /// first. On cancellation `fut` is dropped at its current await point and
    /// the result is `Err(Cancelled)` carrying the [reason](CancelReason).
    /// If the scope is already cancelled, `fut` is never polled.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `fut` itself: dropping the returned future drops `fut`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cancel_scope::{CancelReason, CancelScope};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let scope = CancelScope::new().with_timeout(Duration::from_millis(10));
    /// let err = scope.run(std::future::pending::<()>()).await.unwrap_err();
    /// assert_eq!(err.reason(), CancelReason::Deadline);
    /// # }
    /// ```
    pub fn run<F: Future>(&self, fut: F) -> Run<'_, F> {
        Run {
            wait: self.cancelled(),
            fut: Some(fut),
        }
    }

    /// A guard that cancels this scope when dropped (unless
    /// [disarmed](DropGuard::disarm)). Useful to tie a scope to a connection or
    /// a response body.
    #[must_use = "dropping the guard at once cancels the scope"]
    pub fn drop_guard(self) -> DropGuard {
        DropGuard { scope: Some(self) }
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Whether the scope is cancelled or its deadline has passed, read as
    /// `Debug` reads it: a deadline that passed before its timer fired is
    /// seen but not run (nothing is cancelled or woken), for the pure reads
    /// (`snapshot`, DESIGN property 9). Two loads and, with a deadline, a
    /// clock read.
    pub(crate) fn is_cancelled_or_due(&self) -> bool {
        let deadline = tree::deadline(&self.node);
        tree::is_cancelled(&self.node) || (deadline != NO_DEADLINE && now_ticks() >= deadline)
    }
}

/// One load when cancelled, two otherwise (the flag, the deadline); the clock
/// is read only for a scope with a deadline, out of line.
#[inline]
pub(super) fn is_cancelled(node: &Arc<Node>) -> bool {
    tree::is_cancelled(node) || (tree::deadline(node) != NO_DEADLINE && deadline_passed(node))
}

#[inline(never)]
fn deadline_passed(node: &Arc<Node>) -> bool {
    if now_ticks() < tree::deadline(node) {
        return false;
    }
    // The deadline passed and nobody noticed yet: cancel where it came from.
    if let Some(origin) = tree::deadline_origin(node) {
        tree::cancel(&origin, CancelReason::Deadline);
    }
    true
}

impl Default for CancelScope {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for CancelScope {
    fn clone(&self) -> Self {
        tree::add_handle(&self.node);
        CancelScope {
            node: self.node.clone(),
        }
    }
}

impl Drop for CancelScope {
    fn drop(&mut self) {
        tree::drop_handle(&self.node);
    }
}

/// A pure read (property 9, as `CancellationToken`'s `Debug`): it never runs
/// the cancel that [`is_cancelled`](CancelScope::is_cancelled) would run for
/// a passed deadline, so it wakes and delivers nothing. Such a scope shows
/// `deadline_passed: true` and the reason `Deadline` (what `reason()` would
/// return, unless a racing `cancel` wins), with no message.
impl std::fmt::Debug for CancelScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let node = &self.node;
        let deadline = tree::deadline(node);
        let passed = deadline != NO_DEADLINE && now_ticks() >= deadline;
        let stored = tree::reason(node);
        let reason = stored.or(passed.then_some(CancelReason::Deadline));
        // Only a stored cancel has a message (read at its origin, no lock).
        let message = stored.and_then(|_| tree::message(node));
        f.debug_struct("CancelScope")
            .field("id", &node.id)
            .field("parent", &tree::parent_id(node))
            .field("shielded", &node.shielded)
            .field("reason", &reason)
            .field("message", &message)
            .field("deadline", &self.deadline())
            .field("deadline_passed", &passed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_removes_dropped_children() {
        let root = CancelScope::new();
        let kids: Vec<_> = (0..100).map(|_| root.child()).collect();
        assert_eq!(tree::child_count(&root.node), 100);
        drop(kids);
        assert_eq!(tree::child_count(&root.node), 0);
        // A grandchild keeps its parent attached until it goes.
        let mid = root.child();
        let leaf = mid.child();
        drop(mid);
        assert_eq!(tree::child_count(&root.node), 1);
        root.cancel();
        assert!(leaf.is_cancelled());
        drop(leaf);
        assert_eq!(tree::child_count(&root.node), 0);
    }

    #[test]
    fn detached_node_is_marked() {
        let root = CancelScope::new();
        let node = root.child().node.clone();
        assert!(tree::is_detached(&node));
        assert_eq!(tree::waiter_count(&node), 0);
        assert!(!tree::timer_running(&node));
    }
}
