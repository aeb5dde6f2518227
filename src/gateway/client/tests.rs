use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, Protocol, PubAck, PubAckReason, PubCompReason, PubRecReason,
    SubscribeReasonCode, UnsubAck, v4::V4, v5::V5,
};

use super::ending::ProtocolViolation;
use super::{Client, ClientLimits, Ending, Identity};
use crate::acl::Grants;
use crate::broker::store::MemoryStore;
use crate::broker::{Broker, CommitError, Kept, SessionKey};
use crate::config::{DenyPublish, Limits, SessionSettings};
use crate::gateway::codec::{Codec, PublishHeader};
use crate::gateway::wire::Outbox;
use crate::mqtt::{QoS, TopicFilter, Version};

const MAX_PACKET: usize = 1024 * 1024;

/// The reason code and label of the violation a session ended with.
fn violation(ending: Option<Ending>) -> (DisconnectReasonCode, &'static str) {
    match ending {
        Some(Ending::Protocol(violation)) => (violation.reason_code(), violation.label()),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

struct Harness {
    client: Client,
    out: Outbox,
    version: Version,
}

fn client_with(
    version: Version,
    grants: &[&str],
    deny_publish: DenyPublish,
    settings: SessionSettings,
) -> Harness {
    let broker = Broker::new(&settings, 64 * 1024 * 1024, Arc::new(MemoryStore::new()));
    let attached = broker
        .attach(SessionKey::new("dev", "c1"), true, Duration::ZERO)
        .unwrap();
    let grants = Grants::new(
        grants
            .iter()
            .map(|filter| TopicFilter::parse(filter).unwrap())
            .collect(),
    );
    let id = Identity {
        certificate: None,
        remote: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        client_id: "c1".to_owned(),
        version,
        subject: None,
        username: Some("JWT".to_owned()),
        credential: String::new(),
        grants,
    };
    let limits = ClientLimits::new(&settings, &Limits::default(), deny_publish, None);
    Harness {
        client: Client::new(
            broker,
            Arc::default(),
            id,
            None,
            attached,
            Duration::ZERO,
            limits,
        ),
        out: Outbox::new(Codec::new(version, MAX_PACKET)),
        version,
    }
}

fn client(version: Version, grants: &[&str]) -> Harness {
    client_with(
        version,
        grants,
        DenyPublish::Drop,
        SessionSettings::default(),
    )
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        frame.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    frame.extend_from_slice(body);
    frame
}

impl Harness {
    /// The client sends `bytes`; what the gateway decides.
    fn send(&mut self, bytes: &[u8]) -> Option<Ending> {
        let mut input = BytesMut::from(bytes);
        let ending = self.client.take_input(&mut input, &mut self.out);
        assert!(
            ending.is_some() || input.is_empty(),
            "bytes left: {input:?}"
        );
        ending
    }

    fn publish(&mut self, topic: &str, qos: u8, pkid: u16, properties: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic, &mut body);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if self.version.is_v5() {
            body.push(u8::try_from(properties.len()).unwrap());
            body.extend_from_slice(properties);
        }
        body.extend_from_slice(b"payload");
        frame(0x30 | (qos << 1), &body)
    }

    fn subscribe(&self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.version.is_v5() {
            body.push(0);
        }
        for (filter, qos) in filters {
            string(filter, &mut body);
            body.push(*qos);
        }
        frame(0x82, &body)
    }

    /// Everything the gateway answered, decoded.
    fn answers(&mut self) -> Vec<Packet> {
        self.answers_with_headers()
            .into_iter()
            .map(|(packet, _)| packet)
            .collect()
    }

    /// The same, with the header of each PUBLISH as on the wire
    /// (rumqttd keeps a PUBLISH's QoS and packet id to itself).
    fn answers_with_headers(&mut self) -> Vec<(Packet, Option<PublishHeader>)> {
        let mut bytes = self.out.take();
        let mut packets = Vec::new();
        while let Some(&first) = bytes.first() {
            if first >> 4 == 3 {
                let inbound = self.out.codec().decode(&mut bytes).unwrap().unwrap();
                packets.push(inbound.into_packet());
                continue;
            }
            let packet = match self.version {
                Version::V5 => V5.read_mut(&mut bytes, MAX_PACKET),
                _ => V4.read_mut(&mut bytes, MAX_PACKET),
            };
            packets.push((packet.unwrap(), None));
        }
        packets
    }
}

#[test]
fn a_ping_is_answered() {
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    assert!(h.send(&[0xC0, 0x00]).is_none());
    assert!(matches!(h.answers()[..], [Packet::PingResp(_)]));
}

#[test]
fn a_publish_outside_the_grants_is_acknowledged_and_not_routed() {
    for version in [Version::V3_1_1, Version::V5] {
        let mut h = client(version, &["dev/#"]);
        let subscribe = h.subscribe(1, &[("#", 1)]);
        // "#" is not granted either: the SUBACK refuses it, nothing
        // routes back to this client.
        assert!(h.send(&subscribe).is_none());
        let publish = h.publish("other/x", 1, 7, &[]);
        assert!(h.send(&publish).is_none());
        assert!(h.client.pump(&mut h.out).is_none());
        let answers = h.answers();
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert!(matches!(&answers[1], Packet::PubAck(ack, _) if ack.pkid == 7));
        if version.is_v5() {
            assert!(matches!(
                &answers[1],
                Packet::PubAck(ack, _) if ack.reason == PubAckReason::NotAuthorized
            ));
        }
    }
}

#[test]
fn deny_publish_disconnect_ends_the_session() {
    let mut h = client_with(
        Version::V3_1_1,
        &["dev/#"],
        DenyPublish::Disconnect,
        SessionSettings::default(),
    );
    let publish = h.publish("other/x", 0, 0, &[]);
    assert!(matches!(h.send(&publish), Some(Ending::PublishDenied)));
}

/// A tap whose commits are already answered: `dev/full/...` had no
/// room, `dev/broken/...` failed, the rest was kept.
struct Answered;

impl crate::broker::Tap for Answered {
    fn take(&self, message: &Arc<crate::broker::Message>) -> Option<Kept> {
        let outcome = if message.topic().starts_with("dev/full/") {
            Err(CommitError::Full)
        } else if message.topic().starts_with("dev/broken/") {
            Err(CommitError::Storage)
        } else {
            Ok(())
        };
        let (answer, kept) = tokio::sync::oneshot::channel();
        let _ = answer.send(outcome);
        Some(kept)
    }
}

/// Issue 19, item 4: an ack tells whether its message was kept.
#[test]
fn an_ack_tells_whether_the_message_was_committed() {
    let mut h = client(Version::V5, &["dev/#"]);
    h.client.broker.add_tap(Arc::new(Answered));
    for (topic, qos, pkid) in [
        ("dev/ok/1", 1, 1),
        ("dev/full/1", 1, 2),
        ("dev/broken/1", 1, 3),
        ("dev/full/2", 2, 4),
    ] {
        let publish = h.publish(topic, qos, pkid, &[]);
        assert!(h.send(&publish).is_none());
    }
    assert!(h.client.release_owed(&mut h.out).is_none());
    let reasons: Vec<String> = h
        .answers()
        .iter()
        .map(|packet| match packet {
            Packet::PubAck(ack, _) => format!("{} {:?}", ack.pkid, ack.reason),
            Packet::PubRec(rec, _) => format!("{} {:?}", rec.pkid, rec.reason),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "1 Success",
            "2 QuotaExceeded",
            "3 UnspecifiedError",
            "4 QuotaExceeded"
        ]
    );
    // The refused QoS 2 exchange ended: the same packet id is a new
    // message, routed (and refused) again, not taken for a re-send
    // (which would be answered with success).
    assert_eq!(h.client.inflight.incoming(), 0);
    let publish = h.publish("dev/full/3", 2, 4, &[]);
    assert!(h.send(&publish).is_none());
    assert!(h.client.release_owed(&mut h.out).is_none());
    assert!(matches!(
        &h.answers()[..],
        [Packet::PubRec(rec, _)] if rec.pkid == 4 && rec.reason == PubRecReason::QuotaExceeded
    ));

    // MQTT 3.1.1 cannot say it: the connection closes without the ack,
    // and a QoS 2 id is not left behind as received.
    for qos in [1, 2] {
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        h.client.broker.add_tap(Arc::new(Answered));
        let publish = h.publish("dev/full/1", qos, 1, &[]);
        assert!(h.send(&publish).is_none());
        assert!(matches!(
            h.client.release_owed(&mut h.out),
            Some(Ending::NotKept(CommitError::Full))
        ));
        assert!(h.answers().is_empty());
        assert_eq!(h.client.inflight.incoming(), 0);
    }
}

#[test]
fn each_filter_is_granted_or_refused_on_its_own() {
    use rumqttd::protocol::QoS as WireQoS;
    // As rumqttd's decoders read them back.
    for (version, expected) in [
        (
            Version::V3_1_1,
            [
                SubscribeReasonCode::Success(WireQoS::AtLeastOnce),
                SubscribeReasonCode::Failure,
                SubscribeReasonCode::Success(WireQoS::ExactlyOnce),
            ],
        ),
        (
            Version::V5,
            [
                SubscribeReasonCode::QoS1,
                SubscribeReasonCode::NotAuthorized,
                SubscribeReasonCode::QoS2,
            ],
        ),
    ] {
        let mut h = client(version, &["dev/1/#"]);
        let subscribe = h.subscribe(3, &[("dev/1/t", 1), ("dev/2/t", 1), ("dev/1/+", 2)]);
        assert!(h.send(&subscribe).is_none());
        let answers = h.answers();
        let Packet::SubAck(ack, _) = &answers[0] else {
            panic!("{answers:?}");
        };
        assert_eq!(ack.pkid, 3);
        assert_eq!(ack.return_codes, expected);
    }
}

/// Topics and filters over `[limits] max_topic_levels` are refused at
/// the door with the code MQTT has for them, and a filter repeated in
/// one SUBSCRIBE is answered each time but subscribed once.
#[test]
fn topics_over_the_limits_are_refused_at_the_door() {
    let max = crate::mqtt::TopicLimits::DEFAULT.max_levels;
    let deep = format!("dev/{}", vec!["l"; max].join("/"));
    let fits = format!("dev/{}", vec!["l"; max - 1].join("/"));
    let mut h = client(Version::V5, &["dev/#"]);
    let subscribe = h.subscribe(1, &[(&deep, 1), (&fits, 1), (&fits, 0), (&fits, 1)]);
    assert!(h.send(&subscribe).is_none());
    let answers = h.answers();
    let Packet::SubAck(ack, _) = &answers[0] else {
        panic!("{answers:?}");
    };
    assert_eq!(
        ack.return_codes,
        [
            SubscribeReasonCode::TopicFilterInvalid,
            SubscribeReasonCode::QoS1,
            SubscribeReasonCode::QoS0,
            SubscribeReasonCode::QoS1,
        ]
    );
    assert_eq!(
        h.client.session.subscriptions(),
        std::slice::from_ref(&fits),
        "one subscription"
    );
    let publish = h.publish(&deep, 1, 2, &[]);
    assert!(h.send(&publish).is_none(), "MQTT 5: refused, connected");
    let answers = h.answers();
    assert!(
        matches!(
            &answers[..],
            [Packet::PubAck(
                PubAck {
                    pkid: 2,
                    reason: PubAckReason::TopicNameInvalid
                },
                _
            )]
        ),
        "{answers:?}"
    );
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    let publish = h.publish(&deep, 1, 2, &[]);
    assert_eq!(
        violation(h.send(&publish)),
        (DisconnectReasonCode::TopicNameInvalid, "topic_over_limits")
    );
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    let subscribe = h.subscribe(1, &[(&deep, 1)]);
    assert!(h.send(&subscribe).is_none());
    let answers = h.answers();
    let Packet::SubAck(ack, _) = &answers[0] else {
        panic!("{answers:?}");
    };
    assert_eq!(ack.return_codes, [SubscribeReasonCode::Failure]);
}

#[test]
fn a_granted_publish_reaches_the_clients_own_subscription_at_the_lower_qos() {
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    let subscribe = h.subscribe(1, &[("dev/+", 0)]);
    assert!(h.send(&subscribe).is_none());
    let publish = h.publish("dev/x", 1, 9, &[]);
    assert!(h.send(&publish).is_none());
    assert!(h.client.pump(&mut h.out).is_none());
    let answers = h.answers_with_headers();
    assert!(matches!(&answers[1].0, Packet::PubAck(ack, _) if ack.pkid == 9));
    let (Packet::Publish(delivered, _), Some(header)) = &answers[2] else {
        panic!("{answers:?}");
    };
    assert_eq!(&delivered.topic[..], b"dev/x");
    assert_eq!(header.qos, QoS::AtMostOnce);
}

#[test]
fn a_second_connect_is_a_protocol_error() {
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 30]);
    string("c1", &mut body);
    let connect = frame(0x10, &body);
    assert_eq!(
        violation(h.send(&connect)),
        (DisconnectReasonCode::ProtocolError, "second_connect")
    );
}

