//! The answer the gateway gives to each broken rule of MQTT, against the
//! real `jwtgate` binary over TLS (issue 24, "Protocol answers"): raw MQTT
//! 5 and MQTT 3.1.1 frames, since client libraries will not send them.
//!
//! MQTT 5 tells a Malformed Packet (one that cannot be parsed, 0x81) from
//! a Protocol Error (one that parsed but breaks a rule, 0x82) and from
//! the more precise codes (0x90 topic name invalid...), §1.2 and §4.13;
//! MQTT 3.1.1 has no DISCONNECT, and closes the network connection
//! (3.1.1 §4.8), at CONNECT without a CONNACK ([MQTT-3.1.4-1] of 3.1.1).
//! Each test's doc cites the statement it holds the gateway to, and each
//! checks the count in `jwtgate_protocol_violations_total{violation}` or
//! `jwtgate_connects_total{outcome}`. /work/notes/reason_code_audit.md
//! lists every refusal of the gateway with its rule, code and test.

mod common;

use std::time::Duration;

use common::checks::until_metric;
use common::raw5::{Raw5, v5};
use common::{DevBinary, RawClient, mqtt};

const HOUR: Duration = Duration::from_secs(3600);

async fn gateway() -> DevBinary {
    DevBinary::start("", "[metrics]\nlisten = \"127.0.0.1:0\"\n").await
}

fn violation(label: &str) -> String {
    format!("jwtgate_protocol_violations_total{{violation=\"{label}\"}}")
}

fn outcome(label: &str) -> String {
    format!("jwtgate_connects_total{{outcome=\"{label}\"}}")
}

/// Waits for `series` to read `count`.
async fn counted(gw: &DevBinary, series: &str, count: f64) {
    until_metric(gw, series, |v| v == count).await;
}

/// A connected MQTT 5 session of `id`, granted `a/#`.
async fn v5_session(gw: &DevBinary, id: &str) -> Raw5 {
    let token = gw.token(id, &["a/#"], HOUR);
    let (conn, ack) = Raw5::over(gw.raw().await, v5::Connect::new(id, &token)).await;
    assert_eq!(ack.reason, 0, "CONNACK {ack:?}");
    conn
}

/// A connected MQTT 3.1.1 session of `id`, granted `a/#`.
async fn v4_session(gw: &DevBinary, id: &str) -> RawClient {
    let token = gw.token(id, &["a/#"], HOUR);
    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(4, id)
            .username("JWT")
            .password(&token)
            .encode(),
    )
    .await;
    assert_eq!(raw.read_packet().await, mqtt::CONNACK_OK_V4);
    raw
}

