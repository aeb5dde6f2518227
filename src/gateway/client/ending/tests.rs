use super::*;
use crate::mqtt::TopicError;

const AT: PropertyAt = PropertyAt {
    packet: "PUBLISH",
    id: 0x01,
    name: "Payload Format Indicator",
    section: "3.3.2.3.2",
};

/// One value of every variant. The match below has no wildcard, so a new
/// variant does not compile until it is added here, and so to the check
/// that its label is exported at zero.
fn every_violation() -> Vec<ProtocolViolation> {
    use ProtocolViolation::*;
    let all = vec![
        SecondConnect,
        UnexpectedPacket("ConnAck".into()),
        ForbiddenPacketType(2),
        TooLarge { size: 2, limit: 1 },
        Malformed(CodecError::Malformed("test".into())),
        PacketIdZero("PUBACK"),
        SubscribeWithoutFilters,
        UnsubscribeWithoutFilters,
        SubscriptionOptions("Retain Handling 3"),
        SessionExpiryAfterZero,
        AuthReason(0x18),
        SubscriptionIdOnPublish,
        TopicNotUtf8,
        TopicNul,
        TopicEmpty,
        TopicName(TopicError::Wildcard('#')),
        TopicOverLimits(TopicError::Empty),
        ReceiveMaximum(1),
        TopicAliasInvalid { alias: 9, max: 8 },
        TopicAliasUnset(1),
        TopicAliasesTooLarge,
        SubscriptionIdZero,
        NoLocalOnShared,
        DuplicateProperty(AT),
        PayloadFormatIndicator { at: AT, value: 2 },
    ];
    for violation in &all {
        match violation {
            SecondConnect
            | UnexpectedPacket(_)
            | ForbiddenPacketType(_)
            | TooLarge { .. }
            | Malformed(_)
            | PacketIdZero(_)
            | SubscribeWithoutFilters
            | UnsubscribeWithoutFilters
            | SubscriptionOptions(_)
            | SessionExpiryAfterZero
            | AuthReason(_)
            | SubscriptionIdOnPublish
            | TopicNotUtf8
            | TopicNul
            | TopicEmpty
            | TopicName(_)
            | TopicOverLimits(_)
            | ReceiveMaximum(_)
            | TopicAliasInvalid { .. }
            | TopicAliasUnset(_)
            | TopicAliasesTooLarge
            | SubscriptionIdZero
            | NoLocalOnShared
            | DuplicateProperty(_)
            | PayloadFormatIndicator { .. } => {}
        }
    }
    all
}

#[test]
fn every_label_is_listed_once_and_every_text_cites_its_rule() {
    let all = every_violation();
    let mut labels: Vec<&str> = all.iter().map(ProtocolViolation::label).collect();
    labels.sort_unstable();
    let mut listed = ProtocolViolation::LABELS.to_vec();
    listed.sort_unstable();
    assert_eq!(labels, listed);
    labels.dedup();
    assert_eq!(labels.len(), all.len(), "two variants share a label");
    for violation in &all {
        let text = violation.to_string();
        assert!(
            text.starts_with("[MQTT") || text.starts_with("[limits]"),
            "{text:?} cites no rule"
        );
    }
}
