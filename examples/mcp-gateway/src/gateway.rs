//! The gateway done with cancel-scope: rmcp's Streamable HTTP server, with a
//! [`SessionManager`] of ours whose sessions are tasks of a [`TaskMap`].
//!
//! ```text
//! TaskMap<SessionId>, leased               one task per session generation; the map's
//! │                                        leases end idle ones and ones never initialized
//! └─ session task (scope S)                owns the stdio MCP server (spawn_with_process:
//!    │                                     its own process group, the stdio stop order)
//!    └─ requests: TaskGroup (S.shielded_child())   drained on teardown, bounded by the ladder
//!       └─ request scope (child)           `notifications/cancelled`, or the HTTP request's
//!                                          RequestScope (the client went away) -> cancel_with
//! ```
//!
//! rmcp keeps the wire: its `LocalSessionManager` routes HTTP requests to a
//! per-session worker, and rmcp's serve loop runs our [`GatewayHandler`]. We
//! wrap the worker's transport ([`ScopedTransport`]): every client message
//! passes through it, so it sees `initialize` (start a generation), each
//! message (`TaskMap::touch`: the idle lease restarts),
//! `notifications/initialized` (`TaskMap::mark_ready`: the ready lease ends),
//! `notifications/cancelled` (cancel that request's scope with the client's
//! reason), and stamps each request with its session generation and scope for
//! the handler. When a lease expires, the map cancels that generation ("idle
//! timeout", "not ready in time"); its session task closes the wire, rmcp's
//! serve loop ends and calls [`SessionManager::close_session`], so the id
//! answers 404 from then on.
//!
//! Teardown of a generation (DELETE, a lease, re-initialize, shutdown): stop
//! taking requests, drain the ones in flight (their scopes are shielded from
//! the session's cancel, so a `sleep` finishes), close the upstream's stdin
//! and end the task. The crate's process stop order does the rest: the
//! upstream gets `exit_grace` to exit on that EOF, then SIGTERM to its group,
//! `term_grace`, SIGKILL, reap; the ladder returns once it is reaped. A
//! `stubborn` call never drains: at grace the ladder runs the escalation
//! hook, which closes the upstream's stdin (the call then fails), and the
//! drain ends.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cancel_scope::tower::RequestScope;
use cancel_scope::{
    CancelScope, ProcessPolicy, ScopedChild, ShutdownPolicy, TaskGroup, TaskId, TaskMap,
    TaskOutcome,
};
use futures::Stream;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, ClientJsonRpcMessage,
    ClientNotification, ClientRequest, ErrorCode, ErrorData, GetExtensions, JsonRpcMessage,
    ListToolsResult, PaginatedRequestParams, RequestId, ServerCapabilities, ServerConfig,
    ServerJsonRpcMessage, ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, RequestContext, RunningServiceCancellationToken};
use rmcp::transport::Transport;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionWorker,
};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};
use rmcp::transport::worker::WorkerTransport;
use rmcp::{RoleClient, RoleServer, ServerHandler, ServiceError, ServiceExt};
use tokio::sync::{OnceCell, watch};

/// Timings of the gateway; small so that the waves run in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// A session with no client message for this long is torn down.
    pub idle: Duration,
    /// A session whose client sent `initialize` but not `notifications/initialized`
    /// within this is torn down (rmcp #808: sessions stuck before initialize).
    pub init: Duration,
    /// How long the upstream may take to answer its own `initialize`.
    pub upstream_start: Duration,
    /// The session ladder.
    pub policy: ShutdownPolicy,
    /// How long the upstream may take to exit by itself once its stdin is
    /// closed, before SIGTERM to its process group.
    pub exit_grace: Duration,
    /// SIGTERM -> SIGKILL for the upstream's process group.
    pub term_grace: Duration,
    /// A connection that has not sent a whole request head within this is
    /// closed (a client that connects and sends nothing).
    pub header_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            idle: Duration::from_secs(2),
            init: Duration::from_secs(1),
            upstream_start: Duration::from_secs(5),
            policy: ShutdownPolicy {
                grace: Duration::from_millis(300),
                max_redeliveries: 3,
                backoff: cancel_scope::Backoff {
                    initial: Duration::from_millis(25),
                    max: Duration::from_millis(200),
                    multiplier: 2,
                },
                abort_grace: Duration::from_millis(200),
            },
            exit_grace: Duration::from_millis(200),
            term_grace: Duration::from_millis(200),
            header_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters for `/stats`.