/// The next packet is a DISCONNECT, and then the connection closes:
/// nothing (no ack) came before it. Returns its reason code.
async fn disconnected(conn: &mut Raw5) -> u8 {
    match conn.next().await {
        Some(v5::Packet::Disconnect { reason, .. }) => {
            assert_eq!(conn.next().await, None, "open after DISCONNECT");
            reason
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

/// MQTT 3.1.1: the connection is closed with nothing sent first.
async fn closed_silently(raw: &mut RawClient, what: &str) {
    let frames = raw.expect_closed().await;
    assert!(
        frames.is_empty(),
        "{what}: sent {frames:02x?} before closing"
    );
}

/// An MQTT 5 PUBLISH at QoS 0 whose topic is `topic`'s bytes as given.
fn v5_publish_raw_topic(topic: &[u8]) -> Vec<u8> {
    let mut body = u16::try_from(topic.len()).unwrap().to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    body.push(0); // no properties
    body.extend_from_slice(b"x");
    mqtt::frame(0x30, &body)
}

/// [MQTT-3.10.3-2]: an UNSUBSCRIBE names at least one topic filter; MQTT 5
/// §3.10.3: "An UNSUBSCRIBE packet with no Payload is a Protocol Error".
/// Was: an UNSUBACK, the connection kept. Now MQTT 5: DISCONNECT 0x82;
/// MQTT 3.1.1: closed, no UNSUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_without_a_topic_filter_is_a_protocol_error() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "unsub-5").await;
    conn.send(&mqtt::frame(0xA2, &[0x00, 0x01, 0x00])).await;
    assert_eq!(disconnected(&mut conn).await, 0x82);

    let mut raw = v4_session(&gw, "unsub-4").await;
    raw.send_ok(&mqtt::frame(0xA2, &[0x00, 0x01])).await;
    closed_silently(&mut raw, "MQTT 3.1.1 empty UNSUBSCRIBE").await;
    counted(&gw, &violation("unsubscribe_without_filters"), 2.0).await;
    gw.assert_no_panic();
}

/// [MQTT-3.8.3-2]: a SUBSCRIBE names at least one topic filter; MQTT 5
/// §3.8.3: "A SUBSCRIBE packet with no Payload is a Protocol Error". Was:
/// closed as malformed (0x81); now MQTT 5: DISCONNECT 0x82; 3.1.1: closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_a_topic_filter_is_a_protocol_error() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "sub-5").await;
    conn.send(&mqtt::frame(0x82, &[0x00, 0x01, 0x00])).await;
    assert_eq!(disconnected(&mut conn).await, 0x82);

    let mut raw = v4_session(&gw, "sub-4").await;
    raw.send_ok(&mqtt::frame(0x82, &[0x00, 0x01])).await;
    closed_silently(&mut raw, "MQTT 3.1.1 empty SUBSCRIBE").await;
    counted(&gw, &violation("subscribe_without_filters"), 2.0).await;
}

/// MQTT 5 §3.1.2.11.3: "It is a Protocol Error to include the Receive
/// Maximum value more than once or for it to have the value 0". Was:
/// accepted as if absent; now CONNACK 0x82 and the close (§4.13.1), before
/// the token is read. (MQTT 3.1.1 has no properties.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_zero_is_refused_as_a_protocol_error() {
    let gw = gateway().await;
    let token = gw.token("recv-max", &["a/#"], HOUR);
    let connect =
        v5::Connect::new("recv-max", &token).props(v5::Props::new().u16(v5::RECEIVE_MAXIMUM, 0));
    let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0x82, "{ack:?}");
    assert_eq!(conn.next().await, None, "closed after the CONNACK");
    counted(&gw, &outcome("protocol_error"), 1.0).await;
    counted(&gw, &outcome("accepted"), 0.0).await;
}

/// MQTT 5 §3.1.2.11.4: "It is a Protocol Error to include the Maximum
/// Packet Size more than once, or for the value to be set to zero". Was:
/// accepted as if absent; now CONNACK 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_packet_size_zero_is_refused_as_a_protocol_error() {
    let gw = gateway().await;
    let token = gw.token("max-packet", &["a/#"], HOUR);
    let connect = v5::Connect::new("max-packet", &token).props(v5::Props::new().u32(0x27, 0));
    let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0x82, "{ack:?}");
    assert_eq!(conn.next().await, None, "closed after the CONNACK");
    counted(&gw, &outcome("protocol_error"), 1.0).await;
}

/// MQTT 5 §3.3.2.3.4: "It is a Protocol Error if the Topic Name is zero
/// length and there is no Topic Alias"; MQTT 3.1.1 [MQTT-4.7.3-1]: a topic
/// name is at least one character long. Was: DISCONNECT 0x90; now 0x82,
/// and 3.1.1 is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_topic_without_an_alias_is_a_protocol_error() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "empty-5").await;
    conn.send(&v5::publish("", b"x", 1, false, 1, &v5::Props::new()))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x82);

    let mut raw = v4_session(&gw, "empty-4").await;
    raw.send_ok(&mqtt::publish(4, "", b"x", 1, 1)).await;
    closed_silently(&mut raw, "MQTT 3.1.1 empty topic").await;
    counted(&gw, &violation("topic_empty"), 2.0).await;
}

