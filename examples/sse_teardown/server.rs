//! The SSE server: one tracked session per connection, torn down when its
//! client goes, and a shutdown that ends open streams in bounded time.
//!
//! A session is the task that forwards the backend feed to one client. Its
//! events reach the response body through a small channel. [`ScopeLayer`]
//! cancels the request's [`RequestScope`] when hyper drops the response (the
//! client closed the connection, or the response was never sent), and a
//! watcher on it starts the session's ladder with [`TaskMap::begin_cancel_task`]
//! (by task id, so a late watcher never tears down a newer session under the
//! same id): cancel, bounded re-delivery, escalation at grace (the hook
//! closes the backend subscription, then abort). At shutdown the layer's scope
//! is cancelled, which ends every open stream. The session's own
//! [`SessionEnd`] guard notes the moment its future is gone, which is the
//! moment the map prunes its entry.
//!
//! With `--features process` (unix) a fourth backend, `process`, runs a child
//! process per session as a stdio server, owned by the session's own scope:
//! the session's teardown is also its process group's (see [`ProcessServer`]).

use std::convert::Infallible;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use cancel_scope::tower::{RequestScope, ScopeLayer};
use cancel_scope::{
    Backoff, CancelScope, ShutdownPolicy, ShutdownReport, TaskGroup, TaskId, TaskInfo, TaskMap,
};
use tokio::net::TcpSocket;
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::backend::{Backend, Closer, Subscription};
use crate::naive::NaiveSessions;

/// A session's key in the map; also sent to the client as the first event.
pub type SessionId = u64;

/// Events buffered per session before a send has to wait for the client.
const EVENT_BUFFER: usize = 8;
/// Room for a connection spike: the kernel caps it at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

/// The ladder used by the example.
///
/// The crate's default (grace 5 s) suits a production gateway. Here the grace
/// is 300 ms so that a stubborn session escalates while the reader watches,
/// the load driver's waves stay short, and `--server-only` exits within
/// `grace + abort_grace` = 500 ms of Ctrl-C with clients attached. It stays
/// well above what a cooperative session needs (one delivery, a few ms) and
/// above the slow-exit cleanup bound (100 ms), so only stubborn sessions
/// escalate. Three re-deliveries at 25, 75 and 175 ms is enough to reach a
/// task that missed the first wake; more would only wake stubborn ones.
#[must_use]
pub fn example_policy() -> ShutdownPolicy {
    ShutdownPolicy {
        grace: Duration::from_millis(300),
        max_redeliveries: 3,
        backoff: Backoff {
            initial: Duration::from_millis(25),
            max: Duration::from_millis(200),
            multiplier: 2,
        },
        abort_grace: Duration::from_millis(200),
    }
}

// ===== backends =====

/// What a session's backend does with cancellation; chosen per connection by
/// `?backend=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Forwards the feed and observes its scope: ends on the first delivery.
    Steady,
    /// Forwards the feed and never looks at its scope, like a blocking
    /// `pubsub.listen()` loop: only the escalation hook ends it.
    Stubborn,
    /// Observes its scope, then flushes for a while in a shielded child scope
    /// with its own deadline (bounded cleanup).
    SlowExit,
    /// Forwards the feed through a child process used as a stdio server (see
    /// [`ProcessServer`]) and observes its scope; the child's process group
    /// goes with the session.
    #[cfg(all(unix, feature = "process"))]
    Process,
}

impl BackendKind {
    /// The query-string spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Steady => "steady",
            BackendKind::Stubborn => "stubborn",
            BackendKind::SlowExit => "slow-exit",
            #[cfg(all(unix, feature = "process"))]
            BackendKind::Process => "process",
        }
    }

    /// Parses `backend=...` from a raw query string (default `steady`);
    /// `None` for an unknown backend.
    #[must_use]
    pub fn from_query(query: Option<&str>) -> Option<Self> {
        let value = query
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("backend="));
        match value {
            None | Some("steady") => Some(BackendKind::Steady),
            Some("stubborn") => Some(BackendKind::Stubborn),
            Some("slow-exit") => Some(BackendKind::SlowExit),
            #[cfg(all(unix, feature = "process"))]
            Some("process") => Some(BackendKind::Process),
            Some(_) => None,
        }
    }
}

