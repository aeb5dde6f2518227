//! cargo-fuzz entry for `jwtgate::fuzz::mqtt_session`, where the target's input
//! format and assertions are documented (the same function
//! `tests/fuzz_replay.rs` runs over the corpus).

#![no_main]

// Counts heap per thread, so the target can hold each run to its limits.
#[global_allocator]
static ALLOCATOR: jwtgate::fuzz::CountingAllocator = jwtgate::fuzz::CountingAllocator;

libfuzzer_sys::fuzz_target!(|data: &[u8]| jwtgate::fuzz::mqtt_session(data));