/// [MQTT-4.7.1-1]: wildcards are not used within a topic name, a will
/// topic included; MQTT 5's CONNACK 0x90 is "Topic Name invalid". Was:
/// MQTT 3.1.1 got CONNACK 5 (not authorized) while the log said the topic
/// was invalid, and MQTT 5 got 0x90 only once the token had verified (a
/// bad token 0x86 first). Now MQTT 5 gets 0x90 before the token or any
/// grant is looked at, whatever the token; MQTT 3.1.1 has no such return
/// code: the CONNECT does not conform to its §3.1, and is closed without
/// a CONNACK ([MQTT-3.1.4-1] of 3.1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_topic_with_a_wildcard_is_topic_name_invalid() {
    let gw = gateway().await;
    // Granted a/# only: the will's topic is no topic, granted or not.
    let token = gw.token("will-5", &["a/#"], HOUR);
    for (id, topic, token) in [
        ("will-5", "a/#", token.as_str()),
        ("will-5b", "b/+/c", token.as_str()),
        ("will-5c", "a/#", "not.a.token"),
    ] {
        let connect = v5::Connect::new(id, token).will(v5::Will::new(topic, b"gone"));
        let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
        assert_eq!(ack.reason, 0x90, "{topic} with {token:.10}: {ack:?}");
        assert_eq!(conn.next().await, None, "closed after the CONNACK");
    }

    let token = gw.token("will-4", &["a/#"], HOUR);
    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(4, "will-4")
            .username("JWT")
            .password(&token)
            .will("a/#", b"gone")
            .encode(),
    )
    .await;
    closed_silently(&mut raw, "MQTT 3.1.1 wildcard will").await;
    counted(&gw, &outcome("topic_name_invalid"), 4.0).await;
    counted(&gw, &outcome("not_authorized"), 0.0).await;
}

/// [MQTT-1.5.4-2]: a UTF-8 string holds no U+0000, and a packet with one
/// "is a Malformed Packet" (as [MQTT-1.5.4-1] says of ill-formed UTF-8).
/// Was: CONNACK 0x90 for such a will topic; now the CONNECT is closed
/// without a CONNACK, as every malformed CONNECT (MQTT 5 §4.13.1 makes the
/// CONNACK optional), and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_topic_with_nul_is_malformed() {
    let gw = gateway().await;
    let token = gw.token("nul-will", &["a/#"], HOUR);
    let mut raw = gw.raw().await;
    let connect = v5::Connect::new("nul-will", &token).will(v5::Will::new("a/\0", b"gone"));
    raw.send_ok(&connect.encode()).await;
    closed_silently(&mut raw, "MQTT 5 will topic with NUL").await;
    counted(&gw, &outcome("malformed_packet"), 1.0).await;
}

/// [MQTT-1.5.4-1] and [MQTT-1.5.4-2]: a topic of ill-formed UTF-8, or
/// holding U+0000, makes the PUBLISH "a Malformed Packet". Was: DISCONNECT
/// 0x90; now 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_topic_of_bad_utf8_or_nul_is_malformed() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "utf8-5").await;
    conn.send(&v5_publish_raw_topic(b"a/\xff")).await;
    assert_eq!(disconnected(&mut conn).await, 0x81);
    let mut conn = v5_session(&gw, "nul-5").await;
    conn.send(&v5_publish_raw_topic(b"a/\0")).await;
    assert_eq!(disconnected(&mut conn).await, 0x81);
    counted(&gw, &violation("topic_not_utf8"), 1.0).await;
    counted(&gw, &violation("topic_nul"), 1.0).await;
}

/// [MQTT-3.3.2-2]: a PUBLISH's topic name holds no wildcard; MQTT 5
/// DISCONNECT 0x90 "Topic Name invalid". Unchanged (checked here beside
/// the cases above): 0x90, and MQTT 3.1.1 is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_topic_with_a_wildcard_is_topic_name_invalid() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "wild-5").await;
    conn.send(&v5::publish("a/#", b"x", 1, false, 1, &v5::Props::new()))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x90);
    let mut raw = v4_session(&gw, "wild-4").await;
    raw.send_ok(&mqtt::publish(4, "a/+", b"x", 1, 1)).await;
    closed_silently(&mut raw, "MQTT 3.1.1 wildcard topic").await;
    counted(&gw, &violation("topic_name_invalid"), 2.0).await;
}

