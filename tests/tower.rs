//! `cancel_scope::tower`: a cancel scope per request, over real TCP on
//! 127.0.0.1 (axum's `serve`, hyper's server with hyper-util's
//! `GracefulShutdown`, hyper's client), plus the body and service on their
//! own. States and messages are asserted, never wall times: each wait is
//! bounded by `GUARD`, a hang guard only reached when a test fails.

// axum and hyper are not dependencies under `--cfg loom` (no `tokio::net`).
#![cfg(all(feature = "tower", not(loom)))]
// Some helpers serve only the axum tests.
#![cfg_attr(not(feature = "axum"), allow(dead_code, unused_imports))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cancel_scope::CancelScope;
use cancel_scope::tower::{
    BODY_DROPPED, BODY_FAILED, PANICKED, RESPONSE_DROPPED, RequestScope, ScopeLayer, ScopedBody,
};
use futures::Stream;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Bytes, Frame};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt};

/// Bounds every wait; reached only when a test fails.
const GUARD: Duration = Duration::from_secs(10);

/// Clients connected at once in the shutdown tests.
const CLIENTS: usize = 5;

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// An endless stream, one item every 5 ms.
fn ticks<T>(item: impl Fn(u64) -> T) -> impl Stream<Item = Result<T, Infallible>> {
    futures::stream::unfold(0u64, move |n| {
        let next = item(n);
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((Ok(next), n + 1))
        }
    })
}

// ===== the client =====

struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: JoinHandle<()>,
    addr: SocketAddr,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, conn, addr }
    }

    async fn get(&mut self, path: &str) -> Response<hyper::body::Incoming> {
        let request = Request::get(path)
            .header(header::HOST, self.addr.to_string())
            .body(Empty::new())
            .unwrap();
        self.sender.send_request(request).await.expect("response")
    }

    /// Closes the socket: the disconnect the server has to notice.
    async fn disconnect(self) {
        self.conn.abort();
        let _ = self.conn.await;
    }
}

/// Reads `n` data frames.
async fn read_frames(body: &mut hyper::body::Incoming, n: usize) {
    let mut seen = 0;
    while seen < n {
        let frame = body.frame().await.expect("the stream goes on").unwrap();
        if frame.is_data() {
            seen += 1;
        }
    }
}

