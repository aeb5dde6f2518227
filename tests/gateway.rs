//! Integration tests for the gateway core: the real gateway in-process over
//! real TLS, with rumqttc (MQTT 3.1.1 and 5) and raw TLS sockets.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::checks::{ahead_of_now, assert_at_exp};
use common::raw5::{Raw5, v5};
use common::{QUIET, TestGateway, V4Client, V5Client, WAIT, mqtt, now_unix};
use jwtgate::config::DenyPublish;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as Code5, DisconnectReasonCode, Packet as Packet5, PubAckReason,
    PubCompReason, SubscribeReasonCode as Sub5,
};
use rumqttc::{ConnectReturnCode, LastWill, QoS, SubscribeReasonCode};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// 1. Accepted token
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_token_gets_connack_success_v4_and_v5() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev1", &["sensors/#"], HOUR);

    let mut v4 = V4Client::start(gw.v4_options("dev1-v4", &token));
    let ack = v4.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(
        !ack.session_present,
        "a clean session has no session present"
    );

    let mut v5 = V5Client::start(gw.v5_options("dev1-v5", &token));
    let ack = v5.connack().await;
    assert_eq!(ack.code, Code5::Success);
    assert!(!ack.session_present);

    // Both are live sessions, not just acked CONNECTs.
    assert_eq!(
        v4.subscribe("sensors/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    assert_eq!(
        v5.subscribe("sensors/#", QoS5::AtMostOnce).await,
        vec![Sub5::Success(QoS5::AtMostOnce)]
    );
}

// ---------------------------------------------------------------------------
// 2. Refusals with the right codes
// ---------------------------------------------------------------------------

/// One way of getting a CONNECT refused.
struct Refusal {
    what: &'static str,
    username: Option<&'static str>,
    password: Option<String>,
    will_topic: Option<&'static str>,
    /// 3.1.1 CONNACK return code.
    v4: u8,
    /// MQTT 5 CONNACK reason code.
    v5: u8,
}

fn v4_code(code: u8) -> ConnectReturnCode {
    match code {
        4 => ConnectReturnCode::BadUserNamePassword,
        5 => ConnectReturnCode::NotAuthorized,
        other => panic!("no 3.1.1 code {other} in these tests"),
    }
}

fn v5_code(code: u8) -> Code5 {
    match code {
        0x86 => Code5::BadUserNamePassword,
        0x87 => Code5::NotAuthorized,
        other => panic!("no MQTT 5 code {other:#x} in these tests"),
    }
}

