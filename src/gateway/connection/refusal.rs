//! Why a CONNECT is refused, what each protocol version is told, and the
//! checks of a CONNECT's own form that come before its token is read.
//!
//! MQTT 5 answers a refused CONNECT with a CONNACK reason code (§3.2.2.2)
//! and closes. MQTT 3.1.1 has six return codes and no word for a broken
//! rule: a CONNECT that does not conform to its §3.1 is closed without a
//! CONNACK ([MQTT-3.1.4-1] of 3.1.1), and the other refusals get the
//! nearest of the six (the codec maps them).

use rumqttd::protocol::{ConnectProperties, ConnectReturnCode, LastWill};

use crate::metrics::ConnectOutcome;
use crate::mqtt::{TopicError, TopicLimits, Version};

/// Why the gateway refused a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A CONNECT that parsed but breaks a rule of the protocol.
    ProtocolError,
    /// A CONNECT that breaks the form of its fields (a will topic that is
    /// not UTF-8 or holds U+0000, [MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    Malformed,
    BadCredentials,
    NotAuthorized,
    BadClientId,
    BadAuthenticationMethod,
    QuotaExceeded,
    /// A will topic that is no topic name: empty or with a wildcard.
    TopicNameInvalid,
    /// A will topic over `[limits] max_topic_levels` / `max_topic_bytes`:
    /// valid MQTT, refused by this gateway.
    TopicOverLimits,
    /// Every place for an authenticated connection is taken.
    Busy,
    Unavailable,
}

/// A refusal and the reason the log gives for it.
pub(super) type Refused = (Refusal, String);

impl Refusal {
    /// The outcome counted for a refusal that is not the token's fault
    /// (a token's own failure is counted by its reason).
    pub(super) fn outcome(self) -> ConnectOutcome {
        match self {
            Refusal::ProtocolError => ConnectOutcome::ProtocolError,
            Refusal::Malformed => ConnectOutcome::MalformedPacket,
            Refusal::BadCredentials => ConnectOutcome::BadUsername,
            Refusal::NotAuthorized => ConnectOutcome::NotAuthorized,
            Refusal::BadClientId => ConnectOutcome::BadClientId,
            Refusal::BadAuthenticationMethod => ConnectOutcome::BadAuthMethod,
            Refusal::QuotaExceeded => ConnectOutcome::QuotaExceeded,
            Refusal::TopicNameInvalid | Refusal::TopicOverLimits => {
                ConnectOutcome::TopicNameInvalid
            }
            Refusal::Busy => ConnectOutcome::ServerBusy,
            Refusal::Unavailable => ConnectOutcome::ServerUnavailable,
        }
    }

    /// The MQTT 5 reason code (the codec maps it for MQTT 3.1.1).
    pub(super) fn code(self) -> ConnectReturnCode {
        match self {
            Refusal::ProtocolError => ConnectReturnCode::ProtocolError,
            Refusal::Malformed => ConnectReturnCode::MalformedPacket,
            Refusal::BadCredentials => ConnectReturnCode::BadUserNamePassword,
            Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
            Refusal::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
            Refusal::BadAuthenticationMethod => ConnectReturnCode::BadAuthenticationMethod,
            Refusal::QuotaExceeded => ConnectReturnCode::QuotaExceeded,
            Refusal::TopicNameInvalid | Refusal::TopicOverLimits => {
                ConnectReturnCode::TopicNameInvalid
            }
            Refusal::Busy => ConnectReturnCode::ServerBusy,
            Refusal::Unavailable => ConnectReturnCode::ServerUnavailable,
        }
    }

    /// Whether the client is told with a CONNACK before the close. A
    /// malformed CONNECT is closed without one, as before its token is
    /// read (MQTT 5 §4.13.1 makes the CONNACK optional); MQTT 3.1.1 has
    /// no return code for a broken rule and closes ([MQTT-3.1.4-1] of
    /// 3.1.1).
    pub(super) fn answered(self, version: Version) -> bool {
        match self {
            Refusal::Malformed => false,
            Refusal::ProtocolError | Refusal::TopicNameInvalid => version.is_v5(),
            _ => true,
        }
    }
}

/// What MQTT 5 makes a Protocol Error in a CONNECT's properties
/// (§3.1.2.11); rumqttd's decoder takes any value.
pub(super) fn check_connect_properties(
    properties: Option<&ConnectProperties>,
) -> Result<(), Refused> {
    let Some(p) = properties else {
        return Ok(());
    };
    let broken = if p.receive_maximum == Some(0) {
        "[MQTT 5 §3.1.2.11.3] Receive Maximum 0"
    } else if p.max_packet_size == Some(0) {
        "[MQTT 5 §3.1.2.11.4] Maximum Packet Size 0"
    } else if p.request_response_info.is_some_and(|v| v > 1) {
        "[MQTT 5 §3.1.2.11.6] Request Response Information other than 0 or 1"
    } else if p.request_problem_info.is_some_and(|v| v > 1) {
        "[MQTT 5 §3.1.2.11.7] Request Problem Information other than 0 or 1"
    } else if p.authentication_data.is_some() && p.authentication_method.is_none() {
        "[MQTT 5 §3.1.2.11.10] Authentication Data without an Authentication Method"
    } else {
        return Ok(());
    };
    Err((Refusal::ProtocolError, broken.to_owned()))
}

/// The will's topic, if it is a valid topic name within `limits`: checked
/// before the token is read or any grant consulted, since a topic that is
/// no topic name is refused whoever sends it.
pub(super) fn will_topic<'a>(limits: &TopicLimits, will: &'a LastWill) -> Result<&'a str, Refused> {
    let topic = std::str::from_utf8(&will.topic).map_err(|_| {
        (
            Refusal::Malformed,
            "[MQTT-1.5.4-1] will topic is not UTF-8".to_owned(),
        )
    })?;
    limits.topic_name(topic).map_err(|e| {
        let (refusal, rule) = match e {
            TopicError::Nul => (Refusal::Malformed, "[MQTT-1.5.4-2]"),
            TopicError::Empty => (Refusal::TopicNameInvalid, "[MQTT-4.7.3-1]"),
            TopicError::Wildcard(_) => (Refusal::TopicNameInvalid, "[MQTT-4.7.1-1]"),
            TopicError::TooLong { .. } => (Refusal::TopicNameInvalid, "[MQTT 5 §1.5.4]"),
            TopicError::Limit(_) => (Refusal::TopicOverLimits, "[limits]"),
        };
        (refusal, format!("{rule} will topic: {e}"))
    })?;
    Ok(topic)
}

#[cfg(test)]
mod tests;
