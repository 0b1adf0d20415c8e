//! The load driver: waves of real HTTP/1.1 SSE clients over loopback, each
//! reading a few events and then dropping its connection, and the
//! measurements taken after each wave.
//!
//! The server and the clients run on two runtimes of one process, so a
//! client's drop instant and a session's prune instant come from one clock.
//! After a wave the driver waits for the teardown to finish (bounded by the
//! ladder's `grace + abort_grace` plus a margin), then samples the process's
//! CPU time over an idle window with no client connected.
//!
//! With `--features process`, a share of the sessions run a child process;
//! after the window the driver calls `reap_orphans()`, reads
//! `process_stats()`, and looks in `/proc` for anything left of the
//! children's process groups.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::server::{BackendKind, Config, Server, SessionId, Snapshot, Teardown};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest a client may take end to end, so a wave always ends.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

// ===== one client =====

/// What one client did.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// The session id the server sent first.
    pub session: Option<SessionId>,
    /// Data events read (the session event not counted).
    pub events: usize,
    /// When its connection was closed (after the socket's drop).
    pub dropped_at: Instant,
    pub error: Option<String>,
}

/// An SSE event as parsed by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SseEvent {
    name: Option<String>,
    data: String,
}

/// Splits an SSE byte stream into events (comments, such as keep-alives,
/// are skipped).
#[derive(Debug, Default)]
struct SseParser {
    buf: String,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut event = SseEvent {
                name: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event.name = Some(v.trim_start().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    event.data.push_str(v.trim_start());
                    has_data = true;
                }
            }
            if has_data {
                out.push(event);
            }
        }
        out
    }
}

/// Opens an SSE stream on `backend=kind`, reads the session id and `want`
/// data events, then drops the connection at once (unread data still in
/// flight, so the kernel resets it: an abrupt disconnect).
pub async fn sse_client(addr: SocketAddr, kind: BackendKind, want: usize) -> ClientRun {
    let mut run = ClientRun {
        session: None,
        events: 0,
        dropped_at: Instant::now(),
        error: None,
    };
    let result =
        tokio::time::timeout(CLIENT_TIMEOUT, read_stream(addr, kind, want, &mut run)).await;
    // `read_stream` has dropped its connection by now: this is the disconnect.
    run.dropped_at = Instant::now();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => run.error = Some(e.to_string()),
        Err(_) => run.error = Some(format!("timed out after {CLIENT_TIMEOUT:?}")),
    }
    run
}

async fn read_stream(
    addr: SocketAddr,
    kind: BackendKind,
    want: usize,
    run: &mut ClientRun,
) -> Result<(), BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let mut conn = Box::pin(conn);
    let request = Request::get(format!("/sse?backend={}", kind.as_str()))
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let reading = async {
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()).into());
        }
        let mut body = response.into_body();
        let mut parser = SseParser::default();
        while run.session.is_none() || run.events < want {
            let Some(frame) = body.frame().await else {
                return Err("stream ended early".into());
            };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            for event in parser.push(&data) {
                match event.name.as_deref() {
                    Some("session") => run.session = event.data.parse().ok(),
                    _ => run.events += 1,
                }
            }
        }
        Ok::<_, BoxError>(())
    };
    tokio::pin!(reading);
    let result = tokio::select! {
        r = &mut reading => r,
        r = conn.as_mut() => match r {
            // A closed connection has handed its last bytes (or its error) to
            // the body already: let the reader see how the stream ended.
            Ok(()) => reading.await,
            Err(e) => Err(e.into()),
        },
    };
    // Closing the socket is the disconnect the server has to notice.
    drop(conn);
    result
}

/// GETs `path` and parses the body as JSON (for `/stats`).
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let body = sender.send_request(request).await?.into_body();
    let bytes = body.collect().await?.to_bytes();
    conn.abort();
    Ok(serde_json::from_slice(&bytes)?)
}

// ===== a wave =====