#[derive(Default)]
pub struct Counters {
    pub upstream_ctx_inits: AtomicU64,
    pub sessions_created: AtomicU64,
    pub generations: AtomicU64,
    pub reinitialized: AtomicU64,
    pub deleted: AtomicU64,
    pub upstream_failed_start: AtomicU64,
    pub upstream_exited: AtomicU64,
    pub escalation_hooks: AtomicU64,
    pub requests: AtomicU64,
    pub requests_in_flight: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub children_started: AtomicU64,
    pub reap_touched_live: AtomicU64,
    pub orphans_reaped: AtomicU64,
    /// The last few cancel messages, as the request scopes carried them.
    pub cancel_messages: Mutex<Vec<String>>,
    /// Pids of the upstreams of live generations: `reap_orphans` must not touch them.
    pub live_children: Mutex<HashSet<u32>>,
}

/// Built once, by whichever first connection gets there.
pub struct UpstreamCtx {
    program: PathBuf,
    tag: String,
}

/// What every part of the gateway shares.
pub struct Shared {
    pub sessions: TaskMap<SessionId>,
    pub rmcp: LocalSessionManager,
    pub counters: Counters,
    pub timings: Timings,
    upstream_path: PathBuf,
    upstream: OnceCell<Arc<UpstreamCtx>>,
    /// The wires rmcp knows, by id; removed in `close_session`, which rmcp
    /// calls when a session's serve loop ends, however it ends.
    wires: Mutex<HashMap<SessionId, Arc<Slot>>>,
}

impl Shared {
    pub fn new(upstream_path: PathBuf, timings: Timings) -> Arc<Self> {
        Arc::new(Shared {
            sessions: TaskMap::builder()
                .policy(timings.policy)
                .idle_timeout(timings.idle)
                .ready_timeout(timings.init)
                .build(),
            rmcp: LocalSessionManager::default(),
            counters: Counters::default(),
            timings,
            upstream_path,
            upstream: OnceCell::new(),
            wires: Mutex::new(HashMap::new()),
        })
    }

    pub fn wires(&self) -> usize {
        self.wires.lock().unwrap().len()
    }

    async fn upstream_ctx(&self) -> Result<Arc<UpstreamCtx>, GatewayError> {
        self.upstream
            .get_or_try_init(|| async {
                self.counters
                    .upstream_ctx_inits
                    .fetch_add(1, Ordering::Relaxed);
                let program = tokio::fs::canonicalize(&self.upstream_path)
                    .await
                    .map_err(|e| GatewayError(format!("upstream {:?}: {e}", self.upstream_path)))?;
                Ok(Arc::new(UpstreamCtx {
                    program,
                    tag: format!("MCP_GATEWAY_TAG={}", std::process::id()),
                }))
            })
            .await
            .cloned()
    }
}

#[derive(Debug)]
pub struct GatewayError(String);

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for GatewayError {}

fn rmcp_err(e: impl std::fmt::Display) -> GatewayError {
    GatewayError(e.to_string())
}

// ===== one rmcp session (the wire) and its generations =====

/// One rmcp session id: the generation serving it now, and whether it ended.
struct Slot {
    id: SessionId,
    current: Mutex<Option<Arc<Generation>>>,
    /// Cancelled when the session is over: the transport then ends the stream.
    closed: CancelScope,
}

