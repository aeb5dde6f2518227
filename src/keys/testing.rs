//! Generated key pairs and their JWKs, for tests.
//!
//! Shared by the unit tests of `keys` and `token` and, through
//! `#[path]` in `tests/common/mod.rs`, by the integration tests, so that
//! every test builds JWKs the same way. It only uses external crates, which
//! is what lets both kinds of test crate compile it.

// Key generation with fixed, valid parameters cannot fail.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256};
use serde_json::{Value, json};

/// A generated key pair and its public half as a JWK.
pub(crate) struct TestKey {
    pub(crate) pair: KeyPair,
    pub(crate) jwk: Value,
}

impl TestKey {
    /// The private key, for signing test tokens.
    pub(crate) fn encoding_key(&self) -> EncodingKey {
        let pem = self.pair.serialize_pem();
        match self.jwk["kty"].as_str() {
            Some("RSA") => EncodingKey::from_rsa_pem(pem.as_bytes()),
            Some("EC") => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .unwrap()
    }
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn rsa(kid: &str) -> TestKey {
    let pair = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
    let public = aws_lc_rs::rsa::PublicKey::from_der(pair.public_key_raw()).unwrap();
    let jwk = json!({
        "kty": "RSA", "kid": kid, "use": "sig",
        "n": b64url(public.modulus().big_endian_without_leading_zero()),
        "e": b64url(public.exponent().big_endian_without_leading_zero()),
    });
    TestKey { pair, jwk }
}

pub(crate) fn ec(kid: &str) -> TestKey {
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid,
        "x": b64url(&point[1..33]), "y": b64url(&point[33..]),
    });
    TestKey { pair, jwk }
}

pub(crate) fn ed(kid: &str) -> TestKey {
    let pair = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let jwk =
        json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(pair.public_key_raw()) });
    TestKey { pair, jwk }
}

pub(crate) fn rsa_jwk(kid: &str) -> Value {
    rsa(kid).jwk
}

pub(crate) fn ec_jwk(kid: &str) -> Value {
    ec(kid).jwk
}

pub(crate) fn ed_jwk(kid: &str) -> Value {
    ed(kid).jwk
}

pub(crate) fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}