#[test]
fn malformed_bytes_end_the_session_with_a_reason() {
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    // A CONNACK is the server's to send.
    assert_eq!(
        violation(h.send(&[0x20, 0x02, 0x00, 0x00])),
        (DisconnectReasonCode::ProtocolError, "forbidden_packet_type")
    );
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    // A PUBLISH whose topic length runs past its frame.
    assert_eq!(
        violation(h.send(&[0x30, 0x03, 0x00, 0x09, b'x'])),
        (DisconnectReasonCode::MalformedPacket, "malformed_packet")
    );
}

#[test]
fn a_topic_alias_beyond_the_granted_maximum_ends_the_session() {
    let mut h = client(Version::V5, &["dev/#"]);
    let max = Limits::default().max_topic_aliases;
    let too_far = max + 1;
    let [hi, lo] = too_far.to_be_bytes();
    // Property 0x23: topic alias.
    let publish = h.publish("dev/x", 0, 0, &[0x23, hi, lo]);
    assert_eq!(
        violation(h.send(&publish)),
        (
            DisconnectReasonCode::TopicAliasInvalid,
            "topic_alias_invalid"
        )
    );
    let mut h = client(Version::V5, &["dev/#"]);
    let unset = h.publish("", 0, 0, &[0x23, 0, 1]);
    assert_eq!(
        violation(h.send(&unset)),
        (DisconnectReasonCode::ProtocolError, "topic_alias_unset")
    );
}

