use super::*;

/// `scan` over a block of `props` (its length added), and what is left
/// after it.
fn scanned(block: Block, props: &[u8]) -> (Result<(), CodecError>, usize) {
    // (`CodecError` has no `PartialEq`: callers match on the result.)
    let mut bytes = vec![u8::try_from(props.len()).unwrap()];
    bytes.extend_from_slice(props);
    bytes.extend_from_slice(b"rest");
    let mut reader = Reader(&bytes);
    let result = scan(block, &mut reader);
    (result, reader.0.len())
}

#[test]
fn a_block_of_each_layout_is_stepped_over_to_what_follows() {
    // PUBLISH: Payload Format Indicator, Message Expiry, Topic Alias,
    // Content Type, Correlation Data, two User Properties, two
    // Subscription Identifiers (refused later, under their own rule).
    let props = [
        0x01, 1, 0x02, 0, 0, 0, 9, 0x23, 0, 1, 0x03, 0, 1, b't', 0x09, 0, 0, 0x26, 0, 1, b'k', 0,
        0, 0x26, 0, 0, 0, 0, 0x0B, 0x81, 0x01, 0x0B, 1,
    ];
    for (block, props) in [(Block::Publish, &props[..]), (Block::Connect, &[])] {
        let (result, left) = scanned(block, props);
        assert!(result.is_ok(), "{block:?}: {result:?}");
        assert_eq!(left, 4, "{block:?}: stopped short of what follows");
    }
}

/// Each property but User Property: "It is a Protocol Error to include
/// [it] more than once", cited by the section defining it in its packet.
#[test]
fn a_property_given_twice_is_a_protocol_error_citing_its_section() {
    let cases: [(Block, &[u8], u8, &str); 6] = [
        (
            Block::Connect,
            &[0x21, 0, 9, 0x21, 0, 9],
            0x21,
            "3.1.2.11.3",
        ),
        (
            Block::Will,
            &[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 1],
            0x18,
            "3.1.3.2.2",
        ),
        (
            Block::Publish,
            &[0x23, 0, 1, 0x01, 0, 0x23, 0, 2],
            0x23,
            "3.3.2.3.4",
        ),
        (Block::Subscribe, &[0x0B, 1, 0x0B, 2], 0x0B, "3.8.2.1.2"),
        (Block::PubRec, &[0x1F, 0, 0, 0x1F, 0, 0], 0x1F, "3.5.2.2.2"),
        (
            Block::Disconnect,
            &[0x11, 0, 0, 0, 0, 0x11, 0, 0, 0, 0],
            0x11,
            "3.14.2.2.2",
        ),
    ];
    for (block, props, id, section) in cases {
        let (Err(CodecError::DuplicateProperty(at)), _) = scanned(block, props) else {
            panic!("{block:?} {props:02x?}: not refused as a duplicate");
        };
        assert_eq!((at.id, at.section), (id, section), "{block:?}");
        let text = CodecError::DuplicateProperty(at).to_string();
        assert!(text.starts_with(&format!("[MQTT 5 §{section}]")), "{text}");
        assert!(text.ends_with("more than once"), "{text}");
    }
    let users = [0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0];
    for block in [
        Block::Connect,
        Block::Will,
        Block::Publish,
        Block::Unsubscribe,
    ] {
        assert_eq!(scanned(block, &users).0.ok(), Some(()), "{block:?}");
    }
}

/// §3.3.2.3.2 and §3.1.3.2.3 define the values 0 and 1 only.
#[test]
fn a_payload_format_indicator_over_1_is_a_protocol_error() {
    for block in [Block::Publish, Block::Will] {
        for value in [0, 1] {
            assert!(scanned(block, &[0x01, value]).0.is_ok());
        }
        let (Err(CodecError::PayloadFormatIndicator { at, value }), _) = scanned(block, &[0x01, 2])
        else {
            panic!("{block:?}: a value of 2 was let through");
        };
        assert_eq!((at.id, value), (0x01, 2));
    }
    let (Err(CodecError::PayloadFormatIndicator { at, .. }), _) = scanned(Block::Will, &[0x01, 7])
    else {
        panic!("a will's value of 7 was let through");
    };
    assert_eq!(at.section, "3.1.3.2.3");
}

/// §2.2.2.2: an identifier not valid for the packet, or a value cut short
/// or past the block, makes the packet malformed.
#[test]
fn foreign_or_cut_properties_are_malformed() {
    let cases: [(Block, &[u8]); 6] = [
        (Block::Publish, &[0x11, 0, 0, 0, 0]),
        (Block::Subscribe, &[0x26, 0, 0]),
        (Block::PubAck, &[0x1F, 0, 5, b'a']),
        (Block::Connect, &[0x99]),
        (Block::Connect, &[0x21, 0]),
        (Block::Auth, &[0x0B, 0x80, 0x80, 0x80, 0x80]),
    ];
    for (block, props) in cases {
        assert!(
            matches!(scanned(block, props).0, Err(CodecError::Malformed(_))),
            "{block:?} {props:02x?}"
        );
    }
    // A property length past the packet's end, or none at all.
    for bytes in [&[5, 0x01][..], &[], &[0x80]] {
        assert!(matches!(
            scan(Block::Publish, &mut Reader(bytes)),
            Err(CodecError::Malformed(_))
        ));
    }
}
