//! The errors of the scope's futures: [`Cancelled`], the scope was cancelled
//! before the future it ran finished, and [`Elapsed`], a timeout's deadline
//! passed first.

use super::CancelScope;
use super::message::CancelMessage;
use super::tree::CancelReason;

// ===== errors =====

/// The error of [`CancelScope::run`]: the scope was cancelled first. Carries
/// the [reason](CancelReason) and the [message](CancelScope::cancel_with) of
/// the cancel, both from the scope where it started.
///
/// Also what [`TaskError::Cancelled`](crate::TaskError::Cancelled) carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    reason: CancelReason,
    message: Option<CancelMessage>,
}

impl Cancelled {
    /// Reads the reason and message of a cancelled `scope` (`Requested` and
    /// none if it is not cancelled, which callers rule out).
    pub(crate) fn of(scope: &CancelScope) -> Self {
        Cancelled {
            reason: scope.reason().unwrap_or(CancelReason::Requested),
            message: scope.cancel_message(),
        }
    }

    /// Why the scope was cancelled.
    #[must_use]
    pub fn reason(&self) -> CancelReason {
        self.reason
    }

    /// The message given to [`CancelScope::cancel_with`], if the cancel had
    /// one.
    #[must_use]
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            CancelReason::Requested => f.write_str("cancel scope was cancelled")?,
            CancelReason::Deadline => f.write_str("cancel scope deadline passed")?,
        }
        match &self.message {
            Some(m) => write!(f, ": {m}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Cancelled {}

/// The error of [`fail_after`](crate::fail_after) /
/// [`fail_at`](crate::fail_at): the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub(crate) ());

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}
