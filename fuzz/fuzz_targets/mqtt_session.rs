//! cargo-fuzz entry for `jwtgate::fuzz::mqtt_session`, where the target's input
//! format and assertions are documented (the same function
//! `tests/fuzz_replay.rs` runs over the corpus).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jwtgate::fuzz::mqtt_session(data));