impl Slot {
    fn current(&self) -> Option<Arc<Generation>> {
        self.current.lock().unwrap().clone()
    }

    /// A generation that ended closes the wire, unless a newer generation
    /// took the id over meanwhile (re-initialize).
    fn end_generation(&self, ended: &Arc<Generation>) {
        let mut current = self.current.lock().unwrap();
        if current.as_ref().is_some_and(|g| Arc::ptr_eq(g, ended)) {
            *current = None;
            self.closed.cancel_with("session ended");
        }
    }
}

#[derive(Clone)]
enum Upstream {
    Starting,
    Ready(Peer<RoleClient>),
    Failed(String),
}

/// One generation of a session: its upstream, its requests.
pub struct Generation {
    tid: OnceLock<TaskId>,
    requests: OnceLock<TaskGroup>,
    upstream: watch::Sender<Upstream>,
    /// Closes the upstream client (and so its stdin); taken by the first user.
    close_upstream: Mutex<Option<RunningServiceCancellationToken>>,
    inflight: Mutex<HashMap<RequestId, CancelScope>>,
    pid: OnceLock<u32>,
}

impl Generation {
    fn close_upstream(&self) {
        if let Some(ct) = self.close_upstream.lock().unwrap().take() {
            ct.cancel();
        }
    }

    async fn peer(&self, scope: &CancelScope) -> Result<Peer<RoleClient>, ErrorData> {
        let mut rx = self.upstream.subscribe();
        let state = tokio::select! {
            s = rx.wait_for(|s| !matches!(s, Upstream::Starting)) => s.map(|s| s.clone()),
            () = scope.cancelled() => return Err(cancelled_error(scope)),
        };
        match state {
            Ok(Upstream::Ready(peer)) => Ok(peer),
            Ok(Upstream::Failed(why)) => Err(ErrorData::internal_error(
                format!("upstream unavailable: {why}"),
                None,
            )),
            _ => Err(ErrorData::internal_error("session closed", None)),
        }
    }

    fn fail(&self, why: String) {
        self.upstream.send_replace(Upstream::Failed(why));
    }

    /// Runs `work` as a request of this generation: a task of its requests
    /// group, in the request's own scope, which the HTTP request's scope
    /// (the crate's tower layer) cancels too if the client goes away.
    async fn forward<T, F, Fut>(self: &Arc<Self>, call: Call, work: F) -> Result<T, ErrorData>
    where
        F: FnOnce(Peer<RoleClient>, CancelScope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ErrorData>> + Send + 'static,
        T: Send + 'static,
    {
        let id = call.id.clone();
        let result = self.forward_inner(call, work).await;
        self.inflight.lock().unwrap().remove(&id);
        result
    }

    async fn forward_inner<T, F, Fut>(self: &Arc<Self>, call: Call, work: F) -> Result<T, ErrorData>
    where
        F: FnOnce(Peer<RoleClient>, CancelScope) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ErrorData>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(requests) = self.requests.get() else {
            return Err(ErrorData::internal_error("session closed", None));
        };
        let Call {
            shared,
            scope,
            http,
            ..
        } = call;
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let gen_ = self.clone();
        let guard = InFlight::new(shared);
        let task = requests.try_spawn(async move {
            let _guard = guard;
            let peer = gen_.peer(&scope).await?;
            let mut work = std::pin::pin!(work(peer, scope.clone()));
            let r = match http {
                Some(http) => tokio::select! {
                    r = &mut work => r,
                    () = http.cancelled() => {
                        // The client went away: cancel the call with that
                        // reason, and let it forward the cancellation.
                        let why = http.cancel_message().map(|m| m.to_string());
                        scope.cancel_with(why.unwrap_or_else(|| "client went away".to_owned()));
                        work.await
                    }
                },
                None => work.await,
            };
            tracing::debug!(ok = r.is_ok(), err = ?r.as_ref().err().map(|e| e.message.to_string()), "request ended");
            r
        });
        match task {
            Ok(handle) => match handle.await {
                Ok(result) => result,
                Err(e) => Err(ErrorData::internal_error(
                    format!("request ended: {e}"),
                    None,
                )),
            },
            Err(_) => Err(ErrorData::internal_error(
                "session closing: request refused",
                None,
            )),
        }
    }
}

