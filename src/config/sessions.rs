//! The `[sessions]` table: how jwtgate's routing core queues and delivers
//! messages, and the `[router]` table it replaced, read only to be refused
//! with the keys that took its place.

use std::time::Duration;

use serde::Deserialize;
use serde::de;
use toml::Spanned;

use super::document::{ConfigError, Document, MIB};

/// Below this one session could not queue even one realistic message.
const MIN_QUEUED_BYTES: i64 = 1024;

/// MQTT 5 carries the session expiry interval in four bytes.
const MQTT_MAX_SESSION_EXPIRY_SECS: i64 = u32::MAX as i64;

/// How sessions queue and deliver messages (jwtgate's routing core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Most QoS 1 and 2 messages sent to one client and not yet
    /// acknowledged; at least 1. Also capped by the client's MQTT 5 receive
    /// maximum. Bounds what a client that stops acknowledging keeps held in
    /// memory, and what is re-sent when it resumes.
    pub max_inflight: u16,
    /// Most messages waiting for one session (connected or offline); at
    /// least 1. A full queue holds its publishers back, then the
    /// `slow_subscriber` policy applies.
    pub max_queued_messages: usize,
    /// Most bytes (topic + payload + properties) waiting for one session; at
    /// least 1024. Counts what a message really costs, so a few large
    /// messages cannot exceed what `max_queued_messages` small ones would.
    pub max_queued_bytes: usize,
    /// What happens to a subscriber whose queue stays full past
    /// `slow_subscriber_timeout`.
    pub slow_subscriber: SlowSubscriber,
    /// How long one full subscriber queue may hold a publisher back before
    /// the `slow_subscriber` policy applies to that subscriber; never zero.
    /// Bounds how far one stalled device can slow every publisher on its
    /// topics.
    pub slow_subscriber_timeout: Duration,
    /// Most subscriptions one session may hold; at least 1. More gets SUBACK
    /// "quota exceeded". Bounds the subscription index one device can grow.
    pub max_subscriptions: usize,
    /// Cap on the MQTT 5 session expiry interval a client asks for, and the
    /// expiry of MQTT 3.1.1 persistent (clean session 0) sessions; at most
    /// 4294967295 seconds (MQTT 5's largest). Bounds how long a device that
    /// never comes back keeps its session and queue. Zero: no session
    /// outlives its connection.
    pub max_session_expiry: Duration,
    /// Most sessions, connected and parked together, one token subject may
    /// hold; at least 1, default 8. A CONNECT that would make another is
    /// refused with 0x97 (quota exceeded; MQTT 3.1.1: server unavailable).
    /// Without it one token could park a session per invented client id.
    pub max_sessions_per_subject: usize,
    /// Bytes the subscriptions of one session may hold (each filter and
    /// its share of the subscription index, about 400 bytes a level), at
    /// least 1024; default 256 KiB, room for the 100 subscriptions of
    /// `max_subscriptions` at 6 levels each. More gets SUBACK 0x97 (quota
    /// exceeded).
    pub max_subscription_bytes: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            max_inflight: 1000,
            max_queued_messages: 1000,
            max_queued_bytes: 8 * MIB,
            slow_subscriber: SlowSubscriber::Disconnect,
            slow_subscriber_timeout: Duration::from_millis(2000),
            max_subscriptions: 100,
            max_session_expiry: Duration::from_secs(86_400),
            max_sessions_per_subject: 8,
            max_subscription_bytes: 256 * 1024,
        }
    }
}

/// What happens to a subscriber whose queue has held a publisher back for
/// `[sessions] slow_subscriber_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowSubscriber {
    /// Close the slow subscriber's connection (MQTT 5 reason 0x97, quota
    /// exceeded); the device reconnects and resumes. Its QoS 0 messages are
    /// still dropped oldest first.
    #[default]
    Disconnect,
    /// Keep the connection and drop messages for it (QoS 0 oldest first),
    /// counted and logged.
    Drop,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [sessions] table")]