/// [MQTT-2.2.1-3]: a PUBLISH at QoS 1/2 and a SUBSCRIBE carry a non-zero
/// packet identifier. A packet with identifier 0 parses, so the breach is
/// a Protocol Error (MQTT 5 §1.2), not a Malformed Packet. Was:
/// DISCONNECT 0x81; now 0x82 (3.1.1: closed, as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_identifier_zero_is_a_protocol_error() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "pkid-pub").await;
    conn.send(&v5::publish("a/b", b"x", 1, false, 0, &v5::Props::new()))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x82);
    let mut conn = v5_session(&gw, "pkid-sub").await;
    conn.send(&v5::subscribe(0, &[("a/b", 1)], &v5::Props::new()))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x82);
    let mut raw = v4_session(&gw, "pkid-4").await;
    raw.send_ok(&mqtt::publish(4, "a/b", b"x", 1, 0)).await;
    closed_silently(&mut raw, "MQTT 3.1.1 packet id 0").await;
    counted(&gw, &violation("packet_id_zero"), 3.0).await;
}

/// MQTT 5 §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has
/// the value 3" and "to send a Retain Handling value of 3". Was:
/// DISCONNECT 0x81 (rumqttd's decoder refuses them); now 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options_of_value_3_are_protocol_errors() {
    let gw = gateway().await;
    for (id, options) in [("qos-3", 0x03), ("retain-handling-3", 0x30)] {
        let mut conn = v5_session(&gw, id).await;
        conn.send(&v5::subscribe(1, &[("a/b", options)], &v5::Props::new()))
            .await;
        assert_eq!(disconnected(&mut conn).await, 0x82, "{id}");
    }
    counted(&gw, &violation("subscription_options"), 2.0).await;
}

/// [MQTT-3.3.4-6]: "A PUBLISH packet sent from a Client to a Server MUST
/// NOT contain a Subscription Identifier". Unchanged: DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_identifier_on_a_clients_publish_is_a_protocol_error() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "sub-id-pub").await;
    let mut body = Vec::new();
    mqtt::string(b"a/b", &mut body);
    body.extend_from_slice(&[2, 0x0B, 1]); // Subscription Identifier 1
    body.extend_from_slice(b"x");
    conn.send(&mqtt::frame(0x30, &body)).await;
    assert_eq!(disconnected(&mut conn).await, 0x82);
    counted(&gw, &violation("subscription_id_on_publish"), 1.0).await;
}

/// MQTT 5 §3.8.2.1.2: "It is a Protocol Error if the Subscription
/// Identifier has a value of 0". Unchanged: DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_identifier_of_0_is_a_protocol_error() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "sub-id-0").await;
    let mut body = vec![0x00, 0x01, 2, 0x0B, 0]; // Subscription Identifier 0
    mqtt::string(b"a/b", &mut body);
    body.push(1);
    conn.send(&mqtt::frame(0x82, &body)).await;
    assert_eq!(disconnected(&mut conn).await, 0x82);
    counted(&gw, &violation("subscription_id_zero"), 1.0).await;
}

/// MQTT 5 §4.12: a server that does not support the client's
/// Authentication Method may answer CONNACK 0x8C "Bad authentication
/// method" ([MQTT-4.12.0-1]). Unchanged: 0x8C, counted `bad_auth_method`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authentication_method_other_than_jwt_is_a_bad_authentication_method() {
    let gw = gateway().await;
    let token = gw.token("scram", &["a/#"], HOUR);
    let connect = v5::Connect::new("scram", &token)
        .props(v5::Props::new().text(v5::AUTHENTICATION_METHOD, "SCRAM-SHA-1"));
    let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0x8C, "{ack:?}");
    assert_eq!(conn.next().await, None, "closed after the CONNACK");
    counted(&gw, &outcome("bad_auth_method"), 1.0).await;
}