/// Counts a request in flight until dropped, however its task ends.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: Arc<Shared>) -> Self {
        shared
            .counters
            .requests_in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .counters
            .requests_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn cancelled_error(scope: &CancelScope) -> ErrorData {
    let msg = scope
        .cancel_message()
        .map_or_else(|| "request cancelled".to_owned(), |m| m.to_string());
    // -32800: "request cancelled", as LSP and MCP clients know it.
    ErrorData::new(ErrorCode(-32800), msg, None)
}

/// Starts a generation of session `slot`: the session task under the slot's
/// id, owning its upstream as a scoped child process.
fn start_generation(
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    ctx: &UpstreamCtx,
    client_name: &str,
) -> Arc<Generation> {
    let (upstream, _) = watch::channel(Upstream::Starting);
    let generation = Arc::new(Generation {
        tid: OnceLock::new(),
        requests: OnceLock::new(),
        upstream,
        close_upstream: Mutex::new(None),
        inflight: Mutex::new(HashMap::new()),
        pid: OnceLock::new(),
    });
    shared.counters.generations.fetch_add(1, Ordering::Relaxed);

    let mut cmd = tokio::process::Command::new(&ctx.program);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some((k, v)) = ctx.tag.split_once('=') {
        cmd.env(k, v);
    }
    // The client names the failure it wants to see (bad-input checks).
    if client_name.contains("exit-at-start") {
        cmd.arg("--exit-at-start");
    }

    let t = shared.timings;
    let hook_gen = generation.clone();
    let hook_shared = shared.clone();
    let task_gen = generation.clone();
    let task_shared = shared.clone();
    let task_slot = slot.clone();
    let policy = ProcessPolicy {
        exit_grace: t.exit_grace,
        term_grace: t.term_grace,
    };
    let spawned = shared
        .sessions
        .build_task(slot.id.clone())
        .name(format!("session {}", slot.id))
        // Past grace: close the upstream's stdin (a `stubborn` call ends with
        // it) and stop the requests.
        .on_escalate(move || {
            hook_shared
                .counters
                .escalation_hooks
                .fetch_add(1, Ordering::Relaxed);
            hook_gen.close_upstream();
            if let Some(requests) = hook_gen.requests.get() {
                requests.cancel_with("session escalated: upstream stdin closed");
            }
        })
        .spawn_with_process(cmd, policy, move |scope, child| {
            // Called at once, with the session task's own scope. The requests
            // live in a shielded child of it: cancelling the session starts a
            // bounded drain instead of failing them mid-call.
            let requests = TaskGroup::builder()
                .scope(scope.shielded_child())
                .policy(t.policy)
                .build();
            let _ = task_gen.requests.set(requests);
            session(task_shared, task_slot, task_gen, scope, child)
        });
    match spawned {
        Ok(handle) => {
            let _ = generation.tid.set(handle.id());
            shared
                .counters
                .children_started
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            // No task, so no lease would end this session: close its wire.
            shared
                .counters
                .upstream_failed_start
                .fetch_add(1, Ordering::Relaxed);
            generation.fail(format!("cannot start the upstream: {e}"));
            slot.closed.cancel_with("the upstream could not be started");
        }
    }
    generation
}

