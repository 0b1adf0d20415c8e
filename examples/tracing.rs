//! What the ladder logs: task spans, escalation and stuck warnings, with
//! `tracing-subscriber`'s fmt layer.
//!
//! ```text
//! cargo run --example tracing
//! RUST_LOG=cancel_scope=trace cargo run --example tracing   # spawn/end too
//! ```
//!
//! Three tasks: one cancellable, one that ignores its scope until its
//! escalation hook closes its input (an escalation warning), one that blocks
//! its worker thread past abort grace (a stuck warning; it prunes itself when
//! it finally ends).

use std::time::Duration;

use cancel_scope::{ShutdownPolicy, TaskGroup};
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("cancel_scope=debug")),
        )
        .init();

    let group = TaskGroup::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_millis(200),
            abort_grace: Duration::from_millis(100),
            ..Default::default()
        })
        .build();

    group
        .build_task()
        .name("cancellable")
        .spawn(tokio::time::sleep(Duration::from_secs(60)));

    let (input, mut rx) = tokio::sync::mpsc::channel::<u8>(1);
    let mut input = Some(input);
    group
        .build_task()
        .name("listener")
        .on_escalate(move || drop(input.take()))
        .spawn_with_scope(|_scope| async move { while rx.recv().await.is_some() {} });

    let (started, ready) = tokio::sync::oneshot::channel();
    group
        .build_task()
        .name("blocker")
        .spawn_with_scope(|_scope| async move {
            let _ = started.send(());
            // Blocks its worker thread: no wake or abort can reach it.
            std::thread::sleep(Duration::from_millis(800));
        });
    ready.await.expect("blocker started");

    let report = group.shutdown().await;
    println!("{report}");
    assert_eq!(report.stuck.len(), 1);
    while !group.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the stuck task ended and pruned itself: {:?}",
        group.stats()
    );
}