/// MQTT 3.1.1 [MQTT-3.1.3-8]: an empty client id with CleanSession 0 gets
/// return code 0x02 (identifier rejected); MQTT 5 [MQTT-3.1.3-8] allows
/// 0x85 "Client Identifier not valid" for an id the server rejects.
/// Unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_client_id_for_a_persistent_session_is_rejected() {
    let gw = gateway().await;
    let token = gw.token("no-id", &["a/#"], HOUR);
    let connect = v5::Connect::new("", &token).clean_start(false);
    let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0x85, "{ack:?}");
    assert_eq!(conn.next().await, None, "closed after the CONNACK");
    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(4, "")
            .clean(false)
            .username("JWT")
            .password(&token)
            .encode(),
    )
    .await;
    assert_eq!(
        raw.expect_closed().await,
        vec![vec![0x20, 0x02, 0x00, 0x02]]
    );
    counted(&gw, &outcome("bad_client_id"), 2.0).await;
}

/// MQTT 5 §3.11.3: UNSUBACK says 0x11 "No subscription existed" and 0x8F
/// "Topic Filter invalid" per filter, and the connection goes on.
/// Unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsuback_has_a_reason_code_per_filter() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "unsuback").await;
    assert_eq!(conn.subscribe(1, &[("a/b", 1)]).await, vec![0x01]);
    let mut body = vec![0x00, 0x02, 0x00];
    for filter in ["a/b", "a/c", "a/#/b"] {
        mqtt::string(filter.as_bytes(), &mut body);
    }
    conn.send(&mqtt::frame(0xA2, &body)).await;
    match conn.next().await {
        Some(v5::Packet::Other(frame)) => {
            assert_eq!(frame, vec![0xB0, 0x06, 0x00, 0x02, 0x00, 0x00, 0x11, 0x8F])
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    assert_eq!(conn.subscribe(3, &[("a/d", 0)]).await, vec![0x00]);
}

/// `frame`, a CONNECT, with `bits` set in its Connect Flags byte (after
/// the fixed header, the protocol name and the level).
fn connect_flags_or(mut frame: Vec<u8>, bits: u8) -> Vec<u8> {
    let length_bytes = frame[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let name_at = 1 + length_bytes;
    let name = usize::from(u16::from_be_bytes([frame[name_at], frame[name_at + 1]]));
    frame[name_at + 2 + name + 1] |= bits;
    frame
}

/// MQTT 5: "It is a Protocol Error to include [the property] more than
/// once" — §3.3.2.3.2 (PUBLISH Payload Format Indicator), §3.8.2.1.2
/// (SUBSCRIBE Subscription Identifier), §3.4.2.2.2 (PUBACK Reason String),
/// §3.14.2.2.2 (DISCONNECT Session Expiry Interval) and the section of
/// every other property but User Property, which may repeat (§3.3.2.3.7).
/// Was: accepted, rumqttd's decoder keeping the last copy; now DISCONNECT
/// 0x82, found by the codec before rumqttd decodes the packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_given_twice_is_a_protocol_error() {
    let gw = gateway().await;
    let format_twice = v5::Props::new()
        .byte(v5::PAYLOAD_FORMAT_INDICATOR, 0)
        .byte(v5::PAYLOAD_FORMAT_INDICATOR, 1);
    let mut conn = v5_session(&gw, "twice-pub").await;
    conn.send(&v5::publish("a/b", b"x", 1, false, 1, &format_twice))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x82, "PUBLISH");

    let ids_twice = v5::Props::new()
        .byte(v5::SUBSCRIPTION_IDENTIFIER, 1)
        .byte(v5::SUBSCRIPTION_IDENTIFIER, 2);
    let mut conn = v5_session(&gw, "twice-sub").await;
    conn.send(&v5::subscribe(1, &[("a/b", 1)], &ids_twice))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x82, "SUBSCRIBE");

    // A PUBACK for a message the gateway sent, with its Reason String
    // twice.
    let mut conn = v5_session(&gw, "twice-ack").await;
    assert_eq!(conn.subscribe(1, &[("a/b", 1)]).await, vec![0x01]);
    conn.send(&v5::publish("a/b", b"x", 1, false, 1, &v5::Props::new()))
        .await;
    let mut pkid = None;
    while pkid.is_none() {
        match conn.next().await {
            Some(v5::Packet::PubAck { pkid: 1, reason: 0 }) => {}
            Some(v5::Packet::Publish(p)) => pkid = Some(p.pkid),
            other => panic!("expected PUBACK and PUBLISH, got {other:?}"),
        }
    }
    let mut body = pkid.unwrap().to_be_bytes().to_vec();
    body.extend_from_slice(&[0x00, 6, 0x1F, 0, 0, 0x1F, 0, 0]);
    conn.send(&mqtt::frame(0x40, &body)).await;
    assert_eq!(disconnected(&mut conn).await, 0x82, "PUBACK");

    let mut conn = v5_session(&gw, "twice-disc").await;
    let expiry_twice = v5::Props::new()
        .u32(v5::SESSION_EXPIRY_INTERVAL, 0)
        .u32(v5::SESSION_EXPIRY_INTERVAL, 0);
    conn.send(&v5::disconnect(0x00, &expiry_twice)).await;
    assert_eq!(disconnected(&mut conn).await, 0x82, "DISCONNECT");
    counted(&gw, &violation("duplicate_property"), 4.0).await;

    // User Property may repeat: the PUBLISH goes through.
    let mut conn = v5_session(&gw, "users-twice").await;
    let users = v5::Props::new().user("k", "1").user("k", "2");
    conn.send(&v5::publish("a/b", b"x", 1, false, 7, &users))
        .await;
    assert_eq!(conn.puback().await, (7, 0x00));
    counted(&gw, &violation("duplicate_property"), 4.0).await;
    gw.assert_no_panic();
}

