use bytes::Bytes;
use rumqttd::protocol::{ConnectProperties, LastWill, QoS};

use super::*;

fn properties() -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

fn will(topic: &[u8]) -> LastWill {
    LastWill {
        topic: Bytes::copy_from_slice(topic),
        message: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
    }
}

#[test]
fn each_forbidden_connect_property_is_a_protocol_error_citing_its_section() {
    let cases: [(ConnectProperties, &str); 5] = [
        (
            ConnectProperties {
                receive_maximum: Some(0),
                ..properties()
            },
            "§3.1.2.11.3",
        ),
        (
            ConnectProperties {
                max_packet_size: Some(0),
                ..properties()
            },
            "§3.1.2.11.4",
        ),
        (
            ConnectProperties {
                request_response_info: Some(2),
                ..properties()
            },
            "§3.1.2.11.6",
        ),
        (
            ConnectProperties {
                request_problem_info: Some(2),
                ..properties()
            },
            "§3.1.2.11.7",
        ),
        (
            ConnectProperties {
                authentication_data: Some(Bytes::from_static(b"x")),
                ..properties()
            },
            "§3.1.2.11.10",
        ),
    ];
    for (p, section) in cases {
        let (refusal, reason) = check_connect_properties(Some(&p)).unwrap_err();
        assert_eq!(refusal, Refusal::ProtocolError);
        assert!(reason.contains(section), "{reason}");
    }
    let fine = ConnectProperties {
        receive_maximum: Some(1),
        max_packet_size: Some(1),
        request_response_info: Some(1),
        request_problem_info: Some(0),
        ..properties()
    };
    assert!(check_connect_properties(Some(&fine)).is_ok());
    assert!(check_connect_properties(None).is_ok());
}

#[test]
fn a_will_topic_is_refused_for_the_rule_it_breaks() {
    let limits = TopicLimits::DEFAULT;
    for (topic, refusal) in [
        (&b"a/#"[..], Refusal::TopicNameInvalid),
        (b"a/+/b", Refusal::TopicNameInvalid),
        (b"", Refusal::TopicNameInvalid),
        (b"a/\0", Refusal::Malformed),
        (b"a/\xff", Refusal::Malformed),
    ] {
        assert_eq!(will_topic(&limits, &will(topic)).unwrap_err().0, refusal);
    }
    let deep = "a/".repeat(limits.max_levels) + "a";
    assert_eq!(
        will_topic(&limits, &will(deep.as_bytes())).unwrap_err().0,
        Refusal::TopicOverLimits
    );
    assert_eq!(will_topic(&limits, &will(b"a/b")).unwrap(), "a/b");
}

#[test]
fn mqtt_3_1_1_is_closed_without_a_connack_for_a_broken_rule() {
    for refusal in [Refusal::ProtocolError, Refusal::TopicNameInvalid] {
        assert!(refusal.answered(Version::V5));
        assert!(!refusal.answered(Version::V3_1_1));
    }
    assert!(!Refusal::Malformed.answered(Version::V5));
    for refusal in [Refusal::TopicOverLimits, Refusal::NotAuthorized] {
        assert!(refusal.answered(Version::V3_1_1));
    }
}
