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
//!   by [`super::enhanced`].
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

// Untrusted input (every frame comes from a client, authenticated or not):
// fail with an error, never a panic. Tests are exempt through clippy.toml;
// an exception in this code carries an `#[allow]` saying why it cannot fail.
// See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{Buf, BufMut, BytesMut};
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, DisconnectProperties, Packet, Protocol, SubAck,
    SubscribeReasonCode, v4::V4, v5::V5,
};

use super::enhanced::Auth;
use crate::broker::Properties;
use crate::mqtt::QoS;
use crate::mqtt::Version;

/// Fixed-header packet types (MQTT 3.1.1 §2.2.1, MQTT 5 §2.1.2).
const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const UNSUBSCRIBE: u8 = 10;
const PINGREQ: u8 = 12;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Why a byte stream could not be turned into packets.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("first packet is not CONNECT (packet type {0})")]
    NotConnect(u8),
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("packet type {0} may not be sent by a client")]
    ForbiddenPacketType(u8),
    #[error("packet of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("the MQTT codec panicked on this input")]
    CodecPanic,
}

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

/// The remaining-length field: how many bytes it takes and the value.
/// `None` when more bytes are needed.
fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, value)));
        }
    }
    if buf.len() >= 5 {
        return Err(CodecError::Malformed(
            "remaining length over 4 bytes".into(),
        ));
    }
    Ok(None)
}

/// A complete frame at the front of a buffer.
struct Frame<'a> {
    /// The first byte: the packet type in the high nibble, its flags in the
    /// low one.
    first: u8,
    /// Length of the fixed header (the first byte and the remaining length).
    header: usize,
    /// The whole frame, fixed header included.
    bytes: &'a [u8],
}

impl Frame<'_> {
    fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// The next frame, once it is complete in `buf`.
fn complete_frame(buf: &[u8], limit: usize) -> Result<Option<Frame<'_>>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((len_len, remaining)) = remaining_length(buf)? else {
        return Ok(None);
    };
    let header = 1 + len_len;
    let size = header + remaining;
    if size > limit {
        return Err(CodecError::TooLarge { size, limit });
    }
    let Some(bytes) = buf.get(..size) else {
        return Ok(None);
    };
    Ok(Some(Frame {
        first,
        header,
        bytes,
    }))
}

