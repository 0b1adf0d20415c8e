//! Timeouts as Trio spells them: [`move_on_after`] / [`move_on_at`] (give up
//! quietly) and [`fail_after`] / [`fail_at`] (give up with [`Elapsed`]), each
//! a future run in a new [`CancelScope`] with a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::scope::{CancelScope, Elapsed, far_future};

// ===== timeouts =====

/// Runs `fut` in a new scope that is cancelled `after` from now: `Some(output)`
/// if it finished first, `None` if the deadline passed and `fut` was dropped
/// (as Trio's `move_on_after`). A zero duration never polls `fut`.
///
/// # Cancel safety
///
/// As cancel safe as `fut`.
///
/// # Panics
///
/// Outside a tokio runtime with a time driver, as [`CancelScope::with_deadline`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::move_on_after;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let slow = tokio::time::sleep(Duration::from_secs(10));
/// assert_eq!(move_on_after(Duration::from_secs(1), slow).await, None);
/// assert_eq!(move_on_after(Duration::from_secs(1), async { 7 }).await, Some(7));
/// # }
/// ```
pub async fn move_on_after<F: Future>(after: Duration, fut: F) -> Option<F::Output> {
    let at = Instant::now().checked_add(after).unwrap_or_else(far_future);
    move_on_at(at, fut).await
}

/// As [`move_on_after`], with an absolute deadline (as Trio's `move_on_at`).
///
/// # Cancel safety
///
/// As cancel safe as `fut`.
pub async fn move_on_at<F: Future>(at: Instant, fut: F) -> Option<F::Output> {
    let scope = CancelScope::new().with_deadline(at);
    scope.run(fut).await.ok()
}

/// Runs `fut` in a new scope that is cancelled `after` from now, and reports a
/// passed deadline as an error (as Trio's `fail_after`).
///
/// # Errors
///
/// [`Elapsed`] if the deadline passed before `fut` finished; `fut` was dropped.
///
/// # Cancel safety
///
/// As cancel safe as `fut`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cancel_scope::fail_after;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let err = fail_after(Duration::from_millis(5), std::future::pending::<()>()).await;
/// assert_eq!(err.unwrap_err().to_string(), "deadline has elapsed");
/// # }
/// ```
pub async fn fail_after<F: Future>(after: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let at = Instant::now().checked_add(after).unwrap_or_else(far_future);
    fail_at(at, fut).await
}

/// As [`fail_after`], with an absolute deadline (as Trio's `fail_at`).
///
/// # Errors
///
/// [`Elapsed`] if the deadline passed before `fut` finished.
///
/// # Cancel safety
///
/// As cancel safe as `fut`.
pub async fn fail_at<F: Future>(at: Instant, fut: F) -> Result<F::Output, Elapsed> {
    move_on_at(at, fut).await.ok_or(Elapsed(()))
}
