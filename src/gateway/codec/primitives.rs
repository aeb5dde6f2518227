//! The byte-level MQTT primitives the codec and the AUTH packet share:
//! packet types, variable byte integers, length-prefixed strings, the
//! fixed header of a frame, and the error every reader here fails with.
//!
//! They sit below both `codec` and `codec::auth` so that neither has to
//! import the other's internals to read or write a field.

use bytes::{BufMut, BytesMut};

/// Fixed-header packet types (MQTT 3.1.1 §2.2.1, MQTT 5 §2.1.2).
pub(super) const CONNECT: u8 = 1;
pub(super) const PUBLISH: u8 = 3;
pub(super) const PUBACK: u8 = 4;
pub(super) const PUBREC: u8 = 5;
pub(super) const PUBREL: u8 = 6;
pub(super) const PUBCOMP: u8 = 7;
pub(super) const SUBSCRIBE: u8 = 8;
pub(super) const UNSUBSCRIBE: u8 = 10;
pub(super) const PINGREQ: u8 = 12;
pub(super) const DISCONNECT: u8 = 14;
pub(super) const AUTH: u8 = 15;

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
    /// Parsed, but with a packet identifier 0 ([MQTT-2.2.1-3]): a Protocol
    /// Error rather than a malformed packet.
    #[error("packet identifier 0")]
    PacketIdZero,
    /// A SUBSCRIBE without a topic filter ([MQTT-3.8.3-2]).
    #[error("SUBSCRIBE without a topic filter")]
    SubscribeWithoutFilters,
    /// MQTT 5 subscription options with a value the protocol forbids
    /// (§3.8.3.1).
    #[error("subscription options: {0}")]
    SubscriptionOptions(&'static str),
    /// MQTT 5: a property given twice where the section defining it says
    /// "It is a Protocol Error to include [it] more than once" (every
    /// property but User Property, and a server's Subscription
    /// Identifiers). rumqttd's decoder keeps the last copy.
    #[error("{0} more than once")]
    DuplicateProperty(PropertyAt),
    /// MQTT 5: a Payload Format Indicator of neither of the two values its
    /// section defines (0 unspecified bytes, 1 UTF-8): data the protocol
    /// does not allow, so a Protocol Error.
    #[error("{at} of {value}, neither 0 nor 1")]
    PayloadFormatIndicator { at: PropertyAt, value: u8 },
    /// MQTT 3.1.1 [MQTT-3.1.2-22]: "If the User Name Flag is set to 0, the
    /// Password Flag MUST be set to 0" (MQTT 5 allows a password alone).
    #[error("[MQTT-3.1.2-22] CONNECT with a password and no user name")]
    PasswordWithoutUsername,
    #[error("the MQTT codec panicked on this input")]
    CodecPanic,
}

/// A property where the codec met it: the packet (or a CONNECT's will),
/// the property, and the section of MQTT 5 that defines it there, so that
/// the log cites the statement broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyAt {
    pub packet: &'static str,
    pub id: u8,
    pub name: &'static str,
    /// E.g. `3.3.2.3.2`.
    pub section: &'static str,
}

impl std::fmt::Display for PropertyAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[MQTT 5 §{}] {} {} ({:#04x})",
            self.section, self.packet, self.name, self.id
        )
    }
}

impl CodecError {
    /// A packet that parses but breaks a rule of the protocol (MQTT 5
    /// §1.2's Protocol Error, 0x82), as against one that does not parse:
    /// at CONNECT the first gets CONNACK 0x82, the second no CONNACK.
    pub fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            CodecError::PacketIdZero
                | CodecError::SubscribeWithoutFilters
                | CodecError::SubscriptionOptions(_)
                | CodecError::DuplicateProperty(_)
                | CodecError::PayloadFormatIndicator { .. }
                | CodecError::PasswordWithoutUsername
        )
    }
}

/// The remaining-length field: how many bytes it takes and the value.
/// `None` when more bytes are needed.
pub(super) fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
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
pub(super) struct Frame<'a> {
    /// The first byte: the packet type in the high nibble, its flags in the
    /// low one.
    pub(super) first: u8,
    /// Length of the fixed header (the first byte and the remaining length).
    pub(super) header: usize,
    /// The whole frame, fixed header included.
    pub(super) bytes: &'a [u8],
}

impl Frame<'_> {
    pub(super) fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// The next frame, once it is complete in `buf`.
pub(super) fn complete_frame(buf: &[u8], limit: usize) -> Result<Option<Frame<'_>>, CodecError> {
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
pub(super) fn mqtt_str(frame: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    frame.get(at + 2..at + 2 + len)
}

/// Bytes of a variable byte integer (MQTT §1.5.5).
pub(super) fn varint_len(value: usize) -> usize {
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

/// Reads MQTT data types off the front of a slice.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.0.get(..n)?;
        self.0 = self.0.get(n..)?;
        Some(taken)
    }

    pub(super) fn varint(&mut self) -> Option<usize> {
        let mut value = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = self.byte()?;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    pub(super) fn binary(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_be_bytes([self.byte()?, self.byte()?]);
        self.take(usize::from(len))
    }

    pub(super) fn string(&mut self) -> Option<String> {
        let bytes = self.binary()?;
        std::str::from_utf8(bytes)
            .ok()
            .filter(|s| !s.contains('\0'))
            .map(str::to_owned)
    }
}
