//! Fuzz target `ops`: bytes decode (through `arbitrary`) into the operation
//! language of the proptest state machine and run against the same reference
//! model and checks (`tests/model/`). A violated property panics: a crash.
//!
//! `cargo fuzz run --sanitizer none ops` on stable Rust
//! (`RUSTC_BOOTSTRAP=1 cargo fuzz run ops` keeps AddressSanitizer).
#![no_main]

#[path = "../../tests/model/lang.rs"]
mod lang;
#[path = "../../tests/model/machine.rs"]
mod machine;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Bounded programs keep every input fast, so the fuzzer explores breadth.
    let (setup, ops) = lang::decode(data, 48);
    machine::run(&setup, &ops);
});
