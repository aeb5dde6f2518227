// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::acl::{Bindings, Bound, ClaimError};
use crate::config::{AuthConfig, Config};
use crate::keys::testing::{self, b64url};
use crate::keys::{DenyEntry, DenyKind, Key, KeyStore};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const SECRET: &[u8] = b"a development secret of 32 bytes";
const NOW: u64 = 1_700_000_000;

/// One key directory for all tests: `dev.b64` (HMAC) and `idp.json`
/// with an RSA, an EC P-256 and an Ed25519 key, plus the private keys.
struct Fixture {
    keys: Arc<KeySet>,
    rsa: EncodingKey,
    rsa_public_pem: String,
    ec: EncodingKey,
    ed: EncodingKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (rsa, ec, ed) = (testing::rsa("rsa"), testing::ec("ec"), testing::ed("ed"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dev.b64"), STANDARD.encode(SECRET)).unwrap();
        let jwks = testing::jwks(&[rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]);
        std::fs::write(dir.path().join("idp.json"), jwks).unwrap();
        let (store, report) = KeyStore::open(dir.path()).unwrap();
        assert!(report.issues.is_empty(), "{report}");
        Fixture {
            keys: store.snapshot(),
            rsa: rsa.encoding_key(),
            rsa_public_pem: rsa.pair.public_key_pem(),
            ec: ec.encoding_key(),
            ed: ed.encoding_key(),
        }
    })
}

fn policy(edit: impl FnOnce(&mut AuthConfig)) -> Policy {
    let mut auth = Config::defaults(Path::new("/unused")).auth;
    edit(&mut auth);
    Policy::from_config(&auth)
}

fn hmac() -> EncodingKey {
    EncodingKey::from_secret(SECRET)
}

fn claims() -> Value {
    json!({ "sub": "dev-1", "exp": NOW + 600, "topics": ["devices/dev-1/#"] })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn compact(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(signature)
    )
}

fn check_with(token: &str, policy: &Policy) -> Result<VerifiedToken, TokenError> {
    verify_at(token, &fixture().keys, policy, NOW).map_err(|refused| refused.error)
}

fn check(token: &str) -> Result<VerifiedToken, TokenError> {
    check_with(token, &policy(|_| {}))
}

#[test]
fn the_clientid_claim_is_read_as_a_string_unless_binding_is_off() {
    let with = |clientid: Value| {
        let mut claims = claims();
        claims["clientid"] = clientid;
        sign(Algorithm::HS256, Some("dev"), &claims, &hmac())
    };
    let verified = check(&with(json!("pump-17"))).unwrap();
    assert_eq!(verified.client_id.as_deref(), Some("pump-17"));
    assert_eq!(
        check(&sign(Algorithm::HS256, Some("dev"), &claims(), &hmac()))
            .unwrap()
            .client_id,
        None
    );
    assert_eq!(
        check(&with(json!(17))),
        Err(TokenError::BadClaim { claim: "clientid" })
    );
    // "none" never read it, so a token carrying an odd one still passes.
    let off = policy(|auth| auth.client_id_binding = ClientIdBinding::Unchecked);
    let verified = check_with(&with(json!(17)), &off).unwrap();
    assert_eq!(verified.client_id, None);
    let unbound = PolicyWarning::UnboundClientId;
    assert!(off.warnings(&fixture().keys).contains(&unbound));
    assert!(!policy(|_| {}).warnings(&fixture().keys).contains(&unbound));
}

fn dev_key() -> &'static Key {
    fixture().keys.get("dev").unwrap()
}

fn mint_claims(subject: &str, topics: &[&str]) -> MintClaims {
    MintClaims {
        subject: subject.to_owned(),
        topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
        ttl: Duration::from_secs(3600),
        topics_claim: "topics".to_owned(),
        issuer: None,
        audience: Vec::new(),
    }
}

fn bound(token: &VerifiedToken) -> Bound {
    token
        .grants
        .bind(&Bindings {
            client_id: Some("c"),
            subject: token.subject.as_deref(),
            username: Some("JWT"),
        })
        .unwrap()
}

/// The filters a token's grants keep once bound, in order.
fn filters(token: &VerifiedToken) -> Vec<String> {
    bound(token)
        .grants
        .filters()
        .map(|filter| filter.as_str().to_owned())
        .collect()
}

#[test]
fn hs256_mint_then_verify() {
    let token = mint(
        dev_key(),
        &mint_claims("dev-1", &["devices/dev-1/#", "a/#/b"]),
    )
    .unwrap();
    let verified = verify(&token, &fixture().keys, &policy(|_| {})).unwrap();
    assert_eq!(verified.subject.as_deref(), Some("dev-1"));
    assert_eq!(verified.key_id, "dev");
    assert_eq!(verified.key_file, dev_key().source());
    assert_eq!(filters(&verified), ["devices/dev-1/#"]);
    let dropped = bound(&verified).dropped;
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].topic, "a/#/b");
    assert_eq!(verified.jti.as_ref().map(String::len), Some(22));
    let exp = verified.expires_at.unwrap();
    assert!(exp.abs_diff(unix_now() + 3600) <= 5, "{exp}");

    // A second token differs by its jti.
    let again = mint(dev_key(), &mint_claims("dev-1", &["x"])).unwrap();
    let again = verify(&again, &fixture().keys, &policy(|_| {})).unwrap();
    assert_ne!(again.jti, verified.jti);
}

