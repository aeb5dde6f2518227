//! A scan of one MQTT 5 property block (§2.2.2) for what rumqttd's decoder
//! lets through: a property given twice (its decoder keeps the last copy,
//! where each property's section says "It is a Protocol Error to include
//! [it] more than once") and a Payload Format Indicator other than 0 or 1.
//!
//! It runs on the frame before rumqttd decodes it, so it reads every
//! property's value only far enough to step over it: one pass, no
//! recursion, nothing allocated (the properties seen are bits of one
//! `u64`, every identifier MQTT 5 defines being below 64).

use super::primitives::{CodecError, PropertyAt, Reader};

/// The property blocks a client sends; each allows its own properties
/// (§2.2.2.2's table) defined in its own sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Block {
    Connect,
    /// A CONNECT's Will Properties (§3.1.3.2).
    Will,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const USER_PROPERTY: u8 = 0x26;

impl Block {
    fn packet(self) -> &'static str {
        match self {
            Block::Connect => "CONNECT",
            Block::Will => "CONNECT Will",
            Block::Publish => "PUBLISH",
            Block::PubAck => "PUBACK",
            Block::PubRec => "PUBREC",
            Block::PubRel => "PUBREL",
            Block::PubComp => "PUBCOMP",
            Block::Subscribe => "SUBSCRIBE",
            Block::Unsubscribe => "UNSUBSCRIBE",
            Block::Disconnect => "DISCONNECT",
            Block::Auth => "AUTH",
        }
    }

    /// The section of MQTT 5 that defines property `id` in this block;
    /// `None` for one the block may not hold.
    fn section(self, id: u8) -> Option<&'static str> {
        let section = match (self, id) {
            (Block::Connect, 0x11) => "3.1.2.11.2",
            (Block::Connect, 0x21) => "3.1.2.11.3",
            (Block::Connect, 0x27) => "3.1.2.11.4",
            (Block::Connect, 0x22) => "3.1.2.11.5",
            (Block::Connect, 0x19) => "3.1.2.11.6",
            (Block::Connect, 0x17) => "3.1.2.11.7",
            (Block::Connect, 0x26) => "3.1.2.11.8",
            (Block::Connect, 0x15) => "3.1.2.11.9",
            (Block::Connect, 0x16) => "3.1.2.11.10",
            (Block::Will, 0x18) => "3.1.3.2.2",
            (Block::Will, 0x01) => "3.1.3.2.3",
            (Block::Will, 0x02) => "3.1.3.2.4",
            (Block::Will, 0x03) => "3.1.3.2.5",
            (Block::Will, 0x08) => "3.1.3.2.6",
            (Block::Will, 0x09) => "3.1.3.2.7",
            (Block::Will, 0x26) => "3.1.3.2.8",
            (Block::Publish, 0x01) => "3.3.2.3.2",
            (Block::Publish, 0x02) => "3.3.2.3.3",
            (Block::Publish, 0x23) => "3.3.2.3.4",
            (Block::Publish, 0x08) => "3.3.2.3.5",
            (Block::Publish, 0x09) => "3.3.2.3.6",
            (Block::Publish, 0x26) => "3.3.2.3.7",
            (Block::Publish, 0x0B) => "3.3.2.3.8",
            (Block::Publish, 0x03) => "3.3.2.3.9",
            (Block::PubAck, 0x1F) => "3.4.2.2.2",
            (Block::PubAck, 0x26) => "3.4.2.2.3",
            (Block::PubRec, 0x1F) => "3.5.2.2.2",
            (Block::PubRec, 0x26) => "3.5.2.2.3",
            (Block::PubRel, 0x1F) => "3.6.2.2.2",
            (Block::PubRel, 0x26) => "3.6.2.2.3",
            (Block::PubComp, 0x1F) => "3.7.2.2.2",
            (Block::PubComp, 0x26) => "3.7.2.2.3",
            (Block::Subscribe, 0x0B) => "3.8.2.1.2",
            (Block::Subscribe, 0x26) => "3.8.2.1.3",
            (Block::Unsubscribe, 0x26) => "3.10.2.1.2",
            (Block::Disconnect, 0x11) => "3.14.2.2.2",
            (Block::Disconnect, 0x1F) => "3.14.2.2.3",
            (Block::Disconnect, 0x26) => "3.14.2.2.4",
            (Block::Disconnect, 0x1C) => "3.14.2.2.5",
            (Block::Auth, 0x15) => "3.15.2.2.2",
            (Block::Auth, 0x16) => "3.15.2.2.3",
            (Block::Auth, 0x1F) => "3.15.2.2.4",
            (Block::Auth, 0x26) => "3.15.2.2.5",
            _ => return None,
        };
        Some(section)
    }

    /// Whether `id` may come more than once: User Property everywhere
    /// (§3.1.2.11.8 and its twins), and Subscription Identifier in a
    /// PUBLISH (§3.3.2.3.8), where a client may send none at all: that
    /// rule ([MQTT-3.3.4-6]) is checked after decoding, under its own name.
    fn repeats(self, id: u8) -> bool {
        id == USER_PROPERTY || (self == Block::Publish && id == SUBSCRIPTION_IDENTIFIER)
    }
}

