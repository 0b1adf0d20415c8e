//! The tracker's data in each task cell ([`TaskMeta`]), the options of one
//! spawn, and how its future reacts to cancellation ([`Mode`]).

use std::panic::Location;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::registry::TaskCell;
use crate::scope::CancelScope;

/// An escalation hook: runs once, on a thread of its own, when a task ignored
/// cancellation for the whole grace period, as the task is aborted.
pub(crate) type Hook = Box<dyn FnOnce() + Send + 'static>;

/// Starts a task's own ladder from its cell, for a task no poll can start it
/// from (a blocking closure): set by the tracker, which it reaches weakly.
pub(crate) type BeginLadder = Box<dyn Fn(&Arc<TrackedCell>) + Send + Sync + 'static>;

/// What an escalated or aborted task's poll runs before the task ends as
/// aborted, instead of ending at once: polled (by the task, never
/// concurrently) until it is ready. The seam of a feature layer whose task
/// owns something that must be torn down before the task may count as ended
/// (a scoped child process, reaped before its session ends); the user's
/// hook still runs as usual. Set by `pub(crate)` code only.
pub(crate) type Linger =
    Box<dyn FnMut(&mut std::task::Context<'_>) -> std::task::Poll<()> + Send + 'static>;

// ===== spawn options and per-task data =====

/// What a spawn needs besides the future.
pub(crate) struct TaskOptions<K> {
    pub(crate) key: Option<K>,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) hook: Option<Hook>,
    pub(crate) begin_ladder: Option<BeginLadder>,
    pub(crate) linger: Option<Linger>,
}

/// How a spawned future reacts to cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Dropped at its next poll once its scope is cancelled.
    Drop,
    /// Handed its scope; it decides.
    Cooperative,
}

/// The tokio layer's data in each task cell.
pub(crate) struct TaskMeta {
    /// When the task was spawned, on tokio's clock (paused or not), as read:
    /// converting it to the scope tree's 8-byte ticks cost more than the
    /// read itself (about 90 instructions per spawn), and the 8 bytes it
    /// saved do not change the cell's allocation (88 and 80 bytes both take
    /// a 96-byte malloc chunk).
    spawned_at: Instant,
    /// Where the task was spawned: the caller of the public spawn function
    /// (`#[track_caller]` all the way down), for reports.
    pub(crate) location: &'static Location<'static>,
    /// The task's own scope when it has one (keyed or cooperative tasks).
    pub(crate) scope: Option<CancelScope>,
    /// What only some tasks have, boxed so a plain task's cell stays small
    /// (bytes per pending task).
    pub(crate) extra: Option<Box<TaskExtra>>,
}

/// The rarer parts of a task's data: a name, a span, an escalation hook, a
/// blocking task's way to its ladder.
pub(crate) struct TaskExtra {
    pub(crate) name: Option<Arc<str>>,
    /// The task's span, when a subscriber wanted one at its spawn.
    pub(crate) span: Option<tracing::Span>,
    pub(crate) hook: Mutex<Option<Hook>>,
    pub(crate) begin_ladder: Option<BeginLadder>,
    /// Taken out for each poll, put back while it is pending (see [`Linger`]).
    pub(crate) linger: Mutex<Option<Linger>>,
}

impl TaskMeta {
    pub(crate) fn new(
        spawned_at: Instant,
        location: &'static Location<'static>,
        scope: Option<CancelScope>,
        name: Option<Arc<str>>,
        hook: Option<Hook>,
        span: Option<tracing::Span>,
        begin_ladder: Option<BeginLadder>,
    ) -> Self {
        let boxed = name.is_some() || hook.is_some() || span.is_some() || begin_ladder.is_some();
        let extra = boxed.then(|| {
            Box::new(TaskExtra {
                name,
                span,
                hook: Mutex::new(hook),
                begin_ladder,
                linger: Mutex::new(None),
            })
        });
        TaskMeta {
            spawned_at,
            location,
            scope,
            extra,
        }
    }

    /// With `linger` (see [`Linger`]), when there is one.
    pub(crate) fn with_linger(mut self, linger: Option<Linger>) -> Self {
        if let Some(linger) = linger {
            let extra = self.extra.get_or_insert_with(|| {
                Box::new(TaskExtra {
                    name: None,
                    span: None,
                    hook: Mutex::new(None),
                    begin_ladder: None,
                    linger: Mutex::new(None),
                })
            });
            *extra.linger.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(linger);
        }
        self
    }

    /// Time since the task was spawned, on tokio's clock.
    pub(crate) fn age(&self) -> Duration {
        self.age_at(Instant::now())
    }

    /// The task's age at `now` (zero for a `now` before its spawn): one clock
    /// read serves a whole snapshot, so its ages are of one instant.
    pub(crate) fn age_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.spawned_at)
    }

    #[inline]
    pub(crate) fn span(&self) -> Option<&tracing::Span> {
        self.extra.as_ref().and_then(|e| e.span.as_ref())
    }

    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        self.extra.as_ref().and_then(|e| e.name.as_ref())
    }

    /// A blocking task's way to its own ladder (see [`BeginLadder`]).
    pub(crate) fn begin_ladder(&self) -> Option<&BeginLadder> {
        self.extra.as_ref().and_then(|e| e.begin_ladder.as_ref())
    }

    /// Polls the task's [`Linger`], if it has one: `Ready` once it is done
    /// (or when there is none). Polled outside the slot's lock.
    pub(crate) fn poll_linger(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some(extra) = self.extra.as_ref() else {
            return std::task::Poll::Ready(());
        };
        let Some(mut linger) = crate::sync::lock(&extra.linger).take() else {
            return std::task::Poll::Ready(());
        };
        let polled = linger(cx);
        if polled.is_pending() {
            *crate::sync::lock(&extra.linger) = Some(linger);
        } else {
            // Dropped after the lock (the lock rule).
            drop(linger);
        }
        polled
    }

    /// Takes the escalation hook, if any (once).
    pub(crate) fn take_hook(&self) -> Option<Hook> {
        let extra = self.extra.as_ref()?;
        crate::sync::lock(&extra.hook).take()
    }
}

pub(crate) type TrackedCell = TaskCell<TaskMeta>;
