//! [`ScopeLayer`] and the service it makes, [`ScopeService`].

use std::fmt;
use std::task::{Context, Poll};

use ::tower::{Layer, Service};

use super::{RequestScope, ResponseFuture, ScopedBody};
use crate::CancelScope;

// ===== impl ScopeLayer =====

/// A tower [`Layer`] that gives each request a [`RequestScope`], a child of
/// `scope`, and wraps each response body in a [`ScopedBody`]; see the
/// [module docs](super) for when the request scope is cancelled and what
/// that does to the body.
///
/// Cheap to clone (one scope handle). With axum: `Router::layer(ScopeLayer::new(scope))`.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "axum")]
/// # fn main() {
/// use axum::{Router, routing::get};
/// use cancel_scope::CancelScope;
/// use cancel_scope::tower::{RequestScope, ScopeLayer};
///
/// async fn handler(scope: RequestScope) -> &'static str {
///     match scope.run(async { "done" }).await {
///         Ok(body) => body,
///         Err(_cancelled) => "", // nobody reads it: the client went away
///     }
/// }
///
/// let server = CancelScope::new();
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(ScopeLayer::new(server.clone()));
/// # let _ = app;
/// # }
/// # #[cfg(not(feature = "axum"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct ScopeLayer {
    scope: CancelScope,
}

impl ScopeLayer {
    /// A layer whose request scopes are children of `scope`: cancelling it
    /// cancels every request and ends every response body.
    #[must_use]
    pub fn new(scope: CancelScope) -> Self {
        ScopeLayer { scope }
    }

    /// The scope the request scopes are children of.
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        &self.scope
    }
}

impl<S> Layer<S> for ScopeLayer {
    type Service = ScopeService<S>;

    fn layer(&self, inner: S) -> ScopeService<S> {
        ScopeService {
            inner,
            scope: self.scope.clone(),
        }
    }
}

impl fmt::Debug for ScopeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeLayer")
            .field("scope", &self.scope)
            .finish()
    }
}

// ===== impl ScopeService =====

/// The service of a [`ScopeLayer`]: puts a [`RequestScope`] into each
/// request's extensions, calls `inner`, and wraps the response body in a
/// [`ScopedBody`].
///
/// `poll_ready` is `inner`'s, and `inner`'s errors pass through unchanged
/// (an error leaves the request scope as it is; see the [module
/// docs](super)). A request that already carries a `RequestScope` (a nested
/// layer) gets a new one, a child of this layer's scope.
#[derive(Clone)]
pub struct ScopeService<S> {
    inner: S,
    scope: CancelScope,
}

impl<S> ScopeService<S> {
    /// The scope the request scopes are children of.
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        &self.scope
    }

    /// The wrapped service.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    #[must_use]
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, owned.
    #[must_use]
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ScopeService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = http::Response<ScopedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let scope = self.scope.child();
        req.extensions_mut()
            .insert(RequestScope::new(scope.clone()));
        ResponseFuture::new(scope, self.inner.call(req))
    }
}

impl<S: fmt::Debug> fmt::Debug for ScopeService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeService")
            .field("inner", &self.inner)
            .field("scope", &self.scope)
            .finish()
    }
}
