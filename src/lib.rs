//! Structured concurrency for tokio: cancel scopes, task groups that prune
//! themselves, and a shutdown ladder that never busy-retries.
//!
//! Servers that spawn fire-and-forget tasks tear down badly: a canceller that
//! re-tries on every tick while a task ignores it pins a core at 100%, finished
//! tasks linger in registries, and teardown never ends. This crate makes the
//! correct teardown the easy one:
//!
//! - [`CancelScope`]: a tree of cancellation with deadlines, shields and
//!   reasons, level-triggered (as Trio's cancel scopes);
//! - [`TaskGroup`]: tracked tasks that remove themselves the moment they end
//!   (as Trio's nursery), torn down by [`shutdown`](TaskGroup::shutdown);
//! - the **shutdown ladder** ([`ShutdownPolicy`]): cancel, bounded re-delivery
//!   with timer back-off, grace, escalation (hook + abort), then a stuck list,
//!   in bounded time;
//! - [`TaskMap`]: one tracked task per key (per-session work).
//!
//! # A tour
//!
//! A scope cancels its children, not its shielded ones; a deadline is a
//! cancellation that comes by itself:
//!
//! ```
//! use std::time::Duration;
//! use cancel_scope::{CancelReason, CancelScope, move_on_after};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let request = CancelScope::new().with_timeout(Duration::from_secs(30));
//! let db_call = request.child();
//! assert_eq!(db_call.deadline(), request.deadline()); // inherited
//!
//! request.cancel_with("client went away"); // or `cancel()`, without a message
//! assert_eq!(db_call.reason(), Some(CancelReason::Requested));
//! assert_eq!(db_call.cancel_message().as_deref(), Some("client went away"));
//!
//! // Timeouts are scopes too.
//! assert_eq!(move_on_after(Duration::from_millis(5), std::future::pending::<()>()).await, None);
//! # }
//! ```
//!
//! A group tracks its tasks; its ladder ends them in bounded time, escalating
//! on the ones that ignore cancellation:
//!
//! ```
//! use std::time::Duration;
//! use cancel_scope::{ShutdownPolicy, TaskGroup};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let group = TaskGroup::builder()
//!     .policy(ShutdownPolicy { grace: Duration::from_secs(2), ..Default::default() })
//!     .build();
//! for _ in 0..100 {
//!     group.spawn(tokio::time::sleep(Duration::from_secs(3600))); // cancellable
//! }
//! // One task ignores its scope; its hook closes what it waits on.
//! let (tx, rx) = tokio::sync::oneshot::channel::<()>();
//! let mut tx = Some(tx);
//! group
//!     .build_task()
//!     .name("stubborn")
//!     .on_escalate(move || drop(tx.take()))
//!     .spawn_with_scope(|_ignored| async move { let _ = rx.await; });
//!
//! let report = group.shutdown().await;
//! assert_eq!(report.cancelled, 100);
//! assert_eq!(report.escalations, 1);
//! assert!(report.is_clean());
//! assert_eq!(group.len(), 0); // every entry pruned itself
//! # }
//! ```
//!
//! A map keeps one task per key, and tears one key down alone. A key names a
//! slot; a task id names one task, so a late disconnect never tears down the
//! session of a client that reconnected under the same key:
//!
//! ```
//! use cancel_scope::{TaskMap, TaskOutcome};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let sessions = TaskMap::new();
//! sessions.spawn("alice", std::future::pending::<()>());
//! let bob = sessions.spawn("bob", std::future::pending::<()>()).id();
//! assert_eq!(sessions.cancel(&"alice").await, Some(TaskOutcome::Cancelled));
//! assert_eq!(sessions.len(), 1);
//!
//! let bob_again = sessions.spawn("bob", std::future::pending::<()>()).id(); // reconnect
//! assert!(!sessions.begin_cancel_task(&"bob", bob)); // the old connection's guard: no-op
//! assert_eq!(sessions.task_id(&"bob"), Some(bob_again));
//! # }
//! ```
//!
//! A map can lease its sessions: one whose client stays silent past the idle
//! timeout, or never says it is ready, is cancelled with a message and torn
//! down by its ladder, with no timer task per key (rmcp#1244, #808):
//!
//! ```
//! use std::time::Duration;
//! use cancel_scope::TaskMap;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let sessions = TaskMap::builder()
//!     .idle_timeout(Duration::from_secs(60))
//!     .ready_timeout(Duration::from_secs(5))
//!     .build();
//! sessions.spawn("alice", std::future::pending::<()>());
//! sessions.spawn("bob", std::future::pending::<()>());
//! assert!(sessions.mark_ready(&"alice")); // MCP: `notifications/initialized`
//! tokio::time::sleep(Duration::from_secs(6)).await;
//! assert!(sessions.touch(&"alice")); // activity: the idle lease restarts
//! assert!(!sessions.contains_key(&"bob")); // "not ready in time"
//! assert_eq!(sessions.stats().ready_expired, 1);
//! # }
//! ```
//!
//! A shield keeps a scope uncancelled, not the code around it: a future
//! dropped by a cancel is dropped whole, shielded parts included. Cleanup that
//! must survive the code that starts it goes into its own `spawn_with_scope`
//! task under a shielded child with a deadline; see
//! [What a shield protects](CancelScope#what-a-shield-protects).
//!
//! # Coming from tokio / tokio-util
//!
//! | tokio / tokio-util | here |
//! | --- | --- |
//! | `CancellationToken` | [`CancelScope`] (plus deadlines, shields, reasons) |
//! | `CancellationToken::child_token` | [`CancelScope::child`] |
//! | `CancellationToken::cancel` | [`CancelScope::cancel`] |
//! | a cancel with a reason (tokio #5249; Trio's `cancel(reason=...)`) | [`CancelScope::cancel_with`], read back with [`CancelScope::cancel_message`] |
//! | `TaskTracker` | [`TaskGroup`] |
//! | `TaskTracker::spawn(fut)` where `fut` watches a token and cleans up | [`TaskGroup::spawn_with_scope`], **not** [`TaskGroup::spawn`] (see below) |
//! | `TaskTracker::wait` | [`TaskGroup::join`] (or [`TaskGroup::shutdown`]: cancel, then the bounded ladder) |
//! | `TaskTracker::close` | `TaskGroup::close` |
//! | `JoinSet<T>` (outputs in completion order) | [`TaskSet<T>`](TaskSet): `spawn`, `join_next`, `join_next_with_id`, `try_join_next`, `join_all`, `abort_all`, `len`, torn down by [`TaskSet::shutdown`]'s ladder |
//! | `JoinSet` used for its tasks' ends only | a [`TaskGroup`] and the [`TaskHandle`]s it returns, or [`TaskGroup::join_next`] for outcomes |
//! | `tokio::task::spawn_blocking`, `JoinSet::spawn_blocking` | [`TaskGroup::spawn_blocking`], [`TaskGroup::spawn_blocking_with_scope`] (tracked until the closure returns; stuck, never "ended", if it outlives the ladder), [`TaskSet::spawn_blocking`] |
//! | `tokio::task::spawn_local`, `JoinSet::spawn_local`, `TaskTracker::spawn_local` | [`TaskGroup::spawn_local`], [`TaskGroup::spawn_local_with_scope`], [`TaskSet::spawn_local`] |
//! | `Handle::spawn`, `JoinSet::spawn_on`, `TaskTracker::spawn_on` | [`TaskGroup::spawn_on`], [`TaskSet::spawn_on`] |
//! | `JoinSet::try_join_next` | [`TaskGroup::try_join_next`], [`TaskSet::try_join_next`] |
//! | `JoinSet::abort_all` | [`TaskGroup::abort_all`], [`TaskSet::abort_all`] |
//! | `JoinHandle::abort_handle`, `AbortHandle` | [`TaskHandle::abort_handle`], [`TaskAbortHandle`] (also cancels) |
//! | tokio-util's `AbortOnDropHandle` | [`TaskHandle::abort_on_drop`], [`AbortOnDropHandle`] |
//! | `JoinMap` | [`TaskMap`] |
//! | `JoinMap::abort` | [`TaskMap::abort`] |
//! | `fut.in_current_span()` for a spawned task | nothing to add: a task's span is a child of the span current at its spawn |
//! | `JoinError::is_cancelled()` (the task was *aborted*) | [`TaskError::Aborted`], not [`TaskError::Cancelled`] |
//!
//! The last row is a trap: in tokio "cancelled" means aborted from outside;
//! here [`TaskError::Cancelled`] means the task's cancel scope was cancelled
//! and its future dropped at an await, and it carries the reason and message.
//!
//! The `TaskTracker::spawn` row is a trap too: ported as `group.spawn(...)`,
//! such a task compiles and its cleanup never runs, because
//! [`TaskGroup::spawn`] drops the future at its next await once the group is
//! cancelled, before the code after `cancelled().await` is reached. A task
//! that must say goodbye gets its scope from
//! [`spawn_with_scope`](TaskGroup::spawn_with_scope), waits on it, and ends
//! by itself:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use cancel_scope::TaskGroup;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let group = TaskGroup::new();
//! let log = Arc::new(Mutex::new(Vec::new()));
//! let conn_log = log.clone();
//! group.spawn_with_scope(|scope| async move {
//!     scope.cancelled().await; // as `token.cancelled().await`
//!     conn_log.lock().unwrap().push("goodbye"); // runs: the task was not dropped
//! });
//!
//! let report = group.shutdown().await;
//! assert!(report.is_clean(), "{report}");
//! assert_eq!(*log.lock().unwrap(), ["goodbye"]);
//! # }
//! ```
//!
//! Groups and maps are cheap handles (`Clone`, one `Arc`): clones share one
//! group, and only the last handle's drop closes and cancels it.
//! [`close`](TaskGroup::close) refuses new tasks; [`shutdown`](TaskGroup::shutdown)
//! closes first.
//!
//! # Guarantees
//!
//! - **No busy retry**: the library wakes each task at most
//!   `max_redeliveries + 3` times over its life (its first delivery, one
//!   more for a [`TaskHandle::cancel`] after another cancel reached it, at
//!   most `max_redeliveries` re-deliveries whatever number of ladders run
//!   over it, and escalation's one wake), re-deliveries are spaced by
//!   timers, only a task that was polled after its delivery and parked again
//!   is re-delivered to (never one not yet polled, nor one in the middle of
//!   the poll that ends it), and once the last task ends no timer, wakeup or
//!   task of the library is left (a group under a deadline releases its
//!   wait on the scope while it has no task).
//! - **Every input**: every `u32` and every `Duration` of a
//!   [`ShutdownPolicy`] is valid (durations saturate; `Duration::MAX` means
//!   never); a key whose `Hash` or `Eq` panics fails that one call and never
//!   corrupts a map; `Debug`, `len` and `stats` only read.
//! - **Done-task skipping**: an ended task is never woken nor counted.
//! - **Prune on completion**: `len()` is the number of live task futures.
//! - **Bounded teardown**: `shutdown()` returns within `grace + abort_grace`
//!   (plus scheduling noise), whatever the tasks and their escalation hooks
//!   do: a hook runs on a thread of its own, so one that blocks holds neither
//!   the ladder nor a runtime thread, and the report says it still runs.
//!
//! # How it works
//!
//! A cancel goes down the scope tree as state, and each waiter on a cancelled
//! scope is woken once. A group waits on its scope with one waker that runs
//! code rather than a task: waking it gives every live task one wake, and
//! each task's next poll sees the cancel and ends. Each task's entry is
//! removed by a guard inside its own future, so nothing scans for ended
//! tasks. The ladder sleeps on timers between rungs and returns as soon as
//! the last task ends. `ARCHITECTURE.md` in the repository traces one cancel
//! through the code, item by item (built, with its links checked, as the
//! private module `architecture`: `cargo doc --document-private-items`).
//!
//! # Cargo features
//!
//! By default the crate needs tokio's `rt`, `time` and `sync` only.
//!
//! - `tokio-util`: `CancelScope::token()` (a `CancellationToken` that follows
//!   the scope; no task) and `CancelScope::linked(&token)` (a scope that
//!   follows a token). Adds `tokio-util`.
//! - `process` (unix only; the API does not exist elsewhere): scoped child
//!   processes, `TaskGroup::spawn_process`, `spawn_with_process` and
//!   `reap_orphans`: a child's whole process group is stopped with its owner
//!   in the stdio order (the owner ends and closes stdin, `exit_grace`,
//!   SIGTERM, `term_grace`, SIGKILL, reap), every ladder waits for the reap,
//!   and orphans are reaped without touching live owners. Adds `rustix` and
//!   tokio's `process`.
//! - `tower`: `tower::ScopeLayer`, a cancel scope per request, cancelled
//!   when the client goes away, and response bodies that end when it is
//!   cancelled (so SSE streams close at shutdown). Adds `tower` (no default
//!   features), `http` and `http-body`.
//! - `axum`: `tower`, plus `tower::RequestScope` as an axum extractor.
//!   Adds `axum` (no default features).
//!
//! # Where the semantics come from
//!
//! Cancel scopes, shields and deadlines are Trio's (`CancelScope`,
//! `shield=True`, `move_on_after` / `fail_after`), with one difference: a
//! cancel here drops futures rather than raising at checkpoints, so a shield
//! protects its scope and code that observes it, not code inside a dropped
//! future. Cancel messages are Trio's and anyio's `cancel(reason=...)`. Task
//! groups are Trio's
//! nurseries and anyio's task groups; handles, `join_next`, `abort` and the
//! runtime are tokio's. The ladder (bounded re-delivery, grace, escalation,
//! stuck list) is this crate's answer to cancellation delivered on every tick.

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
// Denied everywhere but one measured place, the task cell's waker slot
// (`registry/cell.rs`, checked by the loom models).
#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(loom, allow(dead_code, unreachable_pub, unused_imports))]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub(crate) mod sync;