#[cfg(all(unix, feature = "process"))]
const BACKENDS_HELP: &str = "backend must be steady, stubborn, slow-exit or process\n";
#[cfg(not(all(unix, feature = "process")))]
const BACKENDS_HELP: &str =
    "backend must be steady, stubborn or slow-exit (process needs --features process)\n";

impl BackendKind {
    /// Whether sessions of this kind run a child process.
    #[must_use]
    pub fn is_process(self) -> bool {
        #[cfg(all(unix, feature = "process"))]
        {
            self == BackendKind::Process
        }
        #[cfg(not(all(unix, feature = "process")))]
        {
            false
        }
    }
}

/// The `process` backend's stdio server: `sh -c 'cat | cat'`, a shell and a
/// two-stage pipeline, so each child is a process group of three (the shell
/// and two grandchildren). The session writes each feed message to its stdin
/// as a request and forwards the line that comes back on its stdout as the
/// SSE event, like a gateway in front of a stdio tool server. Tearing down
/// only the shell would leave the two `cat`s behind; the group teardown does
/// not.
#[cfg(all(unix, feature = "process"))]
pub struct ProcessServer {
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

#[cfg(all(unix, feature = "process"))]
impl ProcessServer {
    fn command() -> tokio::process::Command {
        use std::process::Stdio;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "cat | cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    }

    /// Takes the child's pipes (`None` if they were not piped).
    fn attach(child: &mut cancel_scope::ScopedChild) -> Option<ProcessServer> {
        use tokio::io::AsyncBufReadExt;
        Some(ProcessServer {
            stdin: child.stdin.take()?,
            lines: tokio::io::BufReader::new(child.stdout.take()?).lines(),
        })
    }

    /// Sends each feed message through the child and forwards its answer,
    /// until the subscription closes, the child's pipes close, or the client
    /// is gone or has not taken an event for `send_timeout`.
    async fn forward(
        mut self,
        sub: &mut Subscription,
        tx: &mpsc::Sender<Event>,
        send_timeout: Duration,
    ) {
        use tokio::io::AsyncWriteExt;
        while let Some(msg) = sub.recv().await {
            let request = format!("{msg}\n");
            if self.stdin.write_all(request.as_bytes()).await.is_err() {
                return;
            }
            let Ok(Some(answer)) = self.lines.next_line().await else {
                return;
            };
            let event = Event::default().data(answer);
            if tx.send_timeout(event, send_timeout).await.is_err() {
                return;
            }
        }
    }
}

// ===== configuration =====

/// The server's knobs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The sessions' ladder (see [`example_policy`]).
    pub policy: ShutdownPolicy,
    /// Run the anti-pattern (see `naive.rs`) instead of the crate.
    pub naive: bool,
    /// How long a naive canceller spins before it gives up (bounded only so
    /// that the example ends).
    pub naive_spin_budget: Duration,
    /// Backend feed period.
    pub tick: Duration,
    /// Longest wait for a client to take one event; a client that stops
    /// reading cannot hold its session longer.
    pub send_timeout: Duration,
    /// How long the shared context takes to initialize (its "connect").
    pub connect_delay: Duration,
    /// How long a slow-exit session's cleanup takes ...
    pub cleanup: Duration,
    /// ... and the deadline of the shielded scope it runs in.
    pub cleanup_deadline: Duration,
    /// Keep a log of prune instants for the load driver (off for a long-running
    /// server, where nobody drains it).
    pub record_prunes: bool,
    /// Log session starts and teardowns on stderr (for `--server-only`).
    pub verbose: bool,
    /// How long a `process` session's child group may take to exit after
    /// `SIGTERM` before `SIGKILL`; below the ladder's grace, so the child's
    /// teardown fits inside the session's.
    #[cfg(all(unix, feature = "process"))]
    pub term_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: example_policy(),
            naive: false,
            naive_spin_budget: Duration::from_secs(3),
            tick: Duration::from_millis(10),
            send_timeout: Duration::from_secs(1),
            connect_delay: Duration::from_millis(50),
            cleanup: Duration::from_millis(50),
            cleanup_deadline: Duration::from_millis(100),
            record_prunes: true,
            verbose: false,
            #[cfg(all(unix, feature = "process"))]
            term_grace: Duration::from_millis(100),
        }
    }
}

// ===== state =====

