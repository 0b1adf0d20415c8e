//! A cancel scope per request, for tower and axum servers (feature `tower`;
//! the axum extractor needs feature `axum`).
//!
//! [`ScopeLayer::new(server_scope)`](ScopeLayer::new) gives each request a
//! child of `server_scope`, a [`RequestScope`] in the request's extensions
//! (an axum handler takes it as an extractor). Its life follows the response:
//!
//! - the client goes away before the handler answers: hyper drops the
//!   response future, and the request scope is cancelled with
//!   [`RESPONSE_DROPPED`];
//! - the client goes away while the body streams (an SSE stream, a large
//!   download): hyper drops the [`ScopedBody`] before its end, and the request
//!   scope is cancelled with [`BODY_DROPPED`]; a body that fails (a frame
//!   `Err`) cancels it with [`BODY_FAILED`], after the error has passed
//!   through;
//! - the request scope is cancelled (the server's scope at shutdown, a
//!   deadline, the handler's own work): the response body ends. Its next
//!   `poll_frame` returns end of stream and the inner body is dropped then,
//!   so an endless SSE stream closes cleanly, the connection becomes idle, and
//!   `axum::serve(..).with_graceful_shutdown(..)` (or hyper-util's
//!   `GracefulShutdown`) returns in bounded time with SSE clients still
//!   connected, where otherwise it waits for them forever (hyper#2787,
//!   axum#2673).
//!
//! A response that completes leaves its scope as it is, not cancelled: the
//! service returned (`Ok` or `Err`), and its body, if any, reached its end
//! (`poll_frame` gave `None`, or `is_end_stream` said so after a frame, or
//! at once for an empty body). Work the handler started under the scope may
//! outlive the response on purpose (a write-behind, a notification); it
//! still ends with the server's scope. Work that must end with the response
//! belongs in the handler's future or the body's stream, which the end of
//! the response drops.
//!
//! The semantics are Trio's "one cancel scope per request" (a handler's work
//! is cancelled with its request, and a server's shutdown cancels every
//! request), on hyper's "a disconnect drops the response": dropping is the
//! one signal hyper gives, and this layer turns it into a cancel with a
//! message that says what happened.
//!
//! # Examples
//!
//! An axum route whose handler starts work under its request scope; the
//! client reads one frame of the endless body and goes away (here: the body
//! is dropped), and the work is cancelled with the reason:
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::convert::Infallible;
//!
//! use axum::body::Body;
//! use axum::response::sse::{Event, Sse};
//! use axum::{Router, routing::get};
//! use cancel_scope::CancelScope;
//! use cancel_scope::tower::{BODY_DROPPED, RequestScope, ScopeLayer};
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//!
//! let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
//! let server = CancelScope::new();
//! let app = Router::new()
//!     .route(
//!         "/events",
//!         get(move |scope: RequestScope| async move {
//!             let work = scope.clone(); // a session task would hold this
//!             seen_tx.send(work).unwrap();
//!             let ticks = futures::stream::repeat_with(|| {
//!                 Ok::<_, Infallible>(Event::default().data("tick"))
//!             });
//!             Sse::new(ticks)
//!         }),
//!     )
//!     .layer(ScopeLayer::new(server.clone()));
//!
//! let request = axum::http::Request::get("/events").body(Body::empty()).unwrap();
//! let mut body = app.oneshot(request).await.unwrap().into_body();
//! body.frame().await.unwrap().unwrap(); // one event
//! drop(body); // what hyper does when the client disconnects
//!
//! let work = seen_rx.recv().await.unwrap();
//! assert!(work.is_cancelled());
//! assert_eq!(work.cancel_message().as_deref(), Some(BODY_DROPPED));
//! assert!(!server.is_cancelled()); // only that request's scope
//! # }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```
//!
//! At shutdown, cancelling the server's scope ends every body, and the
//! same scope is the graceful-shutdown signal:
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! use cancel_scope::CancelScope;
//! use cancel_scope::tower::ScopeLayer;
//!
//! # let app = axum::Router::new();
//! let server = CancelScope::new();
//! let app = app.layer(ScopeLayer::new(server.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let signal = server.clone();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     // The open SSE streams end, their connections close, `serve` returns.
//!     signal.cancel_with("shutting down");
//! });
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(server.cancelled_owned())
//!     .await
//! # }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```
//!
//! # Cost
//!
//! Per request, measured (`tests/tower.rs`): the request scope's node (one
//! allocation, `child()`), its extension entry (one box), and the body's
//! one registration in the node's waiter list (a slot on the first
//! `poll_frame`, and its release at the end). The body waits with the
//! [`WaitCancelledOwned`](crate::WaitCancelledOwned) future stored inline (it
//! is `Unpin`: no box); the frames in between allocate nothing, and the
//! wait registers the task's waker once and wakes it once, on the cancel: no
//! polling, no timer.
//!
//! # Cancel safety
//!
//! Dropping the response future or the body at any point is what this layer
//! is for: each drop cancels the request scope at most once (a scope keeps
//! its first cancel and message), and never blocks or takes a lock that
//! belongs to a user.

mod body;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod layer;
mod request_scope;

pub use body::ScopedBody;
#[cfg(feature = "axum")]
pub use extract::MissingScopeLayer;
pub use future::ResponseFuture;
pub use layer::{ScopeLayer, ScopeService};
pub use request_scope::RequestScope;

/// The message of a request scope whose response future was dropped before
/// it completed: hyper drops it when the client disconnects while the
/// handler runs.
pub const RESPONSE_DROPPED: &str = "client went away: the response future was dropped";

/// The message of a request scope whose [`ScopedBody`] was dropped before
/// its end: hyper drops it when the client disconnects while the body
/// streams.
pub const BODY_DROPPED: &str = "client went away: the response body was dropped before its end";

/// The message of a request scope whose [`ScopedBody`] yielded an error
/// frame: the response is broken, nobody will read the rest.
pub const BODY_FAILED: &str = "the response body failed";

/// The message of a request scope whose response future or body was dropped
/// after a panic in its poll (a handler or body that panicked), or while a
/// panic unwinds through it, rather than by a disconnect.
pub const PANICKED: &str = "the response was dropped by a panic";

/// The message for a drop before the end: a disconnect, or a panic (one
/// that unwound out of a poll, `panicked`, or one unwinding now).
fn abandoned(disconnect: &'static str, panicked: bool) -> &'static str {
    if panicked || std::thread::panicking() {
        PANICKED
    } else {
        disconnect
    }
}

/// Notes a panic that unwinds out of a poll while it lives. Executors catch
/// a task's panic at its poll and drop the future afterwards, no longer
/// unwinding: the drop reads this note to say why.
struct PanicNote<'a>(&'a mut bool);

impl Drop for PanicNote<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            *self.0 = true;
        }
    }
}
