//! An application message as the routing core holds it.
//!
//! A PUBLISH (or a will) becomes one [`Message`] behind an `Arc`, shared by
//! every queue it is delivered to and by the retained store, and freed when
//! the last of them lets go. What varies per subscriber (delivered QoS,
//! retain flag, subscription identifiers, packet id) lives beside it in a
//! [`super::Delivery`], never in the message.
//!
//! Every message is charged to the gateway-wide memory [`Budget`] for as
//! long as it lives, by what it really holds: topic, payload and MQTT 5
//! properties, user properties included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::budget::{Budget, Charge};
use crate::mqtt::QoS;

/// The MQTT 5 properties a message carries from its publisher to its
/// subscribers unchanged (§3.3.2.3). Message expiry is held as a deadline
/// in [`Message`]; topic aliases and subscription identifiers belong to a
/// connection and a subscription, not to the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Bytes of content, for memory accounting.
    fn size(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        text(&self.content_type)
            + text(&self.response_topic)
            + self.correlation_data.as_ref().map_or(0, Bytes::len)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + USER_PROPERTY_OVERHEAD)
                .sum::<usize>()
    }
}

/// Heap overhead of one user property pair beside its text (two `String`s).
const USER_PROPERTY_OVERHEAD: usize = 48;
/// What a message costs beyond its topic, payload and properties: the
/// `Arc`, the struct and its allocations' headers.
const MESSAGE_OVERHEAD: usize = 128;
/// Payloads below this size are copied out of the connection's read
/// buffer, so that a queued message never pins a read buffer (up to 32 KiB)
/// much larger than itself; a larger payload had a buffer of about its own
/// size.
const COPY_BELOW: usize = 32 * 1024;

/// What a publisher hands the routing core.
#[derive(Debug, Clone)]
pub struct Publication {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
    /// MQTT 5 message expiry interval.
    pub expiry: Option<Duration>,
}

/// One application message, immutable once built.
#[derive(Debug)]
pub struct Message {
    topic: Box<str>,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: Option<Box<Properties>>,
    expires_at: Option<Instant>,
    /// The bridge it came in from, if any: never sent back out on it.
    origin: Option<Arc<str>>,
    charge: Charge,
}

impl Message {
    /// Builds a message and charges it to `budget`. The topic must already
    /// be a valid topic name.
    pub fn new(publication: Publication, budget: &Arc<Budget>) -> Arc<Message> {
        Message::build(publication, budget, None)
    }

    /// As [`Message::new`], for a message that came in from bridge
    /// `origin`.
    pub fn bridged(
        publication: Publication,
        budget: &Arc<Budget>,
        origin: &Arc<str>,
    ) -> Arc<Message> {
        Message::build(publication, budget, Some(Arc::clone(origin)))
    }

    fn build(
        publication: Publication,
        budget: &Arc<Budget>,
        origin: Option<Arc<str>>,
    ) -> Arc<Message> {
        let Publication {
            topic,
            payload,
            qos,
            retain,
            properties,
            expiry,
        } = publication;
        let payload = if payload.len() < COPY_BELOW {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        let properties = (!properties.is_empty()).then(|| Box::new(properties));
        let cost = MESSAGE_OVERHEAD
            + topic.len()
            + payload.len()
            + properties.as_ref().map_or(0, |p| p.size());
        Arc::new(Message {
            topic: topic.into_boxed_str(),
            payload,
            qos,
            retain,
            properties,
            expires_at: expiry.map(|e| Instant::now() + e),
            origin,
            charge: budget.charge(cost),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The QoS it was published with.
    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// The retain flag it was published with.
    pub fn retain(&self) -> bool {
        self.retain
    }

    pub fn properties(&self) -> Option<&Properties> {
        self.properties.as_deref()
    }

    /// Bytes this message holds, as charged to the budget and to the
    /// queues it waits in.
    pub fn cost(&self) -> usize {
        self.charge.bytes()
    }

    /// The bridge it came in from, if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// When its message expiry interval ends, if it has one.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// Whether its message expiry interval has passed.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval left, in whole seconds rounded up, for the
    /// PUBLISH that delivers it (MQTT 5 §3.3.2.3.3); `None` when it never
    /// expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

#[cfg(test)]
mod tests;
