//! MQTT framing for one connection, on top of rumqttd's public codec.
//!
//! rumqttd's `V4`/`V5` codecs do the byte-level work, but they were written
//! for rumqttd's own listeners and have sharp edges when they face arbitrary
//! clients. This module is the guard around them:
//!
//! - The protocol version is decided once, from the CONNECT frame. MQTT 3.1
//!   (`MQIsdp`, level 3) is 3.1.1 on the wire except for that header, so its
//!   CONNECT is rewritten to `MQTT`/4 and the rest of the session uses `V4`.
//! - Packet types a client must never send (CONNACK, SUBACK, UNSUBACK,
//!   PINGRESP, reserved, and AUTH before MQTT 5) are refused from the fixed
//!   header, before decoding: `V5::read_mut` reaches `unreachable!()` on
//!   some of them. MQTT 5's AUTH, which rumqttd does not know, is decoded
//!   by [`auth`].
//! - Decoding runs under `catch_unwind`, so a codec bug met by one client's
//!   bytes becomes a protocol error for that client, not a crash.
//! - Encoding for 3.1/3.1.1 clients strips MQTT 5 properties (`V4::write`
//!   panics on them) and maps reason codes to the few 3.1.1 knows.
//! - PUBLISH QoS and packet id are crate-private on rumqttd's `Publish`, so
//!   they are read from the wire form and returned beside the packet, and
//!   PUBLISH packets to clients are written here ([`Codec::encode_publish`]):
//!   rumqttd cannot build one with a QoS, and writing it directly from the
//!   routing core's message lets each subscriber get its own packet id,
//!   subscription identifiers and remaining expiry without copying the
//!   message into rumqttd's types first.
//!
//! - Rules of a packet's form that rumqttd's decoder does not check (a
//!   property given twice, reserved bits, DUP on QoS 0...) are checked on
//!   the frame before it decodes it, in `rules` and `properties`.
//!
//! The varints, strings and fixed-header reading that this module and
//! [`auth`] both build on are in `primitives`.

// Untrusted input (every frame comes from a client, authenticated or not):
// fail with an error, never a panic, here and in every file below. Tests are
// exempt through clippy.toml; an exception in this code carries an
// `#[allow]` saying why it cannot fail. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub(super) mod auth;
mod primitives;
mod properties;
mod rules;

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{Buf, BufMut, BytesMut};
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, DisconnectProperties, Packet, Protocol, SubAck,
    SubscribeReasonCode, v4::V4, v5::V5,
};

use crate::broker::Properties;
use crate::mqtt::QoS;
use crate::mqtt::Version;
use auth::Auth;
use primitives::{
    AUTH, CONNECT, DISCONNECT, Frame, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBSCRIBE,
    UNSUBSCRIBE, complete_frame, mqtt_str, put_str, put_varint, remaining_length, varint_len,
};

pub use primitives::{CodecError, PropertyAt};

/// What a PUBLISH carries on the wire that rumqttd keeps private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHeader {
    pub qos: QoS,
    pub pkid: u16,
    /// Bytes of MQTT 5 properties (0 for 3.1/3.1.1).
    pub properties_len: usize,
}

/// One decoded client packet.
// AUTH is rare and small; boxing the common case for it would cost an
// allocation per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Inbound {
    /// A packet rumqttd's codec knows.
    Packet {
        packet: Packet,
        /// Present for PUBLISH only.
        publish: Option<PublishHeader>,
    },
    /// An MQTT 5 AUTH, which it does not.
    Auth(Auth),
}

#[cfg(test)]
impl Inbound {
    /// The packet rumqttd decoded; panics on an AUTH.
    pub fn into_packet(self) -> (Packet, Option<PublishHeader>) {
        match self {
            Inbound::Packet { packet, publish } => (packet, publish),
            Inbound::Auth(auth) => panic!("expected a packet, got {auth:?}"),
        }
    }
}

