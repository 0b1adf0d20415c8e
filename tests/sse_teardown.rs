//! The `sse_teardown` example's server and load driver, run small and checked
//! by counts: every session of a connect-and-drop wave is pruned, only the
//! stubborn ones escalate, re-deliveries stay bounded, the shared context is
//! built once, and shutdown ends open streams. With `--features process`
//! (unix), a wave with `process` sessions leaves no child process behind.
//!
//! The example's modules are compiled in here as they are, so the test checks
//! the code a reader runs. No CPU or wall-time assertion: waits are bounded
//! safety nets that return as soon as the condition holds.

// axum and hyper are not dependencies under `--cfg loom` (no `tokio::net`);
// the server runs under `cancel_scope::tower::ScopeLayer` (feature `axum`).
#![cfg(all(not(loom), feature = "axum"))]

// Shared with the example, which uses all of it; the test uses a part.
#[allow(dead_code)]
#[path = "../examples/sse_teardown/backend.rs"]
mod backend;
#[allow(dead_code)]
#[path = "../examples/sse_teardown/driver.rs"]
mod driver;
#[allow(dead_code)]
#[path = "../examples/sse_teardown/naive.rs"]
mod naive;
#[allow(dead_code)]
#[path = "../examples/sse_teardown/server.rs"]
mod server;

use std::time::Duration;

use driver::{Harness, WaveSpec};
use server::{BackendKind, Config, example_policy};

/// Bounds a wait for the teardown; only reached when the test fails.
const SAFETY_NET: Duration = Duration::from_secs(30);

/// The example's ladder with a longer grace: the test runs a debug build on a
/// loaded CI machine, and a cooperative session must never be escalated just
/// because it was not scheduled within 300 ms. The re-delivery schedule (25,
/// 75, 175 ms) is unchanged.
fn test_config() -> Config {
    Config {
        policy: cancel_scope::ShutdownPolicy {
            grace: Duration::from_secs(1),
            ..example_policy()
        },
        ..Config::default()
    }
}

fn start(config: Config) -> Harness {
    Harness::start("test", 0, config).expect("bind 127.0.0.1:0")
}

#[test]
fn wave_prunes_every_session_and_escalates_only_stubborn_ones() {
    let config = test_config();
    let max_redeliveries = u64::from(config.policy.max_redeliveries);
    let harness = start(config);
    let spec = WaveSpec {
        clients: 200,
        stubborn_share: 1.0 / 3.0,
        slow_share: 0.1,
        process_share: 0.0,
        events: 3,
        settle: SAFETY_NET,
        idle_window: None,
    };
    let (row, runs) = harness.wave(&spec);

    assert_eq!(row.client_errors, 0, "first error: {:?}", row.first_error);
    assert!(
        runs.iter().all(|r| r.events >= 3),
        "every client read its events"
    );
    let stubborn = row.stubborn as u64;
    assert_eq!(stubborn, 67);

    // Every session pruned: none left in the map, each one's end observed.
    let state = &harness.server().state;
    for run in &runs {
        let id = run.session.expect("every client got a session id");
        assert!(!state.is_tracked(id), "session {id} still tracked");
    }
    assert_eq!(row.pruned, 200);
    assert_eq!(row.unpruned, 0);
    assert_eq!(row.tracked, 0);
    assert_eq!(row.after.closing, 0);
    assert_eq!(row.stuck, 0);

    // Only the stubborn sessions needed the hook, each exactly once.
    assert_eq!(row.escalations, stubborn);
    // Each session is re-delivered to at most max_redeliveries times, whatever
    // number of ladders run over it (its key's, the map's). Stubborn and
    // slow-exit sessions park after seeing the cancel, so both can get them.
    let sessions = spec.clients as u64;
    assert!(
        row.redeliveries <= max_redeliveries * sessions,
        "{} re-deliveries for {sessions} sessions",
        row.redeliveries
    );
    assert_eq!(row.after.sessions, 200);
    assert_eq!(row.after.context_inits, 1);

    // `/stats` serves the same counters.
    let stats = harness
        .client(driver::get_json(harness.server().addr, "/stats"))
        .expect("GET /stats");
    for (key, value) in [
        ("tracked", 0),
        ("closing", 0),
        ("stuck", 0),
        ("escalations", stubborn),
        ("redeliveries", row.after.redeliveries),
    ] {
        assert_eq!(stats[key].as_u64(), Some(value), "/stats {key} in {stats}");
    }

    let teardown = harness.finish().expect("server was running");
    assert!(teardown.report.expect("the crate's ladder").is_clean());
}

