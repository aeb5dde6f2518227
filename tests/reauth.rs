//! MQTT 5 enhanced authentication and re-authentication (issue 12), over
//! real TLS against the real gateway: CONNECT with authentication method
//! `JWT` and the token as data, then AUTH 0x19 with a fresh token.
//!
//! Neither rumqttc nor paho-mqtt for Python can send AUTH, so the client
//! here is the harness's bare MQTT 5 session (`tests/common/raw5.rs`);
//! the devices around it are rumqttc clients.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::checks::{ahead_of_now, assert_at_exp, until_past};
use common::raw5::{Raw5, v5};
use common::{QUIET, TestGateway, V4Client, now_unix};
use serde_json::json;

/// Session expiry interval (a property of CONNECT).
const SESSION_EXPIRY: u8 = 0x11;
/// Subscription options byte for QoS 1.
const QOS1: u8 = 1;
const SUCCESS: u8 = 0x00;
const BAD_CREDENTIALS: u8 = 0x86;
const NOT_AUTHORIZED: u8 = 0x87;
const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
const CLIENT_ID_NOT_VALID: u8 = 0x85;

/// A gateway whose tokens expire exactly at `exp` (no leeway), with
/// `jti:revoked-one` on its deny list.
async fn gateway() -> TestGateway {
    TestGateway::start_with(|config| {
        config.auth.leeway = Duration::ZERO;
        std::fs::write(config.auth.keys_dir.join("revoked"), "jti:revoked-one\n")
            .expect("write the deny list");
    })
    .await
}

/// A token for `sub` granting `topics` for `secs` seconds.
fn token(gw: &TestGateway, sub: &str, topics: &[&str], secs: u64) -> String {
    gw.sign(&json!({ "sub": sub, "exp": now_unix() + secs, "topics": topics }))
}

/// A device that watches `filter` at QoS 1.
async fn watcher(gw: &TestGateway, id: &str, filter: &str) -> V4Client {
    let token = gw.token(id, &["#"], Duration::from_secs(600));
    let mut client = V4Client::start(gw.v4_options(id, &token));
    client.connack().await;
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
    client
}

fn is_auth_success(answer: &Option<v5::Packet>) -> bool {
    matches!(
        answer,
        Some(v5::Packet::Auth { reason: SUCCESS, props })
            if props.get(v5::AUTHENTICATION_METHOD) == Some(&v5::Value::Text("JWT".into()))
    )
}

#[tokio::test]
async fn a_token_as_authentication_data_connects_and_connack_names_the_method() {
    let gw = gateway().await;
    let t = token(&gw, "dev-a", &["a/#"], 600);
    let (mut raw, ack) = Raw5::connect(&gw, v5::Connect::enhanced("dev-a", &t)).await;
    assert_eq!(
        ack.props.get(v5::AUTHENTICATION_METHOD),
        Some(&v5::Value::Text("JWT".into()))
    );
    assert_eq!(raw.subscribe(1, &[("a/#", QOS1)]).await, vec![1]);

    // Another method is refused with its own code.
    let other = v5::Connect::new("dev-b", &t)
        .props(v5::Props::new().text(v5::AUTHENTICATION_METHOD, "SCRAM-SHA-256"));
    let (_, ack) = Raw5::try_connect(&gw, other).await;
    assert_eq!(ack.reason, BAD_AUTHENTICATION_METHOD);
    // Garbage as data is a bad credential; a client id with a wildcard is
    // refused before any token is looked at.
    let (_, ack) = Raw5::try_connect(&gw, v5::Connect::enhanced("dev-c", "x.y.z")).await;
    assert_eq!(ack.reason, BAD_CREDENTIALS);
    for id in ["dev/+", "dev/#"] {
        let (_, ack) = Raw5::try_connect(&gw, v5::Connect::enhanced(id, &t)).await;
        assert_eq!(ack.reason, CLIENT_ID_NOT_VALID, "{id:?}");
    }
}

