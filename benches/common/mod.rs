//! Helpers shared by the benches of issue 5: the two runtime flavours every
//! comparison runs on, and process-level gauges (RSS, CPU time) for the
//! `harness = false` benches that print their own tables.
//!
//! Each bench binary uses a different subset, hence the `dead_code` allow at
//! every `mod common;`.

use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

/// The runtime flavours of issue 5: single-threaded, and two workers (the
/// machine has two cores).
#[derive(Debug, Clone, Copy)]
pub enum Flavor {
    CurrentThread,
    MultiThread2,
}

impl Flavor {
    pub const ALL: [Flavor; 2] = [Flavor::CurrentThread, Flavor::MultiThread2];

    pub fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread2 => "multi_thread_2w",
        }
    }

    pub fn runtime(self) -> Runtime {
        let mut b = match self {
            Flavor::CurrentThread => Builder::new_current_thread(),
            Flavor::MultiThread2 => {
                let mut b = Builder::new_multi_thread();
                b.worker_threads(2);
                b
            }
        };
        b.enable_all().build().expect("tokio runtime")
    }
}

/// Criterion reports "time per iteration"; the per-task benches run `n` tasks
/// per iteration and want ns per task, so they hand criterion the total
/// divided by `n`. Criterion's "time" column then reads directly as ns/task.
pub fn per_item(total: Duration, n: usize) -> Duration {
    total / u32::try_from(n).expect("item count fits u32")
}

/// Resident set size of this process in bytes (`/proc/self/statm`, field 2,
/// in pages).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).expect("positive page size")
}

/// CPU time consumed by the whole process so far (user + system), from
/// `getrusage(RUSAGE_SELF)`, as issue 5 asks.
pub fn rusage_cpu() -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Process CPU time in ns resolution (`CLOCK_PROCESS_CPUTIME_ID`): getrusage
/// is exact to the µs on this kernel too, but the small figures of the ladder
/// are worth a second, finer gauge.
pub fn process_cpu() -> Duration {
    // SAFETY: an all-zero `timespec` is valid and is overwritten.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Voluntary + involuntary context switches of the whole process: a proxy
/// for how often threads were woken.
pub fn context_switches() -> u64 {
    // SAFETY: as in `rusage_cpu`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

/// The median of `xs` (sorted in place).
pub fn median<T: Copy + PartialOrd>(xs: &mut [T]) -> T {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    xs[xs.len() / 2]
}

/// `main` of a criterion bench that also has a criterion-free profiling mode:
/// with `profile_var` set, runs `profile(value)` once (for callgrind / perf);
/// otherwise the criterion group `benches`, as `criterion_main!` would.
pub fn criterion_or_profile(profile_var: &str, profile: fn(&str), benches: fn()) {
    match std::env::var(profile_var) {
        Ok(name) => profile(&name),
        Err(_) => {
            benches();
            criterion::Criterion::default()
                .configure_from_args()
                .final_summary();
        }
    }
}

/// What both cancellation trees offer: a root, a child, a cancel. Implemented
/// for `CancelScope` and tokio-util's `CancellationToken`, so every bench runs
/// the same code over both.
pub trait CancelTree: Sized {
    fn root() -> Self;
    fn child(&self) -> Self;
    fn cancel(&self);
}

impl CancelTree for cancel_scope::CancelScope {
    fn root() -> Self {
        cancel_scope::CancelScope::new()
    }
    fn child(&self) -> Self {
        cancel_scope::CancelScope::child(self)
    }
    fn cancel(&self) {
        cancel_scope::CancelScope::cancel(self);
    }
}

impl CancelTree for tokio_util::sync::CancellationToken {
    fn root() -> Self {
        tokio_util::sync::CancellationToken::new()
    }
    fn child(&self) -> Self {
        self.child_token()
    }
    fn cancel(&self) {
        tokio_util::sync::CancellationToken::cancel(self);
    }
}

// ===== a task that ignores cancellation =====

/// What a stubborn task exposes to a bench: its polls, and its last waker
/// (for a canceller that re-delivers by hand).
#[derive(Default)]
pub struct StuckProbe {
    pub polls: std::sync::atomic::AtomicU64,
    pub waker: std::sync::Mutex<Option<std::task::Waker>>,
}

/// Ignores any cancellation: sleeps `stuck_for`, counting every poll.
pub async fn stubborn(probe: std::sync::Arc<StuckProbe>, stuck_for: Duration) {
    use std::future::Future;
    use std::sync::atomic::Ordering;
    let mut sleep = std::pin::pin!(tokio::time::sleep(stuck_for));
    std::future::poll_fn(|cx| {
        probe.polls.fetch_add(1, Ordering::Relaxed);
        *probe.waker.lock().expect("probe lock") = Some(cx.waker().clone());
        sleep.as_mut().poll(cx)
    })
    .await;
}

/// Waits (1 ms naps) until the stubborn task was polled once.
pub async fn until_first_poll(probe: &StuckProbe) {
    use std::sync::atomic::Ordering;
    while probe.polls.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