/// Backends for `clients` clients: each `(kind, share)` in turn takes its
/// quota (of the whole wave, rounded) from the clients not picked yet, spread
/// evenly over them; the rest are steady.
#[must_use]
pub fn mix_shares(clients: usize, shares: &[(BackendKind, f64)]) -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::Steady; clients];
    let mut free: Vec<usize> = (0..clients).collect();
    // Bresenham-style spreading: item i of `total` is picked when the running
    // quota `n` crosses an integer, which happens exactly `n` times.
    let crosses = |i: usize, n: usize, total: usize| (i + 1) * n / total > i * n / total;
    for &(kind, share) in shares {
        let total = free.len();
        let quota = ((clients as f64 * share.clamp(0.0, 1.0)).round() as usize).min(total);
        let mut rest = Vec::with_capacity(total - quota);
        for (i, &slot) in free.iter().enumerate() {
            if crosses(i, quota, total) {
                kinds[slot] = kind;
            } else {
                rest.push(slot);
            }
        }
        free = rest;
    }
    kinds
}

/// Runs one client per entry of `kinds`, all at once, on the current runtime.
pub async fn run_clients(addr: SocketAddr, kinds: &[BackendKind], events: usize) -> Vec<ClientRun> {
    let clients: Vec<_> = kinds
        .iter()
        .map(|&kind| tokio::spawn(sse_client(addr, kind, events)))
        .collect();
    let mut runs = Vec::with_capacity(clients.len());
    for client in clients {
        runs.push(client.await.expect("client tasks do not panic"));
    }
    runs
}

/// A wave's parameters.
#[derive(Debug, Clone)]
pub struct WaveSpec {
    pub clients: usize,
    pub stubborn_share: f64,
    pub slow_share: f64,
    /// Share of `process` sessions; must be 0 without `--features process`.
    pub process_share: f64,
    /// Data events each client reads before it drops.
    pub events: usize,
    /// Longest wait for the teardown after the last client dropped.
    pub settle: Duration,
    /// The idle window over which CPU is sampled (`None`: no sample).
    pub idle_window: Option<Duration>,
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct WaveRow {
    pub mode: &'static str,
    pub clients: usize,
    pub stubborn: usize,
    pub client_errors: usize,
    pub first_error: Option<String>,
    pub events: usize,
    /// disconnect → entry pruned, over the sessions that were pruned.
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// Sessions of this wave whose prune was observed (by the window's end).
    pub pruned: usize,
    /// Sessions of this wave the registry still holds after the window.
    pub unpruned: usize,
    pub escalations: u64,
    pub stuck: u64,
    pub tracked: u64,
    pub redeliveries: u64,
    pub idle_cpu_pct: Option<f64>,
    /// Counters at the end of the window.
    pub after: Snapshot,
    /// Sessions of this wave that ran a child process.
    pub processes: usize,
    /// Children started by this wave's sessions (their pids, also the ids
    /// of their process groups).
    pub children: Vec<u32>,
    /// Orphans `reap_orphans()` tore down after the window (reaped, or found
    /// already gone), and the ones it failed on.
    pub orphans_reaped: usize,
    pub orphans_failed: usize,
    /// Scoped children alive after the window and `reap_orphans()`
    /// (`process_stats().alive`).
    pub children_alive: usize,
    /// Processes (zombies included) left in this wave's children's process
    /// groups after that, read from `/proc`: (pid, state).
    pub group_left: Vec<(u32, char)>,
}

impl WaveRow {
    /// tracked = 0, stuck = 0, idle CPU < 2% of a core, and every client got
    /// its session (a wave that could not connect proves nothing).
    #[must_use]
    pub fn pass(&self) -> bool {
        self.tracked == 0
            && self.unpruned == 0
            && self.stuck == 0
            && self.client_errors == 0
            && self.idle_cpu_pct.is_none_or(|c| c < 2.0)
            && self.children_alive == 0
            && self.group_left.is_empty()
            && self.orphans_failed == 0
    }
}

/// A server on its own runtime and a client runtime, as the example runs them.
#[derive(Debug)]
pub struct Harness {
    pub mode: &'static str,
    server_rt: Runtime,
    client_rt: Runtime,
    /// `None` once shut down.
    server: Option<Server>,
}

fn runtime(name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
}

impl Harness {
    /// Starts the server on 127.0.0.1:`port` on a runtime of its own.
    pub fn start(mode: &'static str, port: u16, config: Config) -> std::io::Result<Harness> {
        let server_rt = runtime("server")?;
        let client_rt = runtime("client")?;
        let server = server_rt.block_on(Server::start(port, config))?;
        Ok(Harness {
            mode,
            server_rt,
            client_rt,
            server: Some(server),
        })
    }

