//! The fuzz targets' logic, one `pub fn <target>(data: &[u8])` per target.
//!
//! It lives in the library, not in `fuzz/`, so that the cargo-fuzz targets
//! (each a one-line `fuzz_target!` calling the function of its name) and
//! the replay test `tests/fuzz_replay.rs` (which runs on stable, in every
//! `cargo test`, over `fuzz/corpus/` and `fuzz/regressions/`) run exactly
//! the same code. A function panics only on a real bug: an assertion it
//! states, or a panic in the code under test. See `fuzz/README.md` for each
//! target's input format and what it asserts.
//!
//! One file per kind of input: `tokens`, `keys`, `config`, `mqtt` (with
//! `session`, the in-memory connection it drives, and `memory`, the heap
//! accounting it asserts with) and `topics`; `fixture` holds the fixed key
//! material they all verify against.

// Asserting is these modules' job; its `expect`s are on its own fixed setup
// (embedded keys, a temporary directory), never on the fuzzed input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config;
mod fixture;
mod keys;
mod memory;
mod mqtt;
mod session;
mod tokens;
mod topics;

pub use config::config;
pub use fixture::session_token;
pub use keys::{jwks_parse, keys_dir};
pub use memory::{CountingAllocator, peak_during};
pub use mqtt::{connect_packet, mqtt_session};
pub use session::{SESSION_MEMORY_BOUND, SessionOutcome, SessionSetup, fuzz_session};
pub use tokens::{token_signed, verify_token};
pub use topics::topic;

#[cfg(test)]
mod tests;