/// The session task of one generation: serves until its scope is cancelled
/// (DELETE, a lease, a re-initialize, shutdown), then drains its requests and
/// ends; the crate then stops and reaps the upstream.
async fn session(
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    generation: Arc<Generation>,
    scope: CancelScope,
    mut child: ScopedChild,
) {
    let pid = child.id();
    // Listed while this session owns it: removed however the task ends
    // (an escalation aborts it), so `/reap` can tell live children apart.
    let _live = pid.map(|pid| {
        let _ = generation.pid.set(pid);
        shared.counters.live_children.lock().unwrap().insert(pid);
        LiveChild(shared.clone(), pid)
    });
    let t = shared.timings;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");

    // The upstream's own handshake, bounded and cancellable.
    let mut client = None;
    tokio::select! {
        started = tokio::time::timeout(t.upstream_start, ().serve((stdout, stdin))) => match started {
            Ok(Ok(running)) => {
                *generation.close_upstream.lock().unwrap() = Some(running.cancellation_token());
                generation.upstream.send_replace(Upstream::Ready(running.peer().clone()));
                client = Some(running);
            }
            Ok(Err(e)) => {
                shared.counters.upstream_failed_start.fetch_add(1, Ordering::Relaxed);
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                generation.fail(format!("upstream exited at start ({status}): {e}"));
            }
            Err(_) => {
                shared.counters.upstream_failed_start.fetch_add(1, Ordering::Relaxed);
                generation.fail("upstream did not answer initialize in time".to_owned());
            }
        },
        () = scope.cancelled() => {}
    }

    let mut upstream_running = client.is_some();
    loop {
        tokio::select! {
            () = scope.cancelled() => break,
            status = child.wait(), if upstream_running => {
                // Mid-session exit: the session stays, answering errors,
                // until its client leaves or its lease ends.
                upstream_running = false;
                shared.counters.upstream_exited.fetch_add(1, Ordering::Relaxed);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                generation.fail(format!("upstream exited ({status})"));
            }
        }
    }
    tracing::debug!(id = %slot.id, why = ?scope.cancel_message(), "session ending");
    // A lease or a shutdown: close the wire (unless a newer generation took
    // the id over), so the id answers 404.
    slot.end_generation(&generation);
    // Refuse new requests, drain those in flight (a stubborn one holds this
    // until the ladder's escalation hook closes the upstream).
    if let Some(requests) = generation.requests.get() {
        requests.close();
        let _ = requests.join().await;
    }
    generation.close_upstream();
    drop(client);
    generation.fail("session closed".to_owned());
    // `child` ends with this task: the upstream saw EOF on its stdin and gets
    // `exit_grace`, then its group gets SIGTERM, `term_grace`, SIGKILL, and
    // is reaped before this session's ladder returns.
}

struct LiveChild(Arc<Shared>, u32);

impl Drop for LiveChild {
    fn drop(&mut self) {
        self.0
            .counters
            .live_children
            .lock()
            .unwrap()
            .remove(&self.1);
    }
}

// ===== the transport rmcp serves, wrapped =====

type Inner = WorkerTransport<LocalSessionWorker>;

/// rmcp's session transport, seen through the session's scopes.
pub struct ScopedTransport {
    inner: Inner,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
}

/// The JSON-RPC request's scope, for the handler (in the request's extensions).
#[derive(Clone)]
struct CallScope(CancelScope);