/// MQTT 5 §3.1.2.11.2: "It is a Protocol Error to include the Session
/// Expiry Interval more than once" (and so for each CONNECT and Will
/// property, §3.1.2.11 and §3.1.3.2). Was: accepted, the last copy kept.
/// Now the codec refuses the CONNECT before rumqttd decodes it or the
/// token is read: CONNACK 0x82 and the close (§4.13.1), counted
/// `protocol_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_or_will_property_given_twice_is_refused_before_the_token() {
    let gw = gateway().await;
    let token = gw.token("twice-conn", &["a/#"], HOUR);
    let expiry_twice = v5::Props::new()
        .u32(v5::SESSION_EXPIRY_INTERVAL, 10)
        .u32(v5::SESSION_EXPIRY_INTERVAL, 20);
    let connect = v5::Connect::new("twice-conn", &token).props(expiry_twice);
    let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0x82, "{ack:?}");
    assert_eq!(conn.next().await, None, "closed after the CONNACK");

    let delay_twice = v5::Props::new().u32(0x18, 1).u32(0x18, 1);
    let will = v5::Will::new("a/will", b"gone").props(delay_twice);
    let connect = v5::Connect::new("twice-conn", &token).will(will);
    let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0x82, "{ack:?}");
    assert_eq!(conn.next().await, None, "closed after the CONNACK");
    counted(&gw, &outcome("protocol_error"), 2.0).await;
    counted(&gw, &outcome("malformed_packet"), 0.0).await;
    counted(&gw, &outcome("accepted"), 0.0).await;
}