    /// The server.
    ///
    /// # Panics
    ///
    /// After [`shutdown_server`](Self::shutdown_server).
    #[must_use]
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the server is shut down")
    }

    /// Runs `f` on the client runtime.
    pub fn client<F: Future>(&self, f: F) -> F::Output {
        self.client_rt.block_on(f)
    }

    /// The client runtime, to run clients across a server shutdown (only the
    /// test does).
    #[cfg(test)]
    #[must_use]
    pub fn client_runtime(&self) -> &tokio::runtime::Handle {
        self.client_rt.handle()
    }

    /// Shuts the server down (bounded, see [`Server::shutdown`]); the client
    /// runtime stays up.
    pub fn shutdown_server(&mut self) -> Option<Teardown> {
        let server = self.server.take()?;
        Some(self.server_rt.block_on(server.shutdown()))
    }

    /// Runs one wave and measures it.
    pub fn wave(&self, spec: &WaveSpec) -> (WaveRow, Vec<ClientRun>) {
        let server = self.server();
        let before = server.snapshot();
        server.state.take_prunes();
        #[allow(unused_mut)]
        let mut shares = vec![
            (BackendKind::Stubborn, spec.stubborn_share),
            (BackendKind::SlowExit, spec.slow_share),
        ];
        #[cfg(all(unix, feature = "process"))]
        shares.push((BackendKind::Process, spec.process_share));
        #[cfg(not(all(unix, feature = "process")))]
        assert!(
            spec.process_share <= 0.0,
            "process sessions need --features process (unix)"
        );
        let kinds = mix_shares(spec.clients, &shares);
        let runs = self.client(run_clients(server.addr, &kinds, spec.events));

        // Let the teardown finish before measuring idle. Polling here is the
        // driver's, not the server's, and it stops before the window.
        let settle_until = Instant::now() + spec.settle;
        while (server.snapshot().tracked > 0 || children_alive() > 0)
            && Instant::now() < settle_until
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let idle_cpu_pct = spec.idle_window.and_then(|window| {
            let (cpu0, wall0) = (process_cpu_time()?, Instant::now());
            std::thread::sleep(window);
            let (cpu1, wall) = (process_cpu_time()?, wall0.elapsed());
            Some(cpu1.saturating_sub(cpu0).as_secs_f64() / wall.as_secs_f64() * 100.0)
        });
        let after = server.snapshot();
        let children = self.take_children();
        let orphans = self.reap_orphans();
        let children_alive = children_alive();
        let group_left = group_members(&children.iter().copied().collect());

        let pruned_at: HashMap<SessionId, Instant> =
            server.state.take_prunes().into_iter().collect();
        let mut latencies: Vec<Duration> = runs
            .iter()
            .filter_map(|r| {
                let at = pruned_at.get(&r.session?)?;
                Some(at.saturating_duration_since(r.dropped_at))
            })
            .collect();
        latencies.sort_unstable();
        // Cross-check the prune log against the registry itself.
        let unpruned = runs
            .iter()
            .filter(|r| r.session.is_some_and(|id| server.state.is_tracked(id)))
            .count();
        let errors: Vec<&ClientRun> = runs.iter().filter(|r| r.error.is_some()).collect();
        let row = WaveRow {
            mode: self.mode,
            clients: spec.clients,
            stubborn: kinds
                .iter()
                .filter(|k| **k == BackendKind::Stubborn)
                .count(),
            client_errors: errors.len(),
            first_error: errors.first().and_then(|r| r.error.clone()),
            events: runs.iter().map(|r| r.events).sum(),
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            pruned: latencies.len(),
            unpruned,
            escalations: after.escalations - before.escalations,
            stuck: after.stuck,
            tracked: after.tracked,
            redeliveries: after.redeliveries - before.redeliveries,
            idle_cpu_pct,
            after,
            processes: kinds.iter().filter(|k| k.is_process()).count(),
            children,
            orphans_reaped: orphans.0,
            orphans_failed: orphans.1,
            children_alive,
            group_left,
        };
        (row, runs)
    }

