#!/usr/bin/env bash
# Proofs (issue 4): the loom models of the runtime-free core, run as tokio
# runs its own: release mode, at most 2 preemptions per interleaving. A loom
# build sets `--cfg loom` for every crate, so it gets a target dir of its own
# and never invalidates the normal build. The proptest state machine and the
# fuzz corpus replay run in the main `cargo test --all-features`.
#
# About 6.5 minutes of models on 2 cores (2026-12-01: 378 s, most of it the
# four ladder models, which follow the real escalation path since issue 18),
# plus the first (cold) build of the loom target dir: about 4 minutes, so
# about 11 in all.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"
export RUSTFLAGS="--cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"

start=$(date +%s)
# `--test-threads=1`: each model reports its interleavings and time on its
# own line, and a model never competes with another for the 2 cores.
cargo test --release --lib loom_models -- --test-threads=1
echo "loom models: $(($(date +%s) - start)) s (build included)"
