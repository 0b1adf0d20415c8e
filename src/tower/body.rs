//! [`ScopedBody`]: a response body that ends with its request scope, and
//! cancels it when dropped before its end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};

use super::{BODY_DROPPED, BODY_FAILED, PanicNote, abandoned};
use crate::{CancelScope, WaitCancelledOwned};

pin_project_lite::pin_project! {
    /// A response body tied to its request scope: made by
    /// [`ScopeService`](super::ScopeService) around the inner service's body,
    /// or by [`ScopedBody::new`] around any body.
    ///
    /// - **The scope is cancelled**: the body ends. The next `poll_frame`
    ///   returns `Ready(None)` (end of stream) and drops the inner body, so
    ///   its resources (a stream, a channel, a file) go at once. The wait is
    ///   a registered waker, woken by the cancel: a body that waits on a
    ///   stream that never yields still ends. Frames the inner body could
    ///   still have given are not sent.
    /// - **Dropped before its end** (the client went away mid-stream): the
    ///   scope is cancelled with [`BODY_DROPPED`](super::BODY_DROPPED), after
    ///   the inner body is dropped ([`PANICKED`](super::PANICKED) if a poll
    ///   of the inner body panicked, or a panic unwinds through the drop).
    /// - **An error frame**: passed through unchanged; the scope is cancelled
    ///   with [`BODY_FAILED`](super::BODY_FAILED) and the next poll ends the
    ///   body.
    /// - **Its end** (`poll_frame` gave `None`, or the inner body's
    ///   `is_end_stream` is true after a frame or at once): the scope is left
    ///   as it is; a cancel after that changes nothing of the body.
    ///
    /// `Data` and `Error` are the inner body's. `size_hint` and
    /// `is_end_stream` are the inner body's until it is dropped, then exactly
    /// 0 and `true`. A body with a known length (a `Content-Length`) that a
    /// cancel ends early is a truncated response, which hyper answers by
    /// closing the connection; a streamed body (SSE, chunked) ends cleanly,
    /// with its last chunk.
    ///
    /// # Cancel safety
    ///
    /// Dropping it at any point is the disconnect signal: cancel safe by
    /// design.
    #[must_use = "a body does nothing unless polled"]
    pub struct ScopedBody<B> {
        #[pin]
        inner: Option<B>,
        // The wait on the request scope while the body has not ended: its
        // drop (in `PinnedDrop`, here) cancels the scope. `None` once the
        // body ended, by its end, an error or a cancel.
        wait: Option<WaitCancelledOwned>,
        // A poll of the inner body panicked.
        panicked: bool,
    }

    impl<B> PinnedDrop for ScopedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let Some(wait) = this.wait.take() {
                // The inner body first: its drop code runs before any task
                // of the scope is woken.
                this.inner.set(None);
                wait.scope().cancel_with(abandoned(BODY_DROPPED, *this.panicked));
            }
        }
    }
}

impl<B: Body> ScopedBody<B> {
    /// Ties `body` to `scope`: the body ends when `scope` is cancelled, and
    /// `scope` is cancelled when the body is dropped before its end. A body
    /// already at its end (`is_end_stream`, e.g. an empty one, which hyper
    /// never polls) leaves `scope` as it is.
    pub fn new(body: B, scope: CancelScope) -> Self {
        let wait = (!body.is_end_stream()).then(|| scope.cancelled_owned());
        ScopedBody {
            inner: Some(body),
            wait,
            panicked: false,
        }
    }
}

impl<B: Body> Body for ScopedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        // The cancel first: a cancelled scope never polls the body again.
        if let Some(wait) = this.wait.as_mut() {
            if Pin::new(wait).poll(cx).is_ready() {
                *this.wait = None;
                this.inner.set(None);
                return Poll::Ready(None);
            }
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let poll = {
            let _note = PanicNote(this.panicked);
            inner.poll_frame(cx)
        };
        let frame = ready!(poll);
        match &frame {
            Some(Ok(_)) => {
                let at_end = this.inner.as_ref().get_ref().as_ref();
                if at_end.is_some_and(Body::is_end_stream) {
                    // Hyper polls no more: this was the end.
                    *this.wait = None;
                }
            }
            Some(Err(_)) => {
                if let Some(wait) = this.wait.take() {
                    wait.scope().cancel_with(BODY_FAILED);
                }
                this.inner.set(None);
            }
            None => {
                *this.wait = None;
                this.inner.set(None);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl<B> fmt::Debug for ScopedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedBody")
            .field("scope", &self.wait.as_ref().map(WaitCancelledOwned::scope))
            .field("ended", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}
