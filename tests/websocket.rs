//! MQTT over secure WebSockets (issue 21), against the real binary with
//! `[websocket] listen`: what the upgrade answers each kind of wrong request
//! (and counts), how messages carry MQTT packets (a packet over many
//! messages, many packets in one message, text frames and oversized frames
//! ending the connection), that the token travels only in CONNECT, and the
//! token's life on a WSS connection as on TLS: expiry, revocation and MQTT 5
//! re-authentication. After each attack a device over TLS is still served.
//!
//! The WebSocket client is the harness's raw one ([`WsClient`]): binary
//! messages shaped by the test, MQTT packets hand-encoded (`common::mqtt`,
//! `common::raw5::v5`).

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::checks::{ahead_of_now, assert_at_exp, until_metric, until_past};
use common::raw5::v5;
use common::scrape::{metrics_port, scrape, value};
use common::web::{Upgrade, WEBSOCKET, WsClient, wss_http};
use common::{DevBinary, Read, V4Client, WAIT, mqtt, now_unix};
use rumqttc::{ConnectReturnCode, QoS};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
const HOUR: Duration = Duration::from_secs(3600);
/// How long a device's check after an attack may take on a loaded machine.
const SERVED_WITHIN: Duration = Duration::from_secs(20);
/// The packet limit of the oversized-frame test, and the largest message
/// it lets through: one whole packet of that size and its fixed header.
const PACKET_LIMIT: usize = 4096;
const MESSAGE_LIMIT: usize = PACKET_LIMIT + 5;
/// MQTT 5 reason codes.
const NOT_AUTHORIZED: u8 = 0x87;
const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
/// A 3.1.1 CONNACK's "bad user name or password".
const BAD_USERNAME_OR_PASSWORD: u8 = 0x04;

/// A device over TLS granted everything, watching `filter` at QoS 1.
async fn watcher(gw: &DevBinary, id: &str, filter: &str) -> V4Client {
    let token = gw.token(id, &["#"], HOUR);
    let mut client = V4Client::start(gw.v4_options(id, &token));
    assert_eq!(client.connack().await.code, ConnectReturnCode::Success);
    client.subscribe(filter, QoS::AtLeastOnce).await;
    client
}

/// A QoS 0 PUBLISH (3.1.1) on `topic` of exactly `size` bytes on the wire,
/// its payload `fill` repeated.
fn publish_of_size(topic: &str, size: usize, fill: u8) -> Vec<u8> {
    // Fixed header of 3 bytes (remaining length 128..16383), topic length.
    let payload = vec![fill; size - 3 - 2 - topic.len()];
    let packet = mqtt::publish(4, topic, &payload, 0, 0);
    assert_eq!(packet.len(), size, "the PUBLISH has the size asked for");
    packet
}

/// A PINGREQ answered by a PINGRESP on `ws`: the connection is served now.
/// Other packets arriving first are skipped.
async fn assert_ws_alive(ws: &mut WsClient) {
    ws.send_binary(&mqtt::PINGREQ).await;
    loop {
        if ws.read_packet().await == mqtt::PINGRESP {
            return;
        }
    }
}

