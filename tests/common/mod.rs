//! Helpers shared by the behaviour tests: poll counters and runtime probes.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// Counts the polls of the future it wraps.
pub struct PollCounter<F> {
    polls: Arc<AtomicUsize>,
    fut: Pin<Box<F>>,
}

impl<F> PollCounter<F> {
    pub fn new(polls: Arc<AtomicUsize>, fut: F) -> Self {
        PollCounter {
            polls,
            fut: Box::pin(fut),
        }
    }
}

impl<F: Future> Future for PollCounter<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.fut.as_mut().poll(cx)
    }
}

/// Tasks alive on the current runtime (the test's own included).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Runs `body` on its own thread and fails if it does not finish in 30 s (a
/// deadlock or a hang), passing its panic on otherwise.
pub fn watchdog(body: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let _ = done.send(());
        result
    });
    if finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .is_err()
    {
        panic!("deadlock or hang: the test did not finish within 30 s");
    }
    if let Err(payload) = thread.join().unwrap() {
        std::panic::resume_unwind(payload);
    }
}

/// A current-thread runtime on tokio's paused clock.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A multi-thread runtime with `workers` workers, on the real clock.
pub fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}
