//! Client assertions as a provider reads them: signed by the device key,
//! the claims RFC 7523 asks for, a fresh `jti` each time.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

use super::*;

fn key_file(dir: &Path, pair: &rcgen::KeyPair) -> PathBuf {
    let path = dir.join("device.key");
    std::fs::write(&path, pair.serialize_pem()).unwrap();
    path
}

fn verify(token: &str, public_pem: &str, alg: Algorithm) -> (jsonwebtoken::Header, Value) {
    let key = match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap(),
    };
    let mut validation = Validation::new(alg);
    validation.set_audience(&["https://idp.example/oauth/token"]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    (data.header, data.claims)
}

#[test]
fn an_es256_assertion_says_what_rfc_7523_asks_and_never_repeats_its_jti() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = DeviceKey::load(&key_file(dir.path(), &pair), None).unwrap();
    assert_eq!(key.algorithm(), Algorithm::ES256);
    let expected_kid = public_jwk(
        &EncodingKey::from_ec_der(pair.serialized_der()),
        Algorithm::ES256,
    )
    .unwrap()
    .common
    .key_id
    .unwrap();
    assert_eq!(key.kid(), expected_kid);
    let mut jtis = HashSet::new();
    for _ in 0..20 {
        let token = key
            .sign_assertion("app-1", "https://idp.example/oauth/token")
            .unwrap();
        let (header, claims) = verify(&token, &pair.public_key_pem(), Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(expected_kid.as_str()));
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["aud"], "https://idp.example/oauth/token");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, ASSERTION_LIFETIME_SECS);
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert_eq!(URL_SAFE_NO_PAD.decode(&jti).unwrap().len(), 16);
        assert!(jtis.insert(jti), "a jti came twice");
    }
}

#[test]
fn an_rsa_key_signs_rs256_with_the_kid_given() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let key = DeviceKey::load(&key_file(dir.path(), &pair), Some("auth0-kid".into())).unwrap();
    assert_eq!(key.algorithm(), Algorithm::RS256);
    let token = key
        .sign_assertion("app-1", "https://idp.example/oauth/token")
        .unwrap();
    let (header, claims) = verify(&token, &pair.public_key_pem(), Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("auth0-kid"));
    assert_eq!(claims["sub"], "app-1");
}

#[test]
fn keys_it_cannot_sign_with_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let error = DeviceKey::load(&key_file(dir.path(), &p384), None).unwrap_err();
    assert!(error.to_string().contains("P-256"), "{error}");
    let path = dir.path().join("device.key");
    std::fs::write(&path, "not a key").unwrap();
    let error = DeviceKey::load(&path, None).unwrap_err();
    assert!(error.to_string().contains("no PEM private key"), "{error}");
    let error = DeviceKey::load(&dir.path().join("missing.key"), None).unwrap_err();
    assert!(error.to_string().starts_with("cannot use --key"), "{error}");
}
