//! The `mqtt_session` target: a client byte stream, checked for what the
//! connection it drives routed and how much memory it held. The connection
//! itself is served by [`super::session`].

use std::sync::Arc;

use super::fixture::fixture;
use super::memory::peak_during;
use super::session::{SESSION_MEMORY_BOUND, SessionSetup, fuzz_session};
use crate::mqtt::QoS;

/// A client byte stream through `gateway::connection::serve`, the function
/// the TLS path calls, over an in-memory duplex stream.
///
/// Input: one selector byte, then the stream. Selector bit 0 set: a valid
/// CONNECT with the fixed token is sent first (bits 1-2 pick MQTT 3.1,
/// 3.1.1 or 5; bit 6 clears clean session); otherwise the stream is sent
/// as it is. Bit 4: refused publishes disconnect; bit 5: keep-alive capped.
/// Bit 3: over a WebSocket, as the WebSocket listener serves it: a valid
/// upgrade request goes first, then the stream in masked binary frames of
/// 1, 7, 64 and 1024 bytes in turn (so packets span frames and frames hold
/// several packets); with bit 7 too, only the prepended CONNECT is framed
/// and the fuzzed bytes follow as they are, as raw frames.
///
/// Asserts: the connection ends once the client has closed; nothing is
/// routed or retained unless the stream can hold a valid token (the
/// prepended CONNECT, or the token's signed part in the fuzzed bytes);
/// every routed or retained topic is within the token's grants; when the
/// binary counts allocations ([`CountingAllocator`](super::memory::CountingAllocator)), the run never held
/// more heap than [`SESSION_MEMORY_BOUND`], what its limits allow.
pub fn mqtt_session(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let prepend = selector & 1 != 0;
    let level = match (selector >> 1) & 3 {
        0 => 3,
        1 => 4,
        _ => 5,
    };
    let mut stream = Vec::with_capacity(rest.len() + 512);
    if prepend {
        stream.extend(connect_packet(
            level,
            selector & 64 == 0,
            &fixture.session_token,
        ));
    }
    let websocket = selector & 8 != 0;
    if websocket {
        stream = over_websocket(&stream, rest, selector & 128 != 0);
    } else {
        stream.extend_from_slice(rest);
    }
    let may_authenticate = prepend || contains(rest, fixture.session_signed_part.as_bytes());
    let setup = SessionSetup {
        deny_disconnects: selector & 16 != 0,
        cap_keep_alive: selector & 32 != 0,
        websocket,
    };
    let (outcome, peak) = peak_during(|| {
        fuzz_session(
            Arc::clone(&fixture.keys),
            fixture.default_policy.clone(),
            setup,
            &stream,
        )
    });
    let outcome = outcome.expect("a tokio runtime");
    if let Some(peak) = peak {
        assert!(
            peak <= SESSION_MEMORY_BOUND,
            "the run held {peak} bytes, over its limits' {}",
            SESSION_MEMORY_BOUND
        );
    }
    assert!(
        outcome.ended,
        "the connection did not end after its client closed"
    );
    assert!(
        outcome.settled,
        "a task the connection left behind did not finish"
    );
    if !may_authenticate {
        assert!(
            outcome.routed.is_empty() && outcome.retained.is_empty(),
            "routed without a valid CONNECT: {:?} {:?}",
            outcome.routed,
            outcome.retained
        );
    }
    for topic in outcome.routed.iter().chain(&outcome.retained) {
        assert!(
            fixture
                .session_grants
                .may_publish(topic, QoS::AtMostOnce, false),
            "routed {topic:?}, outside the grants"
        );
    }
}

/// A WebSocket client's bytes: the upgrade request, `framed` in binary
/// frames, then `rest` framed the same way or, with `raw`, as it is.
pub(super) fn over_websocket(framed: &[u8], rest: &[u8], raw: bool) -> Vec<u8> {
    let mut out = b"GET /mqtt HTTP/1.1\r\nHost: fuzz\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        .to_vec();
    let mut sizes = [1, 7, 64, 1024].into_iter().cycle();
    let mut frame = |bytes: &[u8], out: &mut Vec<u8>| {
        let mut left = bytes;
        while !left.is_empty() {
            let (chunk, after) = left.split_at(sizes.next().unwrap_or(64).min(left.len()));
            binary_frame(chunk, out);
            left = after;
        }
    };
    frame(framed, &mut out);
    if raw {
        out.extend_from_slice(rest);
    } else {
        frame(rest, &mut out);
    }
    out
}

/// One final, masked binary frame of `payload` (a client's frames must be
/// masked, RFC 6455 §5.3).
fn binary_frame(payload: &[u8], out: &mut Vec<u8>) {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x82);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A CONNECT of protocol `level` (3: MQTT 3.1, 4: 3.1.1, 5: 5) with
/// username `JWT` and `token` as the password, client id `fuzz-client`.
pub fn connect_packet(level: u8, clean: bool, token: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(&mut body, if level == 3 { b"MQIsdp" } else { b"MQTT" });
    body.push(level);
    body.push(0xC0 | if clean { 0x02 } else { 0 });
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        // No properties.
        body.push(0);
    }
    put_string(&mut body, b"fuzz-client");
    put_string(&mut body, b"JWT");
    put_string(&mut body, token.as_bytes());
    let mut packet = vec![0x10];
    put_length(&mut packet, body.len());
    packet.extend(body);
    packet
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("short fixed strings");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
