//! [`DropGuard`]: a scope handle that cancels its scope when dropped.

use super::CancelScope;

// ===== impl DropGuard =====

/// Cancels its scope when dropped; see [`CancelScope::drop_guard`].
#[derive(Debug)]
pub struct DropGuard {
    pub(super) scope: Option<CancelScope>,
}

impl DropGuard {
    /// Gives the scope back without cancelling it.
    #[must_use]
    pub fn disarm(mut self) -> CancelScope {
        self.scope
            .take()
            .expect("a DropGuard holds its scope until disarmed or dropped")
    }

    /// The guarded scope.
    #[must_use]
    pub fn scope(&self) -> &CancelScope {
        self.scope
            .as_ref()
            .expect("a DropGuard holds its scope until disarmed or dropped")
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            scope.cancel();
        }
    }
}