impl ScopedTransport {
    async fn on_message(&self, message: &mut ClientJsonRpcMessage) {
        // Any client message is activity: the idle lease restarts.
        self.shared.sessions.touch(&self.slot.id);
        match message {
            JsonRpcMessage::Request(req) => {
                if let ClientRequest::InitializeRequest(init) = &req.request {
                    let name = init.params.client_info.name.clone();
                    self.initialize(&name).await;
                }
                if let Some(generation) = self.slot.current() {
                    let scope = match generation.requests.get() {
                        Some(requests) => requests.scope().child(),
                        None => CancelScope::new(),
                    };
                    generation
                        .inflight
                        .lock()
                        .unwrap()
                        .insert(req.id.clone(), scope.clone());
                    let ext = req.request.extensions_mut();
                    ext.insert(generation);
                    ext.insert(self.shared.clone());
                    ext.insert(CallScope(scope));
                }
            }
            JsonRpcMessage::Notification(n) => match &n.notification {
                ClientNotification::CancelledNotification(c) => {
                    let found = c.params.request_id.as_ref().and_then(|id| {
                        let generation = self.slot.current()?;
                        generation.inflight.lock().unwrap().get(id).cloned()
                    });
                    if let Some(scope) = found {
                        let reason = c.params.reason.as_deref().unwrap_or("no reason given");
                        scope.cancel_with(format!("cancelled by the client: {reason}"));
                    }
                }
                ClientNotification::InitializedNotification(_) => {
                    // The session is established: its ready lease ends.
                    self.shared.sessions.mark_ready(&self.slot.id);
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// `initialize`: the first starts the session's first generation; another
    /// one on the same id (a client that re-initializes) starts a new
    /// generation, and the spawn under the same key retires the old one: its
    /// teardown, and its leases, never touch the new one.
    async fn initialize(&self, client_name: &str) {
        let ctx = match self.shared.upstream_ctx().await {
            Ok(ctx) => ctx,
            Err(e) => {
                tracing::error!("upstream context: {e}");
                return;
            }
        };
        if self.slot.current().is_some() {
            self.shared
                .counters
                .reinitialized
                .fetch_add(1, Ordering::Relaxed);
        }
        let new = start_generation(&self.shared, &self.slot, &ctx, client_name);
        *self.slot.current.lock().unwrap() = Some(new);
    }
}

impl Transport<RoleServer> for ScopedTransport {
    type Error = <Inner as Transport<RoleServer>>::Error;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        let closed = self.slot.closed.clone();
        let mut message = tokio::select! {
            () = closed.cancelled() => return None,
            m = self.inner.receive() => m?,
        };
        self.on_message(&mut message).await;
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

impl Drop for ScopedTransport {
    fn drop(&mut self) {
        // The wire is gone: retire the generation it served, by task id, so a
        // newer task under the same key is never touched.
        if let Some(tid) = self.slot.current().and_then(|g| g.tid.get().copied()) {
            self.shared.sessions.begin_cancel_task(&self.slot.id, tid);
        }
        self.slot.closed.cancel_with("transport dropped");
    }
}

// ===== rmcp's SessionManager, on the TaskMap =====

/// The session manager rmcp's `StreamableHttpService` calls.
pub struct ScopedSessions(pub Arc<Shared>);

impl SessionManager for ScopedSessions {
    type Error = GatewayError;
    type Transport = ScopedTransport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let shared = &self.0;
        if shared.sessions.is_closed() {
            return Err(GatewayError("gateway shutting down".to_owned()));
        }
        // Every session needs it; only the first connection builds it.
        shared.upstream_ctx().await?;
        let (id, inner) = shared.rmcp.create_session().await.map_err(rmcp_err)?;
        shared
            .counters
            .sessions_created
            .fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            id: id.clone(),
            current: Mutex::new(None),
            closed: CancelScope::new(),
        });
        shared
            .wires
            .lock()
            .unwrap()
            .insert(id.clone(), slot.clone());
        Ok((
            id,
            ScopedTransport {
                inner,
                slot,
                shared: shared.clone(),
            },
        ))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.0
            .rmcp
            .initialize_session(id, message)
            .await
            .map_err(rmcp_err)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        let open = self
            .0
            .wires
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|s| !s.closed.is_cancelled());
        Ok(open && self.0.rmcp.has_session(id).await.map_err(rmcp_err)?)
    }

    /// DELETE, and rmcp's own clean-up when a session's serve loop ends.
    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        let shared = &self.0;
        let slot = shared.wires.lock().unwrap().remove(id);
        if let Some(slot) = slot {
            slot.closed.cancel_with("session closed");
            let generation = slot.current.lock().unwrap().take();
            if let Some(tid) = generation.and_then(|g| g.tid.get().copied()) {
                // The ladder for this generation only; returns when its
                // upstream and process group are gone.
                if let Some(outcome) = shared.sessions.cancel_task(id, tid).await {
                    shared.counters.deleted.fetch_add(1, Ordering::Relaxed);
                    if outcome == TaskOutcome::Stuck {
                        tracing::warn!(%id, "session stuck after its ladder");
                    }
                }
            }
        }
        shared.rmcp.close_session(id).await.map_err(rmcp_err)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.0
            .rmcp
            .create_stream(id, message)
            .await
            .map_err(rmcp_err)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.0
            .rmcp
            .accept_message(id, message)
            .await
            .map_err(rmcp_err)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.0
            .rmcp
            .create_standalone_stream(id)
            .await
            .map_err(rmcp_err)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.0
            .rmcp
            .resume(id, last_event_id)
            .await
            .map_err(rmcp_err)
    }
}

