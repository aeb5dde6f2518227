//! Feeds arbitrary text to the JWK set parser, the one that reads every
//! `*.json` file in the keys directory.

#![no_main]

use std::path::Path;

use jwtgate::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = keys::parse_jwks(text, Path::new("/keys/fuzz.json")) {
            // Every key that made it is usable as loaded.
            for key in &parsed.keys {
                assert!(!key.id().is_empty());
                assert!(!key.algorithms().is_empty());
            }
            for skipped in &parsed.skipped {
                let _ = skipped.to_string();
            }
        }
    }
});
