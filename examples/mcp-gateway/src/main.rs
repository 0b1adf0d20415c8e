//! An MCP gateway torn down correctly: rmcp's Streamable HTTP server on
//! 127.0.0.1, each session a task of a `TaskMap` that owns a stdio MCP server
//! (`mcp-upstream`) as a scoped child process, each request a scope of its
//! session. See `gateway.rs` for the design, `naive.rs` for the usual one
//! (`--naive`), and `run.sh` / `driver.py` for the waves that check both.
//!
//! ```text
//! mcp-gateway [--naive] [--port P] [--upstream PATH] [--idle-ms N] [--init-ms N]
//!             [--header-timeout-ms N]
//!   POST/GET/DELETE /mcp   MCP Streamable HTTP (responses stream as SSE)
//!   GET  /stats            sessions, requests in flight, children, counters (JSON)
//!   GET  /debug/tasks      each live session task: key, name, spawn site, age, state (JSON)
//!   POST /reap             reap_orphans(); says whether it touched a live session's child
//! ```
//!
//! Every HTTP request runs in a `RequestScope` of the server's scope (the
//! crate's tower layer): a client that goes away cancels its calls, and at
//! shutdown every open SSE stream ends, so the HTTP server drains. A
//! connection that sends no request head within the header timeout is closed.
//!
//! SIGINT / SIGTERM: stop accepting, end every session with the ladder (which
//! returns once every upstream and its process group are reaped), end the
//! streams, print the `ShutdownReport`, exit.

mod gateway;
mod naive;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use cancel_scope::tower::ScopeLayer;
use cancel_scope::{CancelScope, TaskInfo};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

use gateway::{GatewayHandler, ScopedSessions, Shared, Timings};
use naive::{NaiveHandler, NaiveShared};

struct Args {
    naive: bool,
    port: u16,
    upstream: PathBuf,
    timings: Timings,
}

