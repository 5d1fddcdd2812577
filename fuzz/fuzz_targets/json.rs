//! A request body or frame through the JSON object parser and every getter.
//! The harness is `messaging::fuzzing::json`; `tests/it/fuzz.rs` replays `fuzz/regressions/json` through it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    messaging::fuzzing::json(data);
});
