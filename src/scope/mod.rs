//! [`CancelScope`]: the handle to a node of the cancellation tree, its futures,
//! its drop guard, and the timeout helpers built on it.
//!
//! The tree itself (state, waiters, shields, deadlines) is runtime-free and
//! lives in `scope/tree.rs`; this file adds what needs tokio: the clock for
//! deadlines, and the one timer task per waited-on deadline, which lives
//! while somebody waits (tree invariant 9).

mod clock;
mod error;
mod guard;
mod handle;
pub(crate) mod message;
mod timer;
pub(crate) mod tree;
mod wait;

pub(crate) use clock::{far_future, from_ticks, to_ticks};
pub use error::{Cancelled, Elapsed};
pub use guard::DropGuard;
pub use handle::CancelScope;
pub use message::CancelMessage;
pub use tree::CancelReason;
pub(crate) use wait::Waiter;
pub use wait::{Run, WaitCancelled, WaitCancelledOwned};