#[test]
fn more_qos2_messages_than_the_receive_maximum_end_the_session() {
    let settings = SessionSettings {
        max_inflight: 2,
        ..SessionSettings::default()
    };
    let mut h = client_with(Version::V5, &["dev/#"], DenyPublish::Drop, settings);
    for pkid in 1..=2 {
        let publish = h.publish("dev/x", 2, pkid, &[]);
        assert!(h.send(&publish).is_none());
    }
    let third = h.publish("dev/x", 2, 3, &[]);
    assert_eq!(
        violation(h.send(&third)),
        (
            DisconnectReasonCode::ReceiveMaximumExceeded,
            "receive_maximum_exceeded"
        )
    );
}

#[test]
fn a_pubrel_for_an_unknown_id_still_gets_its_pubcomp() {
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    assert!(h.send(&[0x62, 0x02, 0x00, 0x05]).is_none());
    assert!(matches!(&h.answers()[..], [Packet::PubComp(comp, _)] if comp.pkid == 5));
    let mut h = client(Version::V5, &["dev/#"]);
    assert!(h.send(&[0x62, 0x02, 0x00, 0x05]).is_none());
    assert!(matches!(
        &h.answers()[..],
        [Packet::PubComp(comp, _)] if comp.reason == PubCompReason::PacketIdentifierNotFound
    ));
}

#[test]
fn a_disconnect_may_not_set_an_expiry_the_connect_did_not() {
    let mut h = client(Version::V5, &["dev/#"]);
    // Reason 0, properties: session expiry interval (0x11) = 60.
    let disconnect = frame(0xE0, &[0x00, 0x05, 0x11, 0, 0, 0, 60]);
    assert_eq!(
        violation(h.send(&disconnect)),
        (
            DisconnectReasonCode::ProtocolError,
            "session_expiry_after_zero"
        )
    );
    let mut h = client(Version::V5, &["dev/#"]);
    assert!(matches!(
        h.send(&[0xE0, 0x00]),
        Some(Ending::Disconnected {
            publish_will: false
        })
    ));
}

/// Issue 10's MQTT property: any sequence of valid packets from a few
/// clients sharing one broker (SUBSCRIBE and UNSUBSCRIBE inside and
/// outside the grants, PUBLISH at QoS 0/1/2 on topics inside and
/// outside, the acks for what is outstanding, QoS 2 re-sent with DUP)
/// never delivers outside the receiver's grants, delivers each message
/// to each subscriber once, at min(publish QoS, highest matching
/// subscription QoS) (MQTT 3.1.1 §3.8.4, §3.3.5; 5 §3.8.4), plus one
/// copy per matching shared group (`$share/...`) to one of its members
/// at that member's QoS (MQTT 5 §4.8.2; README: "deliver each message
/// to one member"), and
/// completes every QoS 1/2 exchange exactly once both ways (README,
/// "Authentication and authorization": refused QoS 1/2 publishes are
/// acknowledged too). Once everything is acknowledged, every message a
/// connected subscriber was owed has reached it (README, "The
/// guarantee"; no queue comes near its bound here).
mod sequences {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use rumqttd::protocol::QoS as WireQoS;
    use std::collections::BTreeMap;

