//! The one seam that feature layers build on (scoped processes, a map's
//! session leases), so that the core and the tracker know no feature by
//! name. (The tower layer needs not even this: it uses the public
//! `CancelScope` API alone.)
//!
//! A layer sees a group, a map or a task builder through [`Tracks`]: the
//! tracker behind it (its scope, whether it is closed) and nothing else it
//! could not reach through the public API. What a layer keeps per tracker
//! (a process count, lease expiries) it attaches as an [`Extension`]; the
//! tracker adds every extension's counters to its [`Stats`], so reports
//! (diffs of two stats) count them too. As tokio-util's `TaskTracker` is
//! "equivalent to `tokio::spawn(tracker.track_future(task))`", a layer's
//! tasks are ordinary tracked tasks: a process-owning task drives its
//! child's reaper and counts itself in its layer's extension once the child
//! is reaped; its [`Linger`](crate::task::Linger), the one hook a layer sets
//! on a task, lets it finish that reap after an escalation.

use std::any::Any;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::Tracker;
use crate::sync::lock;
use crate::task::Stats;

/// A group, a map or a task builder, as the tracker it spawns into.
pub(crate) trait Tracks<K: Eq + Hash + Clone + Debug + Send + Sync + 'static> {
    /// The tracker behind this handle.
    fn tracker(&self) -> &Arc<Tracker<K>>;
}

/// What a feature layer keeps per tracker.
pub(crate) trait Extension: Any + Send + Sync {
    /// Adds this layer's counters to a snapshot of the tracker's stats.
    fn add_to(&self, stats: &mut Stats);
}

/// The extensions of one tracker, at most one of each type, in the order
/// they were attached. Attached once, never removed: a lookup clones an
/// `Arc` under the lock (the layer's, not a user's value), and the counters
/// are read after it.
#[derive(Default)]
pub(crate) struct Extensions {
    all: Mutex<Vec<Arc<dyn Extension>>>,
    /// Whether any is attached, read without the lock: every ladder's report
    /// reads the stats, and a tracker without a feature layer (most) must
    /// not pay a lock for that. Release/Acquire: a reader that sees `true`
    /// finds the extension under the lock.
    any: AtomicBool,
}

impl Extensions {
    /// The tracker's extension of type `E`, attached by `make` on first use.
    pub(crate) fn get_or_attach<E: Extension>(&self, make: impl FnOnce() -> E) -> Arc<E> {
        let mut all = lock(&self.all);
        let found = all.iter().find_map(|e| {
            let any: Arc<dyn Any + Send + Sync> = e.clone();
            any.downcast::<E>().ok()
        });
        found.unwrap_or_else(|| {
            let new = Arc::new(make());
            all.push(new.clone());
            self.any.store(true, Ordering::Release);
            new
        })
    }

    /// Adds every extension's counters to `stats`.
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let all: Vec<Arc<dyn Extension>> = lock(&self.all).clone();
        for e in all {
            e.add_to(stats);
        }
    }
}

impl Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("attached", &lock(&self.all).len())
            .finish()
    }
}