/// Looks at the first frame of a connection and decides its protocol
/// version. Returns `None` until the whole CONNECT has arrived.
///
/// Only the first frame is looked at: bytes behind it (the client's next
/// packets) never stand in for a field the CONNECT lacks.
pub fn sniff_version(buf: &[u8], limit: usize) -> Result<Option<Version>, CodecError> {
    let Some(frame) = complete_frame(buf, limit)? else {
        return Ok(None);
    };
    if frame.kind() != CONNECT {
        return Err(CodecError::NotConnect(frame.kind()));
    }
    let name = mqtt_str(frame.bytes, frame.header)
        .ok_or_else(|| CodecError::Malformed("CONNECT without protocol name".into()))?;
    let level = *frame
        .bytes
        .get(frame.header + 2 + name.len())
        .ok_or_else(|| CodecError::Malformed("CONNECT without protocol level".into()))?;
    match (name, level) {
        (b"MQTT", 4) => Ok(Some(Version::V3_1_1)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (b"MQIsdp", 3) => Ok(Some(Version::V3_1)),
        _ => Err(CodecError::UnsupportedProtocol {
            name: shown_protocol_name(name),
            level,
        }),
    }
}

/// A protocol name as the log may show it: a client chose these bytes, so
/// they are clipped and stripped of control characters (a newline would
/// forge a log line).
fn shown_protocol_name(name: &[u8]) -> String {
    const SHOWN: usize = 16;
    let mut shown: String = String::from_utf8_lossy(name.get(..SHOWN).unwrap_or(name))
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if name.len() > SHOWN {
        shown.push('…');
    }
    shown
}

/// The variable header of an MQTT 3.1 CONNECT: length prefix, `MQIsdp`,
/// level 3.
const V31_NAME: &[u8] = b"\x00\x06MQIsdp\x03";

/// Rewrites a complete MQTT 3.1 CONNECT frame at the front of `buf` into the
/// 3.1.1 form (`MQIsdp`/3 becomes `MQTT`/4), which is two bytes shorter.
/// A frame that does not start like a 3.1 CONNECT (a second CONNECT inside
/// a 3.1 session may say anything) is malformed.
fn upgrade_v31_connect(buf: &mut BytesMut, header: usize, size: usize) -> Result<(), CodecError> {
    let not_v31 =
        || CodecError::Malformed("CONNECT of an MQTT 3.1 session is not MQIsdp level 3".into());
    // `header..size` is a frame complete in `buf`, so all three are there.
    let (Some(&first), Some(variable), Some(after)) =
        (buf.first(), buf.get(header..size), buf.get(size..))
    else {
        return Err(not_v31());
    };
    let rest = variable.strip_prefix(V31_NAME).ok_or_else(not_v31)?;
    let mut out = BytesMut::with_capacity(buf.len());
    out.put_u8(first);
    put_varint(&mut out, rest.len() + 2 + 4 + 1);
    out.put_slice(b"\x00\x04MQTT\x04");
    out.put_slice(rest);
    out.put_slice(after);
    *buf = out;
    Ok(())
}

/// An MQTT 5 DISCONNECT may end after its reason code (§3.14.2.2.1: "If
/// the Remaining Length is less than 2, a value of 0 is used"), which
/// rumqttd 0.20 reads as malformed: a device's normal DISCONNECT would
/// end its connection as a protocol error and publish its will. The
/// 3-byte frame at the front of `buf` becomes the same DISCONNECT with an
/// empty property length.
fn give_disconnect_its_property_length(buf: &mut BytesMut, reason: u8) {
    let mut out = BytesMut::with_capacity(buf.len() + 1);
    out.put_slice(&[DISCONNECT << 4, 2, reason, 0]);
    out.put_slice(buf.get(3..).unwrap_or_default());
    *buf = out;
}

/// The per-connection codec, once the version is known.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    version: Version,
    max_packet_size: usize,
}

impl Codec {
    pub fn new(version: Version, max_packet_size: usize) -> Codec {
        Codec {
            version,
            max_packet_size,
        }
    }

