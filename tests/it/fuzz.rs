//! The fuzz targets' inputs, replayed: every file in `fuzz/regressions/<target>/`
//! (what the targets found, and a few inputs kept from their corpora) and in
//! `fuzz/seeds/<target>/` goes through the function of `messaging::fuzzing`
//! that the target calls in `make fuzz`, which panics where the server would
//! misbehave. No database is involved.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Every input of `target`, by path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in [fuzz.join("regressions").join(target), fuzz.join("seeds").join(target)] {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let before = inputs.len();
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            inputs.push((path, bytes));
        }
        assert!(inputs.len() > before, "no inputs in {}", dir.display());
    }
    inputs.sort();
    inputs
}

/// Runs every input of `target` through `run`, and fails naming each input that panicked.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let failed: Vec<String> = inputs(target)
        .into_iter()
        .filter(|(_, bytes)| catch_unwind(AssertUnwindSafe(|| run(bytes))).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} input(s) of {target} failed (their panics are above):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn http_inputs_are_answered_and_their_connections_end() {
    replay("http", |bytes| drop(messaging::fuzzing::http(bytes)));
}

#[test]
fn route_inputs_find_a_route_or_a_404_or_405() {
    replay("route", messaging::fuzzing::route);
}

#[test]
fn json_inputs_parse_as_serde_json_does_and_their_getters_agree() {
    replay("json", messaging::fuzzing::json);
}

#[test]
fn ws_inputs_are_read_within_the_limits() {
    replay("ws", messaging::fuzzing::ws);
}