#[tokio::test]
async fn reauthentication_keeps_the_session_past_the_old_expiry() {
    let gw = gateway().await;
    let mut publisher = watcher(&gw, "pub-1", "unused/#").await;
    // Long enough for a loaded machine to connect, subscribe, deliver and
    // re-authenticate before it; checked below, not hoped.
    let short_exp = now_unix() + 6;
    let short = gw.sign(&json!({ "sub": "dev-r", "exp": short_exp, "topics": ["q/#"] }));
    let connect = v5::Connect::enhanced("dev-r", &short)
        .clean_start(false)
        .props(v5::Props::new().u32(SESSION_EXPIRY, 300));
    let (mut device, _) = Raw5::connect(&gw, connect).await;
    assert_eq!(device.subscribe(1, &[("q/#", QOS1)]).await, vec![1]);

    publisher
        .publish("q/1", rumqttc::QoS::AtLeastOnce, false, b"before")
        .await;
    assert_eq!(device.expect_publish().await.payload, b"before");

    let long = token(&gw, "dev-r", &["q/#"], 600);
    assert!(is_auth_success(&device.reauthenticate(&long).await));
    let left = ahead_of_now(short_exp);
    assert!(
        left > Duration::ZERO,
        "the re-authentication came after the first token's exp: nothing tested"
    );

    // A second past the first token's exp (no leeway), the connection lives
    // on: the same connection without the AUTH is closed at exp (the next
    // test).
    until_past(short_exp, Duration::from_secs(1)).await;
    publisher
        .publish("q/1", rumqttc::QoS::AtLeastOnce, false, b"after")
        .await;
    assert_eq!(device.expect_publish().await.payload, b"after");

    // The session is still the persistent one: gone, a QoS 1 message
    // waits for it, and it comes back to it with the new token.
    drop(device);
    tokio::time::sleep(QUIET).await;
    publisher
        .publish("q/2", rumqttc::QoS::AtLeastOnce, false, b"queued")
        .await;
    let again = v5::Connect::enhanced("dev-r", &long)
        .clean_start(false)
        .props(v5::Props::new().u32(SESSION_EXPIRY, 300));
    let (mut device, ack) = Raw5::connect(&gw, again).await;
    assert!(ack.session_present);
    assert_eq!(device.expect_publish().await.payload, b"queued");
}

#[tokio::test]
async fn without_reauthentication_the_old_expiry_still_ends_the_connection() {
    let gw = gateway().await;
    // Far enough ahead that the CONNECT is surely before it.
    let exp = now_unix() + 3;
    let short = gw.sign(&json!({ "sub": "dev-x", "exp": exp, "topics": ["x/#"] }));
    let (mut device, _) = Raw5::connect(&gw, v5::Connect::enhanced("dev-x", &short)).await;
    assert!(ahead_of_now(exp) > Duration::ZERO, "connected after exp");
    // MQTT 5's "maximum connect time", at exp (no leeway): not before it,
    // and not long after.
    assert_eq!(device.closed().await, Some(0xA0));
    assert_at_exp("closed", SystemTime::now(), exp, Duration::from_secs(3));
}

#[tokio::test]
async fn narrower_grants_drop_subscriptions_and_refuse_publishes_at_once() {
    let gw = gateway().await;
    let mut publisher = watcher(&gw, "pub-2", "unused/#").await;
    let wide = token(&gw, "dev-n", &["a/#", "b/#"], 600);
    // Authenticated by password: AUTH works on such a connection too.
    let (mut device, ack) = Raw5::connect(&gw, v5::Connect::new("dev-n", &wide)).await;
    assert_eq!(ack.props.get(v5::AUTHENTICATION_METHOD), None);
    assert_eq!(
        device
            .subscribe(1, &[("a/#", QOS1), ("b/#", QOS1), ("a/+/x", QOS1)])
            .await,
        vec![1, 1, 1]
    );

    // The new token carries EMQX's rule list instead: b/ is gone, and
    // a/secret is denied inside a/#.
    let narrow = gw.sign(&json!({
        "sub": "dev-n",
        "exp": now_unix() + 600,
        "acl": [
            {"permission": "deny", "action": "all", "topic": "a/secret"},
            {"permission": "allow", "action": "all", "topic": "a/#"}
        ]
    }));
    assert!(is_auth_success(&device.reauthenticate(&narrow).await));

    // b/# is gone, and so is a/#, which reaches the denied a/secret;
    // a/+/x stays. The publisher's messages are routed in order, so the
    // first to arrive is the first the remaining subscription matches.
    for topic in ["b/1/x", "a/1", "a/1/x"] {
        publisher
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, topic.as_bytes())
            .await;
    }
    assert_eq!(device.expect_publish().await.topic, "a/1/x");
    device
        .send(&v5::publish("b/1", b"x", 1, false, 7, &v5::Props::new()))
        .await;
    let (pkid, reason) = device.puback().await;
    assert_eq!((pkid, reason), (7, NOT_AUTHORIZED));
    device
        .send(&v5::publish("a/1", b"x", 1, false, 8, &v5::Props::new()))
        .await;
    let (pkid, reason) = device.puback().await;
    assert_eq!(pkid, 8);
    assert!(reason < 0x80, "a/1 is still granted: {reason:#04x}");
    device
        .send(&v5::publish(
            "a/secret",
            b"x",
            1,
            false,
            9,
            &v5::Props::new(),
        ))
        .await;
    assert_eq!(device.puback().await, (9, NOT_AUTHORIZED));
    // Subscribing again to what the rules allow works; to a/# does not.
    assert_eq!(device.subscribe(2, &[("a/+/x", QOS1)]).await, vec![1]);
    assert_eq!(
        device.subscribe(3, &[("a/#", QOS1)]).await,
        vec![NOT_AUTHORIZED]
    );
}

