//! Loom models of the runtime-free core: filled by the proofs work (issue 4).