/// The sessions, managed by the crate or by the anti-pattern.
#[derive(Debug)]
enum Sessions {
    Tracked(TaskMap<SessionId>),
    Naive(Arc<NaiveSessions>),
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    config: Config,
    sessions: Sessions,
    /// The backend pool, created by the first connection that needs it.
    context: OnceCell<Arc<Backend>>,
    context_inits: AtomicU64,
    /// Requests that found the context not initialized yet (they raced for it).
    first_connections: AtomicU64,
    next_id: AtomicU64,
    /// Server-wide tasks (the backend publisher, the disconnect watchers),
    /// ended at shutdown.
    background: TaskGroup,
    /// The layer's scope, parent of every request's: cancelled at shutdown.
    root: CancelScope,
    /// (session, instant its entry was pruned), drained by the load driver.
    prunes: Mutex<Vec<(SessionId, Instant)>>,
    /// Process ids (each also a process group id) of the children started
    /// by `process` sessions, drained by the load driver.
    #[cfg(all(unix, feature = "process"))]
    children: Mutex<Vec<u32>>,
}

/// The server's counters, for `/stats` and the load driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Sessions in the registry now.
    pub tracked: u64,
    /// Of those, sessions being torn down.
    pub closing: u64,
    /// Sessions that outlived their ladder and are still alive.
    pub stuck: u64,
    /// Sessions escalated so far (hook run, abort).
    pub escalations: u64,
    /// Re-deliveries so far (naive: canceller re-tries).
    pub redeliveries: u64,
    /// Sessions started so far.
    pub sessions: u64,
    /// Times the shared context was initialized (must be 1 once used).
    pub context_inits: u64,
    /// Requests that found the context not initialized yet (they raced for it).
    pub first_connections: u64,
}

impl Snapshot {
    /// The `/stats` body.
    #[must_use]
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "tracked": self.tracked,
            "closing": self.closing,
            "stuck": self.stuck,
            "escalations": self.escalations,
            "redeliveries": self.redeliveries,
            "sessions": self.sessions,
            "context_inits": self.context_inits,
            "first_connections": self.first_connections,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppState {
    /// The shared context, initialized exactly once however many first
    /// connections race for it: `OnceCell` makes the others wait for the one
    /// initializer without holding any lock across its `.await`.
    async fn context(&self) -> &Arc<Backend> {
        if !self.context.initialized() {
            self.first_connections.fetch_add(1, Ordering::Relaxed);
        }
        self.context
            .get_or_init(|| async {
                self.context_inits.fetch_add(1, Ordering::Relaxed);
                Backend::connect(
                    self.config.connect_delay,
                    self.config.tick,
                    &self.background,
                )
                .await
            })
            .await
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let context_inits = self.context_inits.load(Ordering::Relaxed);
        let first_connections = self.first_connections.load(Ordering::Relaxed);
        let sessions = self.next_id.load(Ordering::Relaxed);
        match &self.sessions {
            Sessions::Tracked(map) => {
                let s = map.stats();
                Snapshot {
                    tracked: s.tracked,
                    closing: s.closing,
                    stuck: s.stuck,
                    escalations: s.escalations,
                    redeliveries: s.redeliveries,
                    sessions,
                    context_inits,
                    first_connections,
                }
            }
            Sessions::Naive(naive) => {
                let s = naive.stats();
                Snapshot {
                    tracked: s.tracked,
                    closing: s.closing,
                    stuck: s.stuck,
                    escalations: 0,
                    redeliveries: s.retries,
                    sessions,
                    context_inits,
                    first_connections,
                }
            }
        }
    }

    /// Every live task the server tracks, oldest first, for `GET
    /// /debug/tasks`: the sessions (their key is the session id) and the
    /// background publisher. The naive registry tracks no session, so in
    /// that mode only the background tasks show: nobody can list the rest.
    #[must_use]
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let mut tasks = self.background.snapshot();
        if let Sessions::Tracked(map) = &self.sessions {
            tasks.extend(map.snapshot().into_iter().map(|(_, task)| task));
        }
        tasks.sort_by_key(|task| task.id);
        tasks
    }

    /// Whether the registry still holds session `id`.
    #[must_use]
    pub fn is_tracked(&self, id: SessionId) -> bool {
        match &self.sessions {
            Sessions::Tracked(map) => map.contains_key(&id),
            Sessions::Naive(naive) => naive.contains(id),
        }
    }