    /// Takes the next complete packet off the front of `buf`, or returns
    /// `None` when more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let Some(frame) = complete_frame(buf, self.max_packet_size)? else {
            return Ok(None);
        };
        let kind = frame.kind();
        if kind == AUTH && self.version.is_v5() {
            if frame.first & 0x0F != 0 {
                return Err(CodecError::Malformed("AUTH with flags set".into()));
            }
            let auth = Auth::decode(frame.bytes.get(frame.header..).unwrap_or_default())?;
            let size = frame.bytes.len();
            buf.advance(size);
            return Ok(Some(Inbound::Auth(auth)));
        }
        if !matches!(
            kind,
            CONNECT
                | PUBLISH
                | PUBACK
                | PUBREC
                | PUBREL
                | PUBCOMP
                | SUBSCRIBE
                | UNSUBSCRIBE
                | PINGREQ
                | DISCONNECT
        ) {
            return Err(CodecError::ForbiddenPacketType(kind));
        }
        let publish = if kind == PUBLISH {
            Some(publish_header(&frame, self.version.is_v5())?)
        } else {
            None
        };
        // What rumqttd's decoder would let through or lose: properties
        // given twice, reserved bits and flags (`rules`).
        rules::check(&frame, self.version.is_v5())?;
        let short_disconnect = match frame.bytes.get(frame.header..) {
            Some(&[reason]) if kind == DISCONNECT && self.version.is_v5() => Some(reason),
            _ => None,
        };
        if kind == CONNECT && self.version == Version::V3_1 {
            let (header, size) = (frame.header, frame.bytes.len());
            upgrade_v31_connect(buf, header, size)?;
        }
        if let Some(reason) = short_disconnect {
            give_disconnect_its_property_length(buf, reason);
        }
        let limit = self.max_packet_size;
        let decoded = catch_unwind(AssertUnwindSafe(|| match self.version {
            Version::V5 => V5.read_mut(buf, limit),
            Version::V3_1 | Version::V3_1_1 => V4.read_mut(buf, limit),
        }))
        .map_err(|_| CodecError::CodecPanic)?;
        // rumqttd's decoder also refuses packets that parse but break a
        // rule; those are Protocol Errors (MQTT 5 §1.2), not malformed.
        match decoded {
            Ok(packet) => Ok(Some(Inbound::Packet { packet, publish })),
            Err(protocol::Error::InsufficientBytes(_)) => Err(CodecError::Malformed(
                "frame shorter than its remaining length".into(),
            )),
            Err(protocol::Error::PacketIdZero) => Err(CodecError::PacketIdZero),
            Err(protocol::Error::EmptySubscription) => Err(CodecError::SubscribeWithoutFilters),
            // MQTT 3.1.1 [MQTT-3.8.3-4] calls these malformed.
            Err(protocol::Error::InvalidQoS(3)) if kind == SUBSCRIBE && self.version.is_v5() => {
                Err(CodecError::SubscriptionOptions("Maximum QoS 3"))
            }
            Err(protocol::Error::InvalidRetainForwardRule(_)) if self.version.is_v5() => {
                Err(CodecError::SubscriptionOptions("Retain Handling 3"))
            }
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        }
    }

    /// Appends `packet` (anything but a PUBLISH, see
    /// [`Codec::encode_publish`]) to `out` in this client's protocol
    /// version.
    pub fn encode(&self, packet: Packet, out: &mut BytesMut) -> Result<(), CodecError> {
        match self.version {
            Version::V5 => V5.write(for_v5(packet), out),
            Version::V3_1 | Version::V3_1_1 => V4.write(for_v4(packet), out),
        }
        .map(drop)
        .map_err(|e| CodecError::Malformed(e.to_string()))
    }

    /// The size of `publish` on the wire for this client, fixed header
    /// included: what a client's maximum packet size is compared with.
    pub fn publish_size(&self, publish: &OutgoingPublish<'_>) -> usize {
        let remaining = self.publish_remaining(publish);
        1 + varint_len(remaining) + remaining
    }

    fn publish_remaining(&self, publish: &OutgoingPublish<'_>) -> usize {
        let mut len = 2 + publish.topic.len() + publish.payload.len();
        if publish.qos != QoS::AtMostOnce {
            len += 2;
        }
        if self.version.is_v5() {
            let properties = publish.properties_len();
            len += varint_len(properties) + properties;
        }
        len
    }

    /// Appends a PUBLISH to `out`.
    pub fn encode_publish(&self, publish: &OutgoingPublish<'_>, out: &mut BytesMut) {
        let remaining = self.publish_remaining(publish);
        out.reserve(1 + varint_len(remaining) + remaining);
        out.put_u8(
            (PUBLISH << 4)
                | (u8::from(publish.dup) << 3)
                | ((publish.qos as u8) << 1)
                | u8::from(publish.retain),
        );
        put_varint(out, remaining);
        put_str(out, publish.topic.as_bytes());
        if publish.qos != QoS::AtMostOnce {
            out.put_u16(publish.pkid);
        }
        if self.version.is_v5() {
            put_varint(out, publish.properties_len());
            publish.put_properties(out);
        }
        out.put_slice(publish.payload);
    }
}

