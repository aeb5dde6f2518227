//! Why a session ended, and what that means for the client: the
//! DISCONNECT it is told, whether its will is published, and how the
//! end is counted.
//!
//! A client that breaks the protocol is closed with a [`ProtocolViolation`]
//! naming the statement of the MQTT specification it broke (or the
//! `[limits]` setting it went past): the reason code an MQTT 5 client is
//! told, the log line and the metrics label all follow from the variant,
//! so that the same breach reads the same everywhere.

use rumqttd::protocol::DisconnectReasonCode;

use crate::broker::CommitError;
use crate::gateway::codec::{CodecError, PropertyAt};
use crate::metrics::SessionEnd;
use crate::mqtt::TopicError;

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent DISCONNECT; MQTT 5 may still ask for its will.
    Disconnected {
        publish_will: bool,
    },
    /// The socket closed or failed without a DISCONNECT.
    Vanished,
    /// The client broke the protocol.
    Protocol(ProtocolViolation),
    KeepAliveTimeout,
    TokenExpired,
    TakenOver,
    /// An operator ended it (`jwtgate disconnect`); with `discard_session`
    /// the session ends too, else a persistent one is parked as usual.
    Administrative {
        discard_session: bool,
    },
    Shutdown,
    /// After a reload the token no longer verifies: its key was removed or
    /// replaced, or the deny list names it.
    Revoked(String),
    /// A PUBLISH was refused and `deny_publish = "disconnect"`.
    PublishDenied,
    /// The session's queue overflowed under the `disconnect` policy.
    SlowSubscriber,
    /// A message of an MQTT 3.1.1 client could not be kept, which its
    /// ack has no way to say, or a session's changed subscriptions could
    /// not be (see `Client::not_kept`): it is closed without the ack.
    NotKept(CommitError),
    /// The client read nothing of what it was sent for
    /// `[limits] write_timeout_secs`.
    WriteStalled,
    /// A re-authentication (MQTT 5 AUTH) was refused. `code` is the
    /// DISCONNECT reason, written by [`auth`](crate::gateway::codec::auth) since rumqttd cannot
    /// name all of them: 0x86 for a token that is not to be trusted, 0x87
    /// for an identity that may not go on, 0x8C for a method other than
    /// `JWT`.
    ReauthRefused {
        code: u8,
        detail: String,
        /// What the refused token's signature vouched for, if it held:
        /// subject and key id, for the log line.
        signed: Option<(Option<String>, String)>,
    },
}

impl Ending {
    /// The DISCONNECT reason an MQTT 5 client is given, if the server is the
    /// side that ends the session.
    pub(super) fn reason(&self) -> Option<DisconnectReasonCode> {
        match self {
            // A client that does not read would not read a DISCONNECT.
            Ending::Disconnected { .. } | Ending::Vanished | Ending::WriteStalled => None,
            // Written raw, see `say_goodbye`.
            Ending::ReauthRefused { .. } => None,
            Ending::Protocol(violation) => Some(violation.reason_code()),
            Ending::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            // MQTT 5's "maximum connect time": the token's lifetime is the
            // connection's.
            Ending::TokenExpired => Some(DisconnectReasonCode::MaximumConnectTime),
            Ending::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            Ending::Administrative { .. } => Some(DisconnectReasonCode::AdministrativeAction),
            Ending::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            Ending::PublishDenied | Ending::Revoked(_) => Some(DisconnectReasonCode::NotAuthorized),
            Ending::SlowSubscriber | Ending::NotKept(CommitError::Full) => {
                Some(DisconnectReasonCode::QuotaExceeded)
            }
            Ending::NotKept(CommitError::Storage) => Some(DisconnectReasonCode::UnspecifiedError),
        }
    }

    pub(super) fn publishes_will(&self) -> bool {
        match self {
            Ending::Disconnected { publish_will } => *publish_will,
            // A revoked device's will was authorized by what is now revoked,
            // and so was that of a device whose new token was refused.
            Ending::TakenOver
            | Ending::Shutdown
            | Ending::Revoked(_)
            | Ending::ReauthRefused { .. } => false,
            // The device did not say goodbye: whoever watches its will
            // learns that it is gone, as when its link drops.
            Ending::Administrative { .. }
            | Ending::Vanished
            | Ending::Protocol(..)
            | Ending::KeepAliveTimeout
            | Ending::TokenExpired
            | Ending::PublishDenied
            | Ending::SlowSubscriber
            | Ending::NotKept(_)
            | Ending::WriteStalled => true,
        }
    }

