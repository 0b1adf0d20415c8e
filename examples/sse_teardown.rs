//! SSE teardown under a connect-and-drop spike: every session torn down,
//! nothing left tracked, and the process back to idle.
//!
//! An axum SSE server on 127.0.0.1 runs one session task per connection in a
//! [`TaskMap`](cancel_scope::TaskMap). A session forwards a shared backend
//! feed to its client; the backend is chosen per connection by
//! `?backend=steady|stubborn|slow-exit`:
//!
//! - `steady` observes its cancel scope and ends on the first delivery;
//! - `stubborn` ignores its scope, like a blocking `pubsub.listen()`: only the
//!   escalation hook (it closes the backend subscription) and abort end it;
//! - `slow-exit` observes its scope, then flushes in a shielded child scope
//!   with its own deadline;
//! - `process` (only with `--features process`, unix) forwards the feed
//!   through a child process used as a stdio server (`sh -c 'cat | cat'`),
//!   started with the map's per-key process API so that the child belongs to
//!   the session's own scope: the session's teardown sends SIGTERM to the
//!   child's process group, waits `term_grace`, sends SIGKILL, and reaps it.
//!
//! The router runs under [`ScopeLayer`](cancel_scope::tower::ScopeLayer)
//! (feature `axum`): when a client disconnects, hyper drops the response
//! body and the layer cancels the request's scope, which wakes a watcher that
//! calls `TaskMap::begin_cancel_task` (by task id): the ladder (cancel,
//! timer-spaced re-delivery, escalation at grace, stuck report) runs in the
//! background, and the session's entry prunes itself when its task ends. At
//! shutdown the layer's scope is cancelled, which ends every open stream. The shared backend context is built
//! once, by whichever first connection gets there, with `tokio::sync::OnceCell`.
//!
//! The default mode is a load driver in the same process: waves of real HTTP
//! clients (hyper, on a second runtime) that each read a few events and drop
//! their connection, then an idle window measuring the process's CPU time.
//! A wave passes when nothing is tracked or stuck after the window and idle
//! CPU is under 2% of one core. With `--features process` a share of each
//! wave (`--process-share`, default 0.1) runs `process` sessions; after the
//! window the driver calls `reap_orphans()` and reads `process_stats()`, and
//! the wave also needs 0 children alive and nothing left of their process
//! groups in `/proc`. (Under a heavy spike a few cooperative
//! sessions may escalate too: grace counts from the delivery, and a session
//! the overloaded runtime did not poll within it is escalated like a stubborn
//! one. The hook and abort end it all the same.)
//!
//! ```text
//! cargo run --release --features axum --example sse_teardown                # waves of 500, 1000, 2000 clients
//! cargo run --release --features axum --example sse_teardown -- --compare   # beside the naive anti-pattern
//! cargo run --release --features axum --example sse_teardown -- --naive     # the anti-pattern alone
//! cargo run --release --features axum --example sse_teardown -- --waves 200,400 --stubborn-share 0.5
//! cargo run --release --features axum,process --example sse_teardown -- --process-share 0.3
//! ```
//!
//! `--naive` runs the same server and waves with what gateways often do
//! instead: plain `tokio::spawn`, a `Mutex<HashMap>` registry nothing prunes,
//! and a canceller that re-tries every tick until the task is gone (bounded to
//! 3 s here so the example ends; in production it spins forever).
//!
//! To watch it by hand:
//!
//! ```text
//! cargo run --release --features axum --example sse_teardown -- --server-only --port 3000
//! curl -N 'http://127.0.0.1:3000/sse?backend=stubborn'   # Ctrl-C it: a disconnect
//! curl http://127.0.0.1:3000/stats                       # tracked, closing, stuck, ...
//! curl http://127.0.0.1:3000/debug/tasks                 # each live task: key, state, age, ...
//! ```
//!
//! Ctrl-C (or SIGTERM) on the server stops accepting, ends the open streams
//! at once (`curl -N` ones included), tears every session down, prints the
//! `ShutdownReport` and exits within `grace + abort_grace` (500 ms here).
//!
//! Exit code: 1 if a wave of the crate's server fails (with `--naive`: if a
//! naive wave fails, which is the expected outcome), 2 on bad arguments.

#[path = "sse_teardown/backend.rs"]
mod backend;
#[path = "sse_teardown/driver.rs"]
mod driver;
#[path = "sse_teardown/naive.rs"]
mod naive;
#[path = "sse_teardown/server.rs"]
mod server;

use std::process::ExitCode;
use std::time::Duration;

use driver::{Harness, WaveRow, WaveSpec};
use server::{Config, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Waves,
    Naive,
    Compare,
    ServerOnly,
}

