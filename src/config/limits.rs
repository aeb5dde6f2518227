//! The `[limits]` table: what one connection, and the whole gateway, may
//! take.

use std::time::Duration;

use crate::mqtt::TopicLimits;
use serde::Deserialize;
use toml::Spanned;

use super::document::{ConfigError, Document, MIB};

/// MQTT's remaining-length field cannot describe a larger packet.
const MQTT_MAX_PACKET_SIZE: i64 = 268_435_455;

/// Below this even a CONNECT with a realistic JWT does not fit.
const MIN_PACKET_SIZE: i64 = 1024;

/// Below this a CONNECT or PUBLISH with a few ordinary MQTT 5 properties
/// would be refused.
const MIN_PROPERTY_BYTES: i64 = 256;

/// The largest `[limits] memory_budget_mb`: 1 TiB.
const MAX_MEMORY_BUDGET_MB: i64 = 1024 * 1024;

/// Per-connection resource limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to complete the TLS handshake; never zero.
    pub handshake_timeout: Duration,
    /// How long a client may take, once TLS is up, to send CONNECT; never
    /// zero.
    pub connect_timeout: Duration,
    /// Largest accepted MQTT packet in bytes, between 1024 and 268435455.
    pub max_packet_size: usize,
    /// Largest accepted CONNECT in bytes, between 1024 and 268435455; a
    /// connection uses the smaller of it and `max_packet_size`. A
    /// stranger's first packet is
    /// buffered before anything about it is known, so it gets far less
    /// room than an authenticated client's packets: a CONNECT carries a
    /// token (at most a few KiB), a client id and perhaps a will.
    pub max_connect_packet_size: usize,
    /// Most simultaneous authenticated connections (sessions); never zero.
    /// A client past it is refused with "server unavailable" (MQTT 5:
    /// 0x89 server busy).
    pub max_connections: usize,
    /// Most connections that have not authenticated yet (in the TLS
    /// handshake or before their CONNECT is accepted); never zero. They are
    /// counted apart from `max_connections`, so strangers cannot take the
    /// places of devices; when they are all taken, a new connection pushes
    /// out the oldest of them, so a flood of silent sockets cannot lock
    /// devices out either.
    pub max_pending_connections: usize,
    /// Most unauthenticated connections from one source: an IPv4 address,
    /// or an IPv6 /64 (one host's share of addresses); never zero. More are
    /// closed at once. Devices behind one NAT share it, but each holds a
    /// place only for its handshake.
    pub max_pending_per_source: usize,
    /// How long the gateway waits for a client to read what it is sent
    /// (the whole output, or another 64 KiB of it) before disconnecting
    /// it; never zero. A client that stops reading holds its buffers and
    /// its place, and delays its publishers, until then.
    pub write_timeout: Duration,
    /// Most MQTT 5 property bytes (user properties included) accepted in one
    /// packet, between 256 and 268435455. Properties are copied to every
    /// subscriber, so one packet must not be able to carry an unbounded
    /// amount of them inside `max_packet_size`; more is refused with reason
    /// 0x97 (quota exceeded).
    pub max_property_bytes: usize,
    /// Topic aliases granted to each MQTT 5 client in CONNACK (0 grants
    /// none). Every alias is a topic the gateway remembers for the life of
    /// the connection, so the number is bounded per client.
    pub max_topic_aliases: u16,
    /// Longest keep-alive a client may have, in seconds (1 to 65535), when
    /// set. A client asking for a longer one, or for none (0), is given this
    /// one (MQTT 5 "server keep alive" in CONNACK; MQTT 3.1.1 clients are
    /// held to it silently), so a dead connection and its session's queue
    /// are noticed within a bounded time. `None` takes what the client asks.
    pub max_keep_alive: Option<u16>,
    /// Bytes of application messages held in memory across the whole
    /// gateway (queued, in flight and retained); at least 1 MiB. The
    /// per-session bounds alone would let many sessions together exhaust
    /// the edge box's memory.
    pub memory_budget: usize,
    /// How deep and how long a topic or filter may be
    /// (`max_topic_levels`, 1 to 65535, default 128; `max_topic_bytes`, 1
    /// to 65535, default 4096). Over them, a PUBLISH gets 0x90 (MQTT 3.1.1:
    /// the connection is closed), a filter 0x8F (3.1.1: SUBACK 0x80).
    pub topics: TopicLimits,
    /// Bytes of retained messages (payload, topic and their share of the
    /// retained tree) one token subject may hold, at least 1024; default
    /// 8 MiB. More is answered with 0x97 (quota exceeded).
    pub max_retained_bytes_per_subject: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1024 * 1024,
            max_connect_packet_size: 16 * 1024,
            max_connections: 10_000,
            max_pending_connections: 1024,
            max_pending_per_source: 64,
            write_timeout: Duration::from_secs(30),
            max_property_bytes: 64 * 1024,
            max_topic_aliases: 64,
            max_keep_alive: None,
            memory_budget: 512 * MIB,
            topics: TopicLimits::DEFAULT,
            max_retained_bytes_per_subject: 8 * MIB,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [limits] table")]