    /// What `jwtgate_disconnects` counts it as.
    pub fn counted_as(&self) -> SessionEnd {
        match self {
            Ending::Disconnected { .. } => SessionEnd::Client,
            Ending::Vanished => SessionEnd::Vanished,
            Ending::Protocol(..) => SessionEnd::ProtocolError,
            Ending::KeepAliveTimeout => SessionEnd::KeepAliveTimeout,
            Ending::TokenExpired => SessionEnd::TokenExpired,
            Ending::TakenOver => SessionEnd::TakenOver,
            Ending::Administrative { .. } => SessionEnd::Administrative,
            Ending::Shutdown => SessionEnd::Shutdown,
            Ending::Revoked(_) => SessionEnd::Revoked,
            Ending::PublishDenied => SessionEnd::PublishDenied,
            Ending::SlowSubscriber => SessionEnd::SlowSubscriber,
            Ending::WriteStalled => SessionEnd::WriteStalled,
            Ending::ReauthRefused { .. } => SessionEnd::ReauthRefused,
            Ending::NotKept(_) => SessionEnd::NotKept,
        }
    }

    pub(super) fn detail(&self) -> Option<String> {
        match self {
            Ending::Protocol(violation) => Some(violation.to_string()),
            Ending::Revoked(detail) | Ending::ReauthRefused { detail, .. } => Some(detail.clone()),
            Ending::SlowSubscriber => Some(
                "the session's queue is full and the client does not read it fast enough".into(),
            ),
            Ending::NotKept(err) => Some(format!("what the client sent could not be kept: {err}")),
            Ending::Administrative { discard_session } => Some(
                if *discard_session {
                    "ended by an operator (jwtgate disconnect), its session discarded"
                } else {
                    "ended by an operator (jwtgate disconnect)"
                }
                .to_owned(),
            ),
            _ => None,
        }
    }
}

