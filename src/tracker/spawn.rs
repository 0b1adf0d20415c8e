//! [`Tracker::spawn`]: checks, the task's own scope when it needs one, the
//! registry entry, the runtime spawn, and the races with `close`.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Tracker;
use super::tracked::Tracked;
use crate::registry::{Inserted, Registry, TaskId, Watch};
use crate::scope::CancelScope;
use crate::task::{Mode, SpawnError, TaskHandle, TaskMeta, TaskOptions};

impl<K> Tracker<K>
where
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
{
    /// Spawns `make(task_scope)` as a tracked task. `#[track_caller]` from
    /// every public spawn function down to tokio's, so tokio (its task hooks,
    /// tokio-console) and the ladder's reports see the user's spawn site.
    #[track_caller]
    pub(crate) fn spawn<F, Fut>(
        self: &Arc<Self>,
        opts: TaskOptions<K>,
        mode: Mode,
        make: F,
    ) -> Result<TaskHandle<Fut::Output>, SpawnError>
    where
        F: FnOnce(Option<CancelScope>) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        // Check first, so a failed spawn leaves nothing behind.
        if self.is_closed() {
            return Err(SpawnError::Closed);
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
        if self.runtime.get().is_none() {
            let _ = self.runtime.set(rt.clone());
        }
        let location = std::panic::Location::caller();
        let TaskOptions { key, name, hook } = opts;
        let own_scope = (mode == Mode::Cooperative || key.is_some()).then(|| self.scope.child());
        let watch = match (mode, &own_scope) {
            (Mode::Drop, Some(_)) => Watch::Own,
            // The tracker's scope, read through `shared`: no handle clone (two
            // atomic updates on a line every worker writes) per task.
            (Mode::Drop, None) => Watch::Tracker,
            (Mode::Cooperative, _) => Watch::Nothing,
        };
        let fut = make(own_scope.clone());
        let keyed = key.is_some();
        let id = TaskId::next();
        // One span per task, made only when a subscriber wants it: with none,
        // even a disabled span costs ~200 instructions per task once tracing's
        // `log` feature is on somewhere in the build. The task is polled
        // inside it, so the task's own events carry scope, task, name and key.
        // It lives in the cell's boxed extras: the future stays small.
        let span = tracing::enabled!(tracing::Level::DEBUG).then(|| {
            let key_field = key.as_ref().map(|k| format!("{k:?}"));
            tracing::debug_span!(
                parent: None,
                "task",
                task = %id,
                scope = self.scope.id(),
                name = name.as_deref(),
                key = key_field.as_deref(),
            )
        });
        // The own scope is kept for a per-task cancel (`TaskHandle::cancel`,
        // a key's ladder), for an abort, which cancels it (see `Tracked`),
        // and for `Watch::Own`.
        let meta = TaskMeta::new(Instant::now(), location, own_scope, name, hook, span);
        let Inserted { guard, replaced } = Registry::insert_as(self, id, watch, meta, key);
        let cell = guard.cell().clone();
        // After the insertion, SeqCst: see `disarm_deliverer`.
        if !self.deliverer_armed.load(Ordering::SeqCst) {
            self.arm_deliverer();
        }
        let tracked = Tracked { fut, guard };
        let join = rt.spawn(tracked);
        tracing::trace!(task = %id, name = ?cell.meta.name(), keyed, "spawned tracked task");
        // A `shutdown` (close, then cancel) that raced with this spawn may
        // have walked the registry before the insertion: give the task its
        // own ladder. SeqCst with `close`: if this load misses the store, the
        // closer's ladder sees the entry (see `close`).
        if self.is_closed() && self.scope.is_cancelled() {
            drop(self.begin_cancel(cell.clone()));
        }
        let handle = TaskHandle::new(id, join, Arc::downgrade(&cell));
        if let Some(old) = replaced {
            tracing::debug!(task = %old.id, replaced_by = %id, "key taken over: cancelling the old task");
            self.begin_cancel(old);
        }
        Ok(handle)
    }
}