    const TOPICS: [&str; 6] = [
        "dev/1/a", "dev/1/b", "dev/2/a", "shared/x", "$SYS/up", "other",
    ];
    const FILTERS: [&str; 9] = [
        "dev/1/#", "dev/+/a", "dev/2/a", "#", "+/+/a", "shared/x", "$SYS/#", "dev/1/a", "+",
    ];
    const CLIENTS: usize = 3;
    /// Small, so that deliveries wait for the in-flight window.
    const MAX_INFLIGHT: u16 = 3;

    #[derive(Debug, Clone)]
    enum Op {
        /// Filters with the QoS asked for, some shared in group `g0`
        /// or `g1`.
        Subscribe {
            client: usize,
            filters: Vec<(usize, u8, Option<u8>)>,
        },
        Unsubscribe {
            client: usize,
            filter: usize,
            group: Option<u8>,
        },
        Publish {
            client: usize,
            topic: usize,
            qos: u8,
        },
        /// Re-send (DUP) a QoS 2 PUBLISH that awaits its PUBREL.
        Resend { client: usize, pick: Index },
        /// PUBREL for a QoS 2 PUBLISH the gateway answered.
        Release { client: usize, pick: Index },
        /// The client's next step for a delivery in flight: PUBACK,
        /// PUBREC or PUBCOMP.
        Ack { client: usize, pick: Index },
    }

    fn op() -> impl Strategy<Value = Op> {
        let client = 0..CLIENTS;
        prop_oneof![
            3 => (client.clone(), prop::collection::vec((0..FILTERS.len(), 0..=2u8, group()), 1..3))
                .prop_map(|(client, filters)| Op::Subscribe { client, filters }),
            1 => (client.clone(), 0..FILTERS.len(), group())
                .prop_map(|(client, filter, group)| Op::Unsubscribe { client, filter, group }),
            5 => (client.clone(), 0..TOPICS.len(), 0..=2u8)
                .prop_map(|(client, topic, qos)| Op::Publish { client, topic, qos }),
            1 => (client.clone(), any::<Index>())
                .prop_map(|(client, pick)| Op::Resend { client, pick }),
            2 => (client.clone(), any::<Index>())
                .prop_map(|(client, pick)| Op::Release { client, pick }),
            4 => (client, any::<Index>()).prop_map(|(client, pick)| Op::Ack { client, pick }),
        ]
    }

    fn group() -> impl Strategy<Value = Option<u8>> {
        prop::option::weighted(0.3, 0..2u8)
    }

    /// The filter as a SUBSCRIBE carries it.
    fn requested(filter: usize, group: Option<u8>) -> String {
        match group {
            Some(group) => format!("$share/g{group}/{}", FILTERS[filter]),
            None => FILTERS[filter].to_owned(),
        }
    }

    /// A message's copies for the members of one shared group: exactly
    /// one of them gets it, at its own subscription's QoS.
    #[derive(Debug)]
    struct GroupCopy {
        msg: u64,
        /// (client, QoS it gets the message at).
        members: Vec<(usize, u8)>,
    }

    fn version() -> impl Strategy<Value = Version> {
        prop::sample::select(vec![Version::V3_1, Version::V3_1_1, Version::V5])
    }

    /// An answer the gateway owes a client.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owed {
        SubAck(u16, Vec<Option<u8>>),
        UnsubAck(u16),
        /// For a QoS 1 PUBLISH; whether it was authorized.
        PubAck(u16, bool),
        /// For a QoS 2 PUBLISH; whether it was authorized.
        PubRec(u16, bool),
        PubComp(u16),
        /// For the client's PUBREC of a QoS 2 delivery.
        PubRel(u16),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Stage {
        /// Sent; the client owes PUBACK (QoS 1) or PUBREC (QoS 2).
        Published,
        /// The client sent PUBREC; the gateway owes PUBREL.
        Received,
        /// The gateway sent PUBREL; the client owes PUBCOMP.
        Released,
    }

    /// One client as the model sees it.
    struct Peer {
        h: Harness,
        grants: Grants,
        /// Filter (as requested) to the granted QoS.
        subscriptions: BTreeMap<String, u8>,
        next_pkid: u16,
        /// The client's QoS 2 publishes awaiting its PUBREL, by packet
        /// id: (topic, message, authorized).
        awaiting_release: BTreeMap<u16, (usize, u64, bool)>,
        owed: Vec<Owed>,
        /// Deliveries in flight to the client, by packet id.
        inflight: BTreeMap<u16, (u64, u8, Stage)>,
        /// Messages the client must get through its non-shared
        /// subscriptions, with the QoS to get them at.
        expected: BTreeMap<u64, u8>,
        /// Each copy delivered, with its QoS.
        delivered: BTreeMap<u64, Vec<u8>>,
        /// Copies the client may get as a shared group's member, with
        /// the QoS of each.
        shared_offers: BTreeMap<u64, Vec<u8>>,
    }