/// Reads to the end: `Ok(())` for a clean end of stream.
async fn read_to_end(mut body: hyper::body::Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

// ===== the axum server =====

#[cfg(feature = "axum")]
mod app {
    use super::*;
    use axum::Router;
    use axum::response::sse::{Event, Sse};
    use axum::routing::get;

    /// `/sse` (endless), `/forever` (never answers), `/hello`, `/three`
    /// (three events, then the end), under the layer; each handler sends its
    /// scope to `seen`.
    pub(super) fn router(root: &CancelScope, seen: mpsc::UnboundedSender<RequestScope>) -> Router {
        let (s1, s2, s3, s4) = (seen.clone(), seen.clone(), seen.clone(), seen);
        Router::new()
            .route(
                "/sse",
                get(move |scope: RequestScope| async move {
                    s1.send(scope).unwrap();
                    Sse::new(ticks(|n| Event::default().data(n.to_string())))
                }),
            )
            .route(
                "/forever",
                get(move |scope: RequestScope| async move {
                    s2.send(scope).unwrap();
                    std::future::pending::<&'static str>().await
                }),
            )
            .route(
                "/hello",
                get(move |scope: RequestScope| async move {
                    s3.send(scope).unwrap();
                    "hello"
                }),
            )
            .route(
                "/three",
                get(move |scope: RequestScope| async move {
                    s4.send(scope).unwrap();
                    Sse::new(ticks(|n| Event::default().data(n.to_string())).take(3))
                }),
            )
            .layer(ScopeLayer::new(root.clone()))
    }

    pub(super) struct Served {
        pub(super) addr: SocketAddr,
        pub(super) serve: JoinHandle<std::io::Result<()>>,
        pub(super) seen: mpsc::UnboundedReceiver<RequestScope>,
    }

    /// `axum::serve` on 127.0.0.1:0, shut down gracefully when `root` is cancelled.
    pub(super) async fn serve(root: &CancelScope) -> Served {
        let (tx, seen) = mpsc::unbounded_channel();
        serve_router(root, router(root, tx), seen).await
    }

    pub(super) async fn serve_router(
        root: &CancelScope,
        app: Router,
        seen: mpsc::UnboundedReceiver<RequestScope>,
    ) -> Served {
        use std::future::IntoFuture;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(root.clone().cancelled_owned())
                .into_future(),
        );
        Served { addr, serve, seen }
    }

    use futures::StreamExt as _;
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn an_sse_client_that_leaves_cancels_its_request_scope_with_body_dropped() {
    let root = CancelScope::new();
    let mut served = app::serve(&root).await;
    let mut client = Client::connect(served.addr).await;
    let response = client.get("/sse").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    read_frames(&mut body, 3).await;
    let scope = within("the handler ran", served.seen.recv()).await.unwrap();
    assert!(!scope.is_cancelled(), "streaming: not cancelled");

    drop(body);
    client.disconnect().await;
    within("the request scope is cancelled", scope.cancelled()).await;
    assert_eq!(scope.cancel_message().as_deref(), Some(BODY_DROPPED));
    assert!(!root.is_cancelled(), "only that request's scope");

    // The server goes on serving.
    let mut other = Client::connect(served.addr).await;
    assert_eq!(other.get("/hello").await.status(), StatusCode::OK);
    root.cancel();
    other.disconnect().await;
    within("serve returns", served.serve)
        .await
        .unwrap()
        .unwrap();
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn a_client_that_leaves_before_the_response_cancels_with_response_dropped() {
    let root = CancelScope::new();
    let mut served = app::serve(&root).await;
    let mut client = Client::connect(served.addr).await;
    let addr = served.addr;
    let request = client.sender.send_request(
        Request::get("/forever")
            .header(header::HOST, addr.to_string())
            .body(Empty::new())
            .unwrap(),
    );
    // The request is sent once the handler runs; the response never comes.
    let pending = tokio::spawn(request);
    let scope = within("the handler ran", served.seen.recv()).await.unwrap();
    assert!(!scope.is_cancelled());

    pending.abort();
    client.disconnect().await;
    within("the request scope is cancelled", scope.cancelled()).await;
    assert_eq!(scope.cancel_message().as_deref(), Some(RESPONSE_DROPPED));
    assert!(!root.is_cancelled());
    root.cancel();
    within("serve returns", served.serve)
        .await
        .unwrap()
        .unwrap();
}

/// hyper#2787, axum#2673: with SSE clients connected, a graceful shutdown
/// waits forever. Cancelling the server's scope ends every stream, so it
/// returns, and each client sees a clean end of stream.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_graceful_shutdown_returns_with_sse_clients_connected() {
    let root = CancelScope::new();
    let mut served = app::serve(&root).await;
    let mut readers = Vec::new();
    let mut scopes = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = Client::connect(served.addr).await;
        let mut body = client.get("/sse").await.into_body();
        read_frames(&mut body, 1).await;
        scopes.push(within("the handler ran", served.seen.recv()).await.unwrap());
        // The client keeps reading (as `curl -N`) and keeps its connection.
        readers.push(tokio::spawn(async move {
            let end = read_to_end(body).await;
            (end, client)
        }));
    }

    root.cancel_with("shutting down");
    within("axum::serve returns", served.serve)
        .await
        .unwrap()
        .expect("serve ends without an error");
    for reader in readers {
        let (end, _client) = within("the stream ends", reader).await.unwrap();
        end.expect("a clean end of stream, not an error");
    }
    for scope in scopes {
        assert_eq!(scope.cancel_message().as_deref(), Some("shutting down"));
    }
}