    /// Takes the prune log recorded so far.
    pub fn take_prunes(&self) -> Vec<(SessionId, Instant)> {
        std::mem::take(&mut *lock(&self.prunes))
    }

    /// Takes the process ids of the children started so far.
    #[cfg(all(unix, feature = "process"))]
    pub fn take_children(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.children))
    }

    fn record_prune(&self, id: SessionId, at: Instant) {
        if self.config.record_prunes {
            lock(&self.prunes).push((id, at));
        }
    }

    /// Starts the teardown of session `id` (its `task`; `None`: naive) once
    /// the layer cancels `request`: its client went away. Not at shutdown,
    /// where the map's own ladder covers every session.
    fn watch_disconnect(
        self: &Arc<Self>,
        id: SessionId,
        task: Option<TaskId>,
        request: RequestScope,
    ) {
        let state = self.clone();
        let watch = self
            .background
            .build_task()
            .name(format!("disconnect watch {id}"));
        watch.spawn(async move {
            request.cancelled().await;
            if state.root.is_cancelled() {
                return;
            }
            let started = match &state.sessions {
                Sessions::Tracked(map) => task.is_some_and(|task| map.begin_cancel_task(&id, task)),
                Sessions::Naive(naive) => {
                    let prunes = state.clone();
                    naive.cancel(id, move |at| prunes.record_prune(id, at));
                    true
                }
            };
            if state.config.verbose && started {
                let why = request.cancel_message();
                let why = why.as_deref().unwrap_or("cancelled");
                eprintln!("session {id}: {why}; teardown started");
            }
        });
    }

    /// Spawns the session task for `id`.
    fn start_session(
        self: &Arc<Self>,
        id: SessionId,
        kind: BackendKind,
        sub: Subscription,
        closer: Closer,
        tx: mpsc::Sender<Event>,
    ) -> Option<TaskId> {
        let end = SessionEnd {
            state: self.clone(),
            id,
            // The naive registry is not pruned when a task ends; its
            // canceller records the removal instead.
            records_prune: !self.config.naive,
        };
        let send_timeout = self.config.send_timeout;
        let task = match &self.sessions {
            Sessions::Tracked(map) => {
                let task = map
                    .build_task(id)
                    .name(format!("session {id} ({})", kind.as_str()))
                    // Escalation closes the transport the session blocks on.
                    .on_escalate(move || drop(closer));
                let (cleanup, cleanup_deadline) =
                    (self.config.cleanup, self.config.cleanup_deadline);
                match kind {
                    BackendKind::Steady => Some(
                        task.spawn_with_scope(move |scope| async move {
                            let _end = end;
                            let mut sub = sub;
                            let _ = scope.run(forward(&mut sub, &tx, send_timeout)).await;
                        })
                        .id(),
                    ),
                    BackendKind::Stubborn => Some(
                        task.spawn_with_scope(move |_ignored| async move {
                            let _end = end;
                            let mut sub = sub;
                            // Deaf to its scope and to a gone client: a send
                            // error is ignored, the loop goes on until the
                            // subscription closes.
                            while let Some(msg) = sub.recv().await {
                                let _ = tx
                                    .send_timeout(Event::default().data(&*msg), send_timeout)
                                    .await;
                            }
                        })
                        .id(),
                    ),
                    BackendKind::SlowExit => Some(
                        task.spawn_with_scope(move |scope| async move {
                            let _end = end;
                            let mut sub = sub;
                            let _ = scope.run(forward(&mut sub, &tx, send_timeout)).await;
                            // The flush must survive the cancel that brought us
                            // here, so it runs shielded (this task's future is
                            // not dropped on cancel: `spawn_with_scope`); its own
                            // deadline keeps it well inside the grace, so it
                            // never escalates.
                            let flush = scope.shielded_child().with_timeout(cleanup_deadline);
                            let _ = flush.run(tokio::time::sleep(cleanup)).await;
                        })
                        .id(),
                    ),
                    #[cfg(all(unix, feature = "process"))]
                    BackendKind::Process => {
                        // No exit grace: SIGTERM as soon as the session
                        // ended, as before `exit_grace` existed.
                        let policy = cancel_scope::ProcessPolicy {
                            exit_grace: std::time::Duration::ZERO,
                            term_grace: self.config.term_grace,
                        };
                        let state = self.clone();
                        // The map's per-key process API: the child is started
                        // here and owned by the session task's own scope, so
                        // the session's ladder (a disconnect, a shutdown) is
                        // also the child group's teardown: SIGTERM to the
                        // group, `term_grace`, SIGKILL, reaped. The session
                        // stays tracked until that is done.
                        let spawned = task.spawn_with_process(
                            ProcessServer::command(),
                            policy,
                            move |scope, mut child| {
                                if let Some(pid) = child.id() {
                                    lock(&state.children).push(pid);
                                }
                                async move {
                                    let _end = end;
                                    let mut sub = sub;
                                    if let Some(server) = ProcessServer::attach(&mut child) {
                                        let _ = scope
                                            .run(server.forward(&mut sub, &tx, send_timeout))
                                            .await;
                                    }
                                    // Ended without a cancel (the client left
                                    // before its guard ran, the child died):
                                    // the session tears its child down itself
                                    // rather than leave it an orphan. After a
                                    // cancel the teardown is under way and this
                                    // only waits for it.
                                    let _ = child.shutdown().await;
                                }
                            },
                        );
                        match spawned {
                            Ok(handle) => Some(handle.id()),
                            Err(e) => {
                                // Nothing was spawned: the closure, and with
                                // it `tx`, is dropped, so the client's stream
                                // ends.
                                eprintln!("session {id}: could not start its stdio server: {e}");
                                None
                            }
                        }
                    }
                }
            }
            Sessions::Naive(naive) => {
                let stop = Arc::new(AtomicBool::new(false));
                let flag = stop.clone();
                let cleanup = self.config.cleanup;
                naive.spawn(id, stop, async move {
                    let _end = end;
                    let _closer = closer;
                    let mut sub = sub;
                    while let Some(msg) = sub.recv().await {
                        // The naive stop check, between events.
                        if kind != BackendKind::Stubborn && flag.load(Ordering::Relaxed) {
                            break;
                        }
                        let sent = tx
                            .send_timeout(Event::default().data(&*msg), send_timeout)
                            .await;
                        if sent.is_err() && kind != BackendKind::Stubborn {
                            break;
                        }
                    }
                    if kind == BackendKind::SlowExit {
                        tokio::time::sleep(cleanup).await;
                    }
                });
                None
            }
        };
        if self.config.verbose {
            eprintln!("session {id}: started ({})", kind.as_str());
        }
        task
    }
}

