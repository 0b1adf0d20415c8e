//! The anti-pattern, for `--naive` and `--compare`: how SSE gateways commonly
//! manage sessions, and why they spin when idle.
//!
//! - sessions are plain `tokio::spawn`ed tasks, told to stop by a flag they
//!   check between events;
//! - a `Mutex<HashMap>` registry keeps their handles; nothing prunes an entry
//!   when its task ends (only a canceller that sees the end removes it);
//! - on disconnect a canceller sets the flag and re-tries on every tick
//!   (`yield_now`) until the task is gone. A task that ignores the flag keeps
//!   its canceller spinning: that is the 100%-CPU-while-idle bug.
//!
//! The one liberty taken: each canceller gives up after `spin_budget`, so the
//! example stops by itself. In production that loop has no bound.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::server::SessionId;

/// The naive session registry.
#[derive(Debug)]
pub struct NaiveSessions {
    tasks: Mutex<HashMap<SessionId, Entry>>,
    /// Canceller re-tries (one per `yield_now` tick): the naive re-deliveries.
    retries: AtomicU64,
    /// Cancellers running now.
    cancelling: AtomicU64,
    spin_budget: Duration,
}

#[derive(Debug)]
struct Entry {
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    /// Its canceller ran out of budget while the task was still alive.
    abandoned: bool,
}

/// The naive registry's counters, in the same terms as the crate's.
#[derive(Debug, Clone, Copy, Default)]
pub struct NaiveStats {
    pub tracked: u64,
    pub closing: u64,
    pub stuck: u64,
    pub retries: u64,
}

impl NaiveSessions {
    pub fn new(spin_budget: Duration) -> Arc<Self> {
        Arc::new(NaiveSessions {
            tasks: Mutex::new(HashMap::new()),
            retries: AtomicU64::new(0),
            cancelling: AtomicU64::new(0),
            spin_budget,
        })
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns a session, fire-and-forget, and files its handle.
    pub fn spawn(
        &self,
        id: SessionId,
        stop: Arc<AtomicBool>,
        session: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = tokio::spawn(session);
        self.tasks().insert(
            id,
            Entry {
                handle,
                stop,
                abandoned: false,
            },
        );
    }

    /// Starts a canceller for `id` that raises the stop flag and re-checks on
    /// every tick until the task has ended; then it removes the entry and
    /// calls `on_removed`.
    pub fn cancel(
        self: &Arc<Self>,
        id: SessionId,
        on_removed: impl FnOnce(Instant) + Send + 'static,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            this.cancelling.fetch_add(1, Ordering::Relaxed);
            loop {
                let ended = match this.tasks().get(&id) {
                    None => break,
                    Some(entry) => {
                        entry.stop.store(true, Ordering::Relaxed);
                        entry.handle.is_finished()
                    }
                };
                if ended {
                    this.tasks().remove(&id);
                    on_removed(Instant::now());
                    break;
                }
                if started.elapsed() >= this.spin_budget {
                    if let Some(entry) = this.tasks().get_mut(&id) {
                        entry.abandoned = true;
                    }
                    break;
                }
                this.retries.fetch_add(1, Ordering::Relaxed);
                // "Try again next tick": the busy loop.
                tokio::task::yield_now().await;
            }
            this.cancelling.fetch_sub(1, Ordering::Relaxed);
        });
    }

    pub fn contains(&self, id: SessionId) -> bool {
        self.tasks().contains_key(&id)
    }

    pub fn stats(&self) -> NaiveStats {
        let tasks = self.tasks();
        NaiveStats {
            tracked: tasks.len() as u64,
            closing: self.cancelling.load(Ordering::Relaxed),
            stuck: tasks
                .values()
                .filter(|e| e.abandoned && !e.handle.is_finished())
                .count() as u64,
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// The naive shutdown: abort whatever is filed. Returns how many were
    /// still running.
    pub fn abort_all(&self) -> usize {
        let mut tasks = self.tasks();
        let running = tasks.values().filter(|e| !e.handle.is_finished()).count();
        for (_, entry) in tasks.drain() {
            entry.handle.abort();
        }
        running
    }
}
