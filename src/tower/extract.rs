//! `RequestScope` as an axum extractor (feature `axum`), and its rejection,
//! [`MissingScopeLayer`].

use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::RequestScope;

/// Takes the request's scope from its extensions. Without a
/// [`ScopeLayer`](super::ScopeLayer) in front of the handler the request has
/// none, and the handler is not called: the response is
/// [`MissingScopeLayer`]'s 500, which names the fix. `Option<RequestScope>`
/// is `None` there instead.
impl<S: Send + Sync> FromRequestParts<S> for RequestScope {
    type Rejection = MissingScopeLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestScope>()
            .cloned()
            .ok_or(MissingScopeLayer)
    }
}

/// `Option<RequestScope>`: `None` when no [`ScopeLayer`](super::ScopeLayer)
/// runs in front of the handler.
impl<S: Send + Sync> OptionalFromRequestParts<S> for RequestScope {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<RequestScope>().cloned())
    }
}

// ===== impl MissingScopeLayer =====

/// The rejection of the [`RequestScope`] extractor when the request has no
/// scope: no [`ScopeLayer`](super::ScopeLayer) runs in front of the handler.
/// A server bug, not a client's: its response is `500 Internal Server
/// Error`, with its `Display` text as the body.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use axum::{Router, body::Body, http::{Request, StatusCode}, routing::get};
/// use cancel_scope::tower::RequestScope;
/// use http_body_util::BodyExt;
/// use tower::ServiceExt;
///
/// let app: Router = Router::new().route("/", get(|_scope: RequestScope| async { "hi" }));
/// // No `.layer(ScopeLayer::new(scope))`:
/// let response = app.oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
/// let text = response.into_body().collect().await.unwrap().to_bytes();
/// assert!(std::str::from_utf8(&text).unwrap().contains("add cancel_scope::tower::ScopeLayer"));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MissingScopeLayer;

impl fmt::Display for MissingScopeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "this request has no RequestScope: add cancel_scope::tower::ScopeLayer in front of \
             the handler (`router.layer(ScopeLayer::new(scope))`)",
        )
    }
}

impl std::error::Error for MissingScopeLayer {}

impl IntoResponse for MissingScopeLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}
