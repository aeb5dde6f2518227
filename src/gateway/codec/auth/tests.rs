use super::*;

#[test]
fn a_reauthentication_round_trips_and_its_answer_decodes() {
    // AUTH 0x19, method "JWT", data "tok", as a client writes it.
    let body = [
        0x19, 12, 0x15, 0, 3, b'J', b'W', b'T', 0x16, 0, 3, b't', b'o', b'k',
    ];
    let auth = Auth::decode(&body).unwrap();
    assert_eq!(auth.reason, REAUTHENTICATE);
    assert_eq!(auth.method.as_deref(), Some("JWT"));
    assert_eq!(auth.data.as_deref(), Some(&b"tok"[..]));

    let mut out = BytesMut::new();
    Auth::encode(SUCCESS, Some("ok"), &mut out);
    assert_eq!(out[0], 0xF0);
    assert_eq!(usize::from(out[1]), out.len() - 2);
    let back = Auth::decode(&out[2..]).unwrap();
    assert_eq!(back.reason, SUCCESS);
    assert_eq!(back.method.as_deref(), Some("JWT"));
}

#[test]
fn malformed_auth_packets_are_errors() {
    assert_eq!(Auth::decode(&[]).unwrap().reason, SUCCESS);
    for bad in [
        &[0x01][..],
        &[0x19, 5, 0x15, 0, 9],
        &[0x19, 2, 0x99, 0],
        &[0x19, 1],
        &[0x19, 0, 0xAA],
        &[0x19, 8, 0x15, 0, 1, b'a', 0x15, 0, 1, b'b'],
        &[0x19, 4, 0x15, 0, 1, 0xFF],
        &[0x19, 0x80, 0x80, 0x80, 0x80, 0x01],
    ] {
        assert!(Auth::decode(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_disconnect_with_any_reason_code() {
    let mut out = BytesMut::new();
    encode_disconnect(0x86, "expired", &mut out);
    assert_eq!(&out[..3], &[0xE0, 12, 0x86]);
    assert_eq!(out[3], 10);
    assert_eq!(out[4], REASON_STRING);
}

/// §3.15.2.2.2 to .4: "It is a Protocol Error to include [the
/// Authentication Method, Data, Reason String] more than once", unlike a
/// malformed AUTH; User Property may repeat.
#[test]
fn a_property_given_twice_is_a_protocol_error() {
    let twice = [0x19, 8, 0x15, 0, 1, b'a', 0x15, 0, 1, b'b'];
    let Err(CodecError::DuplicateProperty(at)) = Auth::decode(&twice) else {
        panic!("not refused as a duplicate");
    };
    assert_eq!((at.packet, at.id, at.section), ("AUTH", 0x15, "3.15.2.2.2"));
    let reasons = [0x19, 6, 0x1F, 0, 0, 0x1F, 0, 0];
    assert!(matches!(
        Auth::decode(&reasons),
        Err(CodecError::DuplicateProperty(_))
    ));
    let users = [0x19, 10, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0];
    assert_eq!(Auth::decode(&users).unwrap().reason, REAUTHENTICATE);
}