// The architecture essay, checked by the private-items docs build.
#[cfg(not(loom))]
#[doc = include_str!("../ARCHITECTURE.md")]
mod architecture {}

mod ladder;
mod registry;
mod scope;
mod task;
mod timeout;
mod wait_list;

#[cfg(all(feature = "tokio-util", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio-util")))]
pub(crate) mod interop;

// Loom models of the core (issue 4): `RUSTFLAGS="--cfg loom" cargo test --release --lib`.
#[cfg(all(test, loom))]
mod loom_models;

#[cfg(not(loom))]
mod builder;
#[cfg(not(loom))]
mod group;
#[cfg(not(loom))]
mod map;
#[cfg(all(unix, feature = "process", not(loom)))]
mod process;
#[cfg(not(loom))]
mod task_set;
#[cfg(not(loom))]
mod tracker;

#[cfg(all(feature = "tower", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use ladder::{Backoff, ShutdownPolicy, ShutdownReport, StuckTask};
pub use scope::{
    CancelMessage, CancelReason, CancelScope, Cancelled, DropGuard, Elapsed, Run, WaitCancelled,
    WaitCancelledOwned,
};
pub use task::{TaskId, TaskOutcome};
pub use timeout::{fail_after, fail_at, move_on_after, move_on_at};

#[cfg(not(loom))]
pub use builder::TaskBuilder;
#[cfg(not(loom))]
pub use group::{Outcomes, TaskGroup, TaskGroupBuilder};
#[cfg(not(loom))]
pub use map::{TaskMap, TaskMapBuilder};
#[cfg(all(target_os = "linux", feature = "process", not(loom)))]
pub use process::become_subreaper;
#[cfg(all(unix, feature = "process", not(loom)))]
pub use process::{
    ChildEnd, ProcessPolicy, ProcessStats, ReapReport, ScopedChild, process_stats, reap_orphans,
};
#[cfg(not(loom))]
pub use task::{AbortOnDropHandle, SpawnError, Stats, TaskAbortHandle, TaskError, TaskHandle};
#[cfg(not(loom))]
pub use task::{TaskInfo, TaskState};
#[cfg(not(loom))]
pub use task_set::{TaskSet, TaskSetBuilder};