/// How a client broke the protocol. Each variant cites, in its doc and in
/// its text, the statement it enforces: MQTT 5's numbered ones where there
/// is one (they hold for 3.1.1 too unless said), the section otherwise,
/// and the `[limits]` setting for the bounds that are jwtgate's own.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolViolation {
    /// [MQTT-3.1.0-2]: a client sends CONNECT once per connection.
    #[error("[MQTT-3.1.0-2] second CONNECT")]
    SecondConnect,
    /// §2.1.2: a packet type that only flows from server to client. The
    /// codec lets none through; this is the dispatcher's own guard.
    #[error("[MQTT 5 §2.1.2] unexpected packet {0}")]
    UnexpectedPacket(String),
    /// §2.1.2: the codec met a packet type a client may not send.
    #[error("[MQTT 5 §2.1.2] packet type {0} may not be sent by a client")]
    ForbiddenPacketType(u8),
    /// [MQTT-3.2.2-15]: nothing larger than the Maximum Packet Size the
    /// server announced (`[limits] max_packet_size`).
    #[error("[MQTT-3.2.2-15] packet of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// §4.13: bytes that do not decode as the packet they claim to be.
    #[error("[MQTT 5 §4.13] {0}")]
    Malformed(CodecError),
    /// [MQTT-2.2.1-3]: PUBLISH (QoS 1/2), SUBSCRIBE and UNSUBSCRIBE carry
    /// a non-zero packet identifier, and so do the acks that answer them.
    #[error("[MQTT-2.2.1-3] packet identifier 0 on a {0}")]
    PacketIdZero(&'static str),
    /// [MQTT-3.8.3-2]: a SUBSCRIBE names at least one topic filter; MQTT 5
    /// §3.8.3 makes one without a Protocol Error.
    #[error("[MQTT-3.8.3-2] SUBSCRIBE without a topic filter")]
    SubscribeWithoutFilters,
    /// [MQTT-3.10.3-2]: an UNSUBSCRIBE names at least one topic filter;
    /// MQTT 5 §3.10.3 makes one without a Protocol Error.
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter")]
    UnsubscribeWithoutFilters,
    /// MQTT 5 §3.8.3.1: Maximum QoS 3 or Retain Handling 3 in a
    /// subscription's options is a Protocol Error.
    #[error("[MQTT 5 §3.8.3.1] subscription options: {0}")]
    SubscriptionOptions(&'static str),
    /// §3.14.2.2.2: a DISCONNECT may not set a session expiry when the
    /// CONNECT set none.
    #[error("[MQTT 5 §3.14.2.2.2] DISCONNECT sets a session expiry after CONNECT set none")]
    SessionExpiryAfterZero,
    /// §4.12.1: the only AUTH a client starts is re-authentication (0x19);
    /// the gateway sends no challenge to continue.
    #[error(
        "[MQTT 5 §4.12.1] AUTH reason {0:#04x}: the gateway sends no challenge, only re-authentication (0x19) is expected"
    )]
    AuthReason(u8),
    /// [MQTT-3.3.4-6]: a client's PUBLISH carries no subscription
    /// identifier.
    #[error("[MQTT-3.3.4-6] a client PUBLISH may not carry a subscription identifier")]
    SubscriptionIdOnPublish,
    /// [MQTT-1.5.4-1]: a topic is well-formed UTF-8; one that is not makes
    /// the packet malformed.
    #[error("[MQTT-1.5.4-1] topic is not UTF-8")]
    TopicNotUtf8,
    /// [MQTT-1.5.4-2], [MQTT-4.7.3-2]: a topic holds no U+0000; one that
    /// does makes the packet malformed.
    #[error("[MQTT-1.5.4-2] topic contains U+0000")]
    TopicNul,
    /// MQTT 5 §3.3.2.3.4: an empty topic name without a topic alias is a
    /// Protocol Error ([MQTT-4.7.3-1] in MQTT 3.1.1, which has no aliases).
    #[error("[MQTT 5 §3.3.2.3.4] empty topic name without a topic alias")]
    TopicEmpty,
    /// [MQTT-3.3.2-2]: a topic name holds no wildcards.
    #[error("[MQTT-3.3.2-2] {0}")]
    TopicName(TopicError),
    /// `[limits] max_topic_levels` and `max_topic_bytes`, which an MQTT
    /// 3.1.1 client's PUBACK cannot refuse one PUBLISH for.
    #[error("[limits] {0}")]
    TopicOverLimits(TopicError),
    /// [MQTT-3.3.4-7]: no more QoS 2 PUBLISHes awaiting PUBREL than the
    /// receive maximum announced in CONNACK.
    #[error("[MQTT-3.3.4-7] more than {0} QoS 2 messages awaiting PUBREL")]
    ReceiveMaximum(usize),
    /// [MQTT-3.3.2-8], [MQTT-3.3.2-9]: a topic alias is neither 0 nor over
    /// the maximum announced in CONNACK.
    #[error("[MQTT-3.3.2-9] topic alias {alias}; the maximum granted is {max}")]
    TopicAliasInvalid { alias: u16, max: u16 },
    /// §3.3.2.3.4: a PUBLISH with an empty topic names an alias the client
    /// has set.
    #[error("[MQTT 5 §3.3.2.3.4] topic alias {0} was never set")]
    TopicAliasUnset(u16),
    /// `[limits] max_property_bytes` bounds the topics held by the
    /// client's aliases too.
    #[error("[limits] topic aliases hold more bytes than max_property_bytes")]
    TopicAliasesTooLarge,
    /// §3.8.2.1.2: a subscription identifier is not 0.
    #[error("[MQTT 5 §3.8.2.1.2] subscription identifier 0")]
    SubscriptionIdZero,
    /// [MQTT-3.8.3-4]: No Local is not set on a shared subscription.
    #[error("[MQTT-3.8.3-4] No Local on a shared subscription")]
    NoLocalOnShared,
    /// MQTT 5: "It is a Protocol Error to include [a property] more than
    /// once", in the section of each property but User Property; the
    /// codec finds it before rumqttd's decoder keeps the last copy.
    #[error("{0} more than once")]
    DuplicateProperty(PropertyAt),
    /// MQTT 5 §3.3.2.3.2: a Payload Format Indicator is 0 (unspecified
    /// bytes) or 1 (UTF-8); another value is a Protocol Error.
    #[error("{at} of {value}, neither 0 nor 1")]
    PayloadFormatIndicator { at: PropertyAt, value: u8 },
}

impl ProtocolViolation {
    /// The DISCONNECT reason an MQTT 5 client is given.
    pub(super) fn reason_code(&self) -> DisconnectReasonCode {
        use ProtocolViolation::*;
        // MQTT 5 §1.2: a Malformed Packet is one that cannot be parsed; a
        // Protocol Error is found in a packet that parsed, such as a packet
        // identifier 0 or an empty filter list.
        match self {
            TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            Malformed(_) | TopicNotUtf8 | TopicNul => DisconnectReasonCode::MalformedPacket,
            TopicName(_) | TopicOverLimits(_) => DisconnectReasonCode::TopicNameInvalid,
            ReceiveMaximum(_) => DisconnectReasonCode::ReceiveMaximumExceeded,
            TopicAliasInvalid { .. } => DisconnectReasonCode::TopicAliasInvalid,
            TopicAliasesTooLarge => DisconnectReasonCode::QuotaExceeded,
            SecondConnect
            | UnexpectedPacket(_)
            | ForbiddenPacketType(_)
            | PacketIdZero(_)
            | SubscribeWithoutFilters
            | UnsubscribeWithoutFilters
            | SubscriptionOptions(_)
            | TopicEmpty
            | SessionExpiryAfterZero
            | AuthReason(_)
            | SubscriptionIdOnPublish
            | TopicAliasUnset(_)
            | SubscriptionIdZero
            | NoLocalOnShared
            | DuplicateProperty(_)
            | PayloadFormatIndicator { .. } => DisconnectReasonCode::ProtocolError,
        }
    }

