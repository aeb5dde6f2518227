//! Renewal decisions and the warnings read from a token's claims.

#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::json;
use std::path::PathBuf;

use crate::provision::TokenKind;

fn jwt(claims: &Value) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!("{}.{}.c2ln", part(&json!({ "alg": "HS256" })), part(claims))
}

fn out(topics_claim: &str) -> TokenOut {
    TokenOut {
        path: PathBuf::from("device.jwt"),
        kind: TokenKind::Access,
        topics_claim: topics_claim.to_owned(),
        acl_claim: "acl".to_owned(),
        verify: None,
    }
}

#[test]
fn renewal_is_due_once_a_third_of_the_lifetime_is_left() {
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let min = |secs: u64| Some(Duration::from_secs(secs));
    // Issued at 0, expires at 900: due from 600 on (300 s left).
    let fresh = decide(900, Some(0), None, at(599)).unwrap();
    assert_eq!(fresh.expires_in, Duration::from_secs(301));
    assert_eq!(fresh.lifetime, Some(Duration::from_secs(900)));
    assert_eq!(fresh.renew_within, Duration::from_secs(300));
    assert!(!fresh.by_min_remaining);
    assert_eq!(decide(900, Some(0), None, at(601)), None);
    // Exactly a third left is not less than a third.
    assert!(decide(900, Some(0), None, at(600)).is_some());
    // A longer floor wins; a shorter one changes nothing.
    assert_eq!(decide(900, Some(0), min(600), at(301)), None);
    let fresh = decide(900, Some(0), min(600), at(299)).unwrap();
    assert!(fresh.by_min_remaining);
    assert_eq!(decide(900, Some(0), min(60), at(601)), None);
    assert!(
        !decide(900, Some(0), min(60), at(599))
            .unwrap()
            .by_min_remaining
    );
    // Expired, or no lifetime to take a third of and no floor: due.
    assert_eq!(decide(900, Some(0), None, at(900)), None);
    assert_eq!(decide(900, Some(0), None, at(5000)), None);
    assert_eq!(decide(900, None, None, at(10)), None);
    assert_eq!(decide(900, Some(900), None, at(10)), None);
    assert_eq!(decide(900, Some(2000), None, at(10)), None);
    // A floor alone still decides.
    assert!(decide(900, None, min(60), at(10)).unwrap().by_min_remaining);
    assert_eq!(decide(900, None, min(60), at(850)), None);
}

#[test]
fn inspect_reads_claims_and_warns() {
    let token = jwt(&json!({ "sub": "dev-1", "exp": 1_900_000_000u64, "topics": ["a/#", "b"] }));
    let (summary, warnings) = inspect(&token, &out("topics")).unwrap();
    assert_eq!(
        summary,
        Summary {
            subject: Some("dev-1".into()),
            expires_at: Some(1_900_000_000),
            topics: Some(vec!["a/#".into(), "b".into()]),
        }
    );
    assert!(warnings.is_empty());

    let (summary, warnings) =
        inspect(&jwt(&json!({ "sub": "d", "topics": "a" })), &out("topics")).unwrap();
    assert_eq!(summary.topics, Some(vec!["a".into()]));
    assert_eq!(warnings, [Warning::NoExp]);

    for sub in [json!(null), json!("")] {
        let token = jwt(&json!({ "sub": sub, "exp": 1, "topics": "a" }));
        let (_, warnings) = inspect(&token, &out("topics")).unwrap();
        assert_eq!(warnings, [Warning::NoSubject], "{sub}");
    }

    let namespaced = "https://example.com/topics";
    let (_, warnings) = inspect(&jwt(&json!({ "sub": "d", "exp": 1 })), &out(namespaced)).unwrap();
    assert_eq!(
        warnings,
        [Warning::NoTopics {
            claim: namespaced.into()
        }]
    );

    let (_, warnings) = inspect(
        &jwt(&json!({ "sub": "d", "exp": 1, "topics": [] })),
        &out("topics"),
    )
    .unwrap();
    assert_eq!(
        warnings,
        [Warning::EmptyTopics {
            claim: "topics".into()
        }]
    );

    let (_, warnings) = inspect(
        &jwt(&json!({ "sub": "d", "exp": 1, "topics": [1] })),
        &out("topics"),
    )
    .unwrap();
    assert_eq!(
        warnings,
        [Warning::BadTopics {
            claim: "topics".into()
        }]
    );

    for opaque in ["opaque", "a.b", "a.!!.c", "a.e30.c.d"] {
        let (_, warnings) = inspect(opaque, &out("topics")).unwrap();
        assert_eq!(
            warnings,
            [Warning::NotAJwt {
                kind: TokenKind::Access
            }],
            "{opaque}"
        );
    }
}

#[test]
fn refresh_path_is_beside_the_token() {
    assert_eq!(
        out("topics").refresh_path(),
        PathBuf::from("device.jwt.refresh")
    );
}
