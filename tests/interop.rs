//! CancellationToken interop, both ways (feature `tokio-util`).
#![cfg(feature = "tokio-util")]

mod common;

use std::time::Duration;

use cancel_scope::{CancelReason, CancelScope};
use common::alive_tasks;
use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn token_follows_the_scope_its_ancestors_and_its_deadline() {
    let base = alive_tasks();
    let root = CancelScope::new();
    let child = root.child();
    let token = child.token();
    assert_eq!(alive_tasks(), base, "no task per token");
    root.cancel();
    assert!(token.is_cancelled());

    let timed = CancelScope::new().with_timeout(Duration::from_secs(1));
    let token = timed.token();
    assert!(!token.is_cancelled());
    token.cancelled().await;
    assert_eq!(timed.reason(), Some(CancelReason::Deadline));
}

#[test]
fn token_does_not_cancel_the_scope_and_a_dropped_scope_never_fires() {
    let scope = CancelScope::new();
    let token = scope.token();
    token.cancel();
    assert!(!scope.is_cancelled());

    let scope = CancelScope::new();
    let token = scope.token();
    drop(scope);
    assert!(!token.is_cancelled());

    let scope = CancelScope::new();
    scope.cancel();
    assert!(scope.token().is_cancelled(), "born cancelled");
}

#[tokio::test]
async fn linked_scope_follows_the_token_one_way() {
    let base = alive_tasks();
    let token = CancellationToken::new();
    let scope = CancelScope::linked(&token);
    let child = scope.child();
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base + 1, "one watcher");
    token.cancel();
    child.cancelled().await;
    assert_eq!(scope.reason(), Some(CancelReason::Requested));
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base, "the watcher ended with the token");

    let token = CancellationToken::new();
    let scope = CancelScope::linked(&token);
    scope.cancel();
    tokio::task::yield_now().await;
    assert!(!token.is_cancelled());
    assert_eq!(alive_tasks(), base, "the watcher ended with the scope");
}

#[tokio::test]
async fn linked_watcher_never_outlives_the_scope() {
    let base = alive_tasks();
    let token = CancellationToken::new();
    for _ in 0..100 {
        let scope = CancelScope::linked(&token);
        let _child = scope.child();
    }
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), base, "dropped scopes end their watchers");
    token.cancel();
    let born = CancelScope::linked(&token);
    assert!(born.is_cancelled());
    assert_eq!(alive_tasks(), base, "no watcher for a cancelled token");
}
