//! Why a tracked task produced no output ([`TaskError`]) and why a spawn was
//! refused ([`SpawnError`]).

use std::any::Any;

use crate::scope::{CancelReason, Cancelled};

// ===== errors =====

/// Why a tracked task produced no output.
///
/// Only [`Cancelled`](Self::Cancelled) means the task observed a cancel scope.
/// An abort (tokio's `JoinError::is_cancelled()`: [`TaskHandle::abort`](crate::TaskHandle::abort),
/// escalation, runtime shutdown) is [`Aborted`](Self::Aborted) here.
///
/// # Examples
///
/// ```
/// use cancel_scope::{CancelReason, TaskError, TaskGroup};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let group = TaskGroup::new();
/// let task = group.spawn(std::future::pending::<()>());
/// group.cancel_with("client went away");
/// match task.await {
///     Err(TaskError::Cancelled(c)) => {
///         assert_eq!(c.reason(), CancelReason::Requested);
///         assert_eq!(c.message(), Some("client went away"));
///     }
///     other => panic!("expected a cancel, got {other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// Its scope was cancelled and its future dropped at an await point; the
    /// [`Cancelled`] carries the reason and message of that cancel, as the
    /// error of [`CancelScope::run`](crate::CancelScope::run) does.
    Cancelled(Cancelled),
    /// It was aborted ([`TaskHandle::abort`](crate::TaskHandle::abort), escalation, or runtime shutdown).
    Aborted,
    /// Its future panicked; the panic message (`&str` or `String` payloads;
    /// otherwise `"Box<dyn Any>"`).
    Panicked(String),
}

impl TaskError {
    /// The reason of the cancel, for [`Cancelled`](Self::Cancelled); `None`
    /// otherwise.
    #[must_use]
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        match self {
            TaskError::Cancelled(c) => Some(c.reason()),
            _ => None,
        }
    }

    /// The message of the cancel (see
    /// [`CancelScope::cancel_with`](crate::CancelScope::cancel_with)), for
    /// [`Cancelled`](Self::Cancelled) with one; `None` otherwise.
    #[must_use]
    pub fn cancel_message(&self) -> Option<&str> {
        match self {
            TaskError::Cancelled(c) => c.message(),
            _ => None,
        }
    }
}

impl From<Cancelled> for TaskError {
    fn from(c: Cancelled) -> Self {
        TaskError::Cancelled(c)
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Cancelled(c) => {
                match c.reason() {
                    CancelReason::Requested => f.write_str("task was cancelled")?,
                    CancelReason::Deadline => f.write_str("task was cancelled by a deadline")?,
                }
                match c.message() {
                    Some(m) => write!(f, ": {m}"),
                    None => Ok(()),
                }
            }
            TaskError::Aborted => f.write_str("task was aborted"),
            TaskError::Panicked(msg) => write!(f, "task panicked: {msg}"),
        }
    }
}

// No `source()`: `Display` already says everything `Cancelled` would.
impl std::error::Error for TaskError {}

/// Why a `try_spawn` failed. Nothing was tracked or leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnError {
    /// Called outside a tokio runtime.
    NoRuntime,
    /// The group or map is closed: [`close`](crate::TaskGroup::close) or
    /// [`shutdown`](crate::TaskGroup::shutdown) was called, or its last
    /// handle was dropped (as spawning into a closed Trio nursery).
    Closed,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::NoRuntime => f.write_str(
                "no tokio runtime: spawn tracked tasks from inside a runtime \
                 (within #[tokio::main], Runtime::block_on or Handle::enter)",
            ),
            SpawnError::Closed => f.write_str(
                "the group or map is closed (close() or shutdown() was called): spawn \
                 before closing it, or use a new group for new work",
            ),
        }
    }
}

impl std::error::Error for SpawnError {}

/// The message of a panic payload (`&str` or `String`; otherwise
/// `"Box<dyn Any>"`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}
