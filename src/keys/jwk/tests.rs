// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::keys::testing::{b64url, ec_jwk, ed_jwk, jwks, rsa_jwk};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

#[test]
fn jwks_with_every_key_type() {
    let text = jwks(&[
        rsa_jwk("rsa"),
        ec_jwk("ec"),
        ed_jwk("ed"),
        json!({ "kty": "oct", "kid": "oct", "alg": "HS512", "k": b64url(&[7; 64]) }),
        json!({ "kty": "EC", "crv": "P-384", "kid": "p384",
                "x": b64url(&[0; 48]), "y": b64url(&[0; 48]) }),
    ]);
    let parsed = parse_jwks(&text, Path::new("idp.json")).unwrap();
    let by_id = |id: &str| parsed.keys.iter().find(|key| key.id() == id).unwrap();
    assert_eq!(by_id("rsa").algorithms(), RSA_ALGORITHMS);
    assert_eq!(by_id("ec").algorithms(), [Algorithm::ES256]);
    assert_eq!(by_id("ed").algorithms(), [Algorithm::EdDSA]);
    assert_eq!(by_id("oct").algorithms(), [Algorithm::HS512]);
    assert!(by_id("oct").signing_key().is_some());
    assert!(by_id("rsa").signing_key().is_none());
    // The all-zero point is not on P-384.
    assert_eq!(parsed.skipped.len(), 1);
    assert!(matches!(
        parsed.skipped[0].error,
        JwkError::InvalidPublicKey(_)
    ));
}

#[test]
fn one_bad_key_does_not_spoil_the_file() {
    let mut short_rsa = rsa_jwk("short");
    short_rsa["n"] = json!(b64url(&[0xff; 128]));
    let mut mismatch = ec_jwk("mismatch");
    mismatch["alg"] = json!("RS256");
    let text = jwks(&[
        json!({ "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" }),
        json!({ "kty": "foo", "kid": "foo" }),
        json!({ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }),
        json!({ "kty": "EC", "crv": "P-256", "kid": "short-x", "x": "AAAA", "y": "AAAA" }),
        json!({ "kty": "oct", "kid": "no-k" }),
        json!({ "kty": "oct", "kid": 7, "k": "c2VjcmV0" }),
        json!({ "kty": "oct", "kid": "hs1", "alg": "HS1", "k": "c2VjcmV0" }),
        json!({ "kty": "oct", "kid": "ops", "key_ops": ["sign"], "k": "c2VjcmV0" }),
        short_rsa,
        mismatch,
        ed_jwk("good"),
    ]);
    let parsed = parse_jwks(&text, Path::new("/keys/idp.json")).unwrap();
    assert_eq!(
        parsed.keys.iter().map(Key::id).collect::<Vec<_>>(),
        ["good"]
    );
    let reasons: Vec<String> = parsed.skipped.iter().map(ToString::to_string).collect();
    let expected = [
        "key #0 (kid \"enc\"): \"use\" is \"enc\", not \"sig\"",
        "key #1 (kid \"foo\"): unsupported key type \"foo\" (supported: RSA, EC, OKP, oct)",
        "key #2: unsupported EC curve \"P-521\"",
        "key #3 (kid \"short-x\"): parameter \"x\" is 3 bytes long, 32 expected",
        "key #4 (kid \"no-k\"): missing parameter \"k\"",
        "key #5: not a JWK: invalid type: integer `7`, expected a string",
        "key #6 (kid \"hs1\"): unsupported signature algorithm \"HS1\"",
        "key #7 (kid \"ops\"): \"key_ops\" does not include \"verify\"",
        "key #8 (kid \"short\"): the RSA modulus has 1024 bits; 2048 to 8192 are supported",
        "key #9 (kid \"mismatch\"): \"alg\" is RS256, not usable with this EC P-256 key",
    ];
    assert_eq!(reasons, expected);
}

#[test]
fn jwk_without_kid_is_named_after_file_and_index() {
    let mut key = ec_jwk("");
    key.as_object_mut().unwrap().remove("kid");
    let text = jwks(&[json!({ "kty": "oct", "k": "" }), key]);
    let parsed = parse_jwks(&text, Path::new("/keys/idp.json")).unwrap();
    assert_eq!(parsed.keys[0].id(), "idp#1");
    assert!(matches!(parsed.skipped[0].error, JwkError::EmptySecret));
}

#[test]
fn oct_keys_shorter_than_their_hash_are_left_out() {
    let oct = |kid: &str, alg: Option<&str>, len: usize| {
        let mut key = json!({ "kty": "oct", "kid": kid, "k": b64url(&vec![7; len]) });
        if let Some(alg) = alg {
            key["alg"] = json!(alg);
        }
        key
    };
    let text = jwks(&[
        oct("short", None, 16),
        oct("hs384-40", Some("HS384"), 40),
        oct("hs256-40", Some("HS256"), 40),
        oct("any-48", None, 48),
    ]);
    let parsed = parse_jwks(&text, Path::new("idp.json")).unwrap();
    let algorithms: Vec<(&str, &[Algorithm])> = parsed
        .keys
        .iter()
        .map(|key| (key.id(), key.algorithms()))
        .collect();
    assert_eq!(
        algorithms,
        [
            ("hs256-40", &[Algorithm::HS256][..]),
            ("any-48", &[Algorithm::HS256, Algorithm::HS384][..]),
        ]
    );
    let reasons: Vec<String> = parsed.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        reasons,
        [
            "key #0 (kid \"short\"): the secret is 16 bytes long; HS256 needs at least 32 (RFC 7518 §3.2)",
            "key #1 (kid \"hs384-40\"): the secret is 40 bytes long; HS384 needs at least 48 (RFC 7518 §3.2)",
        ]
    );
}

#[test]
fn rsa_components_with_leading_zero_are_accepted() {
    let mut key = rsa_jwk("rsa");
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    key["n"] = json!(b64url(&[&[0][..], &n].concat()));
    let parsed = parse_jwks(&jwks(&[key]), Path::new("a.json")).unwrap();
    assert_eq!(parsed.keys.len(), 1, "{:?}", parsed.skipped);
}