    fn connect(
        broker: &Arc<Broker>,
        settings: &SessionSettings,
        i: usize,
        version: Version,
        grants: &[&'static str],
    ) -> Peer {
        let client_id = format!("c{i}");
        let attached = broker
            .attach(
                SessionKey::new(&format!("dev{i}"), &client_id),
                true,
                Duration::ZERO,
            )
            .unwrap();
        let grants = Grants::new(
            grants
                .iter()
                .map(|filter| TopicFilter::parse(filter).unwrap())
                .collect(),
        );
        let id = Identity {
            certificate: None,
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id,
            version,
            subject: None,
            username: Some("JWT".to_owned()),
            credential: String::new(),
            grants: grants.clone(),
        };
        let limits = ClientLimits::new(settings, &Limits::default(), DenyPublish::Drop, None);
        let client = Client::new(
            Arc::clone(broker),
            Arc::default(),
            id,
            None,
            attached,
            Duration::ZERO,
            limits,
        );
        Peer {
            h: Harness {
                client,
                out: Outbox::new(Codec::new(version, MAX_PACKET)),
                version,
            },
            grants,
            subscriptions: BTreeMap::new(),
            next_pkid: 0,
            awaiting_release: BTreeMap::new(),
            owed: Vec::new(),
            inflight: BTreeMap::new(),
            expected: BTreeMap::new(),
            delivered: BTreeMap::new(),
            shared_offers: BTreeMap::new(),
        }
    }

    fn publish_bytes(
        version: Version,
        topic: &str,
        qos: u8,
        pkid: u16,
        dup: bool,
        msg: u64,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic, &mut body);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if version.is_v5() {
            body.push(0);
        }
        body.extend_from_slice(format!("m{msg}").as_bytes());
        frame(0x30 | (u8::from(dup) << 3) | (qos << 1), &body)
    }

    fn ack_bytes(first: u8, pkid: u16) -> Vec<u8> {
        frame(first, &pkid.to_be_bytes())
    }

    fn granted_qos(code: &SubscribeReasonCode) -> Option<u8> {
        match code {
            SubscribeReasonCode::QoS0 | SubscribeReasonCode::Success(WireQoS::AtMostOnce) => {
                Some(0)
            }
            SubscribeReasonCode::QoS1 | SubscribeReasonCode::Success(WireQoS::AtLeastOnce) => {
                Some(1)
            }
            SubscribeReasonCode::QoS2 | SubscribeReasonCode::Success(WireQoS::ExactlyOnce) => {
                Some(2)
            }
            _ => None,
        }
    }

    /// What the gateway sent, decoded as `Harness::answers_with_headers`
    /// does, except UNSUBACK, read here: rumqttd's MQTT 5 reader
    /// reaches `unreachable!()` on it (see gateway/codec/mod.rs).
    fn answers(h: &mut Harness) -> Vec<(Packet, Option<PublishHeader>)> {
        let mut bytes = h.out.take();
        let mut packets = Vec::new();
        while let Some(&first) = bytes.first() {
            match first >> 4 {
                3 => {
                    let inbound = h.out.codec().decode(&mut bytes).unwrap().unwrap();
                    packets.push(inbound.into_packet());
                }
                11 => {
                    let (mut len, mut shift, mut at) = (0usize, 0, 1);
                    loop {
                        let byte = bytes[at];
                        len |= usize::from(byte & 0x7f) << shift;
                        shift += 7;
                        at += 1;
                        if byte & 0x80 == 0 {
                            break;
                        }
                    }
                    let pkid = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
                    let _ = bytes.split_to(at + len);
                    let reasons = Vec::new();
                    packets.push((Packet::UnsubAck(UnsubAck { pkid, reasons }, None), None));
                }
                _ => {
                    let packet = match h.version {
                        Version::V5 => V5.read_mut(&mut bytes, MAX_PACKET),
                        _ => V4.read_mut(&mut bytes, MAX_PACKET),
                    };
                    packets.push((packet.unwrap(), None));
                }
            }
        }
        packets
    }

    struct World {
        peers: Vec<Peer>,
        next_msg: u64,
        groups: Vec<GroupCopy>,
    }

    impl Peer {
        fn pkid(&mut self) -> u16 {
            loop {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                if !self.awaiting_release.contains_key(&self.next_pkid) {
                    return self.next_pkid;
                }
            }
        }

        fn send(&mut self, bytes: &[u8]) -> Result<(), TestCaseError> {
            let ending = self.h.send(bytes);
            prop_assert!(ending.is_none(), "the session ended: {:?}", ending);
            // Queues hold 1000 messages; none fills up here, so no
            // publication waits.
            prop_assert!(self.h.client.waits().0.is_none());
            Ok(())
        }

        fn owe(&mut self, answer: &Owed) -> Result<(), TestCaseError> {
            let at = self.owed.iter().position(|owed| owed == answer);
            prop_assert!(
                at.is_some(),
                "unexpected {:?}; owed {:?}",
                answer,
                self.owed
            );
            self.owed.remove(at.unwrap());
            Ok(())
        }