/// Checks one refusal with rumqttc v4 and v5 (the code) and with raw v4 and
/// v5 sockets (the exact CONNACK bytes, then the close).
async fn check_refusal(gw: &TestGateway, case: &Refusal) {
    let what = case.what;
    // rumqttc always sends a username and a password when credentials are
    // set; the cases without one are covered by the raw sockets below.
    if let (Some(username), Some(password)) = (case.username, case.password.as_deref()) {
        let mut opts = gw.v4_options(&format!("refused-v4-{}", what.len()), password);
        opts.set_credentials(username, password);
        if let Some(topic) = case.will_topic {
            opts.set_last_will(LastWill::new(topic, "bye", QoS::AtMostOnce, false));
        }
        let mut client = V4Client::start(opts);
        assert_eq!(
            client.connack().await.code,
            v4_code(case.v4),
            "{what}: rumqttc v4"
        );

        let mut opts = gw.v5_options(&format!("refused-v5-{}", what.len()), password);
        opts.set_credentials(username, password);
        if let Some(topic) = case.will_topic {
            opts.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                topic,
                "bye",
                QoS5::AtMostOnce,
                false,
                None,
            ));
        }
        let mut client = V5Client::start(opts);
        assert_eq!(
            client.connack().await.code,
            v5_code(case.v5),
            "{what}: rumqttc v5"
        );
    }

    for level in [4u8, 5] {
        let mut connect = mqtt::Connect::new(level, "refused-raw");
        if let Some(u) = case.username {
            connect = connect.username(u);
        }
        if let Some(p) = &case.password {
            connect = connect.password(p);
        }
        if let Some(t) = case.will_topic {
            connect = connect.will(t, b"bye");
        }
        let mut raw = gw.raw().await;
        raw.send_ok(&connect.encode()).await;
        let connack = raw.read_packet().await;
        if level == 4 {
            assert_eq!(
                connack,
                [0x20, 0x02, 0x00, case.v4],
                "{what}: raw 3.1.1 CONNACK"
            );
        } else {
            assert_eq!(
                connack[0], 0x20,
                "{what}: raw v5 CONNACK type: {connack:02x?}"
            );
            assert_eq!(
                connack[2], 0x00,
                "{what}: raw v5 session present: {connack:02x?}"
            );
            assert_eq!(
                connack[3], case.v5,
                "{what}: raw v5 CONNACK reason: {connack:02x?}"
            );
        }
        let after = raw.expect_closed().await;
        assert!(
            after.is_empty(),
            "{what}: nothing after the refusal, got {after:02x?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_the_right_codes_and_close_the_connection() {
    let gw = TestGateway::start().await;
    let good = gw.token("dev2", &["sensors/#"], HOUR);
    let now = now_unix();

    let other_secret = common::sign_hs256(
        &[0x5au8; 32],
        &json!({"sub": "dev2", "iat": now, "exp": now + 3600, "topics": ["sensors/#"]}),
    );
    let expired = gw.sign(&json!({
        "sub": "dev2", "iat": now - 7200, "exp": now - 3600, "topics": ["sensors/#"]
    }));
    let many: Vec<String> = (0..400)
        .map(|i| format!("sensors/device-{i:05}/#"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    // `token::mint` refuses to make one this big, so it is signed by hand.
    let huge = gw.sign(&json!({"sub": "dev2", "iat": now, "exp": now + 3600, "topics": many}));
    assert!(
        huge.len() > 8 * 1024,
        "the oversized token is {} bytes",
        huge.len()
    );
    let no_topics = gw.sign(&json!({"sub": "dev2", "iat": now, "exp": now + 3600}));
    let no_sub = gw.sign(&json!({"iat": now, "exp": now + 3600, "topics": ["sensors/#"]}));
    let issued_later = gw.sign(&json!({
        "sub": "dev2", "iat": now + 3600, "exp": now + 7200, "topics": ["sensors/#"]
    }));

    let cases = [
        Refusal {
            what: "username is not JWT",
            username: Some("device"),
            password: Some(good.clone()),
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "no username",
            username: None,
            password: None,
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "no password",
            username: Some("JWT"),
            password: None,
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "garbage token",
            username: Some("JWT"),
            password: Some("not-a.jwt.at-all".into()),
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "token signed with another secret",
            username: Some("JWT"),
            password: Some(other_secret),
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "expired token",
            username: Some("JWT"),
            password: Some(expired),
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "token over 8 KiB",
            username: Some("JWT"),
            password: Some(huge),
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "token without the topics claim",
            username: Some("JWT"),
            password: Some(no_topics),
            will_topic: None,
            v4: 5,
            v5: 0x87,
        },
        Refusal {
            what: "token without sub",
            username: Some("JWT"),
            password: Some(no_sub),
            will_topic: None,
            v4: 5,
            v5: 0x87,
        },
        Refusal {
            what: "token with iat an hour ahead",
            username: Some("JWT"),
            password: Some(issued_later),
            will_topic: None,
            v4: 4,
            v5: 0x86,
        },
        Refusal {
            what: "will on a topic not granted",
            username: Some("JWT"),
            password: Some(good.clone()),
            will_topic: Some("alarms/dev2"),
            v4: 5,
            v5: 0x87,
        },
    ];
    for case in &cases {
        check_refusal(&gw, case).await;
    }

    // The gateway still serves a good client after all that.
    let mut ok = gw.v4_connected("dev2-after", &good).await;
    assert_eq!(
        ok.subscribe("sensors/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
}

// ---------------------------------------------------------------------------
// 3. Pub/sub round trip at QoS 0, 1 and 2
// ---------------------------------------------------------------------------

fn qos5(qos: QoS) -> QoS5 {
    match qos {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

/// The three per-QoS subscriptions of the round trip: `sensors/qN/+` at
/// QoS N, so that every message is delivered at the QoS it was sent with.
const PER_QOS: [(&str, QoS); 3] = [
    ("sensors/q0/+", QoS::AtMostOnce),
    ("sensors/q1/+", QoS::AtLeastOnce),
    ("sensors/q2/+", QoS::ExactlyOnce),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_round_trip_at_qos_0_1_2() {
    let gw = TestGateway::start().await;
    let sub_token = gw.token("sub3", &["sensors/#"], HOUR);
    let pub_token = gw.token("pub3", &["sensors/+/reading"], HOUR);

    // v4 subscriber, v5 publisher.
    let mut sub4 = gw.v4_connected("sub3-v4", &sub_token).await;
    assert_eq!(
        sub4.subscribe_many(&PER_QOS).await,
        PER_QOS
            .iter()
            .map(|(_, qos)| SubscribeReasonCode::Success(*qos))
            .collect::<Vec<_>>()
    );
    let mut pub5 = gw.v5_connected("pub3-v5", &pub_token).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("sensors/q{}/reading", qos as u8);
        let payload = format!("from v5 at {qos:?}");
        let ack = pub5
            .publish(&topic, qos5(qos), false, payload.as_bytes())
            .await;
        // The acknowledgement of the publish's QoS, and a successful one:
        // none at QoS 0, PUBACK at 1, PUBCOMP (after a successful PUBREC,
        // which the client answered) at 2.
        match (qos, &ack) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtLeastOnce, Some(Packet5::PubAck(ack))) => {
                assert_eq!(ack.reason, PubAckReason::Success);
            }
            (QoS::ExactlyOnce, Some(Packet5::PubComp(comp))) => {
                assert_eq!(comp.reason, PubCompReason::Success);
            }
            _ => panic!("{qos:?} publish acknowledged with {ack:?}"),
        }
        let got = sub4.expect_publish(&topic).await;
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(got.qos, qos);
        assert!(!got.retain);
    }

    // v5 subscriber, v4 publisher.
    let mut sub5 = gw.v5_connected("sub3-v5", &sub_token).await;
    let per_qos5: Vec<(&str, QoS5)> = PER_QOS.iter().map(|(f, q)| (*f, qos5(*q))).collect();
    assert_eq!(
        sub5.subscribe_many(&per_qos5).await,
        per_qos5
            .iter()
            .map(|(_, qos)| Sub5::Success(*qos))
            .collect::<Vec<_>>()
    );
    let mut pub4 = gw.v4_connected("pub3-v4", &pub_token).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let topic = format!("sensors/q{}/reading", qos as u8);
        let payload = format!("from v4 at {qos:?}");
        pub4.publish(&topic, qos, false, payload.as_bytes()).await;
        let got = sub5.expect_publish(&topic).await;
        assert_eq!(&got.payload[..], payload.as_bytes());
        assert_eq!(got.qos, qos5(qos));
        assert!(!got.retain);
    }
    // Each message came exactly once (sub4 also sees pub4's messages).
    assert!(sub5.publishes_within(QUIET).await.is_empty());
}

/// MQTT 3.1.1 §3.8.4 / MQTT 5 §3.8.2.1: a message is delivered at the
/// lower of its publish QoS and the subscription's granted QoS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev3q", &["sensors/#"], HOUR);
    let mut sub4 = gw.v4_connected("dev3q-sub4", &token).await;
    sub4.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut sub5 = gw.v5_connected("dev3q-sub5", &token).await;
    sub5.subscribe("sensors/#", QoS5::AtLeastOnce).await;
    let mut publisher = gw.v4_connected("dev3q-pub", &token).await;

    // Downgrade: QoS 2 publish, QoS 1 subscription.
    publisher
        .publish("sensors/down", QoS::ExactlyOnce, false, b"2->1")
        .await;
    assert_eq!(
        sub4.expect_publish("sensors/down").await.qos,
        QoS::AtLeastOnce
    );
    assert_eq!(
        sub5.expect_publish("sensors/down").await.qos,
        QoS5::AtLeastOnce
    );

    // No upgrade: QoS 0 publish, QoS 1 subscription.
    publisher
        .publish("sensors/up", QoS::AtMostOnce, false, b"0 stays 0")
        .await;
    let got4 = sub4.expect_publish("sensors/up").await;
    let got5 = sub5.expect_publish("sensors/up").await;
    assert_eq!(
        (got4.qos, got5.qos),
        (QoS::AtMostOnce, QoS5::AtMostOnce),
        "a QoS 0 publish must not be delivered at the subscription's QoS 1"
    );
}

// ---------------------------------------------------------------------------
// 4. Retained message
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_a_later_subscriber() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev4", &["config/#"], HOUR);

    let mut publisher = gw.v4_connected("pub4", &token).await;
    publisher
        .publish("config/dev4", QoS::AtLeastOnce, true, b"interval=30")
        .await;

    let mut sub4 = gw.v4_connected("sub4-v4", &token).await;
    sub4.subscribe("config/#", QoS::AtLeastOnce).await;
    let got = sub4.expect_publish("config/dev4").await;
    assert!(
        got.retain,
        "a retained message is delivered with the retain flag"
    );
    assert_eq!(&got.payload[..], b"interval=30");

    let mut sub5 = gw.v5_connected("sub4-v5", &token).await;
    sub5.subscribe("config/dev4", QoS5::AtLeastOnce).await;
    let got = sub5.expect_publish("config/dev4").await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"interval=30");
}

// ---------------------------------------------------------------------------
// 5. Persistent session resumed
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_is_resumed_with_queued_message() {
    let gw = TestGateway::start().await;
    let sub_token = gw.token("dev5", &["sensors/#"], HOUR);

    let mut opts = gw.v4_options("dev5-persistent", &sub_token);
    opts.set_clean_session(false);
    let mut sub = V4Client::start(opts);
    let ack = sub.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(
        !ack.session_present,
        "the first connection has no session yet"
    );
    assert_eq!(
        sub.subscribe("sensors/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    sub.disconnect().await;

    let pub_token = gw.token("pub5", &["sensors/#"], HOUR);
    let mut publisher = gw.v4_connected("pub5", &pub_token).await;
    publisher
        .publish(
            "sensors/t5",
            QoS::AtLeastOnce,
            false,
            b"while you were away",
        )
        .await;

    // Same client id, same subject (a fresh token), clean_session = false.
    let again = gw.token("dev5", &["sensors/#"], HOUR);
    let mut opts = gw.v4_options("dev5-persistent", &again);
    opts.set_clean_session(false);
    let mut sub = V4Client::start(opts);
    let ack = sub.connack().await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(ack.session_present, "the session is resumed");
    let got = sub.expect_publish("sensors/t5").await;
    assert_eq!(&got.payload[..], b"while you were away");
    assert_eq!(got.qos, QoS::AtLeastOnce);
}

// ---------------------------------------------------------------------------
// 6. Unauthorized publish not delivered
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_publish_is_dropped_and_publisher_stays() {
    let gw = TestGateway::start().await;
    let mut watcher = gw
        .v4_connected("watcher6", &gw.token("watcher6", &["b/#"], HOUR))
        .await;
    watcher.subscribe("b/#", QoS::AtLeastOnce).await;

    let a_token = gw.token("dev6", &["a/#"], HOUR);
    let mut pub4 = gw.v4_connected("dev6-v4", &a_token).await;
    pub4.publish("b/x", QoS::AtMostOnce, false, b"v4 qos0")
        .await;
    // The QoS 1 one is acknowledged (publish() waits for the PUBACK).
    pub4.publish("b/x", QoS::AtLeastOnce, false, b"v4 qos1")
        .await;

    let mut pub5 = gw.v5_connected("dev6-v5", &a_token).await;
    pub5.publish("b/x", QoS5::AtMostOnce, false, b"v5 qos0")
        .await;
    match pub5
        .publish("b/x", QoS5::AtLeastOnce, false, b"v5 qos1")
        .await
    {
        Some(Packet5::PubAck(ack)) => assert_eq!(ack.reason, PubAckReason::NotAuthorized),
        other => panic!("expected a PUBACK, got {other:?}"),
    }

    // A control message from an authorized publisher does arrive, and it
    // is the only thing that does.
    let mut allowed = gw
        .v4_connected("allowed6", &gw.token("allowed6", &["b/#"], HOUR))
        .await;
    allowed
        .publish("b/ok", QoS::AtLeastOnce, false, b"control")
        .await;
    watcher.expect_publish("b/ok").await;
    let stray = watcher.publishes_within(QUIET).await;
    let stray_topics: Vec<_> = stray.iter().map(|p| p.topic.clone()).collect();
    assert!(
        stray.is_empty(),
        "refused publishes were delivered: {stray_topics:?}"
    );
    assert!(
        watcher.take_other_publishes().is_empty(),
        "refused publishes were delivered"
    );

    // Both publishers are still connected and working.
    pub4.assert_alive().await;
    pub4.subscribe("a/#", QoS::AtLeastOnce).await;
    pub4.publish("a/echo", QoS::AtLeastOnce, false, b"still here")
        .await;
    pub4.expect_publish("a/echo").await;
    pub5.assert_alive().await;
    pub5.subscribe("a/#", QoS5::AtLeastOnce).await;
    pub5.publish("a/echo5", QoS5::AtLeastOnce, false, b"still here")
        .await;
    pub5.expect_publish("a/echo5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_publish_disconnects_when_configured() {
    let gw = TestGateway::start_with(|cfg| cfg.auth.deny_publish = DenyPublish::Disconnect).await;
    let mut watcher = gw
        .v4_connected("watcher6d", &gw.token("watcher6d", &["b/#"], HOUR))
        .await;
    watcher.subscribe("b/#", QoS::AtLeastOnce).await;
    let a_token = gw.token("dev6d", &["a/#"], HOUR);

    let mut pub4 = gw.v4_connected("dev6d-v4", &a_token).await;
    pub4.publish("b/x", QoS::AtMostOnce, false, b"v4").await;
    let why = pub4.closed().await;
    eprintln!("v4 publisher closed: {why}");

    let mut pub5 = gw.v5_connected("dev6d-v5", &a_token).await;
    pub5.publish("b/x", QoS5::AtMostOnce, false, b"v5").await;
    let end = pub5.closed().await;

    watcher.expect_no_publish().await;
    assert_eq!(
        end.disconnect,
        Some(DisconnectReasonCode::NotAuthorized),
        "v5 publisher told why: {end:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. Subscribe subset rule
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_must_be_covered_by_the_grants() {
    let gw = TestGateway::start().await;

    let sensors = gw.token("dev7a", &["sensors/#"], HOUR);
    let mut c = gw.v4_connected("dev7a", &sensors).await;
    assert_eq!(
        c.subscribe("sensors/+/temp", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let temperature = gw.token("dev7b", &["temperature"], HOUR);
    let mut c4 = gw.v4_connected("dev7b-v4", &temperature).await;
    assert_eq!(
        c4.subscribe("#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        c4.subscribe("+", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    let mut c5 = gw.v5_connected("dev7b-v5", &temperature).await;
    assert_eq!(
        c5.subscribe("#", QoS5::AtMostOnce).await,
        vec![Sub5::NotAuthorized]
    );
    assert_eq!(
        c5.subscribe("+", QoS5::AtMostOnce).await,
        vec![Sub5::NotAuthorized]
    );

    // Mixed SUBSCRIBE: answers in request order.
    let mixed4 = c4
        .subscribe_many(&[
            ("#", QoS::AtLeastOnce),
            ("temperature", QoS::AtLeastOnce),
            ("+", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(
        mixed4,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    let mixed5 = c5
        .subscribe_many(&[
            ("#", QoS5::AtLeastOnce),
            ("temperature", QoS5::AtLeastOnce),
            ("+", QoS5::AtMostOnce),
        ])
        .await;
    assert_eq!(
        mixed5,
        vec![
            Sub5::NotAuthorized,
            Sub5::Success(QoS5::AtLeastOnce),
            Sub5::NotAuthorized,
        ]
    );

    // Messages flow on the allowed filter only.
    let mut publisher = gw
        .v4_connected(
            "pub7",
            &gw.token("pub7", &["temperature", "humidity"], HOUR),
        )
        .await;
    publisher
        .publish("humidity", QoS::AtLeastOnce, false, b"55")
        .await;
    publisher
        .publish("temperature", QoS::AtLeastOnce, false, b"21.5")
        .await;
    assert_eq!(&c4.expect_publish("temperature").await.payload[..], b"21.5");
    assert_eq!(&c5.expect_publish("temperature").await.payload[..], b"21.5");
    let extra4 = c4.publishes_within(QUIET).await;
    assert!(
        extra4.is_empty(),
        "v4 got publishes outside its subscriptions: {extra4:?}"
    );
    let extra5 = c5.publishes_within(QUIET).await;
    assert!(
        extra5.is_empty(),
        "v5 got publishes outside its subscriptions: {extra5:?}"
    );
}

// ---------------------------------------------------------------------------
// 8. Will
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_a_client_vanishes() {
    let gw = TestGateway::start().await;
    let mut watcher = gw
        .v4_connected("watcher8", &gw.token("watcher8", &["status/#"], HOUR))
        .await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;

    // A clean DISCONNECT does not publish the will. Its will differs from
    // the killed client's below in topic and payload, so that the polite
    // client's will, published however late, cannot pass for the other.
    let token = gw.token(
        "dev8",
        &["status/dev8", "status/dev8-polite", "status/dev8-v5"],
        HOUR,
    );
    let mut opts = gw.v4_options("dev8-polite", &token);
    opts.set_last_will(LastWill::new(
        "status/dev8-polite",
        "offline (polite)",
        QoS::AtLeastOnce,
        false,
    ));
    let mut polite = V4Client::start(opts);
    assert_eq!(polite.connack().await.code, ConnectReturnCode::Success);
    polite.disconnect().await;
    watcher.expect_no_publish().await;

    // Dropping the TCP connection does.
    let mut opts = gw.v4_options("dev8", &token);
    opts.set_last_will(LastWill::new(
        "status/dev8",
        "offline (killed)",
        QoS::AtLeastOnce,
        false,
    ));
    let mut rude = V4Client::start(opts);
    assert_eq!(rude.connack().await.code, ConnectReturnCode::Success);
    rude.kill().await;
    // The first will to arrive is the killed client's: any will of the
    // polite one, published by the same path before it, would be first.
    let will = watcher.next_packet().await;
    match will {
        Ok(rumqttc::Packet::Publish(will)) => {
            assert_eq!(
                (will.topic.as_str(), &will.payload[..]),
                ("status/dev8", &b"offline (killed)"[..])
            );
        }
        other => panic!("expected the killed client's will, got {other:?}"),
    }

    let mut opts = gw.v5_options("dev8-v5", &token);
    opts.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "status/dev8-v5",
        "gone",
        QoS5::AtLeastOnce,
        false,
        None,
    ));
    let mut rude5 = V5Client::start(opts);
    assert_eq!(rude5.connack().await.code, Code5::Success);
    rude5.kill().await;
    let will = watcher.expect_publish("status/dev8-v5").await;
    assert_eq!(&will.payload[..], b"gone");
    // Nothing else, ever, from the polite client.
    let late = watcher.publishes_within(QUIET).await;
    assert!(late.is_empty(), "{late:?}");
    watcher.assert_alive().await;
}

// ---------------------------------------------------------------------------
// 9. Token expiry closes the connection
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_the_connection() {
    let gw = TestGateway::start_with(|cfg| cfg.auth.leeway = Duration::ZERO).await;
    // `exp` set from a measured now, far enough ahead for both CONNECTs on
    // a loaded machine (checked below).
    let exp = now_unix() + 4;
    let token = gw.sign(&json!({ "sub": "dev9", "exp": exp, "topics": ["sensors/#"] }));

    let mut v5 = gw.v5_connected("dev9-v5", &token).await;
    let mut v4 = gw.v4_connected("dev9-v4", &token).await;
    v5.assert_alive().await;
    v4.assert_alive().await;
    assert!(
        ahead_of_now(exp) > Duration::ZERO,
        "connected after exp: nothing tested"
    );

    // Closed at exp (no leeway): not before it, and not long after.
    let ((end, closed5), (why, closed4)) =
        tokio::join!(async { (v5.closed().await, SystemTime::now()) }, async {
            (v4.closed().await, SystemTime::now())
        },);
    assert_at_exp("v5 closed", closed5, exp, Duration::from_secs(3));
    assert_at_exp("v4 closed", closed4, exp, Duration::from_secs(3));
    eprintln!("v4 closed at expiry: {why}");
    assert_eq!(
        end.disconnect,
        Some(DisconnectReasonCode::MaximumConnectTime),
        "v5 told \"maximum connect time\": {end:?}"
    );
}

// ---------------------------------------------------------------------------
// 10. MQTT 3.1
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_connect_and_round_trip() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev10", &["legacy/#"], HOUR);
    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(3, "dev10")
            .username("JWT")
            .password(&token)
            .encode(),
    )
    .await;
    assert_eq!(raw.read_packet().await, mqtt::CONNACK_OK_V4);

    raw.send_ok(&mqtt::subscribe(3, 1, "legacy/#", 0)).await;
    assert_eq!(
        raw.read_packet().await,
        [0x90, 0x03, 0x00, 0x01, 0x00],
        "SUBACK"
    );

    raw.send_ok(&mqtt::publish(3, "legacy/t", b"hello 3.1", 0, 0))
        .await;
    let frame = raw.read_packet().await;
    let (topic, payload) = mqtt::parse_publish_v4(&frame)
        .unwrap_or_else(|| panic!("expected a PUBLISH, got {frame:02x?}"));
    assert_eq!(topic, "legacy/t");
    assert_eq!(payload, b"hello 3.1");

    raw.send_ok(&mqtt::PINGREQ).await;
    assert_eq!(raw.read_packet().await, mqtt::PINGRESP);

    raw.send_ok(&mqtt::DISCONNECT).await;
    assert!(raw.expect_closed().await.is_empty());
}

// ---------------------------------------------------------------------------
// 11. Forbidden packets and garbage
// ---------------------------------------------------------------------------

/// The reason code of a well-formed MQTT 5 DISCONNECT frame (fixed header
/// included), or `None` if `frame` is not one: remaining length 0 (normal
/// disconnection), 1 (reason code only), or reason code plus a property
/// length that accounts for the rest of the frame.
fn disconnect_reason(frame: &[u8]) -> Option<u8> {
    match frame {
        [0xE0, 0x00] => Some(0x00),
        [0xE0, 0x01, reason] => Some(*reason),
        [0xE0, remaining, reason, props, rest @ ..]
            if usize::from(*remaining) == 2 + rest.len() && usize::from(*props) == rest.len() =>
        {
            Some(*reason)
        }
        _ => None,
    }
}

/// Deterministic noise.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_packets_and_garbage_close_only_that_connection() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev11", &["sensors/#"], HOUR);

    // After a valid CONNECT: the connection is closed; a 3.1.1 client
    // gets nothing more, an MQTT 5 client at most a DISCONNECT saying why
    // (checked for well-formedness at the end).
    let after_connect: [(u8, &str, Vec<u8>); 6] = [
        (5, "CONNACK", vec![0x20, 0x03, 0x00, 0x00, 0x00]),
        (5, "UNSUBACK", vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x00]),
        (5, "reserved type 0", vec![0x00, 0x00]),
        (5, "reserved type 15 with noise", {
            let mut g = noise(11, 64);
            g[0] = 0xF0;
            g[1] = 62;
            g
        }),
        (4, "CONNACK", vec![0x20, 0x02, 0x00, 0x00]),
        (4, "UNSUBACK", vec![0xB0, 0x02, 0x00, 0x01]),
    ];
    let mut told_why = Vec::new();
    for (level, what, bytes) in &after_connect {
        let mut raw = gw.raw().await;
        raw.send_ok(
            &mqtt::Connect::new(*level, "dev11-raw")
                .username("JWT")
                .password(&token)
                .encode(),
        )
        .await;
        let connack = raw.read_packet().await;
        assert_eq!(
            (connack[0], connack[3]),
            (0x20, 0x00),
            "CONNACK success: {connack:02x?}"
        );
        let _ = raw.send(bytes).await;
        let frames = raw.expect_closed().await;
        if *level == 5 {
            told_why.push((*what, frames));
        } else {
            assert!(
                frames.is_empty(),
                "3.1.1 {what}: nothing before the close: {frames:02x?}"
            );
        }
    }

    // As the very first packet.
    let first: [(&str, Vec<u8>); 5] = [
        ("CONNACK", vec![0x20, 0x02, 0x00, 0x00]),
        ("UNSUBACK", vec![0xB0, 0x02, 0x00, 0x01]),
        ("all ones", vec![0xFF; 16]),
        ("noise", {
            let mut g = noise(7, 200);
            g[0] = 0x6A;
            g[1] = 100;
            g
        }),
        (
            "HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(4),
        ),
    ];
    for (what, bytes) in &first {
        let mut raw = gw.raw().await;
        let _ = raw.send(bytes).await;
        let frames = raw.expect_closed().await;
        assert!(
            frames.is_empty(),
            "{what}: no answer before the close, got {frames:02x?}"
        );
    }

    // The gateway keeps serving.
    let mut sub = gw.v5_connected("dev11-sub", &token).await;
    sub.subscribe("sensors/#", QoS5::AtLeastOnce).await;
    let mut publisher = gw.v4_connected("dev11-pub", &token).await;
    publisher
        .publish("sensors/after", QoS::AtLeastOnce, false, b"fine")
        .await;
    assert_eq!(
        &sub.expect_publish("sensors/after").await.payload[..],
        b"fine"
    );

    for (what, frames) in &told_why {
        let reasons: Vec<Option<u8>> = frames.iter().map(|f| disconnect_reason(f)).collect();
        assert!(
            frames.is_empty() || (reasons.len() == 1 && reasons[0].is_some_and(|r| r >= 0x80)),
            "MQTT 5 {what}: at most one well-formed DISCONNECT with an error reason \
             before the close, got {frames:02x?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 12. A silent connection does not stall others
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_stall_other_clients() {
    let gw = TestGateway::start().await;
    // One that never starts TLS, one that completes TLS and never sends
    // CONNECT.
    let silent_tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let silent_tls = gw.raw().await;

    let token = gw.token("dev12", &["sensors/#"], HOUR);
    let mut c = gw.v4_connected("dev12", &token).await;
    c.subscribe("sensors/#", QoS::AtLeastOnce).await;
    c.publish("sensors/t12", QoS::AtLeastOnce, false, b"not stalled")
        .await;
    assert_eq!(
        &c.expect_publish("sensors/t12").await.payload[..],
        b"not stalled"
    );
    let mut c5 = gw.v5_connected("dev12-v5", &token).await;
    c5.assert_alive().await;
    drop((silent_tcp, silent_tls));
}

// ---------------------------------------------------------------------------
// 13. No plaintext MQTT
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_mqtt_gets_no_connack() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start().await;
    let token = gw.token("dev13", &["sensors/#"], HOUR);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let _ = tcp
        .write_all(
            &mqtt::Connect::new(4, "dev13")
                .username("JWT")
                .password(&token)
                .encode(),
        )
        .await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "a plaintext connection is closed, not left open"
    );
    assert_ne!(
        received.first(),
        Some(&0x20),
        "no CONNACK in plaintext: {received:02x?}"
    );
}

// ---------------------------------------------------------------------------
// 14. Keep-alive
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_is_accepted_and_silence_is_closed() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev14", &["sensors/#"], HOUR);

    let mut opts = gw.v4_options("dev14-ka0", &token);
    opts.set_keep_alive(Duration::ZERO);
    let mut ka0 = V4Client::start(opts);
    assert_eq!(ka0.connack().await.code, ConnectReturnCode::Success);
    ka0.subscribe("sensors/#", QoS::AtLeastOnce).await;
    ka0.publish("sensors/ka0", QoS::AtLeastOnce, false, b"no keep-alive")
        .await;
    ka0.expect_publish("sensors/ka0").await;

    // Keep-alive 2 s, then silence: closed after 1.5 x 2 s (both protocol
    // versions at once).
    let (silent4, silent5) = tokio::join!(
        silent_session(&gw, &token, 4),
        silent_session(&gw, &token, 5)
    );
    for (level, (elapsed, _)) in [(4, &silent4), (5, &silent5)] {
        assert!(
            elapsed >= &Duration::from_secs(2),
            "level {level}: closed after {elapsed:?}, before the keep-alive itself"
        );
    }
    assert!(
        silent4.1.is_empty(),
        "3.1.1: nothing before the close: {:02x?}",
        silent4.1
    );

    // The keep-alive 0 client is not timed out by that silence.
    ka0.assert_alive().await;

    let frames = &silent5.1;
    assert!(
        frames.len() == 1 && disconnect_reason(&frames[0]) == Some(0x8D),
        "MQTT 5: exactly one well-formed DISCONNECT \"keep alive timeout\" (0x8D) \
         before the close, got {frames:02x?}"
    );
}

/// Connects with keep-alive 2 s over a raw socket, then says nothing.
/// Returns how long after the CONNACK the server closed, and the frames it
/// sent in between.
async fn silent_session(gw: &TestGateway, token: &str, level: u8) -> (Duration, Vec<Vec<u8>>) {
    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(level, &format!("dev14-silent-{level}"))
            .username("JWT")
            .password(token)
            .keep_alive(2)
            .encode(),
    )
    .await;
    let connack = raw.read_packet().await;
    assert_eq!(
        (connack[0], connack[3]),
        (0x20, 0x00),
        "CONNACK: {connack:02x?}"
    );
    let start = Instant::now();
    let frames = raw.expect_closed().await;
    (start.elapsed(), frames)
}

// ---------------------------------------------------------------------------
// 15. Session takeover
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_same_client_id_takes_over() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev15", &["takeover/#"], HOUR);

    let mut first = gw.v5_connected("same-id", &token).await;
    let mut second = gw.v5_connected("same-id", &token).await;
    let end = first.closed().await;
    second.subscribe("takeover/#", QoS5::AtLeastOnce).await;
    second
        .publish("takeover/x", QoS5::AtLeastOnce, false, b"mine now")
        .await;
    assert_eq!(
        &second.expect_publish("takeover/x").await.payload[..],
        b"mine now"
    );
    second.assert_alive().await;

    // 3.1.1 too.
    let mut first4 = gw.v4_connected("same-id-4", &token).await;
    let mut second4 = gw.v4_connected("same-id-4", &token).await;
    first4.closed().await;
    second4.subscribe("takeover/#", QoS::AtLeastOnce).await;
    second4
        .publish("takeover/y", QoS::AtLeastOnce, false, b"v4 too")
        .await;
    second4.expect_publish("takeover/y").await;

    // Another subject using the same client id does not take it over.
    let other = gw.token("someone-else", &["takeover/#"], HOUR);
    let mut intruder = gw.v5_connected("same-id", &other).await;
    intruder.assert_alive().await;
    second
        .publish("takeover/z", QoS5::AtLeastOnce, false, b"still mine")
        .await;
    assert_eq!(
        &second.expect_publish("takeover/z").await.payload[..],
        b"still mine"
    );
    // Another subject's connection did not kick it.
    second.assert_alive().await;
    assert_eq!(
        end.disconnect,
        Some(DisconnectReasonCode::SessionTakenOver),
        "the first is told it was taken over: {end:?}"
    );
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_v5_clients_and_stops() {
    let gw = TestGateway::start().await;
    let token = gw.token("dev-stop", &["sensors/#"], HOUR);
    let mut c5 = gw.v5_connected("dev-stop", &token).await;
    let mut c4 = gw.v4_connected("dev-stop-4", &token).await;
    gw.stop().await;
    let end = c5.closed().await;
    c4.closed().await;
    assert_eq!(
        end.disconnect,
        Some(DisconnectReasonCode::ServerShuttingDown),
        "{end:?}"
    );
}

// ---------------------------------------------------------------------------
// 16. The binary's first run
// ---------------------------------------------------------------------------

/// The first run, with no configuration: it listens where `--listen` says
/// (port 0 here, reported by `--ready-file`, so no port is picked ahead and
/// raced for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_first_run_serves_mints_and_stops_on_sigterm() {
    common::init_tracing();
    let bin = env!("CARGO_BIN_EXE_jwtgate");
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let ready_path = dir.path().join("serve.ready");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready_path)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let serve_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let port = common::wait_for_ready_file(&ready_path, &mut child, serve_log)
        .await
        .mqtt
        .port();
    for file in [
        "keys/tls/ca.crt",
        "keys/tls/server.crt",
        "keys/tls/server.key",
        "keys/dev.b64",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} was created");
    }

    let minted = tokio::process::Command::new(bin)
        .args([
            "mint",
            "--sub",
            "dev1",
            "--topics",
            "sensors/#",
            "--ttl",
            "1h",
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        minted.status.success(),
        "mint failed: {}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert_eq!(
        token.split('.').count(),
        3,
        "mint prints a compact JWT: {token:?}"
    );

    let ca = std::fs::read(dir.path().join("keys/tls/ca.crt")).unwrap();
    let mut sub = V4Client::start(common::v4_options_for(port, &ca, "dev1-sub", &token));
    assert_eq!(
        sub.connack().await.code,
        ConnectReturnCode::Success,
        "{}",
        serve_log()
    );
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::start(common::v5_options_for(port, &ca, "dev1-pub", &token));
    assert_eq!(publisher.connack().await.code, Code5::Success);
    publisher
        .publish("sensors/t1", QoS5::AtLeastOnce, false, b"21.5")
        .await;
    assert_eq!(&sub.expect_publish("sensors/t1").await.payload[..], b"21.5");

    let pid = child.id().expect("still running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap_or_else(|_| panic!("jwtgate did not exit after SIGTERM:\n{}", serve_log()))
        .unwrap();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        serve_log()
    );
    // The clients were closed by the shutdown.
    sub.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reports_config_errors() {
    let bin = env!("CARGO_BIN_EXE_jwtgate");
    let dir = tempfile::tempdir().unwrap();

    let out = tokio::process::Command::new(bin)
        .args(["serve", "--config", "missing.toml"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing config fails");
    assert!(
        stderr.contains("missing.toml"),
        "the path is named: {stderr}"
    );

    std::fs::write(
        dir.path().join("bad.toml"),
        "listen = \"127.0.0.1:0\"\n\n[limits]\nmax_conections = 10\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(bin)
        .args(["serve", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown key fails");
    assert!(
        stderr.contains("max_conections"),
        "the key is named: {stderr}"
    );
    assert!(
        stderr.contains("bad.toml:4:"),
        "the line is named: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// Limits: each one closes only the client that exceeds it.
// ---------------------------------------------------------------------------

/// Reads a plain TCP connection until the peer closes it; true when it was
/// closed within `WAIT` without the peer sending anything.
async fn tcp_closed_silently(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// `[limits] max_connections` caps authenticated connections: past it a
/// device is refused at CONNECT ("server unavailable"; MQTT 5: 0x89 server
/// busy), and those already in are untouched. Strangers have places of
/// their own (issue 9), so they never count against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_only_the_newcomer() {
    let gw = TestGateway::start_with(|cfg| cfg.limits.max_connections = 2).await;
    let token = gw.token("cap", &["cap/#"], HOUR);
    let mut first = gw.v4_connected("cap-1", &token).await;
    let second = gw.v4_connected("cap-2", &token).await;

    let mut third = V4Client::start(gw.v4_options("cap-3", &token));
    assert_eq!(
        third.connack().await.code,
        ConnectReturnCode::ServiceUnavailable
    );
    let mut third_v5 = V5Client::start(gw.v5_options("cap-3-v5", &token));
    assert_eq!(third_v5.connack().await.code, Code5::ServerBusy);

    // At the cap, a device whose old connection lingers (its radio
    // dropped) still reconnects: the new connection takes over the old
    // one's session, and its place.
    let mut again = V4Client::start(gw.v4_options("cap-2", &token));
    assert_eq!(again.connack().await.code, ConnectReturnCode::Success);
    let mut second = second;
    second.closed().await;
    let second = again;

    // The two admitted clients are untouched.
    first.subscribe("cap/x", QoS::AtLeastOnce).await;
    first
        .publish("cap/x", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(
        &first.expect_publish("cap/x").await.payload[..],
        b"still here"
    );

    // A freed slot is usable again.
    second.disconnect().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = V4Client::start(gw.v4_options("cap-3", &token));
        if c.connack().await.code == ConnectReturnCode::Success {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_connect_timeouts_close_idle_sockets() {
    let gw = TestGateway::start_with(|cfg| {
        cfg.limits.handshake_timeout = Duration::from_secs(1);
        cfg.limits.connect_timeout = Duration::from_secs(1);
    })
    .await;
    // TCP without TLS: closed when the handshake timeout passes.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    assert!(tcp_closed_silently(&mut tcp).await);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // TLS up, no CONNECT: closed when the connect timeout passes.
    let mut raw = gw.raw().await;
    let started = Instant::now();
    assert!(raw.expect_closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_close_only_their_sender() {
    let gw = TestGateway::start_with(|cfg| cfg.limits.max_packet_size = 2048).await;
    let token = gw.token("big", &["big/#"], HOUR);
    let mut bystander = gw.v4_connected("bystander", &token).await;
    bystander.subscribe("big/#", QoS::AtLeastOnce).await;

    // MQTT 5: the limit is announced in CONNACK (Maximum Packet Size,
    // 0x27), and a PUBLISH over it, sent raw since rumqttc refuses to send
    // it, is answered with DISCONNECT 0x95 "packet too large" naming the
    // limit, then the close.
    let (mut big5, ack) = Raw5::connect(&gw, v5::Connect::new("big-v5", &token)).await;
    assert_eq!(ack.props.get(0x27), Some(&v5::Value::Four(2048)), "{ack:?}");
    big5.send(&v5::publish(
        "big/x",
        &[0u8; 4096],
        0,
        false,
        0,
        &v5::Props::new(),
    ))
    .await;
    match big5.next().await {
        Some(v5::Packet::Disconnect { reason, props }) => {
            assert_eq!(reason, 0x95, "packet too large");
            let Some(v5::Value::Text(why)) = props.get(v5::REASON_STRING) else {
                panic!("no reason string: {props:?}");
            };
            assert!(why.contains("exceeds the limit of 2048"), "{why}");
        }
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }
    assert_eq!(big5.closed().await, None, "closed after the DISCONNECT");

    // A 3.1.1 client has no such hint, and the server no DISCONNECT: its
    // oversized PUBLISH (raw as well) closes the connection, nothing sent.
    let mut sender = gw.raw().await;
    sender
        .send_ok(
            &mqtt::Connect::new(4, "big-sender")
                .username("JWT")
                .password(&token)
                .encode(),
        )
        .await;
    assert_eq!(sender.read_packet().await, mqtt::CONNACK_OK_V4);
    // The gateway may close before all of it is written.
    let _ = sender
        .send(&mqtt::publish(4, "big/x", &[0u8; 4096], 0, 0))
        .await;
    assert!(
        sender.expect_closed().await.is_empty(),
        "nothing is answered to an oversized 3.1.1 packet"
    );
    bystander.expect_no_publish().await;
    bystander
        .publish("big/y", QoS::AtLeastOnce, false, b"small")
        .await;
    assert_eq!(
        &bystander.expect_publish("big/y").await.payload[..],
        b"small"
    );
}