/// Forwards the feed to the client until the subscription closes, the client
/// is gone, or it has not taken an event for `send_timeout`.
async fn forward(sub: &mut Subscription, tx: &mpsc::Sender<Event>, send_timeout: Duration) {
    while let Some(msg) = sub.recv().await {
        if tx
            .send_timeout(Event::default().data(&*msg), send_timeout)
            .await
            .is_err()
        {
            return;
        }
    }
}

// ===== guards =====

/// Lives in the session's future: dropped when the future is gone, which is
/// when the map prunes the session's entry (the map's own guard drops right
/// after the future, in the same poll).
struct SessionEnd {
    state: Arc<AppState>,
    id: SessionId,
    records_prune: bool,
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        if self.records_prune {
            self.state.record_prune(self.id, Instant::now());
        }
        if self.state.config.verbose {
            eprintln!("session {}: ended, entry pruned", self.id);
        }
    }
}

// ===== handlers =====

async fn sse(
    State(state): State<Arc<AppState>>,
    request: RequestScope,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(kind) = BackendKind::from_query(query.as_deref()) else {
        return (StatusCode::BAD_REQUEST, BACKENDS_HELP).into_response();
    };
    if state.config.naive && kind.is_process() {
        return (
            StatusCode::BAD_REQUEST,
            "the naive server has no process backend\n",
        )
            .into_response();
    }
    let backend = state.context().await;
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    // The id first, so a client knows its session (the load driver matches
    // its disconnect instant with the session's prune instant by it).
    let _ = tx.try_send(Event::default().event("session").data(id.to_string()));
    let (sub, closer) = backend.subscribe();
    let task = state.start_session(id, kind, sub, closer, tx);
    // No await between spawning and watching: whatever happens to the
    // response from here on, dropping it tears the session down.
    state.watch_disconnect(id, task, request);
    Sse::new(ReceiverStream::new(rx).map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn stats(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.snapshot().to_json())
}

/// One task of `GET /debug/tasks`.
#[must_use]
pub fn task_json(task: &TaskInfo) -> serde_json::Value {
    serde_json::json!({
        "id": task.id.as_u64(),
        "name": task.name.as_deref(),
        "key": task.key,
        "location": format!("{}:{}", task.location.file(), task.location.line()),
        "age_ms": task.age.as_millis() as u64,
        "state": task.state.as_str(),
        "redeliveries": task.redeliveries,
        "blocking": task.blocking,
    })
}

/// The live tasks, oldest first (`TaskMap::snapshot`, `TaskGroup::snapshot`:
/// a pure read, which changes nothing of a ladder in progress).
async fn debug_tasks(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.tasks().iter().map(task_json).collect())
}

