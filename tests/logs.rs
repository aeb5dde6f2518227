//! Structured logs (issue 13): with `[log] format = "json"` the real
//! binary writes one JSON object per line, and every authentication
//! decision is one line with the same fields (remote address, client id,
//! subject, key id, outcome, reason), never the token.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{DevBinary, V4Client, now_unix, sign_hs256_kid};
use rumqttc::ConnectReturnCode;
use serde_json::{Value, json};

/// The fields every authentication decision's line carries.
fn assert_decision_shape(line: &Value) {
    for field in [
        "remote",
        "client_id",
        "sub",
        "kid",
        "outcome",
        "reason",
        "code",
    ] {
        assert!(line.get(field).is_some(), "no {field} in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_decision_is_one_json_line_with_who_and_why_and_no_token() {
    let gw = DevBinary::start("", "[log]\nformat = \"json\"\n").await;
    let good = gw.token("sensor-1", &["s/#"], Duration::from_secs(600));
    let nothing = gw.sign(&json!({ "sub": "sensor-2", "exp": now_unix() + 600, "topics": [] }));
    let unknown_kid = sign_hs256_kid(
        b"another secret of at least 32 bytes!",
        "gone",
        &json!({ "sub": "sensor-3", "exp": now_unix() + 600, "topics": ["s/#"] }),
    );
    // Signed by a key in force, for a known subject, but expired.
    let expired =
        gw.sign(&json!({ "sub": "sensor-4", "exp": now_unix() - 3600, "topics": ["s/#"] }));
    let cases = [
        ("c-good", &good, ConnectReturnCode::Success),
        (
            "c-expired",
            &expired,
            ConnectReturnCode::BadUserNamePassword,
        ),
        ("c-nothing", &nothing, ConnectReturnCode::NotAuthorized),
        (
            "c-kid",
            &unknown_kid,
            ConnectReturnCode::BadUserNamePassword,
        ),
    ];
    for (client_id, token, code) in cases {
        let mut client = V4Client::start(gw.v4_options(client_id, token));
        assert_eq!(client.connack().await.code, code, "{client_id}");
    }
    gw.served.wait_for_log(0, "c-kid").await;

    let log = gw.served.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let decision = |client_id: &str| -> &Value {
        let found: Vec<&Value> = lines
            .iter()
            .filter(|l| l["client_id"] == json!(client_id) && l.get("outcome").is_some())
            .collect();
        assert_eq!(found.len(), 1, "one decision line for {client_id}:\n{log}");
        found[0]
    };

    let accepted = decision("c-good");
    assert_eq!(accepted["outcome"], json!("accepted"));
    assert_eq!(accepted["sub"], json!("sensor-1"));
    assert_eq!(accepted["kid"], json!("dev"));
    assert!(
        accepted["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let refused = decision("c-nothing");
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(
        refused["sub"],
        json!("sensor-2"),
        "known once the signature held"
    );
    assert_eq!(refused["kid"], json!("dev"));
    assert_eq!(refused["reason"], json!("the token grants no topics"));

    // One shape for every decision: the same fields, filled with what
    // the signature vouched for.
    for client_id in ["c-good", "c-nothing", "c-expired", "c-kid"] {
        assert_decision_shape(decision(client_id));
    }
    let refused = decision("c-expired");
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(refused["sub"], json!("sensor-4"), "its signature held");
    assert_eq!(refused["kid"], json!("dev"));

    let refused = decision("c-kid");
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(refused["sub"], json!(""), "not trusted, not told");
    assert_eq!(refused["kid"], json!("gone"));
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("no key has id"),
        "{refused}"
    );

    for token in [&good, &nothing, &expired, &unknown_kid] {
        assert!(!log.contains(token.as_str()), "a token is in the log");
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a signature is in the log");
    }
    for line in &lines {
        assert!(
            line["level"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
}

/// A JWK set that arrives by reload needs `[auth] audience` as much as one
/// present at start: the warning is logged when it arrives, once, not
/// again on later reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audience_warning_follows_a_jwk_set_dropped_in_later() {
    let gw = DevBinary::start("", "").await;
    let needle = "[auth] audience is unset";
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/examples/idp-example.json");
    // The development keys are HMAC secrets: nothing to warn about yet.
    assert!(!gw.served.log().contains(needle), "{}", gw.served.log());
    std::fs::copy(&example, gw.keys_dir().join("idp.json")).unwrap();
    gw.served.wait_for_log(0, needle).await;
    // Another reload, with the same keys in force: no second warning.
    let loaded = |log: &str| log.matches("verification keys loaded").count();
    let before = loaded(&gw.served.log());
    std::fs::write(gw.keys_dir().join("unrelated.txt"), "not a key").unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    while loaded(&gw.served.log()) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            gw.served.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gw.served.log().matches(needle).count(),
        1,
        "{}",
        gw.served.log()
    );
}

/// A re-authentication, accepted or refused, is one line of the same shape
/// as a CONNECT's decision, filled with what the new token's signature
/// vouched for: the refused one names the other subject its token holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_lines_have_the_same_shape() {
    use common::raw5::{Raw5, v5};
    let gw = DevBinary::start("", "[log]\nformat = \"json\"\n").await;
    let token = gw.token("meter-7", &["m/#"], Duration::from_secs(600));
    let (mut conn, ack) =
        Raw5::over(gw.raw().await, v5::Connect::enhanced("c-reauth", &token)).await;
    assert_eq!(ack.reason, 0, "{ack:?}");
    let fresh = gw.token("meter-7", &["m/#"], Duration::from_secs(900));
    assert!(
        matches!(
            conn.reauthenticate(&fresh).await,
            Some(v5::Packet::Auth { reason: 0, .. })
        ),
        "re-authentication accepted"
    );
    let other = gw.token("meter-8", &["m/#"], Duration::from_secs(600));
    assert!(
        matches!(
            conn.reauthenticate(&other).await,
            Some(v5::Packet::Disconnect { reason: 0x87, .. })
        ),
        "a token of another subject ends the session"
    );
    gw.served.wait_for_log(0, "re-authentication refused").await;
    let log = gw.served.log();
    let line = |message: &str| -> Value {
        let found: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["message"] == json!(message))
            .collect();
        assert_eq!(found.len(), 1, "one {message:?} line:\n{log}");
        found[0].clone()
    };
    let accepted = line("client re-authenticated");
    let refused = line("re-authentication refused: disconnecting");
    for decision in [&accepted, &refused] {
        assert_decision_shape(decision);
        assert!(
            decision["remote"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{decision}"
        );
        assert_eq!(decision["client_id"], json!("c-reauth"));
        assert_eq!(decision["kid"], json!("dev"));
    }
    assert_eq!(accepted["outcome"], json!("accepted"));
    assert_eq!(accepted["sub"], json!("meter-7"));
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(
        refused["sub"],
        json!("meter-8"),
        "what its signature vouched for"
    );
}