#[test]
fn fifty_concurrent_first_connections_initialize_the_context_once() {
    // A slow "connect" keeps the initialization open while all 50 arrive.
    let harness = start(Config {
        connect_delay: Duration::from_secs(1),
        ..test_config()
    });
    assert_eq!(harness.server().snapshot().context_inits, 0, "lazy");
    let kinds = vec![BackendKind::Steady; 50];
    let runs = harness.client(driver::run_clients(harness.server().addr, &kinds, 1));
    assert!(
        runs.iter().all(|r| r.error.is_none() && r.events == 1),
        "{:?}",
        runs.iter().find(|r| r.error.is_some())
    );
    assert_eq!(
        harness.server().snapshot().first_connections,
        50,
        "all 50 arrived before the context was ready"
    );
    assert_eq!(harness.server().snapshot().context_inits, 1);
    harness.finish();
}

#[test]
fn shutdown_ends_open_streams_and_escalates_the_stubborn_session() {
    let mut harness = start(test_config());
    let addr = harness.server().addr;
    // Clients that never stop reading on their own, like `curl -N`.
    let clients: Vec<_> = [
        BackendKind::Steady,
        BackendKind::Stubborn,
        BackendKind::SlowExit,
    ]
    .into_iter()
    .map(|kind| {
        harness
            .client_runtime()
            .spawn(driver::sse_client(addr, kind, usize::MAX))
    })
    .collect();
    // Wait until all three are streaming.
    harness.client(async {
        tokio::time::timeout(SAFETY_NET, async {
            while harness.server().snapshot().tracked < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("three sessions start");
    });

    let teardown = harness.shutdown_server().expect("server was running");
    let report = teardown.report.expect("the crate's ladder");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.escalations, 1, "{report}");
    assert_eq!(
        report.completed + report.cancelled + report.aborted,
        3,
        "{report}"
    );
    assert!(teardown.connections_closed);
    // Each stream was ended by the server, not by the client giving up.
    for client in clients {
        let run = harness.client(client).expect("client task");
        assert_eq!(run.error.as_deref(), Some("stream ended early"));
    }
    harness.finish();
}

/// `GET /debug/tasks` lists a streaming session (its key, name, spawn site,
/// state) beside the background publisher, and forgets it once the client
/// has gone and the session was pruned.
#[test]
fn debug_tasks_lists_a_live_session_then_forgets_it() {
    let harness = start(test_config());
    let addr = harness.server().addr;
    let client =
        harness
            .client_runtime()
            .spawn(driver::sse_client(addr, BackendKind::Steady, usize::MAX));
    let is_session =
        |t: &serde_json::Value| t["name"].as_str().is_some_and(|n| n.starts_with("session"));
    let tasks = harness.client(async {
        tokio::time::timeout(SAFETY_NET, async {
            loop {
                let tasks = driver::get_json(addr, "/debug/tasks")
                    .await
                    .expect("GET /debug/tasks");
                if tasks.as_array().expect("an array").iter().any(is_session) {
                    return tasks;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the session shows up")
    });
    let tasks = tasks.as_array().unwrap();
    let session = tasks.iter().find(|t| is_session(t)).unwrap();
    let id = session["key"].as_str().expect("a session has a key");
    assert_eq!(
        session["name"],
        format!("session {id} (steady)"),
        "{session}"
    );
    assert_eq!(session["state"], "running", "{session}");
    assert_eq!(session["redeliveries"], 0);
    assert_eq!(session["blocking"], false);
    assert!(
        session["age_ms"].is_u64() && session["id"].is_u64(),
        "{session}"
    );
    let location = session["location"].as_str().unwrap();
    assert!(location.contains("sse_teardown/server.rs:"), "{location}");
    // The backend's publisher: a group task, no key.
    let publisher = tasks
        .iter()
        .find(|t| !is_session(t))
        .expect("the publisher");
    assert!(publisher["key"].is_null(), "{publisher}");
    assert!(
        publisher["location"]
            .as_str()
            .unwrap()
            .contains("sse_teardown/backend.rs:")
    );

    client.abort(); // the client goes: the session is torn down and pruned
    harness.client(async {
        tokio::time::timeout(SAFETY_NET, async {
            loop {
                let tasks = driver::get_json(addr, "/debug/tasks")
                    .await
                    .expect("GET /debug/tasks");
                if !tasks.as_array().unwrap().iter().any(is_session) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the session leaves the list");
    });
    harness.finish();
}

/// A wave in which a third of the sessions run a child process group (`sh -c
/// 'cat | cat'`): every session is pruned, each child was reaped by its
/// session's teardown (none is alive, none needed `reap_orphans`), and
/// nothing of their process groups remains, zombies included.
#[cfg(all(unix, feature = "process"))]
#[test]
fn process_sessions_leave_no_process_behind() {
    use std::collections::HashSet;

    // Grandchildren re-parented to a PID 1 that does not reap would stay
    // zombies (and be counted below); as a subreaper the children's teardown
    // reaps them. This test binary is a process of its own, so this and the
    // process-wide counters below concern only this file's tests, and only
    // this test starts processes.
    #[cfg(target_os = "linux")]
    cancel_scope::become_subreaper().expect("prctl(PR_SET_CHILD_SUBREAPER)");

    let harness = start(test_config());
    let spec = WaveSpec {
        clients: 30,
        stubborn_share: 0.0,
        slow_share: 0.0,
        process_share: 1.0 / 3.0,
        events: 3,
        settle: SAFETY_NET,
        idle_window: None,
    };
    let (row, runs) = harness.wave(&spec);

    assert_eq!(row.client_errors, 0, "first error: {:?}", row.first_error);
    assert!(
        runs.iter().all(|r| r.events >= 3),
        "every client read its events through its session"
    );
    assert_eq!(row.processes, 10);
    assert_eq!(row.children.len(), 10, "one child per process session");

    // Every session pruned.
    let state = &harness.server().state;
    for run in &runs {
        let id = run.session.expect("every client got a session id");
        assert!(!state.is_tracked(id), "session {id} still tracked");
    }
    assert_eq!(row.pruned, 30);
    assert_eq!(row.unpruned, 0);
    assert_eq!(row.tracked, 0);
    assert_eq!(row.stuck, 0);
    // Cooperative sessions: the ladder never had to escalate.
    assert_eq!(row.escalations, 0);

    // The wave ran `reap_orphans` after its window: the sessions' own
    // teardowns had reaped every child already, so nothing was orphaned.
    assert_eq!(row.orphans_reaped, 0);
    assert_eq!(row.orphans_failed, 0);
    assert_eq!(row.children_alive, 0);
    assert!(row.group_left.is_empty(), "{:?}", row.group_left);

    // Checked again here, independently of the driver's row.
    let report = harness.client(cancel_scope::reap_orphans());
    assert!(report.is_clean(), "{report}");
    assert!(report.reaped.is_empty() && report.already_gone.is_empty());
    let stats = cancel_scope::process_stats();
    assert_eq!(stats.alive, 0);
    assert_eq!(stats.orphans, 0);
    let pgids: HashSet<u32> = row.children.iter().copied().collect();
    assert_eq!(pgids.len(), 10);
    assert_eq!(
        driver::group_members(&pgids),
        Vec::new(),
        "processes (pid, state) left in the children's groups"
    );

    let teardown = harness.finish().expect("server was running");
    assert!(teardown.report.expect("the crate's ladder").is_clean());
}