fn parse_args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = Args {
        naive: false,
        port: 0,
        upstream: exe.with_file_name("mcp-upstream"),
        timings: Timings::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let ms = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("not a number of ms: {v:?}"))
        };
        match flag.as_str() {
            "--naive" => args.naive = true,
            "--port" => {
                let v = value("--port")?;
                args.port = v.parse().map_err(|_| format!("bad port {v:?}"))?;
            }
            "--upstream" => args.upstream = PathBuf::from(value("--upstream")?),
            "--idle-ms" => args.timings.idle = ms(value("--idle-ms")?)?,
            "--init-ms" => args.timings.init = ms(value("--init-ms")?)?,
            "--header-timeout-ms" => {
                args.timings.header_timeout = ms(value("--header-timeout-ms")?)?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "error: {e}\nusage: mcp-gateway [--naive] [--port P] [--upstream PATH] [--idle-ms N] [--init-ms N] [--header-timeout-ms N]"
            );
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rmcp=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Killed grandchildren (a `fork` tool's) are re-parented to us, not to a
    // PID 1 that may not reap: the crate's teardown reaps them.
    if !args.naive
        && let Err(e) = cancel_scope::become_subreaper()
    {
        eprintln!("warning: not a subreaper ({e}): grandchildren may stay zombies");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let clean = rt.block_on(async {
        if args.naive {
            serve_naive(args).await
        } else {
            serve(args).await
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    match clean {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    Ok(listener)
}

async fn serve(args: Args) -> std::io::Result<bool> {
    let shared = Shared::new(args.upstream.clone(), args.timings);
    let config = StreamableHttpServerConfig::default();
    let rmcp_ct = config.cancellation_token.clone();
    let mcp = StreamableHttpService::new(
        || Ok(GatewayHandler),
        Arc::new(ScopedSessions(shared.clone())),
        config,
    );
    let stats_shared = shared.clone();
    let tasks_shared = shared.clone();
    let reap_shared = shared.clone();
    let app = Router::new()
        .nest_service("/mcp", mcp)
        .route(
            "/stats",
            get(move || {
                let s = stats_shared.clone();
                async move { axum::Json(stats(&s)) }
            }),
        )
        .route(
            "/debug/tasks",
            get(move || {
                let s = tasks_shared.clone();
                async move { axum::Json(debug_tasks(&s)) }
            }),
        )
        .route(
            "/reap",
            post(move || {
                let s = reap_shared.clone();
                async move { axum::Json(reap(&s).await) }
            }),
        );
    // The server's scope: each HTTP request runs in a child of it.
    let server_scope = CancelScope::new();
    let app = app.layer(ScopeLayer::new(server_scope.clone()));
    let listener = listen(args.port).await?;
    let accepting = CancelScope::new();
    let server = tokio::spawn(serve_http(
        listener,
        app,
        accepting.clone(),
        args.timings.header_timeout,
    ));
    shutdown_signal().await;
    println!("signal: stop accepting, end every session with the ladder");
    println!("at shutdown: {}", stats(&shared));
    accepting.cancel();
    // Returns once every session ended and every upstream was reaped.
    let report = shared.sessions.shutdown().await;
    // The wires: rmcp's session workers, then every response stream.
    rmcp_ct.cancel();
    server_scope.cancel_with("server shutting down");
    println!("ShutdownReport: {report}");
    for stuck in &report.stuck {
        println!("  stuck: {stuck:?}");
    }
    let drained = tokio::time::timeout(Duration::from_secs(2), server).await;
    println!(
        "http server: {}",
        if drained.is_ok() {
            "drained"
        } else {
            "did not drain in 2 s"
        }
    );
    println!("after shutdown: {}", stats(&shared));
    Ok(report.is_clean() && drained.is_ok())
}

/// hyper-util's server: HTTP/1 with a header read timeout, each connection
/// watched by `GracefulShutdown`, which returns once their responses (the
/// request scopes end the streaming ones) are done.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    accepting: CancelScope,
    header_timeout: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off, never spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = accepting.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn stats(s: &Shared) -> Value {
    let c = &s.counters;
    let map = s.sessions.stats();
    let procs = cancel_scope::process_stats();
    let rmcp_sessions = s
        .rmcp
        .sessions
        .try_read()
        .map(|m| m.len() as i64)
        .unwrap_or(-1);
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "mode": "crate",
        "pid": std::process::id(),
        "sessions_tracked": s.sessions.len(),
        "sessions_closing": map.closing,
        "stuck": map.stuck,
        "wires": s.wires(),
        "rmcp_sessions": rmcp_sessions,
        "requests_in_flight": get(&c.requests_in_flight),
        "children_alive": procs.alive,
        "orphans": procs.orphans,
        "live_children": c.live_children.lock().unwrap().len(),
        "children_started": get(&c.children_started),
        "upstream_ctx_inits": get(&c.upstream_ctx_inits),
        "sessions_created": get(&c.sessions_created),
        "generations": get(&c.generations),
        "reinitialized": get(&c.reinitialized),
        "deleted": get(&c.deleted),
        "idle_timeouts": map.idle_expired,
        "init_timeouts": map.ready_expired,
        "processes_reaped": map.processes,
        "upstream_failed_start": get(&c.upstream_failed_start),
        "upstream_exited": get(&c.upstream_exited),
        "escalations": map.escalations,
        "escalation_hooks": get(&c.escalation_hooks),
        "redeliveries": map.redeliveries,
        "requests": get(&c.requests),
        "requests_cancelled": get(&c.requests_cancelled),
        "cancel_messages": *c.cancel_messages.lock().unwrap(),
        "orphans_reaped": get(&c.orphans_reaped),
        "reap_touched_live": get(&c.reap_touched_live),
    })
}

/// The live session tasks, oldest first, as `GET /debug/tasks` serves them:
/// `TaskMap::snapshot`, a pure read (it changes nothing of a ladder in
/// progress, so it can be polled during a teardown).
fn debug_tasks(s: &Shared) -> Value {
    s.sessions
        .snapshot()
        .iter()
        .map(|(_, task)| task_json(task))
        .collect()
}

/// One task of `GET /debug/tasks`.
fn task_json(task: &TaskInfo) -> Value {
    json!({
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

async fn reap(s: &Shared) -> Value {
    let live: Vec<u32> = s
        .counters
        .live_children
        .lock()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let report = cancel_scope::reap_orphans().await;
    let touched = report.reaped.iter().filter(|p| live.contains(p)).count()
        + report
            .already_gone
            .iter()
            .filter(|p| live.contains(p))
            .count();
    s.counters
        .reap_touched_live
        .fetch_add(touched as u64, Ordering::Relaxed);
    s.counters
        .orphans_reaped
        .fetch_add(report.reaped.len() as u64, Ordering::Relaxed);
    json!({
        "reaped": report.reaped,
        "already_gone": report.already_gone,
        "failed": report.failed.len(),
        "touched_live": touched,
    })
}

// ===== --naive =====

async fn serve_naive(args: Args) -> std::io::Result<bool> {
    let shared = Arc::new(NaiveShared {
        program: args.upstream.clone(),
        ..NaiveShared::default()
    });
    let manager = Arc::new(LocalSessionManager::default());
    let factory_shared = shared.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(NaiveHandler::new(factory_shared.clone())),
        manager.clone(),
        StreamableHttpServerConfig::default(),
    );
    let stats_shared = shared.clone();
    let stats_manager = manager.clone();
    let app = Router::new()
        .nest_service("/mcp", mcp)
        .route(
            "/stats",
            get(move || {
                let s = stats_shared.clone();
                let m = stats_manager.clone();
                async move { axum::Json(naive_stats(&s, &m)) }
            }),
        )
        // Nothing tracks the naive sessions: there is no task to list.
        .route("/debug/tasks", get(|| async { axum::Json(json!([])) }))
        .route(
            "/reap",
            post(|| async { axum::Json(json!({"reaped": [], "touched_live": 0})) }),
        );
    let listener = listen(args.port).await?;
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    shutdown_signal().await;
    println!("signal: the naive gateway has no ladder; exiting");
    println!("at shutdown: {}", naive_stats(&shared, &manager));
    server.abort();
    Ok(true)
}

fn naive_stats(s: &NaiveShared, m: &LocalSessionManager) -> Value {
    json!({
        "mode": "naive",
        "pid": std::process::id(),
        "sessions_tracked": s.registry.lock().unwrap().len(),
        "stuck": 0,
        "rmcp_sessions": m.sessions.try_read().map(|m| m.len() as i64).unwrap_or(-1),
        "requests_in_flight": s.requests_in_flight.load(Ordering::Relaxed),
        "children_started": s.children_started.load(Ordering::Relaxed),
        "reap_touched_live": 0,
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
