//! The token targets: `verify_token` (arbitrary bytes as a token) and
//! `token_signed` (fuzzer-chosen header and claims, really signed).

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::fixture::{AUDIENCES, ISSUER, SEPARATOR, b64, fixture, now};
use crate::acl::ClaimForm;
use crate::keys;
use crate::token;

/// Raw bytes as a token, and (to get past the base64url of the header)
/// split on `.` into up to three parts each base64url-encoded; also as an
/// HMAC secret's text. Asserts nothing beyond "no panic": no input here
/// can carry a valid signature.
pub fn verify_token(data: &[u8]) {
    let fixture = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token::verify(text, &fixture.set, &fixture.default_policy);
        let _ = keys::decode_secret(text);
    }
    let encoded: Vec<String> = data.splitn(3, |byte| *byte == b'.').map(b64).collect();
    let _ = token::verify(&encoded.join("."), &fixture.set, &fixture.default_policy);
}

/// The algorithms `token_signed` signs with, and the key each uses.
const SIGNERS: [(Algorithm, &str); 5] = [
    (Algorithm::HS256, "hs"),
    (Algorithm::HS384, "hs"),
    (Algorithm::HS512, "hs"),
    (Algorithm::ES256, "ec"),
    (Algorithm::EdDSA, "ed"),
];

/// A header and claims chosen by the fuzzer, really signed, then verified.
///
/// Input: one selector byte, then either `header 0xFF claims` or just the
/// claims (the header is then `{"alg":..,"typ":"JWT","kid":..}` for the
/// selected signer). Selector bits 0-2: the signer (`SIGNERS`, modulo 5);
/// bit 3: the strict policy (issuer, audience, kid required, an algorithm
/// list); bit 4: leave `kid` out of a generated header.
///
/// Asserts, when verify accepts: the claims are a JSON object; the subject
/// is their `sub`; every grant is an entry of their `topics`; the key that
/// verified is the one that signed; `exp` is there and not past; under the
/// strict policy, `iss`, `aud` and `kid` are what it demands.
pub fn token_signed(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let (alg, kid) = SIGNERS[usize::from(selector & 7) % SIGNERS.len()];
    let strict = selector & 8 != 0;
    let (header, claims) = match rest.iter().position(|b| *b == SEPARATOR) {
        Some(at) => (rest[..at].to_vec(), &rest[at + 1..]),
        None if selector & 16 != 0 => (
            format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#).into_bytes(),
            rest,
        ),
        None => (
            format!(r#"{{"alg":"{alg:?}","typ":"JWT","kid":"{kid}"}}"#).into_bytes(),
            rest,
        ),
    };
    let key = match kid {
        "hs" => &fixture.hmac,
        "ec" => &fixture.ec,
        _ => &fixture.ed,
    };
    let signed_part = format!("{}.{}", b64(&header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(signed_part.as_bytes(), key, alg)
        .expect("the fixed keys sign any message");
    let policy = if strict {
        &fixture.strict_policy
    } else {
        &fixture.default_policy
    };
    let Ok(verified) = token::verify(&format!("{signed_part}.{signature}"), &fixture.set, policy)
    else {
        return;
    };

    let claims: Value = serde_json::from_slice(claims)
        .unwrap_or_else(|e| panic!("verify accepted claims that are not JSON: {e}"));
    let Some(claims) = claims.as_object() else {
        panic!("verify accepted claims that are not a JSON object: {claims}");
    };
    assert_eq!(
        verified.subject.as_deref(),
        claims.get("sub").and_then(Value::as_str),
        "the subject is not the token's sub"
    );
    assert_eq!(verified.key_id, kid, "a key other than the signer verified");
    let topics: Vec<&str> = match claims.get("topics") {
        Some(Value::String(one)) => vec![one],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        None if claims.contains_key("acl") => Vec::new(),
        other => panic!("verify accepted a topics claim of {other:?}"),
    };
    for list in verified.grants.lists() {
        if list.form != ClaimForm::Topics {
            continue;
        }
        for rule in &list.rules {
            let written = rule.written();
            assert!(
                topics.contains(&written.as_str()),
                "grant {written} is not in the topics claim {topics:?}"
            );
        }
    }
    let Some(exp) = verified.expires_at else {
        panic!("verify accepted a token without exp, which the policy requires");
    };
    // The policy's leeway is 5 s; a little more for the time this took.
    assert!(
        exp.saturating_add(60) >= now(),
        "verify accepted a token expired at {exp}"
    );
    if strict {
        assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => AUDIENCES.contains(&aud.as_str()),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| AUDIENCES.contains(&aud)),
            _ => false,
        };
        assert!(audience_ok, "verify accepted aud {:?}", claims.get("aud"));
        let header: Value =
            serde_json::from_slice(&header).expect("verify accepted a header that is not JSON");
        assert_eq!(
            header.get("kid").and_then(Value::as_str),
            Some(kid),
            "the strict policy accepted a token without the signer's kid"
        );
    }
}