        /// Reads everything the gateway sent and checks it against the
        /// model.
        fn check_answers(&mut self) -> Result<usize, TestCaseError> {
            let ending = self.h.client.pump(&mut self.h.out);
            prop_assert!(ending.is_none(), "{:?}", ending);
            let answers = answers(&mut self.h);
            let count = answers.len();
            let v5 = self.h.version.is_v5();
            for answer in answers {
                match answer {
                    (Packet::SubAck(ack, _), _) => {
                        let codes = ack.return_codes.iter().map(granted_qos).collect();
                        self.owe(&Owed::SubAck(ack.pkid, codes))?;
                    }
                    (Packet::UnsubAck(ack, _), _) => self.owe(&Owed::UnsubAck(ack.pkid))?,
                    (Packet::PubAck(ack, _), _) => {
                        let granted = ack.reason == PubAckReason::Success;
                        prop_assert!(v5 || granted);
                        // A 3.1.1 PUBACK carries no reason: match either.
                        let owed = Owed::PubAck(ack.pkid, true);
                        if v5 || self.owed.contains(&owed) {
                            self.owe(&Owed::PubAck(ack.pkid, granted))?;
                        } else {
                            self.owe(&Owed::PubAck(ack.pkid, false))?;
                        }
                    }
                    (Packet::PubRec(rec, _), _) => {
                        let granted = rec.reason == PubRecReason::Success;
                        let owed = Owed::PubRec(rec.pkid, true);
                        if v5 || self.owed.contains(&owed) {
                            self.owe(&Owed::PubRec(rec.pkid, granted))?;
                        } else {
                            self.owe(&Owed::PubRec(rec.pkid, false))?;
                        }
                    }
                    (Packet::PubComp(comp, _), _) => {
                        prop_assert_eq!(comp.reason, PubCompReason::Success);
                        self.owe(&Owed::PubComp(comp.pkid))?;
                    }
                    (Packet::PubRel(rel, _), _) => {
                        self.owe(&Owed::PubRel(rel.pkid))?;
                        let entry = self.inflight.get_mut(&rel.pkid);
                        prop_assert!(
                            entry
                                .as_ref()
                                .is_some_and(|(_, _, stage)| *stage == Stage::Received),
                            "PUBREL {} for {:?}",
                            rel.pkid,
                            entry
                        );
                        if let Some((_, _, stage)) = entry {
                            *stage = Stage::Released;
                        }
                    }
                    (Packet::Publish(publish, _), Some(header)) => {
                        let topic = std::str::from_utf8(&publish.topic).unwrap().to_owned();
                        let msg: u64 = std::str::from_utf8(&publish.payload)
                            .ok()
                            .and_then(|p| p.strip_prefix('m'))
                            .and_then(|m| m.parse().ok())
                            .unwrap();
                        let qos = QoS::level(header.qos);
                        prop_assert!(
                            self.grants.may_receive(&topic, QoS::AtMostOnce),
                            "message {} on {:?} delivered outside the grants {:?}",
                            msg,
                            topic,
                            self.grants
                        );
                        // Each copy is either the one for the
                        // non-shared subscriptions or one for a shared
                        // group, at the QoS that copy is due; none
                        // comes twice (no re-sends without a
                        // reconnect, MQTT 5 §4.4).
                        let copies = self.delivered.entry(msg).or_default();
                        copies.push(qos);
                        let mut due: Vec<u8> =
                            self.expected.get(&msg).copied().into_iter().collect();
                        due.extend(self.shared_offers.get(&msg).into_iter().flatten());
                        let fits = copies.iter().all(|q| {
                            copies.iter().filter(|c| *c == q).count()
                                <= due.iter().filter(|d| *d == q).count()
                        });
                        prop_assert!(
                            fits,
                            "message {} on {:?}: copies at QoS {:?}, due {:?}; subscriptions {:?}",
                            msg,
                            topic,
                            copies,
                            due,
                            self.subscriptions
                        );
                        if qos > 0 {
                            prop_assert!(header.pkid != 0);
                            let clash = self
                                .inflight
                                .insert(header.pkid, (msg, qos, Stage::Published));
                            prop_assert!(
                                clash.is_none(),
                                "packet id {} in use by {:?}",
                                header.pkid,
                                clash
                            );
                        }
                    }
                    other => prop_assert!(false, "unexpected answer {:?}", other),
                }
            }
            Ok(count)
        }
    }

    impl World {
        fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
            match op {
                Op::Subscribe { client, filters } => {
                    let peer = &mut self.peers[*client];
                    let pkid = peer.pkid();
                    let requested: Vec<(String, u8)> = filters
                        .iter()
                        .map(|&(f, qos, group)| (requested(f, group), qos))
                        .collect();
                    let mut codes = Vec::new();
                    for (filter, qos) in &requested {
                        if peer.grants.may_subscribe(filter, QoS::AtMostOnce) {
                            peer.subscriptions.insert(filter.clone(), *qos);
                            codes.push(Some(*qos));
                        } else {
                            codes.push(None);
                        }
                    }
                    peer.owed.push(Owed::SubAck(pkid, codes));
                    let requested: Vec<(&str, u8)> = requested
                        .iter()
                        .map(|(f, qos)| (f.as_str(), *qos))
                        .collect();
                    let bytes = peer.h.subscribe(pkid, &requested);
                    peer.send(&bytes)?;
                }
                Op::Unsubscribe {
                    client,
                    filter,
                    group,
                } => {
                    let peer = &mut self.peers[*client];
                    let pkid = peer.pkid();
                    let mut body = pkid.to_be_bytes().to_vec();
                    if peer.h.version.is_v5() {
                        body.push(0);
                    }
                    let filter = requested(*filter, *group);
                    string(&filter, &mut body);
                    peer.subscriptions.remove(&filter);
                    peer.owed.push(Owed::UnsubAck(pkid));
                    peer.send(&frame(0xA2, &body))?;
                }
                Op::Publish { client, topic, qos } => {
                    let msg = self.next_msg;
                    self.next_msg += 1;
                    let name = TOPICS[*topic];
                    let peer = &self.peers[*client];
                    let granted = peer.grants.may_publish(name, QoS::AtMostOnce, false);
                    // Stay within the receive maximum for QoS 2.
                    let qos =
                        if *qos == 2 && peer.awaiting_release.len() >= usize::from(MAX_INFLIGHT) {
                            1
                        } else {
                            *qos
                        };
                    if granted {
                        // Shared groups are keyed by name and filter.
                        let mut groups: BTreeMap<(String, String), Vec<(usize, u8)>> =
                            BTreeMap::new();
                        for (i, other) in self.peers.iter_mut().enumerate() {
                            let mut best = None;
                            for (filter, &sub_qos) in &other.subscriptions {
                                let parsed = crate::mqtt::RequestedFilter::parse(filter).unwrap();
                                if !TopicFilter::parse(parsed.filter)
                                    .unwrap()
                                    .matches_topic(name)
                                {
                                    continue;
                                }
                                match parsed.group {
                                    Some(group) => groups
                                        .entry((group.to_owned(), parsed.filter.to_owned()))
                                        .or_default()
                                        .push((i, sub_qos.min(qos))),
                                    None => best = best.max(Some(sub_qos.min(qos))),
                                }
                            }
                            if let Some(best) = best {
                                other.expected.insert(msg, best);
                            }
                        }
                        for members in groups.into_values() {
                            for &(i, qos) in &members {
                                self.peers[i]
                                    .shared_offers
                                    .entry(msg)
                                    .or_default()
                                    .push(qos);
                            }
                            self.groups.push(GroupCopy { msg, members });
                        }
                    }
                    let peer = &mut self.peers[*client];
                    let pkid = if qos > 0 { peer.pkid() } else { 0 };
                    let version = peer.h.version;
                    match qos {
                        0 => {}
                        1 => peer.owed.push(Owed::PubAck(pkid, granted)),
                        _ => {
                            peer.owed.push(Owed::PubRec(pkid, granted));
                            // An MQTT 5 client learns from the PUBREC's
                            // reason that the exchange is over.
                            if granted || !version.is_v5() {
                                peer.awaiting_release.insert(pkid, (*topic, msg, granted));
                            }
                        }
                    }
                    peer.send(&publish_bytes(version, name, qos, pkid, false, msg))?;
                }
                Op::Resend { client, pick } => {
                    let peer = &mut self.peers[*client];
                    if peer.awaiting_release.is_empty() {
                        return Ok(());
                    }
                    let &(&pkid, &(topic, msg, granted)) =
                        pick.get(&peer.awaiting_release.iter().collect::<Vec<_>>()[..]);
                    peer.owed.push(Owed::PubRec(pkid, granted));
                    let bytes = publish_bytes(peer.h.version, TOPICS[topic], 2, pkid, true, msg);
                    peer.send(&bytes)?;
                }
                Op::Release { client, pick } => {
                    let peer = &mut self.peers[*client];
                    if peer.awaiting_release.is_empty() {
                        return Ok(());
                    }
                    let pkid =
                        *pick.get(&peer.awaiting_release.keys().copied().collect::<Vec<_>>());
                    peer.awaiting_release.remove(&pkid);
                    peer.owed.push(Owed::PubComp(pkid));
                    peer.send(&ack_bytes(0x62, pkid))?;
                }
                Op::Ack { client, pick } => {
                    let peer = &mut self.peers[*client];
                    if peer.inflight.is_empty() {
                        return Ok(());
                    }
                    let pkid = *pick.get(&peer.inflight.keys().copied().collect::<Vec<_>>());
                    peer.ack(pkid)?;
                }
            }
            self.settle()
        }

