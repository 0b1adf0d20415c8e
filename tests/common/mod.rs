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
