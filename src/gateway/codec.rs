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
//!   PINGRESP, AUTH, reserved) are refused from the fixed header, before
//!   decoding: `V5::read_mut` reaches `unreachable!()` on some of them.
//! - Decoding runs under `catch_unwind`, so a codec bug met by one client's
//!   bytes becomes a protocol error for that client, not a crash.
//! - Encoding for 3.1/3.1.1 clients strips MQTT 5 properties (`V4::write`
//!   panics on them) and maps reason codes to the few 3.1.1 knows.
//! - PUBLISH QoS and packet id are crate-private on rumqttd's `Publish`, so
//!   they are read from the wire form and returned beside the packet.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, DisconnectProperties, Packet, Protocol, QoS, SubAck,
    SubscribeReasonCode, v4::V4, v5::V5,
};

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

/// The MQTT protocol a client speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V3_1,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V3_1_1,
    /// MQTT 5 (`MQTT`, level 5).
    V5,
}

impl Version {
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V3_1 => "3.1",
            Version::V3_1_1 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

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
}

/// One decoded client packet.
#[derive(Debug)]
pub struct Inbound {
    pub packet: Packet,
    /// Present for PUBLISH only.
    pub publish: Option<PublishHeader>,
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

/// The fixed header of the next frame, once it is complete in `buf`:
/// (packet type, header length, total frame length).
fn complete_frame(buf: &[u8], limit: usize) -> Result<Option<(u8, usize, usize)>, CodecError> {
    let Some((len_len, remaining)) = remaining_length(buf)? else {
        return Ok(None);
    };
    let header = 1 + len_len;
    let size = header + remaining;
    if size > limit {
        return Err(CodecError::TooLarge { size, limit });
    }
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some((buf[0] >> 4, header, size)))
}

/// Reads a 2-byte length-prefixed field starting at `at`.
fn mqtt_str(frame: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    frame.get(at + 2..at + 2 + len)
}

/// Looks at the first frame of a connection and decides its protocol
/// version. Returns `None` until the whole CONNECT has arrived.
pub fn sniff_version(buf: &[u8], limit: usize) -> Result<Option<Version>, CodecError> {
    let Some((kind, header, _)) = complete_frame(buf, limit)? else {
        return Ok(None);
    };
    if kind != CONNECT {
        return Err(CodecError::NotConnect(kind));
    }
    let name = mqtt_str(buf, header)
        .ok_or_else(|| CodecError::Malformed("CONNECT without protocol name".into()))?;
    let level = *buf
        .get(header + 2 + name.len())
        .ok_or_else(|| CodecError::Malformed("CONNECT without protocol level".into()))?;
    match (name, level) {
        (b"MQTT", 4) => Ok(Some(Version::V3_1_1)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (b"MQIsdp", 3) => Ok(Some(Version::V3_1)),
        _ => Err(CodecError::UnsupportedProtocol {
            name: String::from_utf8_lossy(name).into_owned(),
            level,
        }),
    }
}

/// Rewrites a complete MQTT 3.1 CONNECT frame at the front of `buf` into the
/// 3.1.1 form (`MQIsdp`/3 becomes `MQTT`/4), which is two bytes shorter.
fn upgrade_v31_connect(buf: &mut BytesMut, header: usize, size: usize) {
    const V31_NAME: usize = 2 + 6 + 1; // length prefix, "MQIsdp", level
    let frame = buf.split_to(size);
    let rest = &frame[header + V31_NAME..];
    let mut out = BytesMut::with_capacity(size + buf.len());
    out.put_u8(frame[0]);
    let mut remaining = rest.len() + 2 + 4 + 1;
    loop {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if remaining == 0 {
            break;
        }
    }
    out.put_slice(b"\x00\x04MQTT\x04");
    out.put_slice(rest);
    out.put_slice(buf);
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
        let Some((kind, header, size)) = complete_frame(buf, self.max_packet_size)? else {
            return Ok(None);
        };
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
        if kind == CONNECT && self.version == Version::V3_1 {
            upgrade_v31_connect(buf, header, size);
        }
        let publish = if kind == PUBLISH {
            Some(publish_header(&buf[..size], header)?)
        } else {
            None
        };
        let limit = self.max_packet_size;
        let decoded = catch_unwind(AssertUnwindSafe(|| match self.version {
            Version::V5 => V5.read_mut(buf, limit),
            Version::V3_1 | Version::V3_1_1 => V4.read_mut(buf, limit),
        }))
        .map_err(|_| CodecError::CodecPanic)?;
        match decoded {
            Ok(packet) => Ok(Some(Inbound { packet, publish })),
            Err(protocol::Error::InsufficientBytes(_)) => Err(CodecError::Malformed(
                "frame shorter than its remaining length".into(),
            )),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        }
    }

    /// Appends `packet` to `out` in this client's protocol version. For a
    /// PUBLISH, returns its QoS and packet id as written.
    pub fn encode(
        &self,
        packet: Packet,
        out: &mut BytesMut,
    ) -> Result<Option<PublishHeader>, CodecError> {
        let start = out.len();
        let is_publish = matches!(packet, Packet::Publish(..));
        match self.version {
            Version::V5 => V5.write(for_v5(packet), out),
            Version::V3_1 | Version::V3_1_1 => V4.write(for_v4(packet), out),
        }
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
        if !is_publish {
            return Ok(None);
        }
        let frame = &out[start..];
        let (len_len, _) = remaining_length(frame)?
            .ok_or_else(|| CodecError::Malformed("encoded PUBLISH is incomplete".into()))?;
        publish_header(frame, 1 + len_len).map(Some)
    }
}

fn publish_header(frame: &[u8], header: usize) -> Result<PublishHeader, CodecError> {
    let qos = match (frame[0] >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(CodecError::Malformed("PUBLISH with QoS 3".into())),
    };
    let pkid = match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce | QoS::ExactlyOnce => {
            let topic = mqtt_str(frame, header)
                .ok_or_else(|| CodecError::Malformed("PUBLISH without topic".into()))?;
            let at = header + 2 + topic.len();
            match frame.get(at..at + 2) {
                Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                _ => return Err(CodecError::Malformed("PUBLISH without packet id".into())),
            }
        }
    };
    Ok(PublishHeader { qos, pkid })
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
        let inbound = codec.decode(&mut buf).unwrap().unwrap();
        match inbound.packet {
            Packet::Connect(connect, ..) => {
                assert_eq!(connect.client_id, "dev1");
                assert_eq!(connect.keep_alive, 30);
                assert!(connect.clean_session);
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        let next = codec.decode(&mut buf).unwrap().unwrap();
        assert!(matches!(next.packet, Packet::PingReq(_)));
        assert!(buf.is_empty());
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
        let inbound = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            inbound.publish,
            Some(PublishHeader {
                qos: QoS::AtLeastOnce,
                pkid: 0x1234
            })
        );
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
