//! The rules of a packet's form that rumqttd's decoder does not check,
//! checked on the frame before it decodes it (it would keep the last copy
//! of a property, drop reserved bits, and take the flags below as they
//! come):
//!
//! - every MQTT 5 property block, by [`properties::scan`]: a property given
//!   twice, a Payload Format Indicator other than 0 or 1;
//! - CONNECT's reserved flag ([MQTT-3.1.2-3]) and, in MQTT 3.1.1, a password
//!   without a user name ([MQTT-3.1.2-22]);
//! - DUP on a QoS 0 PUBLISH ([MQTT-3.3.1-2]);
//! - the reserved bits of SUBSCRIBE's subscription options ([MQTT-3.8.3-5];
//!   MQTT 3.1.1's [MQTT-3.8.3-4]).
//!
//! Each packet is walked once, front to back, without recursion or
//! allocation. A frame that ends too early for the walk is malformed
//! here, as it would be to rumqttd.

use super::primitives::{
    CONNECT, CodecError, DISCONNECT, Frame, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, Reader,
    SUBSCRIBE, UNSUBSCRIBE,
};
use super::properties::{self, Block};

// CONNECT flags (MQTT 5 §3.1.2.3, 3.1.1 §3.1.2.3).
const RESERVED: u8 = 0x01;
const WILL: u8 = 0x04;
const PASSWORD: u8 = 0x40;
const USER_NAME: u8 = 0x80;
/// DUP in a PUBLISH's fixed header (§3.3.1.1).
const DUP: u8 = 0x08;

/// Checks `frame` (a complete packet a client may send) against the rules
/// above; `v5` says whether it carries properties.
pub(super) fn check(frame: &Frame<'_>, v5: bool) -> Result<(), CodecError> {
    let body = frame.bytes.get(frame.header..).unwrap_or_default();
    match frame.kind() {
        CONNECT => connect(body, v5),
        PUBLISH => publish(frame.first, body, v5),
        SUBSCRIBE => subscribe(body, v5),
        PUBACK if v5 => ack(Block::PubAck, body),
        PUBREC if v5 => ack(Block::PubRec, body),
        PUBREL if v5 => ack(Block::PubRel, body),
        PUBCOMP if v5 => ack(Block::PubComp, body),
        UNSUBSCRIBE if v5 => {
            let mut reader = Reader(body);
            reader.take(2).ok_or_else(|| short("UNSUBSCRIBE"))?;
            properties::scan(Block::Unsubscribe, &mut reader)
        }
        // §3.14.2.2.1: no Property Length when the Remaining Length is
        // less than 2.
        DISCONNECT if v5 && body.len() >= 2 => properties::scan(
            Block::Disconnect,
            &mut Reader(body.get(1..).unwrap_or_default()),
        ),
        _ => Ok(()),
    }
}

fn short(packet: &str) -> CodecError {
    CodecError::Malformed(format!("{packet} shorter than its fields"))
}

fn connect(body: &[u8], v5: bool) -> Result<(), CodecError> {
    let mut reader = Reader(body);
    // Protocol name (MQTT or MQIsdp, as sniffed), level, then the flags.
    let flags = reader
        .binary()
        .and_then(|_| reader.byte())
        .and_then(|_| reader.byte())
        .ok_or_else(|| short("CONNECT"))?;
    if flags & RESERVED != 0 {
        // MQTT 5 §3.1.2.3: "If the reserved flag is not 0 it is a
        // Malformed Packet"; 3.1.1: "disconnect the Client".
        return Err(CodecError::Malformed(
            "[MQTT-3.1.2-3] CONNECT reserved flag set".into(),
        ));
    }
    if !v5 {
        // MQTT 5 §3.1.2.9 lets a password come alone; 3.1.1 does not.
        if flags & PASSWORD != 0 && flags & USER_NAME == 0 {
            return Err(CodecError::PasswordWithoutUsername);
        }
        return Ok(());
    }
    reader.take(2).ok_or_else(|| short("CONNECT"))?; // keep alive
    properties::scan(Block::Connect, &mut reader)?;
    if flags & WILL != 0 {
        reader.binary().ok_or_else(|| short("CONNECT"))?; // client id
        properties::scan(Block::Will, &mut reader)?;
    }
    Ok(())
}

fn publish(first: u8, body: &[u8], v5: bool) -> Result<(), CodecError> {
    let qos = (first >> 1) & 0b11;
    if qos == 0 && first & DUP != 0 {
        // [MQTT-3.3.1-2] "The DUP flag MUST be set to 0 for all QoS 0
        // messages"; MQTT 5 §2.1.3: "If invalid flags are received it is a
        // Malformed Packet" (0x81, not 0x82).
        return Err(CodecError::Malformed(
            "[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH".into(),
        ));
    }
    if !v5 {
        return Ok(());
    }
    let mut reader = Reader(body);
    reader.binary().ok_or_else(|| short("PUBLISH"))?; // topic
    if qos > 0 {
        reader.take(2).ok_or_else(|| short("PUBLISH"))?; // packet id
    }
    properties::scan(Block::Publish, &mut reader)
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then the reason code and
/// properties, which may be left out (§3.4.2.1: no properties when the
/// Remaining Length is under 4).
fn ack(block: Block, body: &[u8]) -> Result<(), CodecError> {
    match body.get(3..) {
        Some(rest) if !rest.is_empty() => properties::scan(block, &mut Reader(rest)),
        _ => Ok(()),
    }
}

fn subscribe(body: &[u8], v5: bool) -> Result<(), CodecError> {
    let mut reader = Reader(body);
    reader.take(2).ok_or_else(|| short("SUBSCRIBE"))?; // packet id
    let reserved = if v5 {
        properties::scan(Block::Subscribe, &mut reader)?;
        0b1100_0000
    } else {
        0b1111_1100
    };
    // One filter and its options byte at a time, to the end of the frame:
    // the walk is bounded by the frame's bytes.
    while !reader.0.is_empty() {
        let options = reader
            .binary()
            .and_then(|_| reader.byte())
            .ok_or_else(|| CodecError::Malformed("SUBSCRIBE filter without its options".into()))?;
        if options & reserved != 0 {
            return Err(CodecError::Malformed(
                if v5 {
                    // "The Server MUST treat a SUBSCRIBE packet as malformed
                    // if any of Reserved bits in the Payload are non-zero".
                    "[MQTT-3.8.3-5] subscription options with reserved bits 6-7 set"
                } else {
                    // 3.1.1: "... as malformed and close the Network
                    // Connection if any of Reserved bits in the payload are
                    // non-zero" (its [MQTT-3-8.3-4]).
                    "[MQTT-3.8.3-4] (3.1.1) subscription options with reserved bits 2-7 set"
                }
                .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