/// A PUBLISH to one client, borrowed from the routing core's message.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPublish<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub dup: bool,
    pub retain: bool,
    pub properties: Option<&'a Properties>,
    /// Message expiry interval left, in seconds.
    pub expiry: Option<u32>,
    pub subscription_ids: &'a [u32],
    /// A topic alias for the client (MQTT 5); `topic` is then empty when
    /// the client knows the alias already.
    pub topic_alias: Option<u16>,
}

// MQTT 5 property identifiers of a PUBLISH (§3.3.2.3).
const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const TOPIC_ALIAS: u8 = 0x23;
const USER_PROPERTY: u8 = 0x26;

impl OutgoingPublish<'_> {
    fn properties_len(&self) -> usize {
        let field = |len: Option<usize>| len.map_or(0, |len| 1 + 2 + len);
        let mut len = self.expiry.map_or(0, |_| 1 + 4) + self.topic_alias.map_or(0, |_| 1 + 2);
        len += self
            .subscription_ids
            .iter()
            .map(|&id| 1 + varint_len(id as usize))
            .sum::<usize>();
        if let Some(p) = self.properties {
            len += p.payload_format_indicator.map_or(0, |_| 1 + 1);
            len += field(p.content_type.as_ref().map(String::len));
            len += field(p.response_topic.as_ref().map(String::len));
            len += field(p.correlation_data.as_ref().map(|d| d.len()));
            len += p
                .user_properties
                .iter()
                .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
                .sum::<usize>();
        }
        len
    }

    fn put_properties(&self, out: &mut BytesMut) {
        if let Some(format) = self.properties.and_then(|p| p.payload_format_indicator) {
            out.put_u8(PAYLOAD_FORMAT_INDICATOR);
            out.put_u8(format);
        }
        if let Some(expiry) = self.expiry {
            out.put_u8(MESSAGE_EXPIRY_INTERVAL);
            out.put_u32(expiry);
        }
        if let Some(alias) = self.topic_alias {
            out.put_u8(TOPIC_ALIAS);
            out.put_u16(alias);
        }
        if let Some(p) = self.properties {
            if let Some(content_type) = &p.content_type {
                out.put_u8(CONTENT_TYPE);
                put_str(out, content_type.as_bytes());
            }
            if let Some(topic) = &p.response_topic {
                out.put_u8(RESPONSE_TOPIC);
                put_str(out, topic.as_bytes());
            }
            if let Some(data) = &p.correlation_data {
                out.put_u8(CORRELATION_DATA);
                put_str(out, data);
            }
        }
        for &id in self.subscription_ids {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(out, id as usize);
        }
        for (key, value) in self.properties.map_or(&[][..], |p| &p.user_properties) {
            out.put_u8(USER_PROPERTY);
            put_str(out, key.as_bytes());
            put_str(out, value.as_bytes());
        }
    }
}