#[derive(Debug, Clone)]
struct Args {
    mode: Mode,
    waves: Vec<usize>,
    stubborn_share: f64,
    slow_share: f64,
    process_share: f64,
    events: usize,
    port: u16,
}

/// Whether the `process` backend is compiled in.
const PROCESS: bool = cfg!(all(unix, feature = "process"));

const USAGE: &str = "\
usage: sse_teardown [--compare | --naive | --server-only] [options]
  --waves LIST|N        wave sizes (default 500,1000,2000), or a number of waves
  --clients N           clients per wave (keeps the number of waves)
  --stubborn-share F    share of stubborn sessions (default 0.2)
  --slow-share F        share of slow-exit sessions (default 0.1)
  --process-share F     share of process sessions (default 0.1 with --features process,
                        which it needs; 0 without)
  --events N            events each client reads before dropping (default 3)
  --port P              server port on 127.0.0.1 (default 0: any free port)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: Mode::Waves,
        waves: vec![500, 1000, 2000],
        stubborn_share: 0.2,
        slow_share: 0.1,
        process_share: if PROCESS { 0.1 } else { 0.0 },
        events: 3,
        port: 0,
    };
    let mut clients = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--compare" => args.mode = Mode::Compare,
            "--naive" => args.mode = Mode::Naive,
            "--server-only" => args.mode = Mode::ServerOnly,
            "--waves" => {
                let v = value("--waves")?;
                args.waves = if v.contains(',') {
                    v.split(',').map(parse_num).collect::<Result<_, _>>()?
                } else {
                    // A bare number is a count of waves of the first size.
                    vec![args.waves[0]; parse_num(&v)?]
                };
            }
            "--clients" => clients = Some(parse_num(&value("--clients")?)?),
            "--stubborn-share" => args.stubborn_share = parse_share(&value("--stubborn-share")?)?,
            "--slow-share" => args.slow_share = parse_share(&value("--slow-share")?)?,
            "--process-share" => {
                args.process_share = parse_share(&value("--process-share")?)?;
                if !PROCESS && args.process_share > 0.0 {
                    return Err("--process-share needs --features process (unix)".to_owned());
                }
            }
            "--events" => args.events = parse_num(&value("--events")?)?.max(1),
            "--port" => {
                let v = value("--port")?;
                args.port = v.parse().map_err(|_| format!("bad port {v:?}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(n) = clients {
        args.waves.iter_mut().for_each(|w| *w = n);
    }
    if args.waves.is_empty() || args.waves.contains(&0) {
        return Err("waves need at least one client".to_owned());
    }
    if args.stubborn_share + args.slow_share + args.process_share > 1.0 {
        return Err(
            "--stubborn-share + --slow-share + --process-share must not exceed 1".to_owned(),
        );
    }
    Ok(args)
}

fn parse_num(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|_| format!("not a number: {s:?}"))
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("a share is a number from 0 to 1, not {s:?}")),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    // PID 1 in a minimal container (this sandbox's included) may not reap:
    // when a `process` session's shell dies before its `cat`s, they are
    // re-parented to PID 1 and would stay zombies there. As the subreaper of
    // our descendants we get them instead, and the child's teardown reaps
    // every member of its group that became ours, so nothing is left.
    #[cfg(all(target_os = "linux", feature = "process"))]
    if let Err(e) = cancel_scope::become_subreaper() {
        eprintln!("warning: could not become a subreaper ({e}): grandchildren may stay zombies");
    }
    let result = match args.mode {
        Mode::ServerOnly => server_only(&args),
        Mode::Waves => waves(&args, &["crate"]),
        Mode::Naive => waves(&args, &["naive"]),
        Mode::Compare => waves(&args, &["crate", "naive"]),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ===== load driver =====

/// Runs the waves against each mode in turn (one fresh server each, the
/// crate's first so the naive leftovers cannot disturb its measurements) and
/// prints the table. Returns whether the first mode passed.
fn waves(args: &Args, modes: &[&'static str]) -> std::io::Result<bool> {
    let policy = server::example_policy();
    println!(
        "sse_teardown: waves {:?}, {:.0}% stubborn, {:.0}% slow-exit, {:.0}% process, \
         {} events per client; ladder: grace {:?}, {} re-deliveries from {:?}, abort grace {:?}",
        args.waves,
        args.stubborn_share * 100.0,
        args.slow_share * 100.0,
        args.process_share * 100.0,
        args.events,
        policy.grace,
        policy.max_redeliveries,
        policy.backoff.initial,
        policy.abort_grace
    );
    let mut results: Vec<Vec<WaveRow>> = Vec::new();
    for &mode in modes {
        let config = Config {
            naive: mode == "naive",
            ..Config::default()
        };
        let harness = Harness::start(mode, args.port, config)?;
        println!("[{mode}] server on http://{}", harness.server().addr);
        // The anti-pattern has no process backend: its share runs steady.
        let process_share = if mode == "naive" {
            0.0
        } else {
            args.process_share
        };
        let mut rows = Vec::new();
        for (i, &clients) in args.waves.iter().enumerate() {
            let spec = WaveSpec {
                clients,
                stubborn_share: args.stubborn_share,
                slow_share: args.slow_share,
                process_share,
                events: args.events,
                // Past the ladder's bound, whatever is left is a finding.
                settle: policy.grace + policy.abort_grace + Duration::from_millis(300),
                idle_window: Some(Duration::from_secs(1)),
            };
            println!(
                "[{mode}] wave {}/{}: {clients} clients connecting ...",
                i + 1,
                args.waves.len()
            );
            let (row, _) = harness.wave(&spec);
            println!("{}", driver::progress(&row, i, args.waves.len()));
            rows.push(row);
        }
        // The same counters over HTTP, as a dashboard would read them.
        let stats = harness.client(driver::get_json(harness.server().addr, "/stats"));
        match stats {
            Ok(stats) => println!("[{mode}] GET /stats after the last window: {stats}"),
            Err(e) => println!("[{mode}] GET /stats failed: {e}"),
        }
        let teardown = harness.finish().expect("the server runs until here");
        match &teardown.report {
            Some(report) => println!(
                "[{mode}] server shutdown in {:?}: {report}",
                teardown.elapsed
            ),
            None => println!(
                "[{mode}] server shutdown in {:?}: no ladder; leftover tasks aborted",
                teardown.elapsed
            ),
        }
        results.push(rows);
    }

    println!();
    println!("{}", driver::header());
    for wave in 0..args.waves.len() {
        for rows in &results {
            println!("{}", driver::format_row(&rows[wave]));
        }
    }
    println!();
    let mut first_passed = true;
    for (i, rows) in results.iter().enumerate() {
        let passed = rows.iter().all(WaveRow::pass);
        let max_cpu = rows
            .iter()
            .filter_map(|r| r.idle_cpu_pct)
            .fold(0.0_f64, f64::max);
        let last = rows.last().expect("at least one wave");
        let children: usize = rows.iter().map(|r| r.children.len()).sum();
        let processes = if children > 0 {
            format!(
                ", {children} children started, {} alive after the last window, {} orphans \
                 reaped in all",
                last.children_alive,
                rows.iter().map(|r| r.orphans_reaped).sum::<usize>()
            )
        } else {
            String::new()
        };
        println!(
            "{:<6} {}: idle CPU up to {:.2}% of a core, {} sessions left tracked, {} stuck, \
             {} re-deliveries in all{processes}",
            last.mode,
            if passed { "PASS" } else { "FAIL" },
            max_cpu,
            last.tracked,
            last.stuck,
            last.after.redeliveries
        );
        if i == 0 {
            first_passed = passed;
        }
    }
    println!(
        "PASS needs tracked = 0, stuck = 0, no client error and idle CPU < 2% after every wave{}.",
        if PROCESS {
            "; with process sessions also 0 children alive after reap_orphans() and no \
             process left in their groups (procs: process sessions, alive: \
             process_stats().alive, orphans: reaped by reap_orphans(), grp left: from /proc)"
        } else {
            ""
        }
    );
    Ok(first_passed)
}

// ===== --server-only =====

fn server_only(args: &Args) -> std::io::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let clean = rt.block_on(async {
        let config = Config {
            verbose: true,
            // Nobody drains the log in this mode.
            record_prunes: false,
            ..Config::default()
        };
        let policy = config.policy;
        let server = Server::start(args.port, config).await?;
        let addr = server.addr;
        println!("listening on http://{addr}");
        println!(
            "  curl -N 'http://{addr}/sse?backend=stubborn'   (or steady, slow-exit{})",
            if PROCESS { ", process" } else { "" }
        );
        println!("  curl http://{addr}/stats");
        println!("  curl http://{addr}/debug/tasks");
        println!(
            "Ctrl-C or SIGTERM stops it within grace + abort_grace = {:?}",
            policy.grace + policy.abort_grace
        );
        shutdown_signal().await;
        println!(
            "\nsignal: stop accepting, tear every session down; at shutdown: {}",
            server.snapshot().to_json()
        );
        let teardown = server.shutdown().await;
        if let Some(report) = &teardown.report {
            println!("ShutdownReport: {report}");
        }
        println!(
            "stopped in {:?}; connections closed: {}",
            teardown.elapsed, teardown.connections_closed
        );
        Ok::<_, std::io::Error>(teardown.report.is_some_and(|r| r.is_clean()))
    })?;
    // Whatever hyper still holds (a socket mid-write) must not delay the exit.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(clean)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
