//! The shared backend context: a pub/sub feed that every session subscribes
//! to, like a Redis `SUBSCRIBE` connection pool behind an SSE gateway.
//!
//! It is created once per server, lazily, by the first connection (see
//! `server::AppState::context`). Its publisher ticks only while somebody is
//! subscribed, so an idle server schedules no wakeup at all: the idle-CPU
//! column of the load driver would show it otherwise.

use std::sync::Arc;
use std::time::Duration;

use cancel_scope::TaskGroup;
use tokio::sync::{Notify, broadcast, oneshot};
use tokio::time::MissedTickBehavior;

/// How many messages a slow subscriber may fall behind before it skips some.
const FEED_CAPACITY: usize = 64;

/// The backend "pool": one feed, many subscriptions.
#[derive(Debug)]
pub struct Backend {
    feed: broadcast::Sender<Arc<str>>,
    /// Wakes the parked publisher when the first subscriber arrives.
    subscribed: Notify,
}

impl Backend {
    /// Connects the backend (taking `connect_delay`, as a real pool's
    /// handshake would) and starts its publisher in `background`, one message
    /// every `tick`.
    pub async fn connect(
        connect_delay: Duration,
        tick: Duration,
        background: &TaskGroup,
    ) -> Arc<Backend> {
        tokio::time::sleep(connect_delay).await;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let backend = Arc::new(Backend {
            feed,
            subscribed: Notify::new(),
        });
        // Tracked: the server's shutdown ends it like any other task.
        background.spawn(publish(backend.clone(), tick));
        backend
    }

    /// A new subscription and the handle that closes it (the "transport").
    pub fn subscribe(&self) -> (Subscription, Closer) {
        let rx = self.feed.subscribe();
        // `notify_one` stores a permit when the publisher is not parked yet,
        // so a subscription made between its check and its wait is not missed.
        self.subscribed.notify_one();
        let (close_tx, close_rx) = oneshot::channel();
        (
            Subscription {
                rx,
                closed: close_rx,
            },
            Closer { _close: close_tx },
        )
    }
}

async fn publish(backend: Arc<Backend>, tick: Duration) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        if backend.feed.receiver_count() == 0 {
            // Nobody listens: park instead of ticking, so idle means idle.
            backend.subscribed.notified().await;
            ticker.reset();
        }
        ticker.tick().await;
        seq += 1;
        // An error only means every subscriber left since the check above.
        let _ = backend.feed.send(format!("tick {seq}").into());
    }
}

/// A session's subscription to the feed.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<str>>,
    closed: oneshot::Receiver<()>,
}

impl Subscription {
    /// The next message; `None` once the subscription is closed (its
    /// [`Closer`] dropped) or the backend is gone. Like a blocking
    /// `pubsub.listen()`, it knows nothing of cancel scopes.
    pub async fn recv(&mut self) -> Option<Arc<str>> {
        loop {
            tokio::select! {
                // Closed transport first: a closed subscription yields nothing more.
                biased;
                _ = &mut self.closed => return None,
                msg = self.rx.recv() => match msg {
                    Ok(msg) => return Some(msg),
                    // A subscriber that fell behind skips ahead, as pub/sub does.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// Closes its subscription when dropped: what an escalation hook calls to
/// end a session that ignores its cancel scope.
#[derive(Debug)]
pub struct Closer {
    // Never sent on: dropping it is the signal.
    _close: oneshot::Sender<()>,
}