/// The same shutdown under hyper's own server (a plain tower service, no
/// axum), with hyper-util's `GracefulShutdown` watching each connection.
#[tokio::test]
async fn hyper_util_graceful_shutdown_returns_with_streaming_clients_connected() {
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let root = CancelScope::new();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let service = ScopeLayer::new(root.clone()).layer(tower::service_fn(
        move |req: Request<hyper::body::Incoming>| {
            let scope = req.extensions().get::<RequestScope>().cloned();
            seen_tx.send(scope.expect("the layer's scope")).unwrap();
            let frames = ticks(|n| Frame::data(Bytes::from(format!("tick {n}\n"))));
            async move { Ok::<_, Infallible>(Response::new(StreamBody::new(frames))) }
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept_root = root.clone();
    let server = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted.unwrap();
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service.clone()),
                    );
                    tokio::spawn(graceful.watch(conn));
                }
                () = accept_root.cancelled() => break,
            }
        }
        graceful.shutdown().await;
    });

    let mut readers = Vec::new();
    let mut scopes = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = Client::connect(addr).await;
        let mut body = client.get("/").await.into_body();
        read_frames(&mut body, 1).await;
        scopes.push(within("the service ran", seen.recv()).await.unwrap());
        readers.push(tokio::spawn(async move {
            let end = read_to_end(body).await;
            (end, client)
        }));
    }

    root.cancel_with("shutting down");
    within("GracefulShutdown::shutdown returns", server)
        .await
        .unwrap();
    for reader in readers {
        let (end, _client) = within("the stream ends", reader).await.unwrap();
        end.expect("a clean end of stream, not an error");
    }
    for scope in scopes {
        assert_eq!(scope.cancel_message().as_deref(), Some("shutting down"));
    }
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn the_extractor_without_the_layer_is_a_500_that_names_the_fix() {
    use axum::Router;
    use axum::routing::get;

    let root = CancelScope::new();
    let called = Arc::new(AtomicBool::new(false));
    let flag = called.clone();
    let app = Router::new()
        .route(
            "/",
            get(move |_scope: RequestScope| async move {
                flag.store(true, Ordering::Relaxed);
                "unreachable"
            }),
        )
        .route(
            "/optional",
            get(|scope: Option<RequestScope>| async move {
                if scope.is_none() { "none" } else { "some" }
            }),
        );
    let (_tx, seen) = mpsc::unbounded_channel();
    let served = app::serve_router(&root, app, seen).await;
    let mut client = Client::connect(served.addr).await;

    let response = client.get("/").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&text).unwrap();
    assert!(
        text.contains("add cancel_scope::tower::ScopeLayer"),
        "{text}"
    );
    assert!(!called.load(Ordering::Relaxed), "the handler never ran");

    let response = client.get("/optional").await;
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"none");

    root.cancel();
    client.disconnect().await;
    within("serve returns", served.serve)
        .await
        .unwrap()
        .unwrap();
}

/// A response read to its end leaves its scope as it is: not cancelled,
/// whether its body was whole (`/hello`) or streamed to its end (`/three`).
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_complete_response_leaves_its_request_scope_uncancelled() {
    let root = CancelScope::new();
    let mut served = app::serve(&root).await;
    for path in ["/hello", "/three"] {
        let mut client = Client::connect(served.addr).await;
        let response = client.get(path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty(), "{path}");
        let scope = within("the handler ran", served.seen.recv()).await.unwrap();
        client.disconnect().await;
        // Time for the server to notice the closed connection and drop what
        // it held; a cancel would have come by now.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!scope.is_cancelled(), "{path}: {scope:?}");
    }
    assert!(!root.is_cancelled());
    root.cancel();
    within("serve returns", served.serve)
        .await
        .unwrap()
        .unwrap();
}

// ===== the body and the service, without a socket =====

/// A body that never yields, counting its polls and its drop.
struct Silent {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Body for Silent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        Poll::Pending
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Relaxed);
    }
}

