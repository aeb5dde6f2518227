// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::ClientIdBinding;
use crate::config::{AuthConfig, Config};
use crate::keys::KeyStore;
use crate::keys::testing;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

const SECRET: &[u8] = b"a development secret of 32 bytes";

/// A keys directory with `dev.b64` and, when asked, an identity
/// provider's `idp.json`.
fn key_set(with_jwks: bool) -> (tempfile::TempDir, Arc<KeySet>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dev.b64"), STANDARD.encode(SECRET)).unwrap();
    if with_jwks {
        let jwks = testing::jwks(&[testing::ec_jwk("ec")]);
        std::fs::write(dir.path().join("idp.json"), jwks).unwrap();
    }
    let (store, report) = KeyStore::open(dir.path()).unwrap();
    assert!(report.issues.is_empty(), "{report}");
    (dir, store.snapshot())
}

fn policy(edit: impl FnOnce(&mut AuthConfig)) -> Policy {
    let mut auth = Config::defaults(Path::new("/unused")).auth;
    edit(&mut auth);
    Policy::from_config(&auth)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("dev".to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

#[test]
fn effective_rules_are_shown_bound_to_the_client_id() {
    let (_dir, keys) = key_set(false);
    let claims = json!({
        "sub": "site-7",
        "clientid": "gw-7",
        "exp": now() + 600,
        "acl": [
            {"permission": "deny", "action": "all", "topic": "site/secret/#"},
            {"permission": "allow", "action": "publish", "topic": "site/${clientid}/#", "qos": [0, 1], "retain": false},
            {"permission": "allow", "action": "subscribe", "topic": "eq site/alerts/#"}
        ],
        "topics": ["site/#", "x/${peerhost}"]
    });
    let report = check_as(&token(&claims), &keys, &policy(|_| {}), "gw-7");
    assert!(report.accepted, "{report}");
    let json = json_of(&report);
    assert_eq!(json["client_id"], json!("gw-7"));
    assert_eq!(json["topics"], json!(["site/#"]));
    assert_eq!(
        json["rules"],
        json!([
            {"claim": "topics claim", "rules": ["allow all site/#"]},
            {"claim": "acl claim, rule list", "rules": [
                "deny all site/secret/#",
                "allow publish site/gw-7/# qos 0,1 retain false",
                "allow subscribe eq site/alerts/#"
            ]}
        ])
    );
    assert_eq!(json["rejected_topics"][0]["filter"], json!("x/${peerhost}"));
    let text = report.to_string();
    assert!(text.contains("every list must allow"), "{text}");
    assert!(
        text.contains("    allow publish site/gw-7/# qos 0,1 retain false"),
        "{text}"
    );
    // A deny rule that cannot be bound refuses the token.
    let claims = json!({
        "sub": "a/b",
        "exp": now() + 600,
        "acl": [
            {"permission": "deny", "action": "all", "topic": "u/${sub}/admin"},
            {"permission": "allow", "action": "all", "topic": "u/#"}
        ]
    });
    let report = check(&token(&claims), &keys, &policy(|_| {}));
    assert!(!report.accepted);
    assert!(report.reason.unwrap_or_default().contains("deny rule"));
}

#[test]
fn clientid_stands_only_for_a_client_id_bound_to_the_token() {
    let (_dir, keys) = key_set(false);
    let claims = |clientid: Option<&str>| {
        let mut claims = json!({
            "sub": "site-7",
            "exp": now() + 600,
            "topics": ["site/${clientid}/#", "fleet/#"]
        });
        if let Some(clientid) = clientid {
            claims["clientid"] = json!(clientid);
        }
        token(&claims)
    };
    let strict = policy(|_| {});
    let unbound = check_as(&claims(None), &keys, &strict, "gw-7");
    assert!(unbound.accepted, "{unbound}");
    assert_eq!(unbound.topics, vec!["fleet/#"]);
    assert_eq!(unbound.rejected_topics[0].filter, "site/${clientid}/#");
    let by_subject = check_as(&claims(None), &keys, &strict, "site-7");
    assert_eq!(by_subject.topics, vec!["fleet/#", "site/site-7/#"]);
    let mismatch = check_as(&claims(Some("gw-8")), &keys, &strict, "gw-7");
    assert!(!mismatch.accepted);
    assert!(
        mismatch
            .reason
            .unwrap_or_default()
            .contains("\"clientid\" claim"),
        "the reason names the claim"
    );
    // Without --client-id: the client the token is for.
    let own = check(&claims(Some("gw-8")), &keys, &strict);
    assert_eq!(own.client_id, "gw-8");
    assert_eq!(own.topics, vec!["fleet/#", "site/gw-8/#"]);
    let own = check(&claims(None), &keys, &strict);
    assert_eq!(own.topics, vec!["fleet/#", "site/site-7/#"]);
    let none = policy(|auth| auth.client_id_binding = ClientIdBinding::Unchecked);
    let old = check_as(&claims(Some("gw-8")), &keys, &none, "gw-7");
    assert_eq!(old.topics, vec!["fleet/#", "site/gw-7/#"]);
    assert!(
        old.warnings
            .iter()
            .any(|w| w.contains("client_id_binding = \"none\""))
    );
}

fn json_of(report: &CheckReport) -> Value {
    serde_json::to_value(report).unwrap()
}

#[test]
fn a_token_without_subject_is_refused_with_the_reason() {
    let (_dir, keys) = key_set(false);
    let report = check(
        &token(&json!({ "exp": now() + 60, "topics": ["t"] })),
        &keys,
        &policy(|_| {}),
    );
    assert!(!report.accepted);
    let text = report.to_string();
    assert!(
        text.starts_with(
            "refused: no subject: the \"sub\" claim is missing or empty, and [auth] \
             require_subject is on"
        ),
        "{text}"
    );
    assert_eq!(json_of(&report)["reason"], json!(report.reason.unwrap()));

    let relaxed = policy(|auth| auth.require_subject = false);
    let report = check(
        &token(&json!({ "sub": "", "exp": now() + 60, "topics": ["t"] })),
        &keys,
        &relaxed,
    );
    assert!(report.accepted, "{report}");
}

#[test]
fn future_iat_and_lifetime_refusals_say_which() {
    let (_dir, keys) = key_set(false);
    let capped = policy(|auth| auth.max_token_lifetime = Some(Duration::from_secs(3600)));
    let now = now();
    for (claims, reason) in [
        (
            json!({ "sub": "d", "iat": now + 3600, "exp": now + 7200, "topics": "t" }),
            format!("issued in the future, at {} (Unix time)", now + 3600),
        ),
        (
            json!({ "sub": "d", "exp": now + 60, "topics": "t" }),
            "no \"iat\" claim, needed to check the lifetime against the maximum of 3600 s"
                .to_owned(),
        ),
        (
            json!({ "sub": "d", "iat": now, "exp": now - 1, "topics": "t" }),
            format!(
                "issued at {now}, after it expires at {} (Unix time): no lifetime to \
                 check against the maximum of 3600 s",
                now - 1
            ),
        ),
        (
            json!({ "sub": "d", "iat": now, "exp": now + 3601, "topics": "t" }),
            "lifetime of 3601 s exceeds the maximum of 3600 s".to_owned(),
        ),
    ] {
        let report = check(&token(&claims), &keys, &capped);
        assert!(!report.accepted);
        assert_eq!(report.reason.as_deref(), Some(reason.as_str()), "{claims}");
    }
}

#[test]
fn the_audience_warning_shows_in_both_forms() {
    let (dir, keys) = key_set(true);
    let good = token(&json!({ "sub": "d", "exp": now() + 60, "topics": "t" }));
    let idp = dir.path().join("idp.json");
    // Whatever the token: the warning is about the configuration.
    for token in [good.as_str(), "not a token"] {
        let report = check(token, &keys, &policy(|_| {}));
        assert_eq!(report.warnings.len(), 1, "{report}");
        assert!(
            report.warnings[0].contains(&format!("JWKS: {})", idp.display())),
            "{report}"
        );
        let text = report.to_string();
        let last = text.lines().last().unwrap();
        assert_eq!(last, format!("warning:  {}", report.warnings[0]));
        assert_eq!(json_of(&report)["warnings"], json!(report.warnings));
    }

    let with_audience = policy(|auth| auth.audience = Some(vec!["gw".into()]));
    let report = check(&good, &keys, &with_audience);
    assert!(report.warnings.is_empty());
    assert!(!report.to_string().contains("warning:"));
    assert!(json_of(&report).get("warnings").is_none());

    let (_other, hmac_only) = key_set(false);
    assert!(
        check(&good, &hmac_only, &policy(|_| {}))
            .warnings
            .is_empty()
    );
}

/// A token whose signature held but which is refused all the same
/// (expired here) still shows whom it names and which key signed it;
/// one whose signature failed shows neither.
#[test]
fn a_refused_token_with_a_good_signature_names_its_subject_and_key() {
    let (_dir, keys) = key_set(false);
    let exp = now() - 3600;
    let expired = token(&json!({ "sub": "meter-9", "exp": exp, "topics": "t" }));
    let report = check(&expired, &keys, &policy(|_| {}));
    assert!(!report.accepted);
    assert_eq!(report.subject.as_deref(), Some("meter-9"), "{report}");
    assert!(report.key_id.is_some(), "{report}");
    assert!(report.key_file.is_some(), "{report}");
    assert_eq!(report.expires_at, Some(exp));
    let (signed_part, _) = expired.rsplit_once('.').unwrap();
    let forged = format!("{signed_part}.AAAA");
    let forged = check(&forged, &keys, &policy(|_| {}));
    assert!(!forged.accepted);
    assert_eq!(forged.subject, None, "{forged}");
    assert_eq!(forged.key_file, None, "{forged}");
}

#[test]
fn a_far_future_expiry_is_shown_as_a_number() {
    let (_dir, keys) = key_set(false);
    for exp in [u64::MAX, 1 << 63, LAST_RFC3339_SECOND + 1] {
        let report = check(
            &token(&json!({ "sub": "d", "exp": exp, "topics": "t" })),
            &keys,
            &policy(|_| {}),
        );
        assert!(report.accepted);
        assert_eq!(report.expires_at, Some(exp));
        assert!(
            report.to_string().contains(&format!(
                "expires:  {exp} (Unix time, after the year 9999)\n"
            )),
            "{report}"
        );
        assert_eq!(json_of(&report)["expires_at"], json!(exp));
    }
    let report = check(
        &token(&json!({ "sub": "d", "exp": LAST_RFC3339_SECOND, "topics": "t" })),
        &keys,
        &policy(|_| {}),
    );
    assert!(
        report
            .to_string()
            .contains("expires:  9999-12-31T23:59:59Z (in "),
        "{report}"
    );
}
