//! Why a session ended, and what that means for the client: the
//! DISCONNECT it is told, whether its will is published, and how the
//! end is counted.

use rumqttd::protocol::DisconnectReasonCode;

use crate::broker::CommitError;
use crate::metrics::SessionEnd;

/// Why a session ended.
#[derive(Debug)]
pub(in crate::gateway) enum Ending {
    /// The client sent DISCONNECT; MQTT 5 may still ask for its will.
    Disconnected {
        publish_will: bool,
    },
    /// The socket closed or failed without a DISCONNECT.
    Vanished,
    /// The client broke the protocol.
    Protocol(DisconnectReasonCode, String),
    KeepAliveTimeout,
    TokenExpired,
    TakenOver,
    Shutdown,
    /// After a reload the token no longer verifies: its key was removed or
    /// replaced, or the deny list names it.
    Revoked(String),
    /// A PUBLISH was refused and `deny_publish = "disconnect"`.
    PublishDenied,
    /// The session's queue overflowed under the `disconnect` policy.
    SlowSubscriber,
    /// A message of an MQTT 3.1.1 client could not be kept, which its
    /// ack has no way to say: it is closed without one.
    NotKept(CommitError),
    /// The client read nothing of what it was sent for
    /// `[limits] write_timeout_secs`.
    WriteStalled,
    /// A re-authentication (MQTT 5 AUTH) was refused. `code` is the
    /// DISCONNECT reason, written by [`enhanced`] since rumqttd cannot
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
            Ending::Protocol(code, _) => Some(*code),
            Ending::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            // MQTT 5's "maximum connect time": the token's lifetime is the
            // connection's.
            Ending::TokenExpired => Some(DisconnectReasonCode::MaximumConnectTime),
            Ending::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
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
            Ending::Vanished
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
            Ending::Protocol(_, detail)
            | Ending::Revoked(detail)
            | Ending::ReauthRefused { detail, .. } => Some(detail.clone()),
            Ending::SlowSubscriber => Some(
                "the session's queue is full and the client does not read it fast enough".into(),
            ),
            Ending::NotKept(err) => Some(format!("a message could not be kept: {err}")),
            _ => None,
        }
    }
}