/// A cancel ends a body that waits forever: the wait is a registered waker
/// (the inner body is polled once, not again and again), and the inner body
/// is dropped at the end, before the `ScopedBody` is.
#[tokio::test]
async fn a_cancel_ends_a_silent_body_without_polling_it_again() {
    let scope = CancelScope::new();
    let polls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let mut body = ScopedBody::new(
        Silent {
            polls: polls.clone(),
            dropped: dropped.clone(),
        },
        scope.clone(),
    );
    let reader = tokio::spawn(async move {
        let end = body.frame().await;
        (end.is_none(), body)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(polls.load(Ordering::Relaxed), 1, "parked, not re-polled");

    scope.cancel_with("shutting down");
    let (ended, body) = within("the body ends", reader).await.unwrap();
    assert!(ended, "end of stream");
    assert!(
        dropped.load(Ordering::Relaxed),
        "the inner body went at the end"
    );
    assert_eq!(
        polls.load(Ordering::Relaxed),
        1,
        "a cancelled body is not polled"
    );
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    drop(body);
    assert_eq!(scope.cancel_message().as_deref(), Some("shutting down"));
}

#[tokio::test]
async fn a_body_dropped_before_its_end_cancels_after_dropping_the_inner_body() {
    let scope = CancelScope::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let body = ScopedBody::new(
        Silent {
            polls: Arc::default(),
            dropped: dropped.clone(),
        },
        scope.clone(),
    );
    drop(body);
    assert!(dropped.load(Ordering::Relaxed));
    assert_eq!(scope.cancel_message().as_deref(), Some(BODY_DROPPED));
}

#[tokio::test]
async fn a_body_at_its_end_leaves_the_scope_as_it_is() {
    let scope = CancelScope::new();
    // Empty: at its end from the start, so hyper never polls it.
    drop(ScopedBody::new(Empty::<Bytes>::new(), scope.clone()));
    // Full: at its end once its one frame is out, before any `None`.
    let mut full = ScopedBody::new(Full::new(Bytes::from_static(b"hi")), scope.clone());
    assert_eq!(full.size_hint().exact(), Some(2), "forwarded");
    assert!(full.frame().await.unwrap().unwrap().is_data());
    assert!(full.is_end_stream());
    drop(full);
    assert!(!scope.is_cancelled());
    // A cancel after the end changes nothing either.
    let mut full = ScopedBody::new(Full::new(Bytes::from_static(b"hi")), scope.clone());
    full.frame().await.unwrap().unwrap();
    scope.cancel();
    assert!(full.frame().await.is_none());
    assert_eq!(scope.cancel_message(), None);
}

#[tokio::test]
async fn an_error_frame_passes_through_and_cancels_with_body_failed() {
    let scope = CancelScope::new();
    let frames = futures::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"a"))),
        Err("disk on fire"),
        Ok(Frame::data(Bytes::from_static(b"b"))),
    ]);
    let mut body = ScopedBody::new(StreamBody::new(frames), scope.clone());
    assert!(body.frame().await.unwrap().is_ok());
    assert!(!scope.is_cancelled());
    assert_eq!(body.frame().await.unwrap().unwrap_err(), "disk on fire");
    assert_eq!(scope.cancel_message().as_deref(), Some(BODY_FAILED));
    assert!(
        body.frame().await.is_none(),
        "the body ended with its error"
    );
}

#[tokio::test]
async fn the_service_forwards_readiness_and_errors_and_scopes_each_request() {
    /// Not ready until told, then answers `Err` for `/err`.
    #[derive(Clone)]
    struct Flaky {
        ready: Arc<AtomicBool>,
        seen: mpsc::UnboundedSender<RequestScope>,
    }
    impl Service<Request<()>> for Flaky {
        type Response = Response<Full<Bytes>>;
        type Error = &'static str;
        type Future = std::future::Ready<Result<Self::Response, &'static str>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Ready(Err("not ready"))
            }
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            let scope = req.extensions().get::<RequestScope>().cloned().unwrap();
            self.seen.send(scope).unwrap();
            std::future::ready(match req.uri().path() {
                "/err" => Err("handler failed"),
                _ => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
            })
        }
    }

    let root = CancelScope::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut service = ScopeLayer::new(root.clone()).layer(Flaky {
        ready: ready.clone(),
        seen: tx,
    });
    let request = |path| Request::get(path).body(()).unwrap();
    let err = service.ready().await.err();
    assert_eq!(err, Some("not ready"), "poll_ready is the inner one's");

    ready.store(true, Ordering::Relaxed);
    let err = service.ready().await.unwrap().call(request("/err")).await;
    assert_eq!(err.err(), Some("handler failed"), "errors pass through");
    let failed = seen.recv().await.unwrap();
    assert!(
        !failed.is_cancelled(),
        "a completed future leaves its scope"
    );

    let response = service.ready().await.unwrap().call(request("/")).await;
    let ok = seen.recv().await.unwrap();
    assert_ne!(ok.id(), failed.id(), "a scope per request");
    root.cancel_with("shutting down");
    assert!(
        ok.is_cancelled() && failed.is_cancelled(),
        "children of the root"
    );
    let body = response.unwrap().into_body().collect().await.unwrap();
    // Cancelled before its first poll: the body ends at once.
    assert!(body.to_bytes().is_empty());
}

