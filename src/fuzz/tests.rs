use std::sync::Arc;

use super::fixture::fixture;
use super::mqtt::{connect_packet, over_websocket};
use super::session::{SessionSetup, fuzz_session};

/// A QoS 0 PUBLISH of `payload` on `topic` (MQTT 3.1.1).
fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    let mut packet = vec![0x30, body.len() as u8];
    packet.extend(body);
    packet
}

/// The WebSocket mode is only worth fuzzing if a valid stream goes
/// through it: a CONNECT and PUBLISH in frames of 1, 7, 64... bytes route
/// exactly what the same bytes do straight over the stream, and a stream
/// whose upgrade is refused routes nothing.
#[test]
fn the_websocket_mode_routes_what_the_plain_mode_routes() {
    let fixture = fixture();
    let mut mqtt = connect_packet(4, true, &fixture.session_token);
    mqtt.extend(publish("up", b"over the frames"));
    mqtt.extend(publish("fleet/7/status", b"and again"));
    let run = |websocket: bool, stream: &[u8]| {
        fuzz_session(
            Arc::clone(&fixture.keys),
            fixture.default_policy.clone(),
            SessionSetup {
                websocket,
                ..SessionSetup::default()
            },
            stream,
        )
        .expect("a runtime")
    };
    let plain = run(false, &mqtt);
    assert_eq!(plain.routed, ["up", "fleet/7/status"]);
    let framed = run(true, &over_websocket(&mqtt, &[], false));
    assert_eq!(framed.routed, plain.routed);
    assert!(framed.ended && framed.settled);
    let mut refused = over_websocket(&mqtt, &[], false);
    // Another path: 404, and nothing after it is read as MQTT.
    refused.splice(4..9, b"/mqtx".iter().copied());
    let refused = run(true, &refused);
    assert!(refused.routed.is_empty(), "{:?}", refused.routed);
}
