//! cargo-fuzz entry for `jwtgate::fuzz::verify_token`, where the target's input
//! format and assertions are documented (the same function
//! `tests/fuzz_replay.rs` runs over the corpus).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jwtgate::fuzz::verify_token(data));
