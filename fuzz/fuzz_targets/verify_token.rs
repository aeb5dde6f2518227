//! Feeds arbitrary bytes to `token::verify` (and to `keys::decode_secret`)
//! against a fixed key set: an HMAC secret and an EC P-256 key from a JWK
//! set, loaded once from a temporary keys directory.
//!
//! Raw bytes rarely get past the base64url of the header, so each input is
//! also tried a second way: split on `.` into up to three parts, each
//! base64url-encoded, which lets the fuzzer write header and claims JSON
//! directly.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwtgate::config::Config;
use jwtgate::keys::{self, KeySet, KeyStore};
use jwtgate::token::{self, Policy};
use libfuzzer_sys::fuzz_target;

/// A public key only: nothing can be signed with it here, but header and
/// key selection paths run against it.
const EC_JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec",
    "x": "eG_yzfLb32A71eQnsplzymr_NREgb2hnfIhJApDWxgw",
    "y": "bmbtDU5h8LMY6BrBcvefUwVNBNWMa-lUbB4pvIFmlwQ"}]}"#;

struct Target {
    keys: std::sync::Arc<KeySet>,
    policy: Policy,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary keys directory");
        std::fs::write(dir.path().join("dev.b64"), "ZnV6emluZyBzZWNyZXQsIDMyIGJ5dGVzIG9mIGl0Li4=").expect("write dev.b64");
        std::fs::write(dir.path().join("idp.json"), EC_JWKS).expect("write idp.json");
        let (store, report) = KeyStore::open(dir.path()).expect("open keys directory");
        assert!(report.issues.is_empty() && report.keys == 2, "{report}");
        let mut auth = Config::defaults(Path::new("/unused")).auth;
        // Tokens without kid try every candidate key: more paths to cover.
        auth.require_kid = false;
        Target {
            keys: store.snapshot(),
            policy: Policy::from_config(&auth),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let target = target();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token::verify(text, &target.keys, &target.policy);
        let _ = keys::decode_secret(text);
    }
    let encoded: Vec<String> = data
        .splitn(3, |byte| *byte == b'.')
        .map(|part| URL_SAFE_NO_PAD.encode(part))
        .collect();
    let _ = token::verify(&encoded.join("."), &target.keys, &target.policy);
});