#[test]
fn minted_issuer_and_audience_pass_a_policy_requiring_them() {
    let policy = policy(|auth| {
        auth.issuer = Some("https://idp.example".into());
        auth.audience = Some(vec!["gw-1".into(), "gw-2".into()]);
        auth.max_token_lifetime = Some(Duration::from_secs(3600));
    });
    for audience in [vec!["gw-2"], vec!["other", "gw-1"]] {
        let claims = MintClaims {
            issuer: Some("https://idp.example".into()),
            audience: audience.into_iter().map(str::to_owned).collect(),
            ..mint_claims("dev-1", &["t"])
        };
        let token = mint(dev_key(), &claims).unwrap();
        verify(&token, &fixture().keys, &policy).unwrap();
    }
}

#[test]
fn asymmetric_tokens_verify_against_their_jwk() {
    let f = fixture();
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa", &f.rsa),
        (Algorithm::PS256, "rsa", &f.rsa),
        (Algorithm::RS512, "rsa", &f.rsa),
        (Algorithm::ES256, "ec", &f.ec),
        (Algorithm::EdDSA, "ed", &f.ed),
    ] {
        let verified = check(&sign(alg, Some(kid), &claims(), key)).unwrap();
        assert_eq!(verified.key_id, kid, "{alg:?}");
        assert_eq!(verified.expires_at, Some(NOW + 600));
        assert_eq!(filters(&verified), ["devices/dev-1/#"]);
        // Without kid, the candidates for the algorithm are tried.
        let verified = check(&sign(alg, None, &claims(), key)).unwrap();
        assert_eq!(verified.key_id, kid, "{alg:?}");
    }
}

#[test]
fn a_key_verifies_only_its_own_signatures() {
    let f = fixture();
    let token = sign(Algorithm::ES256, Some("ec"), &claims(), &f.ec);
    let (message, _) = token.rsplit_once('.').unwrap();
    let other = sign(Algorithm::ES256, None, &json!({ "other": 1 }), &f.ec);
    let (_, signature) = other.rsplit_once('.').unwrap();
    assert_eq!(
        check(&format!("{message}.{signature}")),
        Err(TokenError::BadSignature {
            kid: Some("ec".into())
        })
    );
    let wrong_secret = EncodingKey::from_secret(b"not the secret");
    assert_eq!(
        check(&sign(Algorithm::HS256, None, &claims(), &wrong_secret)),
        Err(TokenError::BadSignature { kid: None })
    );
}

#[test]
fn unknown_kid_is_refused() {
    let token = sign(Algorithm::HS256, Some("nope"), &claims(), &hmac());
    assert_eq!(
        check(&token),
        Err(TokenError::UnknownKey { kid: "nope".into() })
    );
}

#[test]
fn alg_none_is_refused() {
    for header in [
        json!({ "alg": "none" }),
        json!({ "alg": "none", "kid": "dev" }),
        json!({ "alg": "None", "typ": "JWT" }),
    ] {
        let token = compact(&header, &claims(), b"");
        assert!(
            matches!(check(&token), Err(TokenError::UnsupportedAlgorithm { .. })),
            "{header}"
        );
    }
    let token = compact(&json!({ "alg": "none" }), &claims(), b"");
    assert_eq!(
        check(&token).unwrap_err().to_string(),
        "unsupported signature algorithm \"none\""
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let f = fixture();
    let forged_key = EncodingKey::from_secret(f.rsa_public_pem.as_bytes());
    let forged = sign(Algorithm::HS256, Some("rsa"), &claims(), &forged_key);
    assert_eq!(
        check(&forged),
        Err(TokenError::KeyRefusesAlgorithm {
            kid: "rsa".into(),
            alg: Algorithm::HS256
        })
    );
    // Without kid only the HMAC keys are candidates for HS256.
    let forged = sign(Algorithm::HS256, None, &claims(), &forged_key);
    assert_eq!(check(&forged), Err(TokenError::BadSignature { kid: None }));
}

#[test]
fn expiry_and_not_before_with_leeway() {
    let token = |claims: Value| sign(Algorithm::HS256, Some("dev"), &claims, &hmac());
    let no_leeway = policy(|auth| auth.leeway = Duration::ZERO);
    let topics = json!(["t"]);

    let just_expired = token(json!({ "sub": "d", "exp": NOW - 3, "topics": topics }));
    check(&just_expired).unwrap();
    assert_eq!(
        check_with(&just_expired, &no_leeway).unwrap_err(),
        TokenError::Expired { exp: NOW - 3 }
    );
    let expires_now = token(json!({ "sub": "d", "exp": NOW, "topics": topics }));
    assert_eq!(
        check_with(&expires_now, &no_leeway).unwrap_err(),
        TokenError::Expired { exp: NOW }
    );
    let long_expired = token(json!({ "sub": "d", "exp": NOW - 100, "topics": topics }));
    let error = check(&long_expired).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("expired at {} (Unix time)", NOW - 100)
    );

    let soon = token(json!({ "sub": "d", "exp": NOW + 60, "nbf": NOW + 3, "topics": topics }));
    check(&soon).unwrap();
    assert_eq!(
        check_with(&soon, &no_leeway).unwrap_err(),
        TokenError::NotYetValid { nbf: NOW + 3 }
    );
    let later = token(json!({ "sub": "d", "exp": NOW + 600, "nbf": NOW + 100, "topics": topics }));
    assert_eq!(
        check(&later).unwrap_err(),
        TokenError::NotYetValid { nbf: NOW + 100 }
    );

    let fractional = token(json!({ "sub": "d", "exp": (NOW + 10) as f64 + 0.5, "topics": topics }));
    assert_eq!(check(&fractional).unwrap().expires_at, Some(NOW + 10));
    for bad in [json!("soon"), json!(-1), json!(true)] {
        let bad = token(json!({ "sub": "d", "exp": bad, "topics": topics }));
        assert_eq!(
            check(&bad).unwrap_err(),
            TokenError::BadClaim { claim: "exp" }
        );
    }
}