// ===== the server =====

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state (counters, prune log).
    pub state: Arc<AppState>,
    /// The layer's scope (`AppState::root`): cancelled at shutdown, it ends
    /// every open stream and is axum's graceful shutdown signal.
    root: CancelScope,
    serve: JoinHandle<io::Result<()>>,
}

/// What [`Server::shutdown`] did.
#[derive(Debug)]
pub struct Teardown {
    /// The sessions' ladder report (`None` for the naive registry, which has
    /// no ladder).
    pub report: Option<ShutdownReport>,
    /// Whether every connection had closed by the deadline.
    pub connections_closed: bool,
    /// From the call to the return.
    pub elapsed: Duration,
}

impl Server {
    /// Binds 127.0.0.1:`port` (0: any free port) and serves on the current
    /// runtime.
    pub async fn start(port: u16, config: Config) -> io::Result<Server> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let listener = socket.listen(ACCEPT_BACKLOG)?;
        let addr = listener.local_addr()?;
        let sessions = if config.naive {
            Sessions::Naive(NaiveSessions::new(config.naive_spin_budget))
        } else {
            Sessions::Tracked(TaskMap::with_policy(config.policy))
        };
        let root = CancelScope::new();
        let state = Arc::new(AppState {
            background: TaskGroup::builder().policy(config.policy).build(),
            root: root.clone(),
            config,
            sessions,
            context: OnceCell::new(),
            context_inits: AtomicU64::new(0),
            first_connections: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            prunes: Mutex::new(Vec::new()),
            #[cfg(all(unix, feature = "process"))]
            children: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/sse", get(sse))
            .route("/stats", get(stats))
            .route("/debug/tasks", get(debug_tasks))
            .layer(ScopeLayer::new(root.clone()))
            .with_state(state.clone());
        let serve = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(root.clone().cancelled_owned())
                .into_future(),
        );
        Ok(Server {
            addr,
            state,
            root,
            serve,
        })
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        self.state.snapshot()
    }

    /// Stops accepting and ends every open SSE stream (the layer's scope is
    /// cancelled, so each body ends and its connection closes), tears every
    /// session down with the ladder, and waits for the connections until
    /// `grace + abort_grace` after the call.
    ///
    /// Plain `axum::serve(..).with_graceful_shutdown(..)` waits for every
    /// response to finish, which an SSE stream never does by itself: the
    /// layer's scope is the step that makes shutdown bounded.
    pub async fn shutdown(self) -> Teardown {
        let started = Instant::now();
        let policy = self.state.config.policy;
        let deadline = tokio::time::Instant::now() + policy.grace + policy.abort_grace;
        self.root.cancel_with("server shutting down");
        let report = match &self.state.sessions {
            Sessions::Tracked(map) => Some(map.shutdown().await),
            Sessions::Naive(naive) => {
                naive.abort_all();
                None
            }
        };
        self.state.background.shutdown().await;
        // Streams end with their sessions; give the connections the rest of
        // the budget to flush and close (a little at least, if the ladder
        // used it all).
        let until = deadline.max(tokio::time::Instant::now() + Duration::from_millis(20));
        let connections_closed = tokio::time::timeout_at(until, self.serve).await.is_ok();
        Teardown {
            report,
            connections_closed,
            elapsed: started.elapsed(),
        }
    }
}