/// An MQTT 5 CONNECT over a new WebSocket; the CONNACK, whatever its
/// reason.
async fn v5_over_wss(gw: &DevBinary, connect: v5::Connect) -> (WsClient, v5::ConnAck) {
    let mut ws = WsClient::connect(gw).await;
    ws.send_binary(&connect.encode()).await;
    match v5::parse(&ws.read_packet().await) {
        v5::Packet::ConnAck(ack) => (ws, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The next MQTT 5 packet on `ws`, `None` once the gateway closed it;
/// panics after [`WAIT`].
async fn v5_next(ws: &mut WsClient) -> Option<v5::Packet> {
    match ws.read_within(WAIT).await {
        Some(Read::Packet(frame)) => Some(v5::parse(&frame)),
        Some(Read::Closed(_)) => None,
        None => panic!("no packet and no close within {WAIT:?}"),
    }
}

/// Reads until the gateway ends the connection; the reason of the
/// DISCONNECT it sent first, if any.
async fn v5_closed(ws: &mut WsClient) -> Option<u8> {
    let mut reason = None;
    while let Some(packet) = v5_next(ws).await {
        if let v5::Packet::Disconnect { reason: r, .. } = packet {
            reason = Some(r);
        }
    }
    reason
}

// ---------------------------------------------------------------------------
// Messages and frames
// ---------------------------------------------------------------------------

/// MQTT-6.0.0-1: MQTT travels in binary frames. A text frame ends the
/// connection, after CONNECT as before it, and nothing sent after it is
/// read; everyone else is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_ends_the_connection() {
    let gw = DevBinary::start("", WEBSOCKET).await;
    let mut watch = watcher(&gw, "text-watch", "ws/#").await;
    let token = gw.token("ws-text", &["ws/#"], HOUR);

    // The control: a binary PUBLISH on the same kind of session reaches
    // the watcher.
    let mut ws = WsClient::mqtt_v4(&gw, "ws-text", &token).await;
    ws.send_binary(&mqtt::publish(4, "ws/t", b"binary", 0, 0))
        .await;
    assert_eq!(&watch.expect_publish("ws/t").await.payload[..], b"binary");

    // A text message, then a binary PUBLISH: closed at the text, the
    // PUBLISH never read.
    let _ = ws
        .send(Message::text(r#"{"topic":"ws/t","payload":"text"}"#))
        .await;
    let _ = ws
        .send(Message::binary(mqtt::publish(
            4,
            "ws/t",
            b"after text",
            0,
            0,
        )))
        .await;
    assert_eq!(ws.expect_closed().await, Vec::<Vec<u8>>::new());
    watch.expect_no_publish().await;

    // A text message before any CONNECT, then a good CONNECT in a binary
    // one: closed at the text, no CONNACK.
    let mut first = WsClient::connect(&gw).await;
    let _ = first.send(Message::text("CONNECT")).await;
    let connect = mqtt::Connect::new(4, "ws-text-2")
        .username("JWT")
        .password(&token)
        .encode();
    let _ = first.send(Message::binary(connect)).await;
    assert_eq!(first.expect_closed().await, Vec::<Vec<u8>>::new());

    watch.assert_alive().await;
    gw.device_is_served("after-text", SERVED_WITHIN).await;
}

/// `[limits] max_packet_size = 4096`: a message of up to 4101 bytes (a
/// whole packet of the largest size and its fixed header), in one frame or
/// several, is read; one byte more in a frame, or in a message of small
/// frames, ends the connection before any of it is read. Each message here
/// is made of packets well inside the packet limit, so only the WebSocket
/// bound can end the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_or_message_past_the_packet_limit_ends_the_connection() {
    let gw = DevBinary::start(
        "",
        &format!("{WEBSOCKET}\n[limits]\nmax_packet_size = {PACKET_LIMIT}\n"),
    )
    .await;
    let mut watch = watcher(&gw, "big-watch", "big/#").await;
    let token = gw.token("ws-big", &["big/#"], HOUR);
    let mut ws = WsClient::mqtt_v4(&gw, "ws-big", &token).await;

    // Exactly the bound, in one frame: both packets delivered.
    let mut at_limit = publish_of_size("big/a", 2050, b'a');
    at_limit.extend(publish_of_size("big/b", MESSAGE_LIMIT - 2050, b'b'));
    assert_eq!(at_limit.len(), MESSAGE_LIMIT);
    ws.send_binary(&at_limit).await;
    let seen = watch.publishes_expecting(2).await;
    let topics: Vec<_> = seen.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["big/a", "big/b"]);

    // A message of two frames, a packet split across them, inside the
    // bound: delivered.
    let split = publish_of_size("big/c", 3000, b'c');
    ws.send(Message::Frame(Frame::message(
        split[..1000].to_vec(),
        OpCode::Data(OpData::Binary),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        split[1000..].to_vec(),
        OpCode::Data(OpData::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(
        watch.expect_publish("big/c").await.payload.len(),
        3000 - 3 - 2 - 5
    );
    assert_ws_alive(&mut ws).await;

    // One byte past the bound in one frame: closed, neither packet read.
    let mut past = publish_of_size("big/x", 2051, b'x');
    past.extend(publish_of_size("big/y", MESSAGE_LIMIT + 1 - 2051, b'y'));
    assert_eq!(past.len(), MESSAGE_LIMIT + 1);
    let _ = ws.send(Message::binary(past)).await;
    assert_eq!(ws.expect_closed().await, Vec::<Vec<u8>>::new());
    watch.expect_no_publish().await;
    gw.device_is_served("after-big-frame", SERVED_WITHIN).await;

    // Three frames of 2000 bytes, each inside the bound, one message past
    // it: closed, nothing read.
    let mut ws = WsClient::mqtt_v4(&gw, "ws-big", &token).await;
    let frames = [
        (OpCode::Data(OpData::Binary), false, b'p'),
        (OpCode::Data(OpData::Continue), false, b'q'),
        (OpCode::Data(OpData::Continue), true, b'r'),
    ];
    for (opcode, last, fill) in frames {
        let packet = publish_of_size(&format!("big/{}", fill as char), 2000, fill);
        if ws
            .send(Message::Frame(Frame::message(packet, opcode, last)))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(ws.expect_closed().await, Vec::<Vec<u8>>::new());
    watch.expect_no_publish().await;
    gw.device_is_served("after-big-message", SERVED_WITHIN)
        .await;
}

/// MQTT §6: a packet may span messages. A CONNECT sent one byte a message
/// is accepted, and the session works: SUBSCRIBE, a PUBLISH (one byte a
/// message again) delivered back, PINGREQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_one_byte_a_message_is_accepted_and_the_session_works() {
    let gw = DevBinary::start("", WEBSOCKET).await;
    let token = gw.token("ws-bytes", &["bytes/#"], HOUR);
    let mut ws = WsClient::connect(&gw).await;
    assert_eq!(ws.protocol.as_deref(), Some("mqtt"));
    let connect = mqtt::Connect::new(4, "ws-bytes")
        .username("JWT")
        .password(&token)
        .encode();
    assert!(connect.len() > 100, "a CONNECT of {} bytes", connect.len());
    for byte in &connect {
        ws.send_binary(&[*byte]).await;
    }
    assert_eq!(ws.read_packet().await, mqtt::CONNACK_OK_V4);

    ws.send_binary(&mqtt::subscribe(4, 1, "bytes/#", 1)).await;
    assert_eq!(
        mqtt::parse_ack_codes(4, &ws.read_packet().await),
        Some((1, vec![1]))
    );
    for byte in mqtt::publish(4, "bytes/1", b"byte by byte", 1, 7) {
        ws.send_binary(&[byte]).await;
    }
    // Its PUBACK and its delivery back, in either order.
    let (mut acked, mut delivered) = (false, None);
    while !acked || delivered.is_none() {
        let frame = ws.read_packet().await;
        match mqtt::packet_type(&frame) {
            Some(4) => {
                assert_eq!(frame, mqtt::puback(7));
                acked = true;
            }
            Some(3) => delivered = mqtt::parse_publish(4, &frame),
            _ => panic!("unexpected {frame:02x?}"),
        }
    }
    let delivered = delivered.unwrap();
    assert_eq!(
        (delivered.topic.as_str(), &delivered.payload[..]),
        ("bytes/1", &b"byte by byte"[..])
    );
    ws.send_binary(&mqtt::puback(delivered.pkid)).await;
    assert_ws_alive(&mut ws).await;
    gw.device_is_served("after-bytes", SERVED_WITHIN).await;
}

/// MQTT §6: a message may carry several packets, and packets may straddle
/// messages. CONNECT, SUBSCRIBE, PUBLISH and PINGREQ in one message are all
/// answered; two PUBLISHes cut across three messages are both delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_packets_in_one_message_are_all_handled() {
    let gw = DevBinary::start("", WEBSOCKET).await;
    let token = gw.token("ws-many", &["many/#"], HOUR);
    let mut ws = WsClient::connect(&gw).await;
    let mut message = mqtt::Connect::new(4, "ws-many")
        .username("JWT")
        .password(&token)
        .encode();
    message.extend(mqtt::subscribe(4, 1, "many/#", 1));
    message.extend(mqtt::publish(4, "many/1", b"one message", 1, 9));
    message.extend(mqtt::PINGREQ);
    ws.send_binary(&message).await;

    assert_eq!(ws.read_packet().await, mqtt::CONNACK_OK_V4);
    assert_eq!(
        mqtt::parse_ack_codes(4, &ws.read_packet().await),
        Some((1, vec![1]))
    );
    // PUBACK, the delivery and PINGRESP, the last two in either order
    // relative to the PUBACK.
    let (mut acked, mut delivered, mut pong) = (false, None, false);
    while !acked || delivered.is_none() || !pong {
        let frame = ws.read_packet().await;
        match mqtt::packet_type(&frame) {
            Some(4) => {
                assert_eq!(frame, mqtt::puback(9));
                acked = true;
            }
            Some(3) => delivered = mqtt::parse_publish(4, &frame),
            Some(13) => {
                assert_eq!(frame, mqtt::PINGRESP);
                pong = true;
            }
            _ => panic!("unexpected {frame:02x?}"),
        }
    }
    let delivered = delivered.unwrap();
    assert_eq!(delivered.topic, "many/1");
    ws.send_binary(&mqtt::puback(delivered.pkid)).await;

    // Two QoS 0 PUBLISHes cut across three messages: the first's head; its
    // tail and the second's head; the second's tail.
    let first = mqtt::publish(4, "many/2", b"straddling", 0, 0);
    let second = mqtt::publish(4, "many/3", b"straddled", 0, 0);
    ws.send_binary(&first[..5]).await;
    let mut middle = first[5..].to_vec();
    middle.extend_from_slice(&second[..3]);
    ws.send_binary(&middle).await;
    ws.send_binary(&second[3..]).await;
    for (topic, payload) in [("many/2", &b"straddling"[..]), ("many/3", b"straddled")] {
        let frame = ws.read_packet().await;
        let got = mqtt::parse_publish(4, &frame)
            .unwrap_or_else(|| panic!("expected a PUBLISH, got {frame:02x?}"));
        assert_eq!((got.topic.as_str(), &got.payload[..]), (topic, payload));
    }
    assert_ws_alive(&mut ws).await;
    gw.device_is_served("after-many", SERVED_WITHIN).await;
}

// ---------------------------------------------------------------------------
// The upgrade
// ---------------------------------------------------------------------------

/// Every refusal label, which must all be exported.
const REFUSALS: [&str; 6] = [
    "wrong_path",
    "method",
    "not_upgrade",
    "version",
    "origin",
    "subprotocol",
];

fn refused_series(reason: &str) -> String {
    format!("jwtgate_websocket_upgrades_refused_total{{reason=\"{reason}\"}}")
}

/// Each kind of wrong request gets its own HTTP answer and is counted once
/// under its own label; an allowed Origin, no Origin, and any of the MQTT
/// subprotocols upgrade (and are not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_get_their_status_and_are_counted_once_each() {
    let gw = DevBinary::start(
        "",
        &format!(
            "[websocket]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://hmi.example\"]\n\n\
             {METRICS}"
        ),
    )
    .await;
    let port = metrics_port(&gw).await;
    let handshake_errors = "jwtgate_tls_handshake_failures_total{reason=\"error\"}";
    let before = scrape(port).await;
    for reason in REFUSALS {
        assert_eq!(value(&before, &refused_series(reason)), 0.0, "{reason}");
    }

    let refused = async |what: &str, request: Upgrade| match WsClient::upgrade(&gw, request).await {
        Ok(_) => panic!("{what}: upgraded"),
        Err(answer) => answer,
    };
    let wrong_path = refused("wrong path", Upgrade::new("/other")).await;
    assert_eq!(wrong_path.status, 404, "{wrong_path:?}");
    let evil = Upgrade::new("/mqtt").header("Origin", "https://evil.example");
    let bad_origin = refused("disallowed Origin", evil).await;
    assert_eq!(bad_origin.status, 403, "{bad_origin:?}");
    let chat = Upgrade::new("/mqtt").header("Sec-WebSocket-Protocol", "chat, wamp");
    let no_mqtt = refused("no MQTT subprotocol", chat).await;
    assert_eq!(no_mqtt.status, 400, "{no_mqtt:?}");
    let version_8 = Upgrade::new("/mqtt").header("Sec-WebSocket-Version", "8");
    let version_8 = refused("version 8", version_8).await;
    assert_eq!(version_8.status, 426, "{version_8:?}");
    assert_eq!(
        version_8.header("sec-websocket-version"),
        Some("13"),
        "{version_8:?}"
    );
    let post = wss_http(
        &gw,
        b"POST /mqtt HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET"), "{post:?}");
    let plain = wss_http(&gw, b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(plain.status, 426, "{plain:?}");
    assert_eq!(plain.header("upgrade"), Some("websocket"), "{plain:?}");

    // What may upgrade does, and its session works.
    let token = gw.token("ws-hmi", &["hmi/#"], HOUR);
    for (what, request) in [
        (
            "the allowed Origin",
            Upgrade::new("/mqtt").header("Origin", "https://hmi.example"),
        ),
        ("no Origin", Upgrade::new("/mqtt")),
    ] {
        let mut ws = WsClient::upgrade(&gw, request)
            .await
            .unwrap_or_else(|answer| panic!("{what}: refused: {answer:?}"));
        assert_eq!(ws.protocol.as_deref(), Some("mqtt"), "{what}");
        ws.send_binary(
            &mqtt::Connect::new(4, "ws-hmi")
                .username("JWT")
                .password(&token)
                .encode(),
        )
        .await;
        assert_eq!(ws.read_packet().await, mqtt::CONNACK_OK_V4, "{what}");
        assert_ws_alive(&mut ws).await;
        ws.send_binary(&mqtt::DISCONNECT).await;
        assert_eq!(ws.expect_closed().await, Vec::<Vec<u8>>::new(), "{what}");
    }
    let mqtt_js = Upgrade::new("/mqtt").header("Sec-WebSocket-Protocol", "wamp, mqttv3.1");
    let ws = WsClient::upgrade(&gw, mqtt_js)
        .await
        .unwrap_or_else(|answer| panic!("mqttv3.1: refused: {answer:?}"));
    assert_eq!(
        ws.protocol.as_deref(),
        Some("mqttv3.1"),
        "answered as offered"
    );
    drop(ws);

    // Each refusal counted once, under its own label (counted as its
    // connection ends, a moment after the client read the answer), and
    // none as a failed handshake.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let now = scrape(port).await;
        let all_in = REFUSALS.iter().all(|reason| {
            let series = refused_series(reason);
            value(&now, &series) > value(&before, &series)
        });
        if all_in {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every refusal was counted within {WAIT:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deltas: BTreeMap<&str, f64> = REFUSALS
        .iter()
        .map(|reason| {
            let series = refused_series(reason);
            (*reason, value(&after, &series) - value(&before, &series))
        })
        .collect();
    assert!(
        deltas.values().all(|delta| *delta == 1.0),
        "each refusal counted once: {deltas:?}"
    );
    assert_eq!(
        value(&after, handshake_errors) - value(&before, handshake_errors),
        0.0,
        "a refused upgrade is not a failed handshake"
    );
    gw.device_is_served("after-refusals", SERVED_WITHIN).await;
}

/// The token travels in CONNECT only: one in the URL's query (or in an
/// `Authorization` header) lets nobody in. With the same URL, the token as
/// password connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_is_not_a_credential() {
    let gw = DevBinary::start("", WEBSOCKET).await;
    let token = gw.token("ws-query", &["q/#"], HOUR);
    let request = || {
        Upgrade::new(&format!("/mqtt?token={token}"))
            .header("Authorization", &format!("Bearer {token}"))
    };
    let connects = [
        (
            "user name JWT, no password",
            mqtt::Connect::new(4, "ws-query").username("JWT"),
        ),
        (
            "user name JWT, empty password",
            mqtt::Connect::new(4, "ws-query")
                .username("JWT")
                .password(""),
        ),
        ("no credentials", mqtt::Connect::new(4, "ws-query")),
    ];
    for (what, connect) in connects {
        let mut ws = WsClient::upgrade(&gw, request())
            .await
            .unwrap_or_else(|answer| panic!("{what}: the upgrade was refused: {answer:?}"));
        ws.send_binary(&connect.encode()).await;
        let frames = ws.expect_closed().await;
        let code = frames.first().and_then(|frame| mqtt::parse_connack(frame));
        assert_eq!(
            code,
            Some((false, BAD_USERNAME_OR_PASSWORD)),
            "{what}: refused at CONNECT, then closed: {frames:02x?}"
        );
        assert_eq!(frames.len(), 1, "{what}: nothing after the CONNACK");
    }

    // The control: the same request, the token as password.
    let mut ws = WsClient::upgrade(&gw, request()).await.unwrap();
    ws.send_binary(
        &mqtt::Connect::new(4, "ws-query")
            .username("JWT")
            .password(&token)
            .encode(),
    )
    .await;
    assert_eq!(ws.read_packet().await, mqtt::CONNACK_OK_V4);
    assert_ws_alive(&mut ws).await;
    gw.device_is_served("after-query", SERVED_WITHIN).await;
}

// ---------------------------------------------------------------------------
// The token's life on a WSS connection
// ---------------------------------------------------------------------------

/// As over TLS: the connection ends at the token's `exp` (no leeway), not
/// before and not long after, MQTT 5 told "maximum connect time"; a WSS
/// connection with a longer token lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_a_wss_connection() {
    let gw = DevBinary::start("leeway_secs = 0\n", WEBSOCKET).await;
    let long = gw.token("ws-long", &["exp/#"], HOUR);
    let mut kept = WsClient::mqtt_v4(&gw, "ws-long", &long).await;
    // `exp` set from a measured now, far enough ahead for the CONNECT on a
    // loaded machine (checked below).
    let exp = now_unix() + 4;
    let short = gw.sign(&json!({ "sub": "ws-exp", "exp": exp, "topics": ["exp/#"] }));
    let (mut expiring, ack) = v5_over_wss(&gw, v5::Connect::new("ws-exp", &short)).await;
    assert_eq!(ack.reason, 0, "{ack:?}");
    assert!(
        ahead_of_now(exp) > Duration::ZERO,
        "connected after exp: nothing tested"
    );

    let reason = v5_closed(&mut expiring).await;
    assert_at_exp("closed", SystemTime::now(), exp, Duration::from_secs(3));
    assert_eq!(reason, Some(MAXIMUM_CONNECT_TIME));
    assert_ws_alive(&mut kept).await;
    gw.device_is_served("after-expiry", SERVED_WITHIN).await;
}

/// A deny-list entry for a subject closes its WSS connection (MQTT 5: "not
/// authorized") and refuses its next CONNECT; another subject's WSS
/// connection lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_closes_a_wss_connection() {
    let gw = DevBinary::start("", &format!("{WEBSOCKET}\n{METRICS}")).await;
    let kept_token = gw.token("ws-kept", &["rev/#"], HOUR);
    let mut kept = WsClient::mqtt_v4(&gw, "ws-kept", &kept_token).await;
    let token = gw.token("ws-revoked", &["rev/#"], HOUR);
    let (mut revoked, ack) = v5_over_wss(&gw, v5::Connect::new("ws-revoked", &token)).await;
    assert_eq!(ack.reason, 0, "{ack:?}");
    assert_ws_alive(&mut kept).await;

    common::write_atomically(&gw.keys_dir().join("revoked"), "sub:ws-revoked\n");
    assert_eq!(v5_closed(&mut revoked).await, Some(NOT_AUTHORIZED));
    until_metric(&gw, "jwtgate_disconnects_total{reason=\"revoked\"}", |n| {
        n == 1.0
    })
    .await;
    let (mut again, ack) = v5_over_wss(&gw, v5::Connect::new("ws-revoked", &token)).await;
    assert_eq!(ack.reason, NOT_AUTHORIZED, "{ack:?}");
    assert_eq!(v5_closed(&mut again).await, None);

    assert_ws_alive(&mut kept).await;
    gw.device_is_served("after-revocation", SERVED_WITHIN).await;
}

/// MQTT 5 re-authentication (AUTH 0x19, method `JWT`, the new token as
/// data) over WSS is accepted and carries the connection past the first
/// token's `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_over_wss_outlives_the_first_token() {
    let gw = DevBinary::start("leeway_secs = 0\n", WEBSOCKET).await;
    let mut publisher = watcher(&gw, "reauth-pub", "unused/#").await;
    // Long enough for a loaded machine to connect, subscribe and
    // re-authenticate before it; checked below, not hoped.
    let short_exp = now_unix() + 6;
    let short = gw.sign(&json!({ "sub": "ws-reauth", "exp": short_exp, "topics": ["r/#"] }));
    let (mut device, ack) = v5_over_wss(&gw, v5::Connect::enhanced("ws-reauth", &short)).await;
    assert_eq!(ack.reason, 0, "{ack:?}");
    assert_eq!(
        ack.props.get(v5::AUTHENTICATION_METHOD),
        Some(&v5::Value::Text("JWT".into()))
    );
    device
        .send_binary(&v5::subscribe(1, &[("r/#", 1)], &v5::Props::new()))
        .await;
    assert_eq!(
        v5_next(&mut device).await,
        Some(v5::Packet::SubAck {
            pkid: 1,
            codes: vec![1]
        })
    );

    let long = gw.sign(&json!({
        "sub": "ws-reauth", "exp": now_unix() + 600, "topics": ["r/#"]
    }));
    device.send_binary(&v5::reauth(&long)).await;
    match v5_next(&mut device).await {
        Some(v5::Packet::Auth { reason: 0, props })
            if props.get(v5::AUTHENTICATION_METHOD) == Some(&v5::Value::Text("JWT".into())) => {}
        other => panic!("expected AUTH success with method JWT, got {other:?}"),
    }
    assert!(
        ahead_of_now(short_exp) > Duration::ZERO,
        "the re-authentication came after the first token's exp: nothing tested"
    );

    // Two seconds past the first token's exp (no leeway; without the AUTH
    // the connection ends at exp, as the expiry test shows), a message
    // still reaches it.
    until_past(short_exp, Duration::from_secs(2)).await;
    publisher
        .publish("r/1", QoS::AtLeastOnce, false, b"after exp")
        .await;
    match v5_next(&mut device).await {
        Some(v5::Packet::Publish(p)) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("r/1", &b"after exp"[..])
            );
            device.send_binary(&v5::puback(p.pkid)).await;
        }
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
    assert_ws_alive(&mut device).await;
    publisher.assert_alive().await;
}

/// `jwtgate_connections_by_transport{transport="wss"}` is 1 while a WSS
/// client is connected and 0 after, beside the TLS one's own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_by_transport_count_a_wss_client_while_connected() {
    let gw = DevBinary::start("", &format!("{WEBSOCKET}\n{METRICS}")).await;
    let wss = "jwtgate_connections_by_transport{transport=\"wss\"}";
    let tls = "jwtgate_connections_by_transport{transport=\"tls\"}";
    let before = scrape(metrics_port(&gw).await).await;
    assert_eq!((value(&before, wss), value(&before, tls)), (0.0, 0.0));

    let token = gw.token("ws-count", &["c/#"], HOUR);
    let mut ws = WsClient::mqtt_v4(&gw, "ws-count", &token).await;
    until_metric(&gw, wss, |n| n == 1.0).await;
    let device = watcher(&gw, "tls-count", "c/#").await;
    until_metric(&gw, tls, |n| n == 1.0).await;
    assert_eq!(value(&scrape(metrics_port(&gw).await).await, wss), 1.0);

    ws.send_binary(&mqtt::DISCONNECT).await;
    assert_eq!(ws.expect_closed().await, Vec::<Vec<u8>>::new());
    until_metric(&gw, wss, |n| n == 0.0).await;
    assert_eq!(value(&scrape(metrics_port(&gw).await).await, tls), 1.0);
    device.disconnect().await;
    until_metric(&gw, tls, |n| n == 0.0).await;
    assert_eq!(value(&scrape(metrics_port(&gw).await).await, wss), 0.0);
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A client as strict as tungstenite's (rumqttc's `websocket` transport and
/// other Rust clients use it) upgrades and connects. It wants `Connection`
/// to be exactly `Upgrade` in the 101; hyper once wrote `Upgrade, close`
/// there while the gateway turned keep-alive off (src/http.rs,
/// `serve_one`), which browsers, mqtt.js and paho, reading the header as a
/// token list, did not mind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tungstenite_client_upgrades_and_connects() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let gw = DevBinary::start("", WEBSOCKET).await;
    let addr = gw.served.ready().websocket.unwrap();
    let mut request = format!("wss://localhost:{}/mqtt", addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let tls = common::web::tls_to_websocket(&gw).await;
    let (mut socket, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_with_config(request, tls, None),
    )
    .await
    .unwrap()
    .expect("tungstenite takes the gateway's 101");
    assert_eq!(response.status().as_u16(), 101);
    let token = gw.token("ws-tungstenite", &["t/#"], HOUR);
    let connect = mqtt::Connect::new(4, "ws-tungstenite")
        .username("JWT")
        .password(&token)
        .encode();
    socket.send(Message::binary(connect)).await.unwrap();
    let answer = tokio::time::timeout(WAIT, socket.next()).await.unwrap();
    match answer {
        Some(Ok(Message::Binary(bytes))) => assert_eq!(&bytes[..], mqtt::CONNACK_OK_V4),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