        /// Every client reads what it was sent until nothing more
        /// comes; nothing is owed then.
        fn settle(&mut self) -> Result<(), TestCaseError> {
            loop {
                let mut read = 0;
                for peer in &mut self.peers {
                    read += peer.check_answers()?;
                }
                if read == 0 {
                    break;
                }
            }
            for (i, peer) in self.peers.iter().enumerate() {
                prop_assert!(
                    peer.owed.is_empty(),
                    "client {} still owed {:?}",
                    i,
                    peer.owed
                );
            }
            Ok(())
        }

        /// Completes every exchange, then checks that each message
        /// reached every client it was owed to.
        fn drain(&mut self) -> Result<(), TestCaseError> {
            for _ in 0..1000 {
                let mut sent = false;
                for peer in &mut self.peers {
                    let ids: Vec<u16> = peer.inflight.keys().copied().collect();
                    for pkid in ids {
                        peer.ack(pkid)?;
                        sent = true;
                    }
                    let releases: Vec<u16> = peer.awaiting_release.keys().copied().collect();
                    for pkid in releases {
                        peer.awaiting_release.remove(&pkid);
                        peer.owed.push(Owed::PubComp(pkid));
                        peer.send(&ack_bytes(0x62, pkid))?;
                        sent = true;
                    }
                }
                self.settle()?;
                if !sent {
                    break;
                }
            }
            for (i, peer) in self.peers.iter().enumerate() {
                prop_assert!(
                    peer.inflight.is_empty(),
                    "client {}: {:?}",
                    i,
                    peer.inflight
                );
            }
            // Every copy due arrived: the non-shared ones, and one per
            // shared group to one of its members.
            let mut left: Vec<BTreeMap<u64, Vec<u8>>> =
                self.peers.iter().map(|p| p.delivered.clone()).collect();
            for (i, peer) in self.peers.iter().enumerate() {
                for (&msg, &qos) in &peer.expected {
                    let copies = left[i].entry(msg).or_default();
                    let at = copies.iter().position(|&c| c == qos);
                    prop_assert!(
                        at.is_some(),
                        "client {} never got message {} at QoS {}",
                        i,
                        msg,
                        qos
                    );
                    copies.remove(at.unwrap());
                }
            }
            let groups: Vec<&GroupCopy> = self.groups.iter().collect();
            prop_assert!(
                assign(&groups, &mut left),
                "shared copies {:?} do not make one per group {:?}",
                left,
                self.groups
            );
            prop_assert!(
                left.iter().all(|l| l.values().all(Vec::is_empty)),
                "copies beyond those due: {:?}",
                left
            );
            Ok(())
        }
    }

    /// Whether each group can be given exactly one of the copies left,
    /// to one of its members at that member's QoS.
    fn assign(groups: &[&GroupCopy], left: &mut [BTreeMap<u64, Vec<u8>>]) -> bool {
        let Some((group, rest)) = groups.split_first() else {
            return true;
        };
        for &(i, qos) in &group.members {
            let copies = left[i].entry(group.msg).or_default();
            if let Some(at) = copies.iter().position(|&c| c == qos) {
                copies.remove(at);
                if assign(rest, left) {
                    return true;
                }
                left[i].entry(group.msg).or_default().push(qos);
            }
        }
        false
    }

    impl Peer {
        /// The client's next step for the delivery `pkid`.
        fn ack(&mut self, pkid: u16) -> Result<(), TestCaseError> {
            let (msg, qos, stage) = self.inflight[&pkid];
            match (qos, stage) {
                (1, Stage::Published) => {
                    self.inflight.remove(&pkid);
                    self.send(&ack_bytes(0x40, pkid))
                }
                (_, Stage::Published) => {
                    self.inflight.insert(pkid, (msg, qos, Stage::Received));
                    self.owed.push(Owed::PubRel(pkid));
                    self.send(&ack_bytes(0x50, pkid))
                }
                (_, Stage::Released) => {
                    self.inflight.remove(&pkid);
                    self.send(&ack_bytes(0x70, pkid))
                }
                // Settled before the next step: the PUBREL came.
                (_, Stage::Received) => {
                    prop_assert!(false, "no PUBREL for {}", pkid);
                    Ok(())
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn packet_sequences_respect_grants_qos_and_exchanges(
            clients in prop::collection::vec(
                (version(), prop::sample::subsequence(FILTERS.to_vec(), 2..=6)),
                1..=CLIENTS,
            ),
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let settings = SessionSettings {
                max_inflight: MAX_INFLIGHT,
                ..SessionSettings::default()
            };
            let broker = Broker::new(&settings, 64 * 1024 * 1024, Arc::new(MemoryStore::new()));
            let peers = clients
                .iter()
                .enumerate()
                .map(|(i, (version, grants))| connect(&broker, &settings, i, *version, grants))
                .collect();
            let mut world = World {
                peers,
                next_msg: 0,
                groups: Vec::new(),
            };
            for op in &ops {
                let mut op = op.clone();
                // Ops name a client among those connected.
                match &mut op {
                    Op::Subscribe { client, .. }
                    | Op::Unsubscribe { client, .. }
                    | Op::Publish { client, .. }
                    | Op::Resend { client, .. }
                    | Op::Release { client, .. }
                    | Op::Ack { client, .. } => *client %= clients.len(),
                }
                world.apply(&op)?;
            }
            world.drain()?;
        }
    }
}

#[test]
fn a_packet_id_of_zero_ends_the_session() {
    for (first, packet) in [
        (0x40, "PUBACK"),
        (0x50, "PUBREC"),
        (0x62, "PUBREL"),
        (0x70, "PUBCOMP"),
    ] {
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        let ending = h.send(&[first, 0x02, 0x00, 0x00]);
        assert!(
            matches!(&ending, Some(Ending::Protocol(ProtocolViolation::PacketIdZero(p))) if *p == packet)
        );
        assert_eq!(
            violation(ending),
            (DisconnectReasonCode::ProtocolError, "packet_id_zero")
        );
    }
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    let subscribe = h.subscribe(0, &[("dev/x", 1)]);
    assert!(matches!(
        h.send(&subscribe),
        Some(Ending::Protocol(ProtocolViolation::PacketIdZero(
            "SUBSCRIBE"
        )))
    ));
    // rumqttd's decoder refuses it on a PUBLISH already; it parsed, so it
    // is the same Protocol Error (MQTT 5 §1.2), not a malformed packet.
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    let publish = h.publish("dev/x", 1, 0, &[]);
    assert_eq!(
        violation(h.send(&publish)),
        (DisconnectReasonCode::ProtocolError, "packet_id_zero")
    );
}

#[test]
fn subscribe_and_unsubscribe_without_filters_are_protocol_errors() {
    for version in [Version::V3_1_1, Version::V5] {
        let mut h = client(version, &["dev/#"]);
        let subscribe = h.subscribe(1, &[]);
        assert_eq!(
            violation(h.send(&subscribe)),
            (
                DisconnectReasonCode::ProtocolError,
                "subscribe_without_filters"
            )
        );
        let mut h = client(version, &["dev/#"]);
        let mut body = 1u16.to_be_bytes().to_vec();
        if version.is_v5() {
            body.push(0);
        }
        assert_eq!(
            violation(h.send(&frame(0xA2, &body))),
            (
                DisconnectReasonCode::ProtocolError,
                "unsubscribe_without_filters"
            )
        );
        assert!(h.answers().is_empty(), "no UNSUBACK");
    }
}

#[test]
fn forbidden_subscription_options_are_protocol_errors_in_mqtt_5() {
    for options in [0x03, 0x30] {
        let mut h = client(Version::V5, &["dev/#"]);
        let subscribe = h.subscribe(1, &[("dev/x", options)]);
        assert_eq!(
            violation(h.send(&subscribe)),
            (DisconnectReasonCode::ProtocolError, "subscription_options"),
            "options {options:#04x}"
        );
    }
    // MQTT 3.1.1 [MQTT-3.8.3-4] calls a QoS of 3 malformed.
    let mut h = client(Version::V3_1_1, &["dev/#"]);
    let subscribe = h.subscribe(1, &[("dev/x", 0x03)]);
    assert_eq!(
        violation(h.send(&subscribe)),
        (DisconnectReasonCode::MalformedPacket, "malformed_packet")
    );
}

#[test]
fn publish_topics_break_the_rule_they_break() {
    for (topic, expected) in [
        (
            &b""[..],
            (DisconnectReasonCode::ProtocolError, "topic_empty"),
        ),
        (
            b"dev/\0",
            (DisconnectReasonCode::MalformedPacket, "topic_nul"),
        ),
        (
            b"dev/\xff",
            (DisconnectReasonCode::MalformedPacket, "topic_not_utf8"),
        ),
        (
            b"dev/#",
            (DisconnectReasonCode::TopicNameInvalid, "topic_name_invalid"),
        ),
    ] {
        let mut h = client(Version::V5, &["#"]);
        let mut body = u16::try_from(topic.len()).unwrap().to_be_bytes().to_vec();
        body.extend_from_slice(topic);
        body.push(0);
        assert_eq!(
            violation(h.send(&frame(0x30, &body))),
            expected,
            "{topic:?}"
        );
    }
}