#[test]
fn exp_is_required_unless_the_policy_says_otherwise() {
    let token = sign(
        Algorithm::HS256,
        None,
        &json!({ "sub": "d", "topics": "t" }),
        &hmac(),
    );
    assert_eq!(check(&token).unwrap_err(), TokenError::MissingExp);
    let relaxed = policy(|auth| auth.require_exp = false);
    assert_eq!(check_with(&token, &relaxed).unwrap().expires_at, None);
}

#[test]
fn issuer_and_audience_when_configured() {
    let strict = policy(|auth| {
        auth.issuer = Some("idp".into());
        auth.audience = Some(vec!["gw-1".into(), "gw-2".into()]);
    });
    let with = |extra: Value| {
        let mut claims = claims();
        for (name, value) in extra.as_object().unwrap() {
            claims[name] = value.clone();
        }
        sign(Algorithm::HS256, Some("dev"), &claims, &hmac())
    };
    check_with(&with(json!({ "iss": "idp", "aud": "gw-2" })), &strict).unwrap();
    check_with(
        &with(json!({ "iss": "idp", "aud": ["x", "gw-1"] })),
        &strict,
    )
    .unwrap();
    let cases = [
        (json!({ "aud": "gw-1" }), TokenError::MissingIssuer),
        (
            json!({ "iss": "evil", "aud": "gw-1" }),
            TokenError::WrongIssuer { iss: "evil".into() },
        ),
        (
            json!({ "iss": 1, "aud": "gw-1" }),
            TokenError::BadClaim { claim: "iss" },
        ),
        (json!({ "iss": "idp" }), TokenError::MissingAudience),
        (
            json!({ "iss": "idp", "aud": "gw-3" }),
            TokenError::WrongAudience,
        ),
        (
            json!({ "iss": "idp", "aud": [] }),
            TokenError::WrongAudience,
        ),
        (
            json!({ "iss": "idp", "aud": ["gw-1", 2] }),
            TokenError::BadClaim { claim: "aud" },
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(
            check_with(&with(extra.clone()), &strict).unwrap_err(),
            expected,
            "{extra}"
        );
    }
    // Not configured: not checked.
    check(&with(json!({ "iss": "anyone", "aud": "anything" }))).unwrap();
}

#[test]
fn lifetime_cap() {
    let capped = policy(|auth| auth.max_token_lifetime = Some(Duration::from_secs(3600)));
    let token = |claims: Value| sign(Algorithm::HS256, Some("dev"), &claims, &hmac());
    let with_dates = |iat: Option<u64>, exp: u64| {
        token(json!({ "sub": "d", "iat": iat, "exp": exp, "topics": "t" }))
    };
    // Accepted: exactly the maximum, shorter, and no lifetime at all.
    for (iat, exp) in [(NOW, NOW + 3600), (NOW - 60, NOW + 60), (NOW, NOW)] {
        check_with(&with_dates(Some(iat), exp), &capped).unwrap();
    }
    let cases = [
        (
            Some(NOW),
            NOW + 3601,
            TokenError::LifetimeTooLong {
                lifetime: 3601,
                max: 3600,
            },
        ),
        // Issued long ago: the lifetime counts from iat, not from now.
        (
            Some(NOW - 7200),
            NOW + 60,
            TokenError::LifetimeTooLong {
                lifetime: 7260,
                max: 3600,
            },
        ),
        (None, NOW + 60, TokenError::MissingIat { max: 3600 }),
        // iat after exp once passed as a lifetime of zero.
        (
            Some(NOW),
            NOW - 1,
            TokenError::IssuedAfterExpiry {
                iat: NOW,
                exp: NOW - 1,
                max: 3600,
            },
        ),
        (
            Some(NOW + 5),
            NOW + 2,
            TokenError::IssuedAfterExpiry {
                iat: NOW + 5,
                exp: NOW + 2,
                max: 3600,
            },
        ),
    ];
    for (iat, exp, expected) in cases {
        assert_eq!(
            check_with(&with_dates(iat, exp), &capped).unwrap_err(),
            expected,
            "iat {iat:?}, exp {exp}"
        );
    }
    assert_eq!(
        TokenError::MissingIat { max: 3600 }.to_string(),
        "no \"iat\" claim, needed to check the lifetime against the maximum of 3600 s"
    );
    assert_eq!(
        TokenError::IssuedAfterExpiry {
            iat: 20,
            exp: 10,
            max: 3600
        }
        .to_string(),
        "issued at 20, after it expires at 10 (Unix time): no lifetime to check against \
         the maximum of 3600 s"
    );
    // Without a cap, neither a missing iat nor one after exp matters.
    check(&with_dates(None, NOW + 60)).unwrap();
    check(&with_dates(Some(NOW), NOW - 1)).unwrap();

    let uncapped_exp = policy(|auth| {
        auth.require_exp = false;
        auth.max_token_lifetime = Some(Duration::from_secs(3600));
    });
    assert_eq!(
        check_with(
            &token(json!({ "sub": "d", "iat": NOW, "topics": "t" })),
            &uncapped_exp
        )
        .unwrap_err(),
        TokenError::MissingExp
    );
}

#[test]
fn subject_is_required_unless_the_policy_says_otherwise() {
    let token = |sub: Value| {
        sign(
            Algorithm::HS256,
            Some("dev"),
            &json!({ "sub": sub, "exp": NOW + 60, "topics": "t" }),
            &hmac(),
        )
    };
    let without = sign(
        Algorithm::HS256,
        Some("dev"),
        &json!({ "exp": NOW + 60, "topics": "t" }),
        &hmac(),
    );
    let relaxed = policy(|auth| auth.require_subject = false);
    for (token, subject) in [
        (without, None),
        (token(json!(null)), None),
        (token(json!("")), Some("")),
    ] {
        assert_eq!(check(&token), Err(TokenError::MissingSubject));
        let verified = check_with(&token, &relaxed).unwrap();
        assert_eq!(verified.subject.as_deref(), subject);
    }
    assert_eq!(
        check(&token(json!(" "))).unwrap().subject.as_deref(),
        Some(" ")
    );
    assert_eq!(
        check(&token(json!(7))),
        Err(TokenError::BadClaim { claim: "sub" })
    );
    assert_eq!(
        TokenError::MissingSubject.to_string(),
        "no subject: the \"sub\" claim is missing or empty, and [auth] require_subject is \
         on (sessions are keyed by subject)"
    );
    // A forgery without a subject is refused for its signature.
    let forged = sign(
        Algorithm::HS256,
        Some("dev"),
        &json!({ "exp": NOW + 60, "topics": "t" }),
        &EncodingKey::from_secret(b"not the secret"),
    );
    assert_eq!(
        check(&forged),
        Err(TokenError::BadSignature {
            kid: Some("dev".into())
        })
    );
}

#[test]
fn iat_in_the_future_is_refused_beyond_the_leeway() {
    let token = |iat: u64| {
        sign(
            Algorithm::HS256,
            Some("dev"),
            &json!({ "sub": "d", "iat": iat, "exp": NOW + 3600, "topics": "t" }),
            &hmac(),
        )
    };
    // The default leeway is 5 s.
    for iat in [0, NOW - 3600, NOW, NOW + 5] {
        check(&token(iat)).unwrap();
    }
    for iat in [NOW + 6, NOW + 3600, u64::MAX] {
        assert_eq!(
            check(&token(iat)),
            Err(TokenError::IssuedInFuture { iat }),
            "{iat}"
        );
    }
    let no_leeway = policy(|auth| auth.leeway = Duration::ZERO);
    check_with(&token(NOW), &no_leeway).unwrap();
    assert_eq!(
        check_with(&token(NOW + 1), &no_leeway),
        Err(TokenError::IssuedInFuture { iat: NOW + 1 })
    );
    assert_eq!(
        TokenError::IssuedInFuture { iat: 12 }.to_string(),
        "issued in the future, at 12 (Unix time)"
    );
}

/// Signs claims given as JSON text, for numbers `json!` cannot write.
fn sign_text(claims: &str) -> String {
    let message = format!(
        "{}.{}",
        b64url(
            json!({ "alg": "HS256", "kid": "dev" })
                .to_string()
                .as_bytes()
        ),
        b64url(claims.as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &hmac(), Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

#[test]
fn huge_dates_saturate() {
    let capped = policy(|auth| auth.max_token_lifetime = Some(Duration::from_secs(3600)));
    // A far-future exp is just valid, and clipped to u64::MAX when the
    // number is larger.
    for (exp, clipped) in [
        ("9223372036854775808", 1 << 63),
        ("18446744073709551615", u64::MAX),
        ("18446744073709551616", u64::MAX),
        ("1e19", 10_000_000_000_000_000_000),
        ("1.5e300", u64::MAX),
    ] {
        let token = sign_text(&format!(r#"{{"sub":"d","exp":{exp},"topics":"t"}}"#));
        assert_eq!(check(&token).unwrap().expires_at, Some(clipped), "{exp}");
        let huge_leeway = policy(|auth| auth.leeway = Duration::from_secs(u64::MAX));
        assert_eq!(
            check_with(&token, &huge_leeway).unwrap().expires_at,
            Some(clipped)
        );
        // ... but not with a lifetime cap.
        let token = sign_text(&format!(
            r#"{{"sub":"d","iat":{NOW},"exp":{exp},"topics":"t"}}"#
        ));
        assert_eq!(
            check_with(&token, &capped),
            Err(TokenError::LifetimeTooLong {
                lifetime: clipped - NOW,
                max: 3600
            }),
            "{exp}"
        );
    }
    let token = sign_text(&format!(
        r#"{{"sub":"d","exp":{},"nbf":1e300,"topics":"t"}}"#,
        NOW + 60
    ));
    assert_eq!(
        check(&token),
        Err(TokenError::NotYetValid { nbf: u64::MAX })
    );
    for bad in ["-1", "-1e300", "-0.5", "\"9\""] {
        let token = sign_text(&format!(r#"{{"sub":"d","exp":{bad},"topics":"t"}}"#));
        assert_eq!(
            check(&token),
            Err(TokenError::BadClaim { claim: "exp" }),
            "{bad}"
        );
    }
    // Beyond f64: not JSON serde can represent, so not a claims object.
    let token = sign_text(r#"{"sub":"d","exp":1e400,"topics":"t"}"#);
    assert_eq!(check(&token), Err(TokenError::ClaimsNotAnObject));
}

#[test]
fn the_audience_warning_names_the_public_key_files() {
    let keys = &fixture().keys;
    let idp = keys.get("rsa").unwrap().source().to_path_buf();
    let warnings = policy(|_| {}).warnings(keys);
    assert_eq!(
        warnings,
        [PolicyWarning::NoAudience {
            files: vec![idp.clone()]
        }]
    );
    let text = warnings[0].to_string();
    assert!(
        text.starts_with(&format!(
            "[auth] audience is unset while public keys (an identity provider's JWKS: {}) \
             are in force: any token",
            idp.display()
        )),
        "{text}"
    );
    assert!(text.ends_with("(RFC 8725 §3.9)"), "{text}");
    // An audience, or a policy that accepts only HMAC, leaves nothing
    // to warn about.
    assert!(
        policy(|auth| auth.audience = Some(vec!["gw".into()]))
            .warnings(keys)
            .is_empty()
    );
    assert!(
        policy(|auth| auth.algorithms = Some(vec![Algorithm::HS256, Algorithm::HS512]))
            .warnings(keys)
            .is_empty()
    );
    // One asymmetric algorithm allowed is enough.
    assert_eq!(
        policy(|auth| auth.algorithms = Some(vec![Algorithm::HS256, Algorithm::EdDSA]))
            .warnings(keys)
            .len(),
        1
    );
    // HMAC secrets alone are the gateway's own, not a provider's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dev.b64"), STANDARD.encode(SECRET)).unwrap();
    let (store, _) = KeyStore::open(dir.path()).unwrap();
    assert!(policy(|_| {}).warnings(&store.snapshot()).is_empty());
}

#[test]
fn deny_list_refuses_by_jti_sub_and_verifying_key() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dev.b64"), STANDARD.encode(SECRET)).unwrap();
    let ec = testing::ec("ec");
    std::fs::write(
        dir.path().join("idp.json"),
        testing::jwks(std::slice::from_ref(&ec.jwk)),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(crate::keys::DENY_LIST_FILE),
        "jti:leaked\nsub:stolen\nkid:ec\n",
    )
    .unwrap();
    let (store, _) = KeyStore::open(dir.path()).unwrap();
    let keys = store.snapshot();
    let check = |token: &str| {
        verify_at(token, &keys, &policy(|_| {}), NOW).map_err(|refused| refused.error)
    };
    let with = |extra: Value| {
        let mut claims = claims();
        for (name, value) in extra.as_object().unwrap() {
            claims[name] = value.clone();
        }
        claims
    };
    let revoked = |kind, id: &str, kid: &str| {
        Err(TokenError::Revoked {
            by: DenyEntry {
                kind,
                id: id.to_owned(),
            },
            kid: kid.to_owned(),
        })
    };

    let hs = |claims: &Value| sign(Algorithm::HS256, Some("dev"), claims, &hmac());
    check(&hs(&with(json!({ "jti": "fine" })))).unwrap();
    assert_eq!(
        check(&hs(&with(json!({ "jti": "leaked" })))),
        revoked(DenyKind::Jti, "leaked", "dev")
    );
    assert_eq!(
        check(&hs(&with(json!({ "sub": "stolen" })))),
        revoked(DenyKind::Sub, "stolen", "dev")
    );
    // A revoked token that has also expired is reported as revoked.
    assert_eq!(
        check(&hs(&with(json!({ "sub": "stolen", "exp": 1 })))),
        revoked(DenyKind::Sub, "stolen", "dev")
    );
    // By key: with or without kid in the header, it is the key that
    // verified the signature that counts.
    let ec_key = ec.encoding_key();
    for kid in [Some("ec"), None] {
        assert_eq!(
            check(&sign(Algorithm::ES256, kid, &claims(), &ec_key)),
            revoked(DenyKind::Kid, "ec", "ec")
        );
    }
    // A forgery is refused for its signature: the deny list is not
    // revealed to whoever lacks the key.
    let forged = sign(
        Algorithm::ES256,
        Some("ec"),
        &with(json!({ "sub": "stolen" })),
        &f.ec,
    );
    assert_eq!(
        check(&forged),
        Err(TokenError::BadSignature {
            kid: Some("ec".into())
        })
    );

    let error = check(&hs(&with(json!({ "jti": "leaked" })))).unwrap_err();
    assert_eq!(error.key_id(), Some("dev"));
    assert_eq!(
        error.to_string(),
        "revoked by the deny-list entry \"jti:leaked\""
    );
}

#[test]
fn require_kid() {
    let strict = policy(|auth| auth.require_kid = true);
    let token = sign(Algorithm::HS256, None, &claims(), &hmac());
    assert_eq!(check_with(&token, &strict), Err(TokenError::KidRequired));
    let token = sign(Algorithm::HS256, Some("dev"), &claims(), &hmac());
    check_with(&token, &strict).unwrap();
}

#[test]
fn algorithm_allow_list() {
    let only_es256 = policy(|auth| auth.algorithms = Some(vec![Algorithm::ES256]));
    let token = sign(Algorithm::HS256, Some("dev"), &claims(), &hmac());
    assert_eq!(
        check_with(&token, &only_es256),
        Err(TokenError::AlgorithmNotAllowed {
            alg: Algorithm::HS256
        })
    );
    let token = sign(Algorithm::ES256, Some("ec"), &claims(), &fixture().ec);
    check_with(&token, &only_es256).unwrap();
    // No key at all for ES384.
    let token = compact(&json!({ "alg": "ES384" }), &claims(), &[0; 96]);
    assert_eq!(
        check(&token),
        Err(TokenError::NoKeyForAlgorithm {
            alg: Algorithm::ES384
        })
    );
}

#[test]
fn critical_header_is_refused() {
    let token = compact(
        &json!({ "alg": "HS256", "kid": "dev", "crit": ["b64"], "b64": false }),
        &claims(),
        b"sig",
    );
    assert_eq!(check(&token), Err(TokenError::CriticalHeader));
}

#[test]
fn too_large_token_is_refused_before_parsing() {
    let token = "x".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(
        check(&token),
        Err(TokenError::TooLarge {
            len: MAX_TOKEN_BYTES + 1
        })
    );
    let topics: Vec<String> = (0..2000).map(|i| format!("t/{i}")).collect();
    let claims = MintClaims {
        topics,
        ..mint_claims("dev", &[])
    };
    assert!(matches!(
        mint(dev_key(), &claims),
        Err(MintError::TooLarge { .. })
    ));
}

#[test]
fn malformed_tokens_say_which_part() {
    let good = sign(Algorithm::HS256, Some("dev"), &claims(), &hmac());
    let (message, _) = good.rsplit_once('.').unwrap();
    let cases = [
        ("", Malformed::Shape),
        ("abc", Malformed::Shape),
        ("a.b", Malformed::Shape),
        ("a.b.c.d", Malformed::Shape),
        ("!!.e30.", Malformed::Header),
        ("e30.e30.", Malformed::Header),
        ("W10.e30.", Malformed::Header),
        (&*format!("{message}.not*base64"), Malformed::Signature),
    ];
    for (token, part) in cases {
        assert_eq!(check(token), Err(TokenError::Malformed(part)), "{token:?}");
    }
    let not_json = format!(
        "{}.{}",
        message.split_once('.').unwrap().0,
        b64url(b"not json")
    );
    let signed = format!(
        "{not_json}.{}",
        jsonwebtoken::crypto::sign(not_json.as_bytes(), &hmac(), Algorithm::HS256).unwrap()
    );
    assert_eq!(check(&signed).unwrap_err(), TokenError::ClaimsNotAnObject);
}

#[test]
fn topics_claim_forms() {
    let token = |claims: Value| sign(Algorithm::HS256, Some("dev"), &claims, &hmac());
    let single = check(&token(
        json!({ "sub": "d", "exp": NOW + 60, "topics": "a/+" }),
    ))
    .unwrap();
    assert_eq!(filters(&single), ["a/+"]);
    let empty = check(&token(json!({ "sub": "d", "exp": NOW + 60, "topics": [] }))).unwrap();
    assert!(!bound(&empty).grants.may_connect());
    assert!(matches!(
        check(&token(json!({ "sub": "d", "exp": NOW + 60 }))).unwrap_err(),
        TokenError::Grants(ClaimError::Missing { .. })
    ));
    for bad in [json!(3), json!(null), json!(["a", 1]), json!({ "a": "b" })] {
        assert_eq!(
            check(&token(
                json!({ "sub": "d", "exp": NOW + 60, "topics": bad })
            ))
            .unwrap_err(),
            TokenError::Grants(ClaimError::BadTopics("topics".into()))
        );
    }
    // EMQX's acl claim alone is enough; its name is configurable.
    let acl = check(&token(
        json!({ "sub": "d", "exp": NOW + 60, "acl": { "pub": ["p/#"] } }),
    ))
    .unwrap();
    assert_eq!(filters(&acl), ["p/#"]);
    let renamed = policy(|auth| auth.acl_claim = "mqtt_acl".into());
    let claims = json!({ "sub": "d", "exp": NOW + 60, "mqtt_acl": { "sub": ["s/#"] } });
    assert_eq!(
        filters(&check_with(&token(claims), &renamed).unwrap()),
        ["s/#"]
    );
    let namespaced = policy(|auth| auth.topics_claim = "https://example.com/topics".into());
    let claims = json!({ "sub": "d", "exp": NOW + 60, "https://example.com/topics": ["x/#"] });
    let verified = check_with(&token(claims), &namespaced).unwrap();
    assert_eq!(filters(&verified), ["x/#"]);
}

#[test]
fn errors_never_contain_the_token() {
    let f = fixture();
    let long_kid = "k".repeat(4000);
    let tokens = [
        sign(Algorithm::HS256, Some(&long_kid), &claims(), &hmac()),
        sign(
            Algorithm::HS256,
            Some("dev"),
            &claims(),
            &EncodingKey::from_secret(b"wrong"),
        ),
        sign(Algorithm::ES256, Some("ec"), &json!({ "exp": 1 }), &f.ec),
        compact(&json!({ "alg": "x".repeat(500) }), &claims(), b""),
    ];
    for token in tokens {
        let error = check(&token).unwrap_err().to_string();
        let (message, signature) = token.rsplit_once('.').unwrap();
        assert!(!error.contains(message) && (signature.is_empty() || !error.contains(signature)));
        assert!(error.len() < 200, "{error}");
    }
}

#[test]
fn mint_refusals() {
    let ec = fixture().keys.get("ec").unwrap();
    assert!(matches!(
        mint(ec, &mint_claims("d", &["t"])),
        Err(MintError::NotHmac { .. })
    ));
    assert!(matches!(
        mint(dev_key(), &mint_claims("", &["t"])),
        Err(MintError::EmptySubject)
    ));
    let reserved = MintClaims {
        topics_claim: "sub".into(),
        ..mint_claims("d", &["t"])
    };
    assert!(matches!(
        mint(dev_key(), &reserved),
        Err(MintError::ReservedClaimName(_))
    ));
    let instant = MintClaims {
        ttl: Duration::from_millis(999),
        ..mint_claims("d", &["t"])
    };
    assert!(matches!(mint(dev_key(), &instant), Err(MintError::ZeroTtl)));
    let forever = MintClaims {
        ttl: Duration::from_secs(u64::MAX),
        ..mint_claims("d", &["t"])
    };
    assert!(matches!(
        mint(dev_key(), &forever),
        Err(MintError::TtlTooLong)
    ));
}

#[test]
fn ttl_parsing() {
    for (text, seconds) in [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        (" 7d\n", 604_800),
    ] {
        assert_eq!(
            parse_ttl(text),
            Ok(Duration::from_secs(seconds)),
            "{text:?}"
        );
    }
    assert_eq!(parse_ttl(""), Err(TtlError::Invalid(String::new())));
    assert_eq!(parse_ttl("h"), Err(TtlError::Invalid("h".into())));
    assert_eq!(parse_ttl("-5m"), Err(TtlError::Invalid("-5m".into())));
    assert_eq!(parse_ttl("1.5h"), Err(TtlError::UnknownUnit(".5h".into())));
    assert_eq!(parse_ttl("5 m"), Err(TtlError::UnknownUnit(" m".into())));
    assert_eq!(parse_ttl("1w"), Err(TtlError::UnknownUnit("w".into())));
    assert_eq!(parse_ttl("0s"), Err(TtlError::Zero));
    assert_eq!(parse_ttl("99999999999999999999"), Err(TtlError::TooLong));
    assert_eq!(parse_ttl("999999999999999999d"), Err(TtlError::TooLong));
}

/// Whether the date rules accept a token, computed without any of the
/// saturating arithmetic `verify` uses.
fn dates_are_acceptable(
    exp: u64,
    nbf: Option<u64>,
    iat: Option<u64>,
    leeway: u64,
    max: Option<u64>,
) -> bool {
    let latest = u128::from(NOW) + u128::from(leeway);
    u128::from(NOW) < u128::from(exp) + u128::from(leeway)
        && nbf.is_none_or(|nbf| u128::from(nbf) <= latest)
        && iat.is_none_or(|iat| u128::from(iat) <= latest)
        && max.is_none_or(|max| iat.is_some_and(|iat| iat <= exp && exp - iat <= max))
}

/// Dates near `NOW`, anywhere, and at the edges of `u64`.
fn date() -> impl Strategy<Value = u64> {
    prop_oneof![
        NOW - 100..NOW + 100,
        any::<u64>(),
        Just(1 << 63),
        Just(u64::MAX),
        Just(0),
    ]
}

const BASE64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

proptest! {
    #[test]
    fn verify_never_panics_on_any_string(token in any::<String>()) {
        let _ = check(&token);
    }

    #[test]
    fn verify_never_panics_on_three_base64url_parts(
        header in prop::collection::vec(any::<u8>(), 0..80),
        claims in prop::collection::vec(any::<u8>(), 0..200),
        signature in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let token = format!("{}.{}.{}", b64url(&header), b64url(&claims), b64url(&signature));
        let _ = check(&token);
    }

    #[test]
    fn verify_never_panics_on_plausible_headers(
        alg in prop::sample::select(vec!["HS256", "HS512", "RS256", "PS384", "ES256", "ES384", "EdDSA", "none", ""]),
        kid in prop::option::of(prop::sample::select(vec!["dev", "rsa", "ec", "ed", "nope", ""])),
        claims in "\\PC{0,200}",
        signature in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let header = json!({ "alg": alg, "kid": kid });
        let token = format!(
            "{}.{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.as_bytes()),
            b64url(&signature)
        );
        let _ = check(&token);
    }

    #[test]
    fn a_changed_byte_is_refused_or_harmless(
        at in any::<prop::sample::Index>(),
        replacement in 0x20u8..0x7f,
    ) {
        let policy = policy(|_| {});
        let token = mint(dev_key(), &mint_claims("dev-1", &["devices/dev-1/#"])).unwrap();
        let original = verify(&token, &fixture().keys, &policy).unwrap();
        let at = at.index(token.len());
        prop_assume!(token.as_bytes()[at] != replacement);
        let mut bytes = token.into_bytes();
        bytes[at] = replacement;
        let changed = String::from_utf8(bytes).unwrap();
        // Accepting is only tolerable if the change was in bits base64
        // does not carry, so that the token means the same.
        if let Ok(verified) = verify(&changed, &fixture().keys, &policy) {
            prop_assert_eq!(verified, original);
        }
    }

    #[test]
    fn a_changed_base64_character_is_refused(
        at in any::<prop::sample::Index>(),
        replacement in prop::sample::select(BASE64URL.chars().collect::<Vec<_>>()),
    ) {
        let token = mint(dev_key(), &mint_claims("dev-1", &["devices/dev-1/#"])).unwrap();
        let at = at.index(token.len());
        prop_assume!(token.as_bytes()[at] != b'.' && token.as_bytes()[at] != replacement as u8);
        let mut changed = token.clone();
        changed.replace_range(at..=at, replacement.encode_utf8(&mut [0; 4]));
        let result = verify(&changed, &fixture().keys, &policy(|_| {}));
        prop_assert!(result.is_err(), "accepted {:?}", changed);
    }

    #[test]
    fn dates_are_judged_exactly_and_without_overflow(
        exp in date(),
        nbf in prop::option::of(date()),
        iat in prop::option::of(date()),
        leeway in prop_oneof![0u64..10, any::<u64>()],
        max in prop::option::of(prop_oneof![1u64..200, any::<u64>()]),
    ) {
        let policy = policy(|auth| {
            auth.leeway = Duration::from_secs(leeway);
            auth.max_token_lifetime = max.map(Duration::from_secs);
        });
        let claims = json!({ "sub": "d", "exp": exp, "nbf": nbf, "iat": iat, "topics": "t" });
        let token = sign(Algorithm::HS256, Some("dev"), &claims, &hmac());
        let result = check_with(&token, &policy);
        prop_assert_eq!(
            result.is_ok(),
            dates_are_acceptable(exp, nbf, iat, leeway, max),
            "{:?}", result
        );
    }

    #[test]
    fn fractional_and_huge_dates_never_panic(
        exp in any::<f64>(),
        nbf in any::<f64>(),
        iat in any::<f64>(),
        max in prop::option::of(any::<u64>()),
    ) {
        let policy = policy(|auth| auth.max_token_lifetime = max.map(Duration::from_secs));
        // json! writes NaN and the infinities as null.
        let claims = json!({ "sub": "d", "exp": exp, "nbf": nbf, "iat": iat, "topics": "t" });
        let token = sign(Algorithm::HS256, Some("dev"), &claims, &hmac());
        if let Ok(verified) = check_with(&token, &policy) {
            prop_assert!(verified.expires_at.is_some_and(|at| at > NOW - 10));
        }
    }

    #[test]
    fn mint_verify_round_trip(
        subject in "\\PC{1,40}",
        topics in prop::collection::vec("[a-z0-9/+#$]{1,12}", 0..8),
    ) {
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let token = mint(dev_key(), &mint_claims(&subject, &topic_refs)).unwrap();
        let verified = verify(&token, &fixture().keys, &policy(|_| {})).unwrap();
        prop_assert_eq!(verified.subject.as_deref(), Some(subject.as_str()));
        prop_assert_eq!(verified.key_id.as_str(), "dev");
        let granted = filters(&verified);
        let dropped = bound(&verified).dropped;
        for topic in &topics {
            let kept = granted.iter().any(|f| f == topic);
            let rejected = dropped.iter().any(|d| &d.topic == topic);
            prop_assert!(kept != rejected, "{:?} granted {} rejected {}", topic, kept, rejected);
        }
        for filter in &granted {
            prop_assert!(topics.iter().any(|t| t == filter));
        }
    }
}

#[test]
fn a_cnf_thumbprint_is_read_and_other_confirmation_methods_refused() {
    let with_cnf = |cnf: Value| {
        let mut claims = claims();
        claims["cnf"] = cnf;
        check(&sign(Algorithm::HS256, Some("dev"), &claims, &hmac()))
    };
    assert_eq!(
        check(&sign(Algorithm::HS256, Some("dev"), &claims(), &hmac()))
            .unwrap()
            .certificate,
        None
    );
    assert_eq!(
        with_cnf(json!({ "x5t#S256": "abc" }))
            .unwrap()
            .certificate
            .as_deref(),
        Some("abc")
    );
    assert!(matches!(
        with_cnf(json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" })),
        Err(TokenError::UnsupportedConfirmation)
    ));
    assert!(matches!(
        with_cnf(json!("abc")),
        Err(TokenError::BadClaim { claim: "cnf" })
    ));
    assert!(matches!(
        with_cnf(json!({ "x5t#S256": 7 })),
        Err(TokenError::BadClaim { claim: "cnf" })
    ));
}

#[test]
fn a_minted_bound_token_carries_its_thumbprint() {
    let token = mint_bound(dev_key(), &mint_claims("dev-1", &["a/#"]), Some("thumb")).unwrap();
    let verified = verify(&token, &fixture().keys, &policy(|_| {})).unwrap();
    assert_eq!(verified.certificate.as_deref(), Some("thumb"));
}

#[test]
fn the_binding_holds_only_with_the_certificate_it_names() {
    use binding::{BindingError, check};
    assert_eq!(check(Some("a"), Some("a"), false), Ok(()));
    assert_eq!(
        check(Some("a"), Some("b"), false),
        Err(BindingError::OtherCertificate)
    );
    assert_eq!(
        check(Some("a"), None, false),
        Err(BindingError::NoCertificate)
    );
    assert_eq!(check(None, Some("a"), false), Ok(()));
    assert_eq!(check(None, None, false), Ok(()));
    assert_eq!(check(None, Some("a"), true), Err(BindingError::Unbound));
    assert_eq!(check(Some("a"), Some("a"), true), Ok(()));
    for e in [
        BindingError::OtherCertificate,
        BindingError::NoCertificate,
        BindingError::Unbound,
    ] {
        assert!(e.to_string().starts_with("certificate binding: "), "{e}");
    }
}
