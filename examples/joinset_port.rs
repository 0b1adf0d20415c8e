//! A fan-out worker ported from `JoinSet` + `TaskTracker` +
//! `CancellationToken`, with nothing written by hand around the crate:
//!
//! ```text
//! cargo run --example joinset_port
//! ```
//!
//! - fetches run in a `TaskSet<Result<_, _>>` built with `cancel_on_error`:
//!   the first failure cancels the rest, with a message naming the task
//!   (what a `JoinSet` user writes by hand, tokio#6664);
//! - a checksum runs as `spawn_blocking`, tracked until the closure returns;
//! - a `!Send` formatter runs as `spawn_local` inside a `LocalSet`;
//! - `try_join_next` drains what already ended without awaiting;
//! - the teardown is `shutdown()`, the bounded ladder, with its report.

use std::rc::Rc;
use std::time::Duration;

use cancel_scope::{ShutdownPolicy, TaskError, TaskSet};

#[derive(Debug)]
struct FetchError(&'static str);

async fn fetch(id: u32) -> Result<u32, FetchError> {
    tokio::time::sleep(Duration::from_millis(10 * u64::from(id))).await;
    if id == 3 {
        return Err(FetchError("upstream 3 refused the connection"));
    }
    Ok(id * 100)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // 1. Fan-out with fail-fast.
    let mut fetches = TaskSet::builder()
        .policy(ShutdownPolicy {
            grace: Duration::from_millis(200),
            ..Default::default()
        })
        .cancel_on_error()
        .build();
    for id in 1..=6 {
        fetches.spawn(fetch(id));
    }
    let (mut ok, mut failed, mut cancelled) = (0, 0, 0);
    while let Some(joined) = fetches.join_next_with_id().await {
        match joined {
            Ok((_, Ok(body))) => {
                ok += 1;
                println!("fetched {body}");
            }
            Ok((id, Err(e))) => {
                failed += 1;
                println!("{id} failed: {}", e.0);
            }
            Err((id, TaskError::Cancelled(why))) => {
                cancelled += 1;
                println!("{id} cancelled: {}", why.message().unwrap_or("?"));
            }
            Err((id, e)) => println!("{id}: {e}"),
        }
    }
    println!("fetches: {ok} ok, {failed} failed, {cancelled} cancelled");
    assert_eq!((ok, failed, cancelled), (2, 1, 3));

    // 2. Blocking work and a !Send task in one set.
    let mut work: TaskSet<String> = TaskSet::new();
    work.spawn_blocking(|| {
        let sum: u64 = (1..=1_000_000u64).sum();
        format!("checksum {sum}")
    });
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let label = Rc::new("formatter"); // !Send
            work.spawn_local(async move { format!("{label} done") });
            // What already ended, without waiting.
            while let Some(done) = work.try_join_next() {
                println!("already done: {}", done.unwrap());
            }
            while let Some(done) = work.join_next().await {
                println!("done: {}", done.unwrap());
            }
        })
        .await;

    // 3. Teardown of what is left, by the ladder.
    work.spawn(async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        String::from("never")
    });
    let report = work.shutdown().await;
    println!(
        "shutdown: cancelled {}, stuck {}",
        report.cancelled,
        report.stuck.len()
    );
    assert!(report.is_clean());
}
