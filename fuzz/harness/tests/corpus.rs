//! Replays every checked-in fuzz input (`fuzz/corpus/<target>/*`) through its harness, so
//! `make test` checks on stable what `make fuzz` found. A missing corpus fails the test.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()));
    let mut n = 0;
    for e in entries {
        let path = e.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails its harness", path.display());
        n += 1;
    }
    assert!(n > 0, "corpus {} is empty", dir.display());
    eprintln!("{target}: {n} inputs replayed");
}

#[test]
fn decode_request_corpus() {
    replay("decode_request", ferrokv_fuzz_harness::decode_request);
}

#[test]
fn apply_corpus() {
    replay("apply", ferrokv_fuzz_harness::apply);
}
