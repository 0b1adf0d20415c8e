//! The task types: what names a tracked task and how it ended (`id`), what a
//! spawn gives back (`handle`: [`TaskHandle`]), why a task or a spawn failed
//! (`error`), the counters of a group or map (`stats`), the per-task data
//! the tracker keeps in each cell (`meta`), and a live task as a snapshot
//! reads it from its cell (`info`). Only `id` is runtime-free (the
//! registry core uses it); nothing here imports the tracker: the tracker and
//! the builder import this.

mod id;
pub use id::{TaskId, TaskOutcome};

#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod handle;
#[cfg(not(loom))]
mod info;
#[cfg(not(loom))]
mod meta;
#[cfg(not(loom))]
mod stats;

#[cfg(not(loom))]
pub(crate) use error::panic_message;
#[cfg(not(loom))]
pub use error::{SpawnError, TaskError};
#[cfg(not(loom))]
pub use handle::{AbortOnDropHandle, TaskAbortHandle, TaskHandle};
#[cfg(not(loom))]
pub(crate) use info::now_on;
#[cfg(not(loom))]
pub use info::{TaskInfo, TaskState};
#[cfg(not(loom))]
pub(crate) use meta::{Hook, Linger, Mode, TaskMeta, TaskOptions, TrackedCell};
#[cfg(not(loom))]
pub use stats::Stats;