fn publish_header(frame: &Frame<'_>, v5: bool) -> Result<PublishHeader, CodecError> {
    let Frame {
        first,
        header,
        bytes: frame,
    } = *frame;
    let qos = QoS::try_from(i64::from((first >> 1) & 0b11))
        .map_err(|_| CodecError::Malformed("PUBLISH with QoS 3".into()))?;
    let topic = mqtt_str(frame, header)
        .ok_or_else(|| CodecError::Malformed("PUBLISH without topic".into()))?;
    let mut at = header + 2 + topic.len();
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce | QoS::ExactlyOnce => match frame.get(at..at + 2) {
            Some(&[hi, lo]) => {
                at += 2;
                u16::from_be_bytes([hi, lo])
            }
            _ => return Err(CodecError::Malformed("PUBLISH without packet id".into())),
        },
    };
    // The properties length is a variable byte integer, like the remaining
    // length, whose reader skips the one byte before it.
    let properties_len = match at.checked_sub(1).and_then(|start| frame.get(start..)) {
        Some(rest) if v5 => remaining_length(rest)?.map_or(0, |(_, len)| len),
        _ => 0,
    };
    Ok(PublishHeader {
        qos,
        pkid,
        properties_len,
    })
}

/// rumqttd 0.20 mis-encodes an MQTT 5 DISCONNECT that has a reason code
/// but no properties (its remaining length is one byte short), and encodes
/// one with empty properties as a plain "normal disconnection". A reason
/// string makes it encode correctly, so every DISCONNECT carries one.
fn for_v5(packet: Packet) -> Packet {
    match packet {
        Packet::Disconnect(disconnect, properties) => {
            let mut properties = properties.unwrap_or(DisconnectProperties {
                session_expiry_interval: None,
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            });
            if properties.reason_string.is_none() {
                properties.reason_string = Some(format!("{:?}", disconnect.reason_code));
            }
            Packet::Disconnect(disconnect, Some(properties))
        }
        other => other,
    }
}

/// Removes what MQTT 3.1.1 cannot carry, so `V4::write` never meets it.
fn for_v4(packet: Packet) -> Packet {
    match packet {
        Packet::ConnAck(ack, _) => Packet::ConnAck(
            ConnAck {
                session_present: ack.session_present,
                code: v4_connect_code(ack.code),
            },
            None,
        ),
        // PUBLISH is written by `encode_publish`, never by rumqttd.
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(ack, _) => Packet::SubAck(
            SubAck {
                pkid: ack.pkid,
                return_codes: ack.return_codes.into_iter().map(v4_suback_code).collect(),
            },
            None,
        ),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        Packet::Subscribe(p, _) => Packet::Subscribe(p, None),
        Packet::Unsubscribe(p, _) => Packet::Unsubscribe(p, None),
        Packet::Connect(c, _, will, _, login) => Packet::Connect(c, None, will, None, login),
        other @ (Packet::PingReq(_) | Packet::PingResp(_)) => other,
    }
}

/// MQTT 3.1.1 has six CONNACK codes; `V4::write` panics on any other.
fn v4_connect_code(code: ConnectReturnCode) -> ConnectReturnCode {
    use ConnectReturnCode::*;
    match code {
        Success
        | RefusedProtocolVersion
        | ClientIdentifierNotValid
        | ServiceUnavailable
        | BadUserNamePassword
        | NotAuthorized => code,
        UnsupportedProtocolVersion => RefusedProtocolVersion,
        Banned | BadAuthenticationMethod => NotAuthorized,
        ServerUnavailable
        | ServerBusy
        | QuotaExceeded
        | ConnectionRateExceeded
        | UseAnotherServer
        | ServerMoved => ServiceUnavailable,
        _ => NotAuthorized,
    }
}

/// MQTT 3.1.1 SUBACK knows granted QoS or 0x80 failure.
fn v4_suback_code(code: SubscribeReasonCode) -> SubscribeReasonCode {
    match code {
        SubscribeReasonCode::QoS0
        | SubscribeReasonCode::QoS1
        | SubscribeReasonCode::QoS2
        | SubscribeReasonCode::Success(_) => code,
        _ => SubscribeReasonCode::Failure,
    }
}

#[cfg(test)]
mod tests;