/// MQTT 5 [MQTT-3.8.3-5]: "The Server MUST treat a SUBSCRIBE packet as
/// malformed if any of Reserved bits in the Payload are non-zero" (bits 6
/// and 7 of the subscription options); MQTT 3.1.1 [MQTT-3-8.3-4] (bits 2
/// to 7): "treat a SUBSCRIBE packet as malformed and close the Network
/// Connection". Was: accepted, rumqttd dropping the bits; now DISCONNECT
/// 0x81, and 3.1.1 is closed without a SUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_subscription_option_bits_are_malformed() {
    let gw = gateway().await;
    for (id, options) in [("reserved-6", 0x41), ("reserved-7", 0x81)] {
        let mut conn = v5_session(&gw, id).await;
        conn.send(&v5::subscribe(1, &[("a/b", options)], &v5::Props::new()))
            .await;
        assert_eq!(disconnected(&mut conn).await, 0x81, "{id}");
    }
    let mut raw = v4_session(&gw, "reserved-4").await;
    raw.send_ok(&mqtt::subscribe(4, 1, "a/b", 0x05)).await;
    closed_silently(&mut raw, "MQTT 3.1.1 reserved option bit").await;
    counted(&gw, &violation("malformed_packet"), 3.0).await;
}

/// [MQTT-3.1.2-3], MQTT 5: "The Server MUST validate that the reserved
/// flag in the CONNECT packet is set to 0. If the reserved flag is not 0
/// it is a Malformed Packet"; MQTT 3.1.1: "... and disconnect the Client
/// if it is not zero". Was: accepted (rumqttd does not look). Now closed
/// without a CONNACK, like every malformed CONNECT (MQTT 5 §4.13.1 makes
/// CONNACK 0x81 optional; 3.1.1 [MQTT-3.1.4-1] forbids a CONNACK),
/// before the token is read, and counted `malformed_packet`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_reserved_flag_is_malformed() {
    let gw = gateway().await;
    let token = gw.token("reserved-flag", &["a/#"], HOUR);
    let v5_connect = v5::Connect::new("reserved-flag", &token).encode();
    let v4_connect = mqtt::Connect::new(4, "reserved-flag")
        .username("JWT")
        .password(&token)
        .encode();
    for (version, connect) in [("MQTT 5", v5_connect), ("MQTT 3.1.1", v4_connect)] {
        let mut raw = gw.raw().await;
        raw.send_ok(&connect_flags_or(connect, 0x01)).await;
        closed_silently(&mut raw, version).await;
    }
    counted(&gw, &outcome("malformed_packet"), 2.0).await;
    counted(&gw, &outcome("accepted"), 0.0).await;
}

/// MQTT 3.1.1 [MQTT-3.1.2-22]: "If the User Name Flag is set to 0, the
/// Password Flag MUST be set to 0"; a CONNECT that does not conform is
/// closed without a CONNACK ([MQTT-3.1.4-1] of 3.1.1). Was: CONNACK 4 (bad
/// user name or password). MQTT 5 allows a password alone (§3.1.2.9), so
/// that one gets the gateway's own answer, 0x86 (the user name is not
/// `JWT`). Counted `protocol_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_without_a_user_name_is_closed_in_3_1_1() {
    let gw = gateway().await;
    let token = gw.token("lone-password", &["a/#"], HOUR);
    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(4, "lone-password")
            .password(&token)
            .encode(),
    )
    .await;
    closed_silently(&mut raw, "MQTT 3.1.1 password without user name").await;
    counted(&gw, &outcome("protocol_error"), 1.0).await;

    let mut raw = gw.raw().await;
    raw.send_ok(
        &mqtt::Connect::new(5, "lone-password")
            .password(&token)
            .encode(),
    )
    .await;
    let frames = raw.expect_closed().await;
    match frames.as_slice() {
        [connack] => match v5::parse(connack) {
            v5::Packet::ConnAck(ack) => assert_eq!(ack.reason, 0x86, "{ack:?}"),
            other => panic!("expected CONNACK, got {other:?}"),
        },
        other => panic!("expected one CONNACK, got {other:02x?}"),
    }
    counted(&gw, &outcome("bad_username"), 1.0).await;
}