// ===== the MCP handler rmcp's serve loop runs =====

/// Forwards `tools/list` and `tools/call` to the session's upstream.
pub struct GatewayHandler;

/// What a forwarded call needs: its session's state, its own scope, and the
/// scope of the HTTP request that carried it (rmcp passes the request's
/// `http::request::Parts` on, with the extension the tower layer put there).
struct Call {
    id: RequestId,
    shared: Arc<Shared>,
    scope: CancelScope,
    http: Option<CancelScope>,
}

fn context_of(ctx: &RequestContext<RoleServer>) -> Result<(Arc<Generation>, Call), ErrorData> {
    let generation = ctx.extensions.get::<Arc<Generation>>().cloned();
    let shared = ctx.extensions.get::<Arc<Shared>>().cloned();
    let scope = ctx.extensions.get::<CallScope>().cloned();
    let http = ctx
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<RequestScope>())
        .map(|scope| CancelScope::clone(scope));
    match (generation, shared, scope) {
        (Some(g), Some(shared), Some(CallScope(scope))) => Ok((
            g,
            Call {
                id: ctx.id.clone(),
                shared,
                scope,
                http,
            },
        )),
        _ => Err(ErrorData::internal_error("no live session", None)),
    }
}

fn upstream_error(e: ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(e) => e,
        ServiceError::TransportClosed => {
            ErrorData::internal_error("upstream exited mid-call", None)
        }
        other => ErrorData::internal_error(format!("upstream: {other}"), None),
    }
}

impl ServerHandler for GatewayHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (generation, call) = context_of(&context)?;
        generation
            .forward(call, |peer, scope| async move {
                tokio::select! {
                    r = peer.list_tools(request) => r.map_err(upstream_error),
                    () = scope.cancelled() => Err(cancelled_error(&scope)),
                }
            })
            .await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (generation, call) = context_of(&context)?;
        let counters = call.shared.clone();
        generation
            .forward(call, move |peer, scope| async move {
                let call = ClientRequest::CallToolRequest(CallToolRequest::new(request));
                let mut handle = peer
                    .send_cancellable_request(call, PeerRequestOptions::no_options())
                    .await
                    .map_err(upstream_error)?;
                tokio::select! {
                    r = &mut handle.rx => match r {
                        Ok(Ok(ServerResult::CallToolResult(r))) => Ok(r.into()),
                        Ok(Ok(_)) => Err(ErrorData::internal_error("upstream: unexpected result", None)),
                        Ok(Err(e)) => Err(upstream_error(e)),
                        Err(_) => Err(ErrorData::internal_error("upstream exited mid-call", None)),
                    },
                    () = scope.cancelled() => {
                        // Forward the cancellation, with the client's reason.
                        let error = cancelled_error(&scope);
                        let _ = handle.cancel(Some(error.message.to_string())).await;
                        counters.counters.requests_cancelled.fetch_add(1, Ordering::Relaxed);
                        let mut msgs = counters.counters.cancel_messages.lock().unwrap();
                        if msgs.len() >= 5 {
                            msgs.remove(0);
                        }
                        msgs.push(error.message.to_string());
                        Err(error)
                    }
                }
            })
            .await
    }
}
