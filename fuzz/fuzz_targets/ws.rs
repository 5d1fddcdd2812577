//! A WebSocket client's bytes after the handshake, through tungstenite (the server's configuration) to the frame commands.
//! The harness is `messaging::fuzzing::ws`; `tests/it/fuzz.rs` replays `fuzz/regressions/ws` through it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    messaging::fuzzing::ws(data);
});