#[tokio::test]
async fn a_panic_that_drops_the_response_future_says_so() {
    use futures::FutureExt;

    let root = CancelScope::new();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let service = ScopeLayer::new(root.clone()).layer(tower::service_fn(move |req: Request<()>| {
        tx.send(req.extensions().get::<RequestScope>().cloned().unwrap())
            .unwrap();
        async move {
            if req.uri().path() == "/panic" {
                panic!("handler bug");
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    }));
    let call = service.oneshot(Request::get("/panic").body(()).unwrap());
    let result = std::panic::AssertUnwindSafe(call).catch_unwind().await;
    assert!(result.is_err(), "the panic went through");
    let scope = seen.recv().await.unwrap();
    assert_eq!(scope.cancel_message().as_deref(), Some(PANICKED));
}

#[tokio::test]
async fn a_panic_in_the_body_says_so_when_the_body_is_dropped() {
    use futures::FutureExt;

    let scope = CancelScope::new();
    let frames = futures::stream::poll_fn(|_| -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        panic!("body bug")
    });
    let mut body = ScopedBody::new(StreamBody::new(frames), scope.clone());
    let result = std::panic::AssertUnwindSafe(body.frame())
        .catch_unwind()
        .await;
    assert!(result.is_err(), "the panic went through");
    assert!(!scope.is_cancelled(), "not yet: the body is alive");
    drop(body);
    assert_eq!(scope.cancel_message().as_deref(), Some(PANICKED));
}

// ===== allocations =====

/// Counts this thread's allocations, for the cost test below.
struct Counting;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialized
// thread-local `Cell` (no lazy initialization, no destructor), so counting
// allocates nothing itself.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is `System`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(std::cell::Cell::get)
}

/// What the layer costs a request, measured: the request scope (one node),
/// its extension entry, and the body's one waiter registration in the
/// node's list (and its release); the wait itself is stored inline (no
/// box), and the frames in between cost nothing.
#[test]
fn a_request_costs_a_scope_node_an_extension_and_a_waiter_slot() {
    // A waker whose clones `will_wake` each other, as a runtime's do (the
    // noop waker's may not, and would be registered again on every poll).
    struct Unpark;
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Unpark));
    let mut cx = Context::from_waker(&waker);
    let root = CancelScope::new();
    let mut service = ScopeLayer::new(root.clone()).layer(tower::service_fn(|_req: Request<()>| {
        let frames =
            futures::stream::iter((0..3).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::new()))));
        std::future::ready(Ok::<_, Infallible>(Response::new(StreamBody::new(frames))))
    }));
    let mut round = || {
        let mut request = Request::new(());
        // The map exists already, as under axum (its own extensions).
        request.extensions_mut().insert(());
        let before = allocations();
        let mut call = std::pin::pin!(service.call(request));
        let Poll::Ready(Ok(response)) = call.as_mut().poll(&mut cx) else {
            panic!("ready at once")
        };
        let called = allocations() - before;
        let mut body = std::pin::pin!(response.into_body());
        let mut frame = |n: usize| {
            let before = allocations();
            let ended = matches!(body.as_mut().poll_frame(&mut cx), Poll::Ready(None));
            assert_eq!(ended, n == 3, "frame {n}");
            allocations() - before
        };
        let first = frame(0);
        let middle = frame(1) + frame(2);
        let end = frame(3);
        (called, first, middle, end)
    };
    round(); // the root's child list has room from here on
    let (called, first, middle, end) = round();
    // The scope node, and the extension's box.
    assert!(called <= 2, "ScopeService::call: {called}");
    // The body's waiter slot in the new node's list.
    assert!(first <= 1, "the first poll_frame: {first}");
    assert_eq!(middle, 0, "the frames in between");
    // Releasing the waiter at the end: the core drops its waker after the
    // node's lock, through a `Vec` (`sync::AfterUnlock`).
    assert!(end <= 1, "the end: {end}");
}