pub(super) struct RawLimits {
    handshake_timeout_secs: Option<Spanned<i64>>,
    connect_timeout_secs: Option<Spanned<i64>>,
    max_packet_size: Option<Spanned<i64>>,
    max_connect_packet_size: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_pending_connections: Option<Spanned<i64>>,
    max_pending_per_source: Option<Spanned<i64>>,
    write_timeout_secs: Option<Spanned<i64>>,
    max_property_bytes: Option<Spanned<i64>>,
    max_topic_aliases: Option<Spanned<i64>>,
    max_keep_alive_secs: Option<Spanned<i64>>,
    memory_budget_mb: Option<Spanned<i64>>,
    max_topic_levels: Option<Spanned<i64>>,
    max_topic_bytes: Option<Spanned<i64>>,
    max_retained_bytes_per_subject: Option<Spanned<i64>>,
}

impl RawLimits {
    pub(super) fn validate(
        self,
        doc: &Document<'_>,
        limits: &mut Limits,
    ) -> Result<(), ConfigError> {
        if let Some(secs) = &self.handshake_timeout_secs {
            limits.handshake_timeout = doc.seconds(secs, "[limits] handshake_timeout_secs", 1)?;
        }
        if let Some(secs) = &self.connect_timeout_secs {
            limits.connect_timeout = doc.seconds(secs, "[limits] connect_timeout_secs", 1)?;
        }
        if let Some(size) = &self.max_packet_size {
            limits.max_packet_size = doc.int(
                size,
                "[limits] max_packet_size",
                MIN_PACKET_SIZE..=MQTT_MAX_PACKET_SIZE,
                "bytes",
            )?;
        }
        if let Some(size) = &self.max_connect_packet_size {
            limits.max_connect_packet_size = doc.int(
                size,
                "[limits] max_connect_packet_size",
                MIN_PACKET_SIZE..=MQTT_MAX_PACKET_SIZE,
                "bytes",
            )?;
        }
        if let Some(count) = &self.max_connections {
            limits.max_connections =
                doc.int(count, "[limits] max_connections", 1..=i64::MAX, "")?;
        }
        if let Some(count) = &self.max_pending_connections {
            limits.max_pending_connections =
                doc.int(count, "[limits] max_pending_connections", 1..=i64::MAX, "")?;
        }
        if let Some(count) = &self.max_pending_per_source {
            limits.max_pending_per_source =
                doc.int(count, "[limits] max_pending_per_source", 1..=i64::MAX, "")?;
        }
        if let Some(secs) = &self.write_timeout_secs {
            limits.write_timeout = doc.seconds(secs, "[limits] write_timeout_secs", 1)?;
        }
        if let Some(size) = &self.max_property_bytes {
            limits.max_property_bytes = doc.int(
                size,
                "[limits] max_property_bytes",
                MIN_PROPERTY_BYTES..=MQTT_MAX_PACKET_SIZE,
                "bytes",
            )?;
        }
        if let Some(count) = &self.max_topic_aliases {
            limits.max_topic_aliases = doc.int(
                count,
                "[limits] max_topic_aliases",
                0..=i64::from(u16::MAX),
                "",
            )?;
        }
        if let Some(secs) = &self.max_keep_alive_secs {
            limits.max_keep_alive = Some(doc.int(
                secs,
                "[limits] max_keep_alive_secs",
                1..=i64::from(u16::MAX),
                "seconds",
            )?);
        }
        if let Some(value) = &self.memory_budget_mb {
            let key = "[limits] memory_budget_mb";
            let mb: usize = doc.int(value, key, 1..=MAX_MEMORY_BUDGET_MB, "MiB")?;
            limits.memory_budget = mb
                .checked_mul(MIB)
                .ok_or_else(|| doc.bad(value, key, "is too large for this platform"))?;
        }
        if let Some(count) = &self.max_topic_levels {
            limits.topics.max_levels = doc.int(
                count,
                "[limits] max_topic_levels",
                1..=i64::from(u16::MAX),
                "",
            )?;
        }
        if let Some(size) = &self.max_topic_bytes {
            limits.topics.max_bytes = doc.int(
                size,
                "[limits] max_topic_bytes",
                1..=i64::from(u16::MAX),
                "bytes",
            )?;
        }
        if let Some(size) = &self.max_retained_bytes_per_subject {
            limits.max_retained_bytes_per_subject = doc.int(
                size,
                "[limits] max_retained_bytes_per_subject",
                1024..=i64::MAX,
                "bytes",
            )?;
        }
        Ok(())
    }
}