/// How a property's value is laid out (§2.2.2.2's table).
enum Value {
    Byte,
    Two,
    Four,
    VarInt,
    /// A UTF-8 string or binary data: both a two-byte length and bytes.
    Prefixed,
    Pair,
}

/// The layout of every property a [`Block`] allows.
fn value_of(id: u8) -> Option<Value> {
    Some(match id {
        0x01 | 0x17 | 0x19 => Value::Byte,
        0x21..=0x23 => Value::Two,
        0x02 | 0x11 | 0x18 | 0x27 => Value::Four,
        0x0B => Value::VarInt,
        0x03 | 0x08 | 0x09 | 0x15 | 0x16 | 0x1C | 0x1F => Value::Prefixed,
        0x26 => Value::Pair,
        _ => return None,
    })
}

fn name_of(id: u8) -> &'static str {
    match id {
        0x01 => "Payload Format Indicator",
        0x02 => "Message Expiry Interval",
        0x03 => "Content Type",
        0x08 => "Response Topic",
        0x09 => "Correlation Data",
        0x0B => "Subscription Identifier",
        0x11 => "Session Expiry Interval",
        0x15 => "Authentication Method",
        0x16 => "Authentication Data",
        0x17 => "Request Problem Information",
        0x18 => "Will Delay Interval",
        0x19 => "Request Response Information",
        0x1C => "Server Reference",
        0x1F => "Reason String",
        0x21 => "Receive Maximum",
        0x22 => "Topic Alias Maximum",
        0x23 => "Topic Alias",
        0x26 => "User Property",
        0x27 => "Maximum Packet Size",
        _ => "property",
    }
}

/// Reads a property block (its length and its properties) off the front
/// of `reader`, leaving what follows it, and checks each property once:
/// that `block` may hold it and its value is all there (else the packet
/// is malformed, §2.2.2.2), that it is not a second copy, and that a
/// Payload Format Indicator is 0 or 1.
pub(super) fn scan(block: Block, reader: &mut Reader<'_>) -> Result<(), CodecError> {
    let packet = block.packet();
    let malformed = |what: &str| CodecError::Malformed(format!("{packet} properties: {what}"));
    let length = reader
        .varint()
        .ok_or_else(|| malformed("no property length"))?;
    let mut properties = Reader(
        reader
            .take(length)
            .ok_or_else(|| malformed("longer than the packet"))?,
    );
    let mut seen = 0u64;
    while let Some(id) = properties.byte() {
        // [MQTT 5 §2.2.2.2] "A Control Packet which contains an Identifier
        // which is not valid for its packet type ... is a Malformed Packet."
        let (Some(section), Some(value)) = (block.section(id), value_of(id)) else {
            return Err(malformed(&format!(
                "[MQTT 5 §2.2.2.2] identifier {id:#04x} is not one of this packet's"
            )));
        };
        let at = PropertyAt {
            packet,
            id,
            name: name_of(id),
            section,
        };
        let cut = || malformed(&format!("{} ({id:#04x}) cut short", at.name));
        match value {
            Value::Byte => {
                let byte = properties.byte().ok_or_else(cut)?;
                if id == PAYLOAD_FORMAT_INDICATOR && byte > 1 {
                    return Err(CodecError::PayloadFormatIndicator { at, value: byte });
                }
            }
            Value::Two => {
                properties.take(2).ok_or_else(cut)?;
            }
            Value::Four => {
                properties.take(4).ok_or_else(cut)?;
            }
            Value::VarInt => {
                properties.varint().ok_or_else(cut)?;
            }
            Value::Prefixed => {
                properties.binary().ok_or_else(cut)?;
            }
            Value::Pair => {
                properties.binary().ok_or_else(cut)?;
                properties.binary().ok_or_else(cut)?;
            }
        }
        if block.repeats(id) {
            continue;
        }
        // Every identifier a block allows is below 0x40 (the largest is
        // 0x27), so the bit is there; `checked_shl` says so without a
        // panic path.
        let bit = 1u64.checked_shl(u32::from(id)).unwrap_or(0);
        if seen & bit != 0 {
            return Err(CodecError::DuplicateProperty(at));
        }
        seen |= bit;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
