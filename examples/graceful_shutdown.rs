//! axum graceful shutdown with a [`TaskGroup`] for background work.
//!
//! Handlers spawn background jobs into a group that lives in a child of one
//! root scope. SIGINT / SIGTERM cancel the root scope; that stops the server
//! (`with_graceful_shutdown(root.cancelled_owned())`) and cancels every job at
//! once; then `group.shutdown()` runs the ladder and the process exits 0 with
//! the report, in bounded time, whatever the jobs do.
//!
//! ```text
//! cargo run --example graceful_shutdown            # serve until Ctrl-C
//! curl 'http://127.0.0.1:PORT/job?kind=cooperative'
//! cargo run --example graceful_shutdown -- --demo  # start jobs, shut down, exit
//! ```
//!
//! Job kinds: `cancellable` (dropped at its next await), `cooperative` (sees
//! its scope, finishes cleanup in a shielded scope with its own deadline),
//! `stubborn` (ignores its scope; its escalation hook closes what it waits on).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use cancel_scope::{CancelScope, ShutdownPolicy, TaskGroup};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(serde::Deserialize)]
struct JobQuery {
    kind: Option<String>,
}

async fn start_job(
    State(group): State<TaskGroup>,
    Query(q): Query<JobQuery>,
) -> axum::Json<serde_json::Value> {
    let kind = q.kind.unwrap_or_else(|| "cancellable".into());
    let id = match kind.as_str() {
        "cooperative" => group
            .build_task()
            .name("cooperative-job")
            .spawn_with_scope(|scope| async move {
                // Work until cancelled, then clean up for at most 200 ms,
                // shielded from the cancellation that stopped the work. This
                // works because nothing drops a `spawn_with_scope` task's
                // future on cancel; inside a plain `spawn` (or an outer `run`)
                // the shielded part would be dropped with the rest.
                scope.run(std::future::pending::<()>()).await.ok();
                let cleanup = scope
                    .shielded_child()
                    .with_timeout(Duration::from_millis(200));
                let _ = cleanup
                    .run(tokio::time::sleep(Duration::from_millis(50)))
                    .await;
            })
            .id(),
        "stubborn" => {
            let (close, mut transport) = tokio::sync::mpsc::channel::<()>(1);
            let mut close = Some(close);
            group
                .build_task()
                .name("stubborn-job")
                // Escalation closes the job's transport: its recv() ends.
                .on_escalate(move || drop(close.take()))
                .spawn_with_scope(
                    |_ignored| async move { while transport.recv().await.is_some() {} },
                )
                .id()
        }
        _ => group
            .build_task()
            .name("cancellable-job")
            .spawn(tokio::time::sleep(Duration::from_secs(3600)))
            .id(),
    };
    axum::Json(json!({ "job": id.as_u64(), "kind": kind, "running": group.len() }))
}

/// SIGINT or SIGTERM cancels the root scope, once.
async fn cancel_on_signal(root: CancelScope) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => eprintln!("SIGINT: shutting down"),
        () = term => eprintln!("SIGTERM: shutting down"),
        () = root.cancelled() => {}
    }
    root.cancel();
}

/// `--demo`: start one job of each kind over real HTTP, then cancel the root
/// scope as a signal would.
async fn demo(addr: SocketAddr, root: CancelScope) {
    for kind in ["cancellable", "cooperative", "stubborn"] {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req =
            format!("GET /job?kind={kind} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("write");
        let mut resp = String::new();
        conn.read_to_string(&mut resp).await.expect("read");
        println!("started: {}", resp.lines().last().unwrap_or_default());
    }
    println!("demo: cancelling the root scope, as SIGTERM would");
    root.cancel();
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let demo_mode = std::env::args().any(|a| a == "--demo");
    let root = CancelScope::new();
    // A `TaskGroup` is a cheap handle: the router's state is a clone of it.
    let group = TaskGroup::builder()
        .scope(root.clone())
        .policy(ShutdownPolicy {
            grace: Duration::from_millis(500),
            abort_grace: Duration::from_millis(500),
            ..Default::default()
        })
        .build();
    let app = Router::new()
        .route("/job", get(start_job))
        .with_state(group.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}  (GET /job?kind=cancellable|cooperative|stubborn)");

    tokio::spawn(cancel_on_signal(root.clone()));
    if demo_mode {
        tokio::spawn(demo(addr, root.clone()));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(root.clone().cancelled_owned())
        .await?;

    let report = group.shutdown().await;
    println!("shutdown: {report}");
    assert!(group.is_empty(), "every job ended or was reported stuck");
    Ok(())
}
