//! [`ResponseFuture`]: the response future of a [`ScopeService`](super::ScopeService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::{PanicNote, RESPONSE_DROPPED, ScopedBody, abandoned};
use crate::CancelScope;

pin_project_lite::pin_project! {
    /// The response future of a [`ScopeService`](super::ScopeService): the
    /// inner service's future, whose response body it wraps in a
    /// [`ScopedBody`].
    ///
    /// Dropped before it completes (hyper drops it when the client
    /// disconnects while the handler runs), it cancels the request scope
    /// with [`RESPONSE_DROPPED`](super::RESPONSE_DROPPED), or
    /// [`PANICKED`](super::PANICKED) if the handler's poll panicked. Once it completes,
    /// `Ok` hands the scope to the body and `Err` passes through unchanged,
    /// leaving the scope as it is.
    ///
    /// # Cancel safety
    ///
    /// Dropping it is the disconnect signal: cancel safe by design.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        // Field order: the inner future (the handler) is dropped before the
        // guard cancels, so its own drop code runs before any task of the
        // request scope is woken.
        #[pin]
        inner: F,
        guard: Guard,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(scope: CancelScope, inner: F) -> Self {
        ResponseFuture {
            inner,
            guard: Guard {
                scope: Some(scope),
                panicked: false,
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<http::Response<ScopedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let poll = {
            let _note = PanicNote(&mut this.guard.panicked);
            this.inner.poll(cx)
        };
        let result = ready!(poll);
        // Completed: disarmed whatever the result.
        let scope = this
            .guard
            .scope
            .take()
            .expect("ResponseFuture polled after completion");
        Poll::Ready(result.map(|response| response.map(|body| ScopedBody::new(body, scope))))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("scope", &self.guard.scope)
            .finish_non_exhaustive()
    }
}

/// Cancels the request scope when the future is dropped before it completed.
struct Guard {
    /// `None` once the future completed.
    scope: Option<CancelScope>,
    /// A poll of the inner future panicked.
    panicked: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            scope.cancel_with(abandoned(RESPONSE_DROPPED, self.panicked));
        }
    }
}