    /// The pids of the children started since the last call.
    fn take_children(&self) -> Vec<u32> {
        #[cfg(all(unix, feature = "process"))]
        {
            self.server().state.take_children()
        }
        #[cfg(not(all(unix, feature = "process")))]
        {
            Vec::new()
        }
    }

    /// `reap_orphans()` (on the server's runtime, where the children's
    /// reapers run): (orphans reaped or already gone, failures).
    fn reap_orphans(&self) -> (usize, usize) {
        #[cfg(all(unix, feature = "process"))]
        {
            let report = self.server_rt.block_on(cancel_scope::reap_orphans());
            if !report.is_clean() {
                eprintln!("[{}] {report}", self.mode);
            }
            (
                report.reaped.len() + report.already_gone.len(),
                report.failed.len(),
            )
        }
        #[cfg(not(all(unix, feature = "process")))]
        {
            (0, 0)
        }
    }

    /// Shuts the server down (bounded) and drops both runtimes without
    /// waiting for tasks that ignore them (the naive leftovers).
    pub fn finish(mut self) -> Option<Teardown> {
        let teardown = self.shutdown_server();
        self.client_rt.shutdown_timeout(Duration::from_millis(100));
        self.server_rt.shutdown_timeout(Duration::from_millis(100));
        teardown
    }
}

/// The `p`th percentile of sorted samples (nearest rank).
#[must_use]
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

// ===== child processes =====

/// Scoped children of this process not reaped yet (`process_stats().alive`;
/// 0 without the `process` feature).
#[must_use]
pub fn children_alive() -> usize {
    #[cfg(all(unix, feature = "process"))]
    {
        cancel_scope::process_stats().alive
    }
    #[cfg(not(all(unix, feature = "process")))]
    {
        0
    }
}

/// Every process in `/proc` (zombies included) whose process group is one of
/// `pgids`, with its state letter (`Z` for a zombie). Empty where there is no
/// `/proc`.
#[must_use]
pub fn group_members(pgids: &HashSet<u32>) -> Vec<(u32, char)> {
    if pgids.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A process that exited since the listing is not left over.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name's ')': state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
        let pgrp = fields.get(2).and_then(|s| s.parse::<u32>().ok());
        if pgrp.is_some_and(|g| pgids.contains(&g)) {
            found.push((pid, state));
        }
    }
    found
}

// ===== CPU time =====

/// CPU time used by this process so far: the sum over its threads of
/// `/proc/self/task/*/schedstat` (nanoseconds), or `utime + stime` from
/// `/proc/self/stat` (clock ticks of 10 ms) where schedstat is missing.
#[must_use]
pub fn process_cpu_time() -> Option<Duration> {
    schedstat_cpu_time().or_else(stat_cpu_time)
}

fn schedstat_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that exited since the listing has nothing more to add.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

fn stat_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some(Duration::from_millis(ticks * 10))
}

// ===== the report =====

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

/// Whether the table has the process columns (built with `process`).
const PROCESS_COLUMNS: bool = cfg!(all(unix, feature = "process"));

