//! Raw bytes of one HTTP connection, through the vendored tiny_http (the server's limits) to the router and the body parser.
//! The harness is `messaging::fuzzing::http`; `tests/it/fuzz.rs` replays `fuzz/regressions/http` through it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    messaging::fuzzing::http(data);
});
