//! The EMQX golden table (issue 12): tokens with EMQX's `acl` claim, in
//! both its forms and with placeholders, and the publish and subscribe
//! attempts EMQX documents an outcome for. Each token is signed, verified
//! and bound to its client exactly as at CONNECT; jwtgate's decision must be
//! EMQX's, or the table must say why it differs
//! (`tests/data/emqx_acl_golden.json`).

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jwtgate::acl::Bindings;
use jwtgate::config::Config;
use jwtgate::keys::KeyStore;
use jwtgate::mqtt::QoS;
use jwtgate::token::{self, Policy};
use serde::Deserialize;
use serde_json::{Value, json};

const SECRET: &[u8] = b"golden table: a 32-byte HMAC key";

#[derive(Deserialize)]
struct Table {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    client_id: String,
    acl: Value,
    attempts: Vec<Attempt>,
}

#[derive(Deserialize)]
struct Attempt {
    action: String,
    topic: String,
    qos: u8,
    #[serde(default)]
    retain: bool,
    emqx: Outcome,
    jwtgate: Option<Outcome>,
    why: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Allow,
    Deny,
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        other => panic!("QoS {other} in the table"),
    }
}

#[test]
fn jwtgate_decides_as_emqx_documents_or_says_why_not() {
    let table: Table =
        serde_json::from_str(include_str!("data/emqx_acl_golden.json")).expect("the table parses");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dev.b64"), STANDARD.encode(SECRET)).unwrap();
    let (store, _) = KeyStore::open(dir.path()).unwrap();
    let policy = Policy::from_config(&Config::defaults(Path::new("/unused")).auth);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;

    let mut checked = 0;
    let mut differences = 0;
    for case in &table.cases {
        let claims = json!({ "sub": "device-1", "exp": exp, "acl": case.acl });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let verified = token::verify(&token, &store.snapshot(), &policy)
            .unwrap_or_else(|e| panic!("{}: the token is refused: {e}", case.name));
        let grants = verified
            .grants
            .bind(&Bindings {
                client_id: Some(&case.client_id),
                subject: verified.subject.as_deref(),
                username: Some("JWT"),
            })
            .unwrap_or_else(|e| panic!("{}: {e}", case.name))
            .grants;
        for attempt in &case.attempts {
            let allowed = match attempt.action.as_str() {
                "publish" => grants.may_publish(&attempt.topic, qos(attempt.qos), attempt.retain),
                "subscribe" => grants.may_subscribe(&attempt.topic, qos(attempt.qos)),
                other => panic!("action {other:?} in the table"),
            };
            let got = if allowed {
                Outcome::Allow
            } else {
                Outcome::Deny
            };
            let expected = attempt.jwtgate.unwrap_or(attempt.emqx);
            if expected != attempt.emqx {
                differences += 1;
                assert!(
                    attempt.why.as_ref().is_some_and(|why| !why.is_empty()),
                    "{}: {} {} differs from EMQX without saying why",
                    case.name,
                    attempt.action,
                    attempt.topic
                );
            }
            assert_eq!(
                got, expected,
                "{}: {} {:?} at QoS {} (retain {})",
                case.name, attempt.action, attempt.topic, attempt.qos, attempt.retain
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} attempts in the table");
    // Every difference is a deliberate narrowing; none may widen.
    assert!(differences <= 3, "{differences} differences from EMQX");
}

#[test]
fn the_differences_only_ever_deny() {
    let table: Table =
        serde_json::from_str(include_str!("data/emqx_acl_golden.json")).expect("the table parses");
    for case in &table.cases {
        for attempt in &case.attempts {
            if let Some(ours) = attempt.jwtgate {
                assert!(
                    ours == Outcome::Deny && attempt.emqx == Outcome::Allow,
                    "{}: {} {} is wider than EMQX",
                    case.name,
                    attempt.action,
                    attempt.topic
                );
            }
        }
    }
}
