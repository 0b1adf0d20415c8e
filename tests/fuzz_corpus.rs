//! Replays every input of the fuzz seed corpus (`fuzz/corpus/ops/`) through
//! the same decoder, model and checks as the fuzz target, so CI exercises the
//! corpus on stable Rust without libFuzzer.

#[path = "model/lang.rs"]
mod lang;
#[path = "model/machine.rs"]
mod machine;

#[test]
fn fuzz_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ops");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty seed corpus in {}", dir.display());
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        // Same bound as the fuzz target.
        let (setup, ops) = lang::decode(&bytes, 48);
        let outcome = std::panic::catch_unwind(|| machine::run(&setup, &ops));
        assert!(
            outcome.is_ok(),
            "corpus input {} fails: {setup:?} {ops:?}",
            path.display()
        );
    }
}