#[tokio::test]
async fn refused_reauthentications_end_the_connection_with_their_reason_and_no_will() {
    let gw = gateway().await;
    let mut will_watch = watcher(&gw, "will-watch", "wills/#").await;
    let other_sub = token(&gw, "someone-else", &["w/#"], 600);
    // Expired a minute ago: expiry is the point, with no second to spare
    // either way (leeway is zero).
    let expired = gw.sign(&json!({
        "sub": "dev-w", "exp": now_unix() - 60, "topics": ["w/#"]
    }));
    let revoked = gw.sign(&json!({
        "sub": "dev-w", "exp": now_unix() + 600, "topics": ["w/#"], "jti": "revoked-one"
    }));
    let cases: [(&str, &str, u8); 4] = [
        ("another subject", &other_sub, NOT_AUTHORIZED),
        ("expired", &expired, BAD_CREDENTIALS),
        ("revoked", &revoked, NOT_AUTHORIZED),
        ("garbage", "not-a-token", BAD_CREDENTIALS),
    ];
    let good = token(&gw, "dev-w", &["w/#", "wills/#"], 600);
    // Each connection's will names its case, so that a will published late
    // is still told apart from the control's below.
    let with_will = |what: &str| {
        v5::Connect::enhanced("dev-w", &good).will(v5::Will::new(
            "wills/dev-w",
            format!("will of {what}").as_bytes(),
        ))
    };
    for (what, bad, code) in cases {
        let (mut device, _) = Raw5::connect(&gw, with_will(what)).await;
        match device.reauthenticate(bad).await {
            Some(v5::Packet::Disconnect { reason, .. }) => assert_eq!(reason, code, "{what}"),
            other => panic!("{what}: expected DISCONNECT {code:#04x}, got {other:?}"),
        }
        assert_eq!(
            device.closed().await,
            None,
            "{what}: closed after the DISCONNECT"
        );
        will_watch.expect_no_publish().await;
        will_watch.assert_alive().await;
    }

    // A method other than JWT: refused too, no will.
    let (mut device, _) = Raw5::connect(&gw, with_will("another method")).await;
    let scram = v5::Props::new().text(v5::AUTHENTICATION_METHOD, "SCRAM-SHA-1");
    device.send(&v5::auth(0x19, &scram)).await;
    assert_eq!(device.closed().await, Some(BAD_AUTHENTICATION_METHOD));
    will_watch.expect_no_publish().await;

    // The control: the same connection, will and watcher, ended without a
    // DISCONNECT instead of by a refused AUTH, does publish its will. Any
    // will of a refused case, published however late by the same path,
    // would have come first.
    let (device, _) = Raw5::connect(&gw, with_will("the control")).await;
    drop(device);
    let first = will_watch.expect_publish("wills/dev-w").await;
    assert_eq!(
        String::from_utf8_lossy(&first.payload),
        "will of the control",
        "a refused re-authentication's will was published"
    );
    will_watch.assert_alive().await;

    // A reason other than 0x19 (no will here: a protocol error publishes
    // it).
    let (mut device, _) = Raw5::connect(&gw, v5::Connect::enhanced("dev-w", &good)).await;
    let jwt = v5::Props::new().text(v5::AUTHENTICATION_METHOD, "JWT");
    device.send(&v5::auth(0x18, &jwt)).await;
    assert_eq!(
        device.closed().await,
        Some(0x82),
        "continue: a protocol error"
    );
}
