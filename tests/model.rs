//! The proptest state machine: random programs of operations on a `TaskGroup`
//! and a `TaskMap` (spawn with behaviours and escalation hooks that return,
//! panic or block, cancels of the group, the scope, a key, a task's handle,
//! aborts (by a handle, by an abort handle on another thread, of a key, of
//! the whole group), handle drops, replacement, the paused clock, shutdown,
//! parked `join` / `join_next` waiters re-polled in any order, and
//! `try_join_next` on the same queue of ends), each case under a
//! `ShutdownPolicy` of its own (any value the types allow), checked after
//! every step against a reference model (`tests/model/machine.rs`, shared
//! with the fuzz target).
//!
//! 256 cases by default; for a long run:
//! `PROPTEST_CASES=10000 cargo test --release --test model`.
//! Failing cases persist their seeds under `proptest-regressions/`.

#[path = "model/lang.rs"]
mod lang;
#[path = "model/machine.rs"]
mod machine;

use lang::{Behaviour, Factor, Hook, Key, Ms, Op, Setup, Span, TaskRef};
use proptest::prelude::*;

fn ms() -> impl Strategy<Value = Ms> {
    (0u8..32).prop_map(Ms)
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => ms().prop_map(Behaviour::EndsAfter),
        2 => Just(Behaviour::IgnoresCancel),
        1 => ms().prop_map(Behaviour::Panics),
        1 => ms().prop_map(Behaviour::BlocksWorker),
        2 => ms().prop_map(|cleanup| Behaviour::Cooperative { cleanup }),
    ]
}

fn hook() -> impl Strategy<Value = Hook> {
    prop_oneof![
        4 => Just(Hook::None),
        1 => Just(Hook::Returns),
        1 => Just(Hook::Panics),
        2 => Just(Hook::Blocks),
    ]
}

/// Any `u32`, biased to the edges: 0, 1, small, the 16-bit boundary, and
/// the top.
fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => Just(0u32),
        2 => Just(1u32),
        3 => 2u32..8,
        1 => Just(65_535u32),
        1 => Just(65_536u32),
        1 => Just(70_000u32),
        2 => Just(u32::MAX),
        2 => any::<u32>(),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    prop_oneof![
        1 => Just(Span::Zero),
        3 => any::<u8>().prop_map(Span::Small),
        1 => Just(Span::Max),
    ]
}

/// A back-off delay: 0, 1 ms, a few ms, or `Duration::MAX`.
fn step() -> impl Strategy<Value = Span> {
    prop_oneof![
        1 => Just(Span::Zero),
        2 => Just(Span::Small(0)),
        2 => (1u8..8).prop_map(Span::Small),
        1 => Just(Span::Max),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    let factor = prop_oneof![
        Just(Factor::Zero),
        Just(Factor::One),
        Just(Factor::Two),
        Just(Factor::Max),
    ];
    (
        limit(),
        span(),
        span(),
        step(),
        step(),
        factor,
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(max_redeliveries, grace, abort_grace, initial, max, multiplier, born_cancelled)| {
                Setup {
                    max_redeliveries,
                    grace,
                    abort_grace,
                    initial,
                    max,
                    multiplier,
                    born_cancelled,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let key = (0u8..4).prop_map(Key);
    let pick = any::<u8>().prop_map(TaskRef);
    prop_oneof![
        6 => (proptest::option::of(key.clone()), behaviour(), hook())
            .prop_map(|(key, behaviour, hook)| Op::Spawn { key, behaviour, hook }),
        2 => (pick.clone(), behaviour(), hook())
            .prop_map(|(pick, behaviour, hook)| Op::Replace { pick, behaviour, hook }),
        1 => Just(Op::CancelGroup),
        1 => Just(Op::CancelScope),
        2 => key.clone().prop_map(Op::CancelKey),
        1 => key.clone().prop_map(Op::BeginCancelKey),
        // Bit 2: a key with a live task, if any (see `Op::AbortKey`).
        2 => (0u8..8).prop_map(|k| Op::AbortKey(Key(k))),
        1 => Just(Op::AbortAll),
        2 => pick.clone().prop_map(Op::CancelTask),
        1 => pick.clone().prop_map(Op::ReleaseHook),
        2 => pick.clone().prop_map(Op::Abort),
        1 => pick.clone().prop_map(Op::AbortViaHandle),
        2 => pick.prop_map(Op::DropHandle),
        4 => ms().prop_map(Op::Advance),
        1 => Just(Op::Shutdown),
        2 => any::<bool>().prop_map(|next| Op::Wait { next }),
        3 => Just(Op::TryJoinNext),
        3 => any::<u8>().prop_map(|r| Op::Repoll(TaskRef(r))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // `PROPTEST_CASES` overrides this default.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        // Relative to the package root, where `cargo test` runs: committed.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/model.txt"),
        )),
        ..ProptestConfig::default()
    })]

    /// Every program keeps the library's properties after every step.
    #[test]
    fn programs_keep_the_properties(
        setup in setup(),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        machine::run(&setup, &ops);
    }
}

/// The language's byte decoding is total: any input is a valid program.
#[test]
fn any_bytes_decode_to_a_program() {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(600).collect();
    let (setup, ops) = lang::decode(&bytes, 64);
    assert!(!ops.is_empty());
    machine::run(&setup, &ops);
}

/// The case saved in `proptest-regressions/model.txt`, pinned as a program:
/// its seed only replays it while the strategies above keep their shape
/// (adding an op, or a field, makes the seed draw another program).
#[test]
fn saved_regression_replays() {
    let ops = [
        Op::Spawn {
            key: None,
            behaviour: Behaviour::Panics(Ms(0)),
            hook: Hook::None,
        },
        Op::Replace {
            pick: TaskRef(0),
            behaviour: Behaviour::IgnoresCancel,
            hook: Hook::None,
        },
        Op::Spawn {
            key: Some(Key(0)),
            behaviour: Behaviour::EndsAfter(Ms(0)),
            hook: Hook::None,
        },
        Op::Spawn {
            key: None,
            behaviour: Behaviour::EndsAfter(Ms(0)),
            hook: Hook::None,
        },
        Op::Shutdown,
    ];
    machine::run(&Setup::default(), &ops);
}