    /// Every [`label`](Self::label), so that
    /// `jwtgate_protocol_violations_total` is exported at zero from the
    /// start, as every other refusal family is.
    pub(crate) const LABELS: [&'static str; 25] = [
        "second_connect",
        "unexpected_packet",
        "forbidden_packet_type",
        "packet_too_large",
        "malformed_packet",
        "packet_id_zero",
        "subscribe_without_filters",
        "unsubscribe_without_filters",
        "subscription_options",
        "session_expiry_after_zero",
        "auth_reason",
        "subscription_id_on_publish",
        "topic_not_utf8",
        "topic_nul",
        "topic_empty",
        "topic_name_invalid",
        "topic_over_limits",
        "receive_maximum_exceeded",
        "topic_alias_invalid",
        "topic_alias_unset",
        "topic_aliases_too_large",
        "subscription_id_zero",
        "no_local_on_shared",
        "duplicate_property",
        "payload_format_indicator",
    ];

    /// The `violation` label of `jwtgate_protocol_violations` and the log.
    pub(crate) fn label(&self) -> &'static str {
        use ProtocolViolation::*;
        match self {
            SecondConnect => "second_connect",
            UnexpectedPacket(_) => "unexpected_packet",
            ForbiddenPacketType(_) => "forbidden_packet_type",
            TooLarge { .. } => "packet_too_large",
            Malformed(_) => "malformed_packet",
            PacketIdZero(_) => "packet_id_zero",
            SubscribeWithoutFilters => "subscribe_without_filters",
            UnsubscribeWithoutFilters => "unsubscribe_without_filters",
            SubscriptionOptions(_) => "subscription_options",
            SessionExpiryAfterZero => "session_expiry_after_zero",
            AuthReason(_) => "auth_reason",
            SubscriptionIdOnPublish => "subscription_id_on_publish",
            TopicNotUtf8 => "topic_not_utf8",
            TopicNul => "topic_nul",
            TopicEmpty => "topic_empty",
            TopicName(_) => "topic_name_invalid",
            TopicOverLimits(_) => "topic_over_limits",
            ReceiveMaximum(_) => "receive_maximum_exceeded",
            TopicAliasInvalid { .. } => "topic_alias_invalid",
            TopicAliasUnset(_) => "topic_alias_unset",
            TopicAliasesTooLarge => "topic_aliases_too_large",
            SubscriptionIdZero => "subscription_id_zero",
            NoLocalOnShared => "no_local_on_shared",
            DuplicateProperty(_) => "duplicate_property",
            PayloadFormatIndicator { .. } => "payload_format_indicator",
        }
    }
}

impl ProtocolViolation {
    /// The rule a PUBLISH's topic name (after its alias) breaks.
    pub(super) fn of_topic(e: TopicError) -> ProtocolViolation {
        match e {
            TopicError::Empty => ProtocolViolation::TopicEmpty,
            TopicError::Nul => ProtocolViolation::TopicNul,
            other => ProtocolViolation::TopicName(other),
        }
    }
}

impl From<CodecError> for ProtocolViolation {
    fn from(e: CodecError) -> ProtocolViolation {
        match e {
            CodecError::TooLarge { size, limit } => ProtocolViolation::TooLarge { size, limit },
            CodecError::ForbiddenPacketType(kind) => ProtocolViolation::ForbiddenPacketType(kind),
            CodecError::PacketIdZero => ProtocolViolation::PacketIdZero("PUBLISH"),
            CodecError::SubscribeWithoutFilters => ProtocolViolation::SubscribeWithoutFilters,
            CodecError::SubscriptionOptions(what) => ProtocolViolation::SubscriptionOptions(what),
            CodecError::DuplicateProperty(at) => ProtocolViolation::DuplicateProperty(at),
            CodecError::PayloadFormatIndicator { at, value } => {
                ProtocolViolation::PayloadFormatIndicator { at, value }
            }
            // Only a CONNECT carries it, and a CONNECT once a session is up
            // is a second one, whatever its flags say.
            CodecError::PasswordWithoutUsername => ProtocolViolation::SecondConnect,
            other => ProtocolViolation::Malformed(other),
        }
    }
}

#[cfg(test)]
mod tests;
