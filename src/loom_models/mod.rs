//! Loom models of the runtime-free core (issue 4).
//!
//! Run as tokio does, in release mode with a bounded number of preemptions and
//! a target directory of its own (a `--cfg loom` build shares nothing with the
//! normal one):
//!
//! ```text
//! CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --lib loom_models -- --nocapture --test-threads=1
//! ```
//!
//! One `loom::model` per scenario. A model that passes only because loom never
//! reached the interesting interleaving would prove nothing, so each one names
//! the outcomes of its race and [`check`] asserts, after loom has explored every
//! interleaving, that each outcome was seen at least once. The tallies live in
//! `std` atomics: they are bookkeeping across loom iterations, outside the model.
//!
//! - `tree.rs`: the scope tree (lost wakeups, shields, first reason wins);
//! - `registry.rs`: tracked entries (done-task skipping, keyed replacement);
//! - `ladder.rs`: the ladder's wait for quiescence and its escalation, the
//!   real driver (`ladder/driver.rs`) over a step timer (the task polled as
//!   `Tracked::poll`), two ladders over one task, and the negative control.

mod ladder;
mod registry;
mod tree;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Instant;

/// Tally of the outcomes of one model's race, across all loom iterations.
#[derive(Debug)]
pub(super) struct Seen {
    expected: &'static [&'static str],
    counts: Mutex<BTreeMap<&'static str, usize>>,
    iterations: AtomicUsize,
}

impl Seen {
    pub(super) fn new(expected: &'static [&'static str]) -> Arc<Self> {
        Arc::new(Seen {
            expected,
            counts: Mutex::new(BTreeMap::new()),
            iterations: AtomicUsize::new(0),
        })
    }

    /// Called once at the start of every loom iteration.
    pub(super) fn iteration(&self) {
        self.iterations.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that this iteration ended with `outcome`.
    pub(super) fn hit(&self, outcome: &'static str) {
        assert!(
            self.expected.contains(&outcome),
            "unexpected outcome {outcome:?}"
        );
        *self.counts.lock().unwrap().entry(outcome).or_default() += 1;
    }
}

/// Runs `model` under loom, then asserts that every expected outcome of the
/// race was explored, and prints the number of interleavings and the time.
pub(super) fn check<F>(name: &str, seen: &Arc<Seen>, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let start = Instant::now();
    loom::model(model);
    let elapsed = start.elapsed();
    let counts = seen.counts.lock().unwrap().clone();
    let iterations = seen.iterations.load(Ordering::Relaxed);
    report(&format!(
        "loom model {name}: {iterations} interleavings in {elapsed:.2?}; outcomes {counts:?}"
    ));
    for outcome in seen.expected {
        assert!(
            counts.get(outcome).is_some_and(|&n| n > 0),
            "{name}: outcome {outcome:?} never explored ({counts:?}): the model misses one order of its race"
        );
    }
}

/// Runs the `#[ignore]`d negative-control model `test` (its path in this
/// binary) in a child process, as loom aborts the process while unwinding out
/// of a failed model; asserts that it failed for the reason named by a line
/// containing any of `expected`, and reports that line.
pub(super) fn negative_control(test: &str, expected: &[&str]) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--test-threads=1"])
        .output()
        .expect("run the test binary");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the negative control {test} passed: the model misses the bug it targets\n{text}"
    );
    let why = text
        .lines()
        .find(|l| expected.iter().any(|e| l.contains(e)))
        .unwrap_or_else(|| {
            panic!("the negative control {test} failed for another reason:\n{text}")
        });
    report(&format!(
        "negative control {test} failed as expected: {why}"
    ));
}

/// Writes a line to stderr past the test harness's capture, which swallows
/// loom's own (voluminous) output but should not hide the tallies.
pub(super) fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A waker that counts its wakes and forwards them to `inner`.
///
/// The count is a `std` atomic on purpose: it is read after the model's
/// threads are joined, so it needs no modelled ordering.
#[derive(Debug)]
pub(super) struct CountingWaker {
    inner: Waker,
    wakes: AtomicUsize,
}

impl CountingWaker {
    pub(super) fn new(inner: &Waker) -> Arc<Self> {
        Arc::new(CountingWaker {
            inner: inner.clone(),
            wakes: AtomicUsize::new(0),
        })
    }

    pub(super) fn wakes(&self) -> usize {
        self.wakes.load(Ordering::Relaxed)
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.inner.wake_by_ref();
    }
}
