//! The MQTT 5 AUTH packet (§3.15), which rumqttd's codec does not know.
//!
//! jwtgate speaks one authentication method, `JWT`: the token travels as
//! the Authentication Data of a CONNECT (instead of the password) or of an
//! AUTH with reason 0x19 (re-authenticate), and the gateway answers a good
//! one with AUTH reason 0x00. There is no challenge, so the gateway never
//! sends 0x18 (continue authentication) and a client never needs to.

use bytes::{BufMut, Bytes, BytesMut};

use super::primitives::{CodecError, Reader, put_str, put_varint};
use super::properties::{self, Block};

/// The one authentication method jwtgate speaks.
pub const METHOD: &str = "JWT";

/// AUTH reason codes (§3.15.2.1).
pub const SUCCESS: u8 = 0x00;
pub const CONTINUE: u8 = 0x18;
pub const REAUTHENTICATE: u8 = 0x19;

/// DISCONNECT reason codes of a refused re-authentication, the same as a
/// refused CONNECT gets in CONNACK (rumqttd cannot name the first and
/// last). MQTT 5 lists 0x86 for CONNACK only; a client is told the same
/// reason whichever packet carried the token.
pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
pub const NOT_AUTHORIZED: u8 = 0x87;
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;

// AUTH property identifiers (§3.15.2.2).
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REASON_STRING: u8 = 0x1F;
const USER_PROPERTY: u8 = 0x26;

/// An AUTH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: u8,
    pub method: Option<String>,
    pub data: Option<Bytes>,
}

impl Auth {
    /// Decodes the variable header and properties of an AUTH whose fixed
    /// header has been read; `body` is the rest of the frame.
    pub fn decode(body: &[u8]) -> Result<Auth, CodecError> {
        let malformed = |what: &str| CodecError::Malformed(format!("AUTH: {what}"));
        let mut auth = Auth {
            reason: SUCCESS,
            method: None,
            data: None,
        };
        // Both may be left out when the reason is 0x00 and there are no
        // properties.
        let Some((&reason, rest)) = body.split_first() else {
            return Ok(auth);
        };
        if !matches!(reason, SUCCESS | CONTINUE | REAUTHENTICATE) {
            return Err(malformed("unknown reason code"));
        }
        auth.reason = reason;
        if rest.is_empty() {
            return Ok(auth);
        }
        // A property given twice is a Protocol Error (§3.15.2.2.2 to .4),
        // told apart from the malformed cases below by the shared scan.
        properties::scan(Block::Auth, &mut Reader(rest))?;
        let mut reader = Reader(rest);
        let length = reader
            .varint()
            .ok_or_else(|| malformed("bad property length"))?;
        let mut properties = Reader(reader.take(length).ok_or_else(|| malformed("short"))?);
        if !reader.0.is_empty() {
            return Err(malformed("bytes after the properties"));
        }
        while let Some(id) = properties.byte() {
            match id {
                AUTHENTICATION_METHOD if auth.method.is_none() => {
                    let method = properties.string().ok_or_else(|| malformed("bad method"))?;
                    auth.method = Some(method);
                }
                AUTHENTICATION_DATA if auth.data.is_none() => {
                    let data = properties.binary().ok_or_else(|| malformed("bad data"))?;
                    auth.data = Some(Bytes::copy_from_slice(data));
                }
                REASON_STRING => {
                    properties
                        .string()
                        .ok_or_else(|| malformed("bad reason string"))?;
                }
                USER_PROPERTY => {
                    properties
                        .string()
                        .and_then(|_| properties.string())
                        .ok_or_else(|| malformed("bad user property"))?;
                }
                // The scan above let through only AUTH's own properties,
                // each once.
                _ => return Err(malformed("unknown or repeated property")),
            }
        }
        Ok(auth)
    }

    /// Writes a whole AUTH packet from the gateway: `reason` with method
    /// `JWT` and, when given, a reason string.
    pub fn encode(reason: u8, reason_string: Option<&str>, out: &mut BytesMut) {
        let mut properties = BytesMut::new();
        put_string_property(&mut properties, AUTHENTICATION_METHOD, METHOD);
        if let Some(text) = reason_string {
            put_string_property(&mut properties, REASON_STRING, text);
        }
        put_reason_packet(0xF0, reason, &properties, out);
    }
}

/// A DISCONNECT with a reason code rumqttd cannot name (0x86, bad user
/// name or password, which re-authentication reuses from CONNECT) and a
/// reason string.
pub fn encode_disconnect(reason: u8, reason_string: &str, out: &mut BytesMut) {
    let mut properties = BytesMut::new();
    put_string_property(&mut properties, REASON_STRING, reason_string);
    put_reason_packet(0xE0, reason, &properties, out);
}

fn put_string_property(out: &mut BytesMut, id: u8, text: &str) {
    out.put_u8(id);
    // jwtgate's own short texts; cut rather than mis-prefixed.
    let bytes = text.as_bytes();
    put_str(out, bytes.get(..usize::from(u16::MAX)).unwrap_or(bytes));
}

/// A packet of a first byte, a reason code and properties.
fn put_reason_packet(first: u8, reason: u8, properties: &[u8], out: &mut BytesMut) {
    let mut body = BytesMut::with_capacity(1 + 4 + properties.len());
    body.put_u8(reason);
    put_varint(&mut body, properties.len());
    body.put_slice(properties);
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(&body);
}

#[cfg(test)]
mod tests;
