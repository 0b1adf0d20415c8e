//! The proptest state machine: random programs of operations on a `TaskGroup`
//! and a `TaskMap` (spawn with behaviours, cancels, aborts, handle drops,
//! replacement, the paused clock, shutdown, parked `join` / `join_next`
//! waiters re-polled in any order), checked after every step against
//! a reference model (`tests/model/machine.rs`, shared with the fuzz target).
//!
//! 256 cases by default; for a long run:
//! `PROPTEST_CASES=10000 cargo test --release --test model`.
//! Failing cases persist their seeds under `proptest-regressions/`.

#[path = "model/lang.rs"]
mod lang;
#[path = "model/machine.rs"]
mod machine;

use lang::{Behaviour, Key, Ms, Op, TaskRef};
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

fn op() -> impl Strategy<Value = Op> {
    let key = (0u8..4).prop_map(Key);
    let pick = any::<u8>().prop_map(TaskRef);
    prop_oneof![
        6 => (proptest::option::of(key.clone()), behaviour())
            .prop_map(|(key, behaviour)| Op::Spawn { key, behaviour }),
        2 => (pick.clone(), behaviour()).prop_map(|(pick, behaviour)| Op::Replace { pick, behaviour }),
        1 => Just(Op::CancelGroup),
        1 => Just(Op::CancelScope),
        2 => key.prop_map(Op::CancelKey),
        2 => pick.clone().prop_map(Op::Abort),
        2 => pick.prop_map(Op::DropHandle),
        4 => ms().prop_map(Op::Advance),
        1 => Just(Op::Shutdown),
        2 => any::<bool>().prop_map(|next| Op::Wait { next }),
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
    fn programs_keep_the_properties(ops in proptest::collection::vec(op(), 0..40)) {
        machine::run(&ops);
    }
}

/// The language's byte decoding is total: any input is a valid program.
#[test]
fn any_bytes_decode_to_a_program() {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(600).collect();
    let ops = lang::decode(&bytes, 64);
    assert!(!ops.is_empty());
    machine::run(&ops);
}