/// Reads a 2-byte length-prefixed field starting at `at`.
fn mqtt_str(frame: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    frame.get(at + 2..at + 2 + len)
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
        if kind == CONNECT && self.version == Version::V3_1 {
            let (header, size) = (frame.header, frame.bytes.len());
            upgrade_v31_connect(buf, header, size)?;
        }
        let limit = self.max_packet_size;
        let decoded = catch_unwind(AssertUnwindSafe(|| match self.version {
            Version::V5 => V5.read_mut(buf, limit),
            Version::V3_1 | Version::V3_1_1 => V4.read_mut(buf, limit),
        }))
        .map_err(|_| CodecError::CodecPanic)?;
        match decoded {
            Ok(packet) => Ok(Some(Inbound::Packet { packet, publish })),
            Err(protocol::Error::InsufficientBytes(_)) => Err(CodecError::Malformed(
                "frame shorter than its remaining length".into(),
            )),
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

/// Bytes of a variable byte integer (MQTT §1.5.5).
fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(super) fn put_varint(out: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// A length-prefixed string or binary field. Every one written here came
/// from a decoded MQTT field, a validated topic or jwtgate's own short
/// text, so it fits the prefix.
pub(super) fn put_str(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
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
mod tests {
    use super::*;

    fn connect_frame(name: &[u8], level: u8) -> BytesMut {
        let mut body = Vec::new();
        body.extend_from_slice(&(name.len() as u16).to_be_bytes());
        body.extend_from_slice(name);
        body.push(level);
        body.push(0b0000_0010); // clean session
        body.extend_from_slice(&30u16.to_be_bytes());
        body.extend_from_slice(&4u16.to_be_bytes());
        body.extend_from_slice(b"dev1");
        let mut frame = BytesMut::new();
        frame.put_u8(0x10);
        frame.put_u8(body.len() as u8);
        frame.put_slice(&body);
        frame
    }

    /// Issue 9: a 2-byte CONNECT followed by what looks like a 3.1
    /// variable header once panicked, the protocol name being read from
    /// past the frame.
    #[test]
    fn sniffing_reads_only_the_first_frame() {
        let bytes = b"\x10\x00\x00\x06MQIsdp\x03";
        assert!(matches!(
            sniff_version(bytes, 1024),
            Err(CodecError::Malformed(_))
        ));
    }

    /// A second CONNECT inside a 3.1 session is decoded as 3.1 too, and may
    /// carry anything.
    #[test]
    fn a_second_connect_of_a_v31_session_is_malformed_not_a_panic() {
        let codec = Codec::new(Version::V3_1, 1024);
        for bytes in [
            &b"\x10\x00\x00\x06MQIsdp\x03"[..],
            &b"\x10\x02\x00\x06"[..],
            &b"\x10\x09\x00\x06MQIsdp\x04"[..],
            &connect_frame(b"MQTT", 4)[..],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(
                matches!(codec.decode(&mut buf), Err(CodecError::Malformed(_))),
                "{bytes:?}"
            );
        }
        let mut buf = connect_frame(b"MQIsdp", 3);
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(Inbound::Packet {
                packet: Packet::Connect(..),
                ..
            }))
        ));
    }

    #[test]
    fn an_unsupported_protocol_name_is_clipped_for_the_log() {
        let name = b"MQTT\nlevel=ERROR forged line and then some more";
        let Err(CodecError::UnsupportedProtocol { name: shown, .. }) =
            sniff_version(&connect_frame(name, 4), 1024)
        else {
            panic!("not refused as unsupported");
        };
        assert!(!shown.contains('\n'), "{shown:?}");
        assert!(shown.chars().count() <= 17, "{shown:?}");
    }

    #[test]
    fn sniffs_each_version() {
        let v = |name: &[u8], level| sniff_version(&connect_frame(name, level), 1024).unwrap();
        assert_eq!(v(b"MQTT", 4), Some(Version::V3_1_1));
        assert_eq!(v(b"MQTT", 5), Some(Version::V5));
        assert_eq!(v(b"MQIsdp", 3), Some(Version::V3_1));
        assert!(matches!(
            sniff_version(&connect_frame(b"MQTT", 3), 1024),
            Err(CodecError::UnsupportedProtocol { level: 3, .. })
        ));
    }

    #[test]
    fn sniff_waits_for_a_whole_frame() {
        let frame = connect_frame(b"MQTT", 4);
        assert_eq!(sniff_version(&frame[..5], 1024).unwrap(), None);
        assert_eq!(sniff_version(&frame[..1], 1024).unwrap(), None);
    }

    #[test]
    fn mqtt31_connect_decodes_as_311() {
        let mut buf = connect_frame(b"MQIsdp", 3);
        buf.put_slice(&[0xc0, 0x00]); // a PINGREQ right behind it
        let codec = Codec::new(Version::V3_1, 1024);
        let (packet, _) = codec.decode(&mut buf).unwrap().unwrap().into_packet();
        match packet {
            Packet::Connect(connect, ..) => {
                assert_eq!(connect.client_id, "dev1");
                assert_eq!(connect.keep_alive, 30);
                assert!(connect.clean_session);
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        let (next, _) = codec.decode(&mut buf).unwrap().unwrap().into_packet();
        assert!(matches!(next, Packet::PingReq(_)));
        assert!(buf.is_empty());
    }

    #[test]
    fn auth_is_an_mqtt5_packet() {
        let auth = [0xF0u8, 0x08, 0x19, 0x06, 0x15, 0x00, 0x03, b'J', b'W', b'T'];
        let mut buf = BytesMut::from(&auth[..]);
        buf.put_slice(&[0xc0, 0x00]);
        let v5 = Codec::new(Version::V5, 1024);
        let Some(Inbound::Auth(decoded)) = v5.decode(&mut buf).unwrap() else {
            panic!("not an AUTH");
        };
        assert_eq!(decoded.method.as_deref(), Some("JWT"));
        assert_eq!(&buf[..], &[0xc0, 0x00]);
        let mut flagged = BytesMut::from(&[0xF1u8, 0x00][..]);
        assert!(v5.decode(&mut flagged).is_err());
        for old in [Version::V3_1_1, Version::V3_1] {
            let mut buf = BytesMut::from(&auth[..]);
            assert!(matches!(
                Codec::new(old, 1024).decode(&mut buf),
                Err(CodecError::ForbiddenPacketType(15))
            ));
        }
    }

    #[test]
    fn server_only_packets_are_refused_before_decoding() {
        let codec = Codec::new(Version::V5, 1024);
        // CONNACK and UNSUBACK make V5::read_mut reach unreachable!().
        for frame in [
            &[0x20u8, 0x03, 0x00, 0x00, 0x00][..],
            &[0xb0, 0x02, 0x00, 0x01],
        ] {
            let mut buf = BytesMut::from(frame);
            assert!(matches!(
                codec.decode(&mut buf),
                Err(CodecError::ForbiddenPacketType(_))
            ));
        }
    }

    #[test]
    fn publish_header_comes_from_the_wire() {
        // QoS 1 PUBLISH, topic "a/b", pkid 0x1234, payload "x"
        let mut buf =
            BytesMut::from(&[0x32u8, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34, b'x'][..]);
        let codec = Codec::new(Version::V3_1_1, 1024);
        let (_, publish) = codec.decode(&mut buf).unwrap().unwrap().into_packet();
        assert_eq!(
            publish,
            Some(PublishHeader {
                qos: QoS::AtLeastOnce,
                pkid: 0x1234,
                properties_len: 0,
            })
        );
    }

    #[test]
    fn v5_publish_header_has_the_properties_length() {
        // QoS 1 PUBLISH, topic "t", pkid 1, 5 bytes of properties (message
        // expiry interval 60), payload "x".
        let mut buf = BytesMut::from(
            &[
                0x32u8, 0x0c, 0x00, 0x01, b't', 0x00, 0x01, 0x05, 0x02, 0, 0, 0, 60, b'x',
            ][..],
        );
        let codec = Codec::new(Version::V5, 1024);
        let header = codec
            .decode(&mut buf)
            .ok()
            .flatten()
            .and_then(|i| i.into_packet().1);
        assert_eq!(header.map(|h| h.properties_len), Some(5));
    }

    fn decode_v5_publish(
        out: &BytesMut,
    ) -> (
        rumqttd::protocol::Publish,
        Option<rumqttd::protocol::PublishProperties>,
        PublishHeader,
    ) {
        let mut wire = out.clone();
        let codec = Codec::new(Version::V5, 1 << 20);
        let (packet, publish) = codec.decode(&mut wire).unwrap().unwrap().into_packet();
        assert!(wire.is_empty(), "exactly one frame");
        match packet {
            Packet::Publish(p, props) => (p, props, publish.unwrap()),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn encoded_publish_round_trips_through_rumqttd() {
        let properties = Properties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        };
        let publish = OutgoingPublish {
            topic: "sensors/t",
            payload: b"21.5",
            qos: QoS::ExactlyOnce,
            pkid: 513,
            dup: true,
            retain: true,
            properties: Some(&properties),
            expiry: Some(30),
            subscription_ids: &[7, 300],
            topic_alias: Some(3),
        };
        let codec = Codec::new(Version::V5, 1 << 20);
        let mut out = BytesMut::new();
        codec.encode_publish(&publish, &mut out);
        assert_eq!(out.len(), codec.publish_size(&publish));
        let (decoded, props, header) = decode_v5_publish(&out);
        assert_eq!(&decoded.topic[..], b"sensors/t");
        assert_eq!(&decoded.payload[..], b"21.5");
        assert!(decoded.retain);
        assert_eq!((header.qos, header.pkid), (QoS::ExactlyOnce, 513));
        assert_eq!(out[0] & 0x08, 0x08, "DUP");
        let props = props.unwrap();
        assert_eq!(props.payload_format_indicator, Some(1));
        assert_eq!(props.message_expiry_interval, Some(30));
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.response_topic.as_deref(), Some("reply/here"));
        assert_eq!(props.correlation_data.as_deref(), Some(&b"\x00\x01"[..]));
        assert_eq!(props.user_properties, properties.user_properties);
        assert_eq!(props.subscription_identifiers, vec![7, 300]);
        assert_eq!(props.topic_alias, Some(3));

        // The same message to a 3.1.1 client: no properties at all.
        let v4 = Codec::new(Version::V3_1_1, 1 << 20);
        let mut out = BytesMut::new();
        let plain = OutgoingPublish {
            qos: QoS::AtMostOnce,
            pkid: 0,
            dup: false,
            topic_alias: None,
            ..publish
        };
        v4.encode_publish(&plain, &mut out);
        assert_eq!(out.len(), v4.publish_size(&plain));
        assert_eq!(&out[..], b"\x31\x0f\x00\x09sensors/t21.5");
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let codec = Codec::new(Version::V3_1_1, 1024);
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x03][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { limit: 1024, .. })
        ));
    }

    #[test]
    fn v4_encoding_strips_v5_only_parts() {
        let codec = Codec::new(Version::V3_1_1, 1024);
        let mut out = BytesMut::new();
        let ack = SubAck {
            pkid: 7,
            return_codes: vec![
                SubscribeReasonCode::QoS1,
                SubscribeReasonCode::NotAuthorized,
            ],
        };
        let props = rumqttd::protocol::SubAckProperties {
            reason_string: Some("v5 only".into()),
            user_properties: vec![],
        };
        codec
            .encode(Packet::SubAck(ack, Some(props)), &mut out)
            .unwrap();
        assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x07, 0x01, 0x80]);
    }

    #[test]
    fn v5_disconnect_carries_its_reason_code() {
        let codec = Codec::new(Version::V5, 1024);
        let mut out = BytesMut::new();
        let disconnect = rumqttd::protocol::Disconnect {
            reason_code: rumqttd::protocol::DisconnectReasonCode::KeepAliveTimeout,
        };
        codec
            .encode(Packet::Disconnect(disconnect, None), &mut out)
            .unwrap();
        // Decoding what was written gives the reason back, with nothing left.
        let mut wire = out.clone();
        let decoded = V5.read_mut(&mut wire, 1024).unwrap();
        assert!(wire.is_empty());
        match decoded {
            Packet::Disconnect(d, _) => assert_eq!(
                d.reason_code,
                rumqttd::protocol::DisconnectReasonCode::KeepAliveTimeout
            ),
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    #[test]
    fn garbage_never_panics() {
        let codec = Codec::new(Version::V5, 1 << 16);
        for seed in 0u32..2000 {
            let mut bytes = Vec::new();
            let mut x = seed.wrapping_mul(2_654_435_761);
            for _ in 0..(seed % 40) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                bytes.push(x as u8);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = codec.decode(&mut buf);
        }
    }
}
