//! [`RequestScope`]: the cancel scope of one request, in its extensions.

use std::fmt;
use std::ops::Deref;

use crate::CancelScope;

// ===== impl RequestScope =====

/// The cancel scope of one request: a child of the scope given to
/// [`ScopeLayer::new`](super::ScopeLayer::new), put into the request's
/// extensions by [`ScopeService`](super::ScopeService).
///
/// It derefs to [`CancelScope`]: `scope.child()`, `scope.run(fut)`,
/// `scope.cancelled()`, `scope.cancel_message()` all work on it. It is
/// cancelled with a message when the client goes away (see the
/// [module docs](super) for which), and with the server's scope; once it is,
/// the response body ends.
///
/// Taken from a plain tower service with
/// `req.extensions().get::<RequestScope>()`, or (feature `axum`) as an
/// extractor: `async fn handler(scope: RequestScope)`; `Option<RequestScope>`
/// is `None` without the layer, and a plain `RequestScope` is then rejected
/// with a 500 (see [`MissingScopeLayer`](super::MissingScopeLayer)).
///
/// # Examples
///
/// ```
/// use cancel_scope::CancelScope;
/// use cancel_scope::tower::RequestScope;
///
/// // What a handler does with it: run its work under it, or hand it on.
/// async fn load(scope: RequestScope) -> Option<&'static str> {
///     scope.run(async { "rows" }).await.ok()
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let scope = RequestScope::new(CancelScope::new());
/// assert_eq!(load(scope).await, Some("rows"));
/// # }
/// ```
#[derive(Clone)]
pub struct RequestScope(CancelScope);

impl RequestScope {
    /// Wraps `scope`, for a test or a service that builds requests itself;
    /// the layer makes each with `scope.child()`.
    #[must_use]
    pub fn new(scope: CancelScope) -> Self {
        RequestScope(scope)
    }

    /// The scope.
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        &self.0
    }

    /// The scope, owned (to move into a task).
    #[must_use]
    pub fn into_inner(self) -> CancelScope {
        self.0
    }
}

impl Deref for RequestScope {
    type Target = CancelScope;

    fn deref(&self) -> &CancelScope {
        &self.0
    }
}

impl From<RequestScope> for CancelScope {
    fn from(scope: RequestScope) -> Self {
        scope.0
    }
}

impl fmt::Debug for RequestScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestScope").field(&self.0).finish()
    }
}