/// [MQTT-3.3.1-2]: "The DUP flag MUST be set to 0 for all QoS 0
/// messages"; MQTT 5 §2.1.3: "If invalid flags are received it is a
/// Malformed Packet" — so 0x81, not 0x82 (Mosquitto answers it as
/// malformed too). Was: accepted and routed. Now DISCONNECT 0x81; 3.1.1
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dup_on_a_qos_0_publish_is_malformed() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "dup-5").await;
    let mut publish = v5::publish("a/b", b"x", 0, false, 0, &v5::Props::new());
    publish[0] |= 0x08;
    conn.send(&publish).await;
    assert_eq!(disconnected(&mut conn).await, 0x81);
    let mut raw = v4_session(&gw, "dup-4").await;
    let mut publish = mqtt::publish(4, "a/b", b"x", 0, 0);
    publish[0] |= 0x08;
    raw.send_ok(&publish).await;
    closed_silently(&mut raw, "MQTT 3.1.1 DUP on QoS 0").await;
    counted(&gw, &violation("malformed_packet"), 2.0).await;
    counted(&gw, "jwtgate_publishes_received_total{qos=\"0\"}", 0.0).await;
}

/// MQTT 5 §3.3.2.3.2 and §3.1.3.2.3 define two Payload Format Indicator
/// values, 0 (unspecified bytes) and 1 (UTF-8); another one is data the
/// protocol does not allow, a Protocol Error (§1.2; reason code 0x82 is
/// "the packet received does not conform to this specification"). Was:
/// accepted and passed on to subscribers as sent. Now PUBLISH gets
/// DISCONNECT 0x82; a will with one gets CONNACK 0x82 before the token
/// is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_format_indicator_over_1_is_a_protocol_error() {
    let gw = gateway().await;
    let mut conn = v5_session(&gw, "format-2").await;
    let format = v5::Props::new().byte(v5::PAYLOAD_FORMAT_INDICATOR, 2);
    conn.send(&v5::publish("a/b", b"x", 1, false, 1, &format))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x82);
    counted(&gw, &violation("payload_format_indicator"), 1.0).await;

    let token = gw.token("format-will", &["a/#"], HOUR);
    let will = v5::Will::new("a/will", b"gone").props(format);
    let connect = v5::Connect::new("format-will", &token).will(will);
    let (mut conn, ack) = Raw5::over(gw.raw().await, connect).await;
    assert_eq!(ack.reason, 0x82, "{ack:?}");
    assert_eq!(conn.next().await, None, "closed after the CONNACK");
    counted(&gw, &outcome("protocol_error"), 1.0).await;
    counted(&gw, &outcome("accepted"), 1.0).await;
}

/// `[limits] max_property_bytes` also bounds the topics a client parks in
/// its topic aliases (MQTT 5 §3.3.2.3.4), which would otherwise hold any
/// number of long topics: past it, DISCONNECT 0x97 "Quota exceeded"
/// (§3.14.2.1: "An implementation or administrative imposed limit has
/// been exceeded"). Was untested over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_over_max_property_bytes_are_quota_exceeded() {
    let gw = DevBinary::start(
        "",
        "[limits]\nmax_property_bytes = 256\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let mut conn = v5_session(&gw, "aliases").await;
    // 100 bytes a topic: two aliases hold 200, the third 300 > 256.
    let topic = |n: u16| format!("a/{n}/{}", "x".repeat(96));
    for alias in 1..=2 {
        let props = v5::Props::new().u16(v5::TOPIC_ALIAS, alias);
        conn.send(&v5::publish(&topic(alias), b"x", 1, false, alias, &props))
            .await;
        assert_eq!(conn.puback().await, (alias, 0x00), "alias {alias}");
    }
    // Each alias works.
    let known = v5::Props::new().u16(v5::TOPIC_ALIAS, 2);
    conn.send(&v5::publish("", b"x", 1, false, 3, &known)).await;
    assert_eq!(conn.puback().await, (3, 0x00));
    let third = v5::Props::new().u16(v5::TOPIC_ALIAS, 3);
    conn.send(&v5::publish(&topic(3), b"x", 1, false, 4, &third))
        .await;
    assert_eq!(disconnected(&mut conn).await, 0x97);
    counted(&gw, &violation("topic_aliases_too_large"), 1.0).await;
}
