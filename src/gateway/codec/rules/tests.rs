use super::*;
use crate::gateway::codec::primitives::{PropertyAt, complete_frame};

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first, u8::try_from(body.len()).unwrap()];
    bytes.extend_from_slice(body);
    bytes
}

fn checked(bytes: &[u8], v5: bool) -> Result<(), CodecError> {
    let frame = complete_frame(bytes, 1024).unwrap().unwrap();
    check(&frame, v5)
}

fn malformed_citing(result: Result<(), CodecError>, rule: &str) {
    match result {
        Err(CodecError::Malformed(text)) => assert!(text.contains(rule), "{text}"),
        other => panic!("expected malformed citing {rule}, got {other:?}"),
    }
}

/// A CONNECT body up to and with its properties: MQTT/`level`, `flags`,
/// keep-alive 30, `props` (MQTT 5 only), client id `c`, then `rest`.
fn connect(level: u8, flags: u8, props: Option<&[u8]>, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 30];
    if let Some(props) = props {
        body.push(u8::try_from(props.len()).unwrap());
        body.extend_from_slice(props);
    }
    body.extend_from_slice(&[0, 1, b'c']);
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

#[test]
fn connect_reserved_flag_and_a_lone_password() {
    // [MQTT-3.1.2-3], both versions.
    malformed_citing(
        checked(&connect(4, 0x03, None, &[]), false),
        "[MQTT-3.1.2-3]",
    );
    malformed_citing(
        checked(&connect(5, 0x03, Some(&[]), &[]), true),
        "[MQTT-3.1.2-3]",
    );
    // [MQTT-3.1.2-22] of 3.1.1; MQTT 5 §3.1.2.9 allows a password alone.
    let password = [0, 1, b'p'];
    assert!(matches!(
        checked(&connect(4, 0x42, None, &password), false),
        Err(CodecError::PasswordWithoutUsername)
    ));
    assert!(checked(&connect(5, 0x42, Some(&[]), &password), true).is_ok());
    assert!(checked(&connect(4, 0xC2, None, &[0, 1, b'u', 0, 1, b'p']), false).is_ok());
}

#[test]
fn connect_and_will_properties_are_scanned() {
    let twice = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    assert!(matches!(
        checked(&connect(5, 0x02, Some(&twice), &[]), true),
        Err(CodecError::DuplicateProperty(PropertyAt { id: 0x11, .. }))
    ));
    // A will (flag 0x04) with a Payload Format Indicator of 2.
    let will = [2, 0x01, 2, 0, 1, b't', 0, 0];
    assert!(matches!(
        checked(&connect(5, 0x06, Some(&[]), &will), true),
        Err(CodecError::PayloadFormatIndicator { value: 2, .. })
    ));
    let fine = [2, 0x01, 1, 0, 1, b't', 0, 0];
    assert!(checked(&connect(5, 0x06, Some(&[]), &fine), true).is_ok());
    // Without the will flag, what follows the client id is not a will.
    assert!(checked(&connect(5, 0x02, Some(&[]), &will), true).is_ok());
}

#[test]
fn dup_on_a_qos_0_publish_is_malformed() {
    let body = [0, 1, b't', 0, b'x'];
    for v5 in [false, true] {
        malformed_citing(checked(&frame(0x38, &body), v5), "[MQTT-3.3.1-2]");
        assert!(checked(&frame(0x30, &body), v5).is_ok());
    }
    // QoS 1 may carry DUP; its properties come after the packet id.
    assert!(checked(&frame(0x3A, &[0, 1, b't', 0, 1, 0, b'x']), true).is_ok());
    let twice = [0, 1, b't', 0, 1, 4, 0x01, 0, 0x01, 1, b'x'];
    assert!(matches!(
        checked(&frame(0x3A, &twice), true),
        Err(CodecError::DuplicateProperty(PropertyAt { id: 0x01, .. }))
    ));
}

#[test]
fn subscription_options_reserved_bits_are_malformed() {
    // MQTT 5: bits 6 and 7 ([MQTT-3.8.3-5]); 0x2E (Retain Handling 2, Retain
    // As Published, No Local, QoS 2) is fine.
    let v5 = |options: u8| frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x2E, 0, 1, b'b', options]);
    for options in [0x40, 0x80] {
        malformed_citing(checked(&v5(options), true), "[MQTT-3.8.3-5]");
    }
    assert!(checked(&v5(0x2E), true).is_ok());
    // MQTT 3.1.1: bits 2 to 7; its QoS 3 is rumqttd's to refuse.
    let v4 = |options: u8| frame(0x82, &[0, 1, 0, 1, b'a', options]);
    for options in [0x04, 0x40, 0x80] {
        malformed_citing(checked(&v4(options), false), "[MQTT-3.8.3-4]");
    }
    assert!(checked(&v4(0x03), false).is_ok());
    // A filter without its options byte.
    assert!(matches!(
        checked(&frame(0x82, &[0, 1, 0, 1, b'a']), false),
        Err(CodecError::Malformed(_))
    ));
    // Subscription Identifier twice (§3.8.2.1.2).
    let twice = frame(0x82, &[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]);
    assert!(matches!(
        checked(&twice, true),
        Err(CodecError::DuplicateProperty(PropertyAt { id: 0x0B, .. }))
    ));
}

#[test]
fn acks_unsubscribe_and_disconnect_properties_are_scanned() {
    let reason_twice = [0x1F, 0, 0, 0x1F, 0, 0];
    let with = |head: &[u8]| {
        let mut body = head.to_vec();
        body.push(6);
        body.extend_from_slice(&reason_twice);
        body
    };
    for first in [0x40, 0x50, 0x62, 0x70] {
        assert!(
            matches!(
                checked(&frame(first, &with(&[0, 1, 0x10])), true),
                Err(CodecError::DuplicateProperty(_))
            ),
            "{first:#04x}"
        );
        // Reason code and properties may be left out.
        assert!(checked(&frame(first, &[0, 1]), true).is_ok());
        assert!(checked(&frame(first, &[0, 1, 0x10]), true).is_ok());
        // MQTT 3.1.1 acks carry no properties.
        assert!(checked(&frame(first, &with(&[0, 1, 0x10])), false).is_ok());
    }
    assert!(matches!(
        checked(&frame(0xE0, &with(&[0x00])), true),
        Err(CodecError::DuplicateProperty(_))
    ));
    assert!(checked(&frame(0xE0, &[0x04]), true).is_ok());
    assert!(checked(&frame(0xE0, &[]), true).is_ok());
    let users_twice = [0, 1, 10, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0, 0, 1, b'a'];
    assert!(checked(&frame(0xA2, &users_twice), true).is_ok());
    // Reason String is no UNSUBSCRIBE property (§2.2.2.2): malformed.
    let foreign = [0, 1, 3, 0x1F, 0, 0, 0, 1, b'a'];
    assert!(matches!(
        checked(&frame(0xA2, &foreign), true),
        Err(CodecError::Malformed(_))
    ));
}