pub(super) struct RawSessions {
    max_inflight: Option<Spanned<i64>>,
    max_queued_messages: Option<Spanned<i64>>,
    max_queued_bytes: Option<Spanned<i64>>,
    slow_subscriber: Option<Spanned<SlowSubscriber>>,
    slow_subscriber_timeout_ms: Option<Spanned<i64>>,
    max_subscriptions: Option<Spanned<i64>>,
    max_session_expiry_secs: Option<Spanned<i64>>,
    max_sessions_per_subject: Option<Spanned<i64>>,
    max_subscription_bytes: Option<Spanned<i64>>,
}

/// The keys rumqttd's router took. Their values are not read (any type is
/// taken), only where they were written, so that each gets an error naming
/// its replacement; any other key is an ordinary unknown-key error.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [router] table")]
pub(super) struct RawRouter {
    max_outgoing_packet_count: Option<Spanned<de::IgnoredAny>>,
    max_segment_size: Option<Spanned<de::IgnoredAny>>,
    max_segment_count: Option<Spanned<de::IgnoredAny>>,
}

impl RawSessions {
    pub(super) fn validate(
        self,
        doc: &Document<'_>,
        sessions: &mut SessionSettings,
    ) -> Result<(), ConfigError> {
        if let Some(count) = &self.max_inflight {
            sessions.max_inflight = doc.int(
                count,
                "[sessions] max_inflight",
                1..=i64::from(u16::MAX),
                "",
            )?;
        }
        if let Some(count) = &self.max_queued_messages {
            sessions.max_queued_messages =
                doc.int(count, "[sessions] max_queued_messages", 1..=i64::MAX, "")?;
        }
        if let Some(size) = &self.max_queued_bytes {
            sessions.max_queued_bytes = doc.int(
                size,
                "[sessions] max_queued_bytes",
                MIN_QUEUED_BYTES..=i64::MAX,
                "bytes",
            )?;
        }
        if let Some(policy) = &self.slow_subscriber {
            sessions.slow_subscriber = *policy.get_ref();
        }
        if let Some(ms) = &self.slow_subscriber_timeout_ms {
            sessions.slow_subscriber_timeout =
                doc.milliseconds(ms, "[sessions] slow_subscriber_timeout_ms", 1)?;
        }
        if let Some(count) = &self.max_subscriptions {
            sessions.max_subscriptions =
                doc.int(count, "[sessions] max_subscriptions", 1..=i64::MAX, "")?;
        }
        if let Some(secs) = &self.max_session_expiry_secs {
            sessions.max_session_expiry = doc
                .int(
                    secs,
                    "[sessions] max_session_expiry_secs",
                    0..=MQTT_MAX_SESSION_EXPIRY_SECS,
                    "seconds",
                )
                .map(Duration::from_secs)?;
        }
        if let Some(count) = &self.max_sessions_per_subject {
            sessions.max_sessions_per_subject = doc.int(
                count,
                "[sessions] max_sessions_per_subject",
                1..=i64::MAX,
                "",
            )?;
        }
        if let Some(size) = &self.max_subscription_bytes {
            sessions.max_subscription_bytes = doc.int(
                size,
                "[sessions] max_subscription_bytes",
                1024..=i64::MAX,
                "bytes",
            )?;
        }
        Ok(())
    }
}

impl RawRouter {
    /// The error for a `[router]` table: the first old key in it, in file
    /// order, with its replacement, or the table itself when it is empty.
    pub(super) fn refuse(router: &Spanned<RawRouter>, doc: &Document<'_>) -> ConfigError {
        const QUEUES: &str =
            "rumqttd's router is gone: use [sessions] max_inflight and max_queued_messages";
        const LOG: &str = "rumqttd's router is gone: use [sessions] max_queued_bytes and \
                           [limits] memory_budget_mb";
        let raw = router.get_ref();
        let first = [
            (
                &raw.max_outgoing_packet_count,
                "max_outgoing_packet_count",
                QUEUES,
            ),
            (&raw.max_segment_size, "max_segment_size", LOG),
            (&raw.max_segment_count, "max_segment_count", LOG),
        ]
        .into_iter()
        .filter_map(|(value, key, message)| value.as_ref().map(|value| (value, key, message)))
        .min_by_key(|(value, _, _)| value.span().start);
        match first {
            Some((value, key, message)) => doc.bad(value, &format!("[router] {key}"), message),
            None => doc.bad(
                router,
                "[router]",
                "the [router] table is no longer used: jwtgate's routing core is configured \
                 in [sessions]",
            ),
        }
    }
}