/// The table's header.
#[must_use]
pub fn header() -> String {
    let process = if PROCESS_COLUMNS {
        format!(
            " {:>5} {:>6} {:>7} {:>8}",
            "procs", "alive", "orphans", "grp left"
        )
    } else {
        String::new()
    };
    format!(
        "{:<6} {:>7} {:>7} {:>9} {:>9} {:>6} {:>6} {:>8} {:>9} {:>9}{process}  {}",
        "mode",
        "clients",
        "events",
        "p50 ms",
        "p99 ms",
        "escal",
        "stuck",
        "tracked",
        "redeliv",
        "idle CPU",
        "verdict"
    )
}

/// One row of the table.
#[must_use]
pub fn format_row(r: &WaveRow) -> String {
    let process = if PROCESS_COLUMNS {
        format!(
            " {:>5} {:>6} {:>7} {:>8}",
            r.processes,
            r.children_alive,
            r.orphans_reaped,
            r.group_left.len()
        )
    } else {
        String::new()
    };
    format!(
        "{:<6} {:>7} {:>7} {:>9} {:>9} {:>6} {:>6} {:>8} {:>9} {:>8}%{process}  {}",
        r.mode,
        r.clients,
        r.events,
        ms(r.p50),
        ms(r.p99),
        r.escalations,
        r.stuck,
        r.tracked,
        r.redeliveries,
        r.idle_cpu_pct
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
        if r.pass() { "PASS" } else { "FAIL" }
    )
}

/// The progress line printed when a wave's clients are done.
#[must_use]
pub fn progress(r: &WaveRow, index: usize, waves: usize) -> String {
    let mut line = format!(
        "[{}] wave {}/{}: {} clients ({} stubborn), {} events, {} pruned, {} still tracked, \
         {} client errors",
        r.mode,
        index + 1,
        waves,
        r.clients,
        r.stubborn,
        r.events,
        r.pruned,
        r.unpruned,
        r.client_errors
    );
    if let Some(e) = &r.first_error {
        line.push_str(&format!(" (first: {e})"));
    }
    if r.processes > 0 {
        line.push_str(&format!(
            "; {} process sessions: {} children, {} alive after the window, {} orphans \
             reaped, {} processes left in their groups",
            r.processes,
            r.children.len(),
            r.children_alive,
            r.orphans_reaped,
            r.group_left.len()
        ));
        if let Some((pid, state)) = r.group_left.first() {
            line.push_str(&format!(" (first: pid {pid}, state {state})"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_splits_events_and_skips_comments() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: session\nda").is_empty());
        let evs = p.push(b"ta: 7\n\n:\n\ndata: tick 1\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].name.as_deref(), Some("session"));
        assert_eq!(evs[0].data, "7");
        assert_eq!(evs[1].data, "tick 1");
    }

    #[test]
    fn mix_hits_the_quotas() {
        let kinds = mix_shares(
            200,
            &[
                (BackendKind::Stubborn, 1.0 / 3.0),
                (BackendKind::SlowExit, 0.1),
            ],
        );
        let count = |k| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(count(BackendKind::Stubborn), 67);
        assert_eq!(count(BackendKind::SlowExit), 20);
        assert_eq!(count(BackendKind::Steady), 113);
    }

    #[test]
    fn mix_shares_takes_each_quota_from_what_is_left() {
        let kinds = mix_shares(
            30,
            &[
                (BackendKind::Stubborn, 0.5),
                (BackendKind::SlowExit, 0.4),
                (BackendKind::Stubborn, 0.3),
            ],
        );
        let count = |k| kinds.iter().filter(|x| **x == k).count();
        // 15 stubborn, then 12 slow-exit of the 15 left, then 3 of the last 3
        // (9 asked, capped).
        assert_eq!(count(BackendKind::Stubborn), 18);
        assert_eq!(count(BackendKind::SlowExit), 12);
        assert_eq!(count(BackendKind::Steady), 0);
    }
}
