//! `METHOD URL` through the router and the query string parser.
//! The harness is `messaging::fuzzing::route`; `tests/it/fuzz.rs` replays `fuzz/regressions/route` through it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    messaging::fuzzing::route(data);
});
