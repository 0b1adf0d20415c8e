//! Cancel scopes: a tree of cancellation with deadlines, shields and reasons
//! (Trio's cancel scopes), and the handle, futures, guard and errors on it.
//!
//! One concept per file, as tokio-util's `cancellation_token.rs` (the handle)
//! and `tree_node.rs` (the tree). The tree needs no runtime; tokio comes in
//! with the clock and the timer task. What flows where:
//!
//! - `tree.rs`: the nodes and every change to them; runtime-free, loom-checked.
//! - `handle.rs`: [`CancelScope`], one `Arc<Node>`; its methods call `tree`.
//! - `wait.rs`: [`Waiter`] (a waker in `tree`; arms `timer`) and the three futures that poll it.
//! - `timer.rs`: the task per waited-on deadline: sleeps, cancels; lives as tree invariant 9 says.
//! - `clock.rs`: ticks, the `i64` deadlines of `tree`, to and from tokio's `Instant`.
//! - `guard.rs`: [`DropGuard`], a handle that cancels its scope when dropped.
//! - `error.rs`: [`Cancelled`] (from `run`, and task errors) and [`Elapsed`] (`fail_*`).
//! - `message.rs`: [`CancelMessage`], a cancel's text, kept at the origin node.
//!
//! The timeouts built on scopes ([`move_on_after`](crate::move_on_after),
//! [`fail_after`](crate::fail_after), ...) live in `src/timeout.rs`. The
//! other files cite the tree's invariants as "tree invariant N".

mod clock;
mod error;
mod guard;
mod handle;
pub(crate) mod message;
mod timer;
pub(crate) mod tree;
mod wait;

pub(crate) use clock::far_future;
pub use error::{Cancelled, Elapsed};
pub use guard::DropGuard;
pub use handle::CancelScope;
pub use message::CancelMessage;
pub use tree::CancelReason;
// Under loom the modules that use `Waiter` (tracker.rs and interop.rs) are
// left out: unused there, as the crate allows dead code there.
#[cfg_attr(loom, allow(unused_imports))]
pub(crate) use wait::Waiter;
pub use wait::{Run, WaitCancelled, WaitCancelledOwned};
