//! Interop with tokio-util's [`CancellationToken`] (feature `tokio-util`), both
//! ways: a token that follows a scope, and a scope that follows a token.

use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};

use tokio_util::sync::CancellationToken;

use crate::scope::tree::{self, CancelReason, Node};
use crate::scope::{CancelScope, Waiter};

/// Cancels a token when the scope it is registered on is cancelled: a
/// *callback waker* (a `Wake` whose `wake` runs code on the cancelling thread
/// instead of scheduling a task; see `ARCHITECTURE.md`), registered in the
/// scope's waiter list: no task, no allocation beyond this.
pub(crate) struct TokenCanceller {
    token: CancellationToken,
    // Not a handle: the scope can still detach, which drains the waiter list
    // (tree invariant 6) and drops this; the cycle node → waker → node ends there.
    node: Arc<Node>,
}

impl Wake for TokenCanceller {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Woken by cancel, or by detach (the scope is gone: never cancelled).
        if tree::is_cancelled(&self.node) {
            self.token.cancel();
        }
    }
}

impl CancelScope {
    /// A [`CancellationToken`] that is cancelled when this scope is: by
    /// [`cancel`](Self::cancel), by an ancestor, or by a deadline. For code that
    /// takes tokens (tokio-util, tower, many servers).
    ///
    /// Propagation is one way, scope → token: cancelling the token (or a child
    /// token of it) does not cancel the scope. If the scope is dropped without
    /// ever being cancelled, the token is never cancelled by it.
    ///
    /// No task is spawned: the token is cancelled from the scope's waiter list,
    /// in the thread that cancels the scope. Each call registers one more
    /// waiter; call it once and clone the token.
    ///
    /// # Panics
    ///
    /// On a scope with a deadline, outside a tokio runtime with a time driver
    /// (the deadline needs its timer), naming the fix.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::CancelScope;
    ///
    /// let scope = CancelScope::new();
    /// let token = scope.token();
    /// let child = token.child_token();
    /// scope.cancel();
    /// assert!(token.is_cancelled() && child.is_cancelled());
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio-util")))]
    #[must_use]
    pub fn token(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let waker = Waker::from(Arc::new(TokenCanceller {
            token: token.clone(),
            node: self.node().clone(),
        }));
        // The registration outlives this call on purpose (`Waiter` does not
        // deregister on drop): it ends when the scope is cancelled or detaches.
        if Waiter::default().poll(self.node(), &waker).is_ready() {
            token.cancel();
        }
        token
    }

    /// A new root scope that is cancelled (reason
    /// [`Requested`](CancelReason::Requested)) when `token` is. For adopting the
    /// crate in code that already hands out tokens.
    ///
    /// Propagation is one way, token → scope: cancelling the scope does not
    /// cancel the token. Unless the token is already cancelled (then the scope
    /// is born cancelled), one small tokio task watches the token; it ends as
    /// soon as the token fires, the scope is cancelled, or the scope is gone
    /// (all handles and children dropped), so it never outlives the scope.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the watcher is a task), naming the fix.
    ///
    /// # Examples
    ///
    /// ```
    /// use cancel_scope::CancelScope;
    /// use tokio_util::sync::CancellationToken;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let shutdown = CancellationToken::new();
    /// let scope = CancelScope::linked(&shutdown);
    /// shutdown.cancel();
    /// scope.cancelled().await;
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio-util")))]
    #[track_caller]
    #[must_use]
    pub fn linked(token: &CancellationToken) -> CancelScope {
        let scope = CancelScope::new();
        if token.is_cancelled() {
            scope.cancel();
            return scope;
        }
        let rt = match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt,
            Err(_) => panic!(
                "cancel_scope: CancelScope::linked watches the token with a task and needs a \
                 tokio runtime: call it inside one (within #[tokio::main] or Handle::enter)"
            ),
        };
        let node = scope.node().clone();
        let token = token.clone();
        rt.spawn(async move {
            let mut slot = None;
            let mut token_fired = std::pin::pin!(token.cancelled());
            std::future::poll_fn(|cx| {
                if token_fired.as_mut().poll(cx).is_ready() {
                    tree::cancel(&node, CancelReason::Requested);
                    return Poll::Ready(());
                }
                // Ready once the scope is cancelled or gone (tree invariant 6).
                match tree::register(&node, cx.waker().clone(), &mut slot) {
                    Err(()) => Poll::Ready(()),
                    Ok(_) => Poll::Pending,
                }
            })
            .await;
            tree::deregister(&node, &mut slot);
        });
        scope
    }
}
