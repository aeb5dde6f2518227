//! One client connection, from its CONNECT to its last byte.
//!
//! A connection goes through three phases:
//!
//! 1. **CONNECT** (this module): the first packet must arrive within the
//!    connect timeout, be no larger than `[limits] max_connect_packet_size`,
//!    and the connection must keep its stranger's place
//!    ([`super::pending`]) meanwhile. The gateway answers it itself:
//!    username `JWT`, a token that verifies against the current key set, a
//!    will the token allows, MQTT 5 properties within their caps, a free
//!    place among the authenticated connections. A refusal gets the
//!    CONNACK code the client's protocol version has for it, then the
//!    connection is closed. An accepted client gives back its stranger's
//!    place, takes its session from the routing core (after any older
//!    connection of the same session has let go of it) and gets its
//!    CONNACK.
//! 2. **Session** ([`super::session`] around [`super::client`]): the loop
//!    that authorizes and routes what the client sends and writes what its
//!    session receives.
//! 3. **Teardown** ([`super::session::finish`]): the will, the last
//!    DISCONNECT, and the session handed back to the routing core.

// Untrusted input (it drives a connection from its first byte): fail with an
// error, never a panic. Tests are exempt through clippy.toml; an exception
// in this code carries an `#[allow]` saying why it cannot fail. See
// "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode, LastWill, LastWillProperties,
    Login, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Shared;
use super::client::{Client, ClientLimits, Identity};
use super::codec::{Codec, CodecError, Inbound, Version, broker_qos, sniff_version};
use super::pending::Pending;
use super::session::{self, Timers};
use super::wire::Wire;
use crate::acl::validate_topic_name;
use crate::broker::{Properties, Publication, SessionKey, Will};
use crate::token::{self, TokenError, VerifiedToken};

/// How long a new connection waits for an older one of the same session
/// to let go of it.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// How long a refused client gets to read its CONNACK.
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

/// Why the gateway refused a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadCredentials,
    NotAuthorized,
    BadClientId,
    BadAuthenticationMethod,
    QuotaExceeded,
    /// Every place for an authenticated connection is taken.
    Busy,
    Unavailable,
}

impl Refusal {
    fn code(self) -> ConnectReturnCode {
        match self {
            Refusal::BadCredentials => ConnectReturnCode::BadUserNamePassword,
            Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
            Refusal::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
            Refusal::BadAuthenticationMethod => ConnectReturnCode::BadAuthenticationMethod,
            Refusal::QuotaExceeded => ConnectReturnCode::QuotaExceeded,
            Refusal::Busy => ConnectReturnCode::ServerBusy,
            Refusal::Unavailable => ConnectReturnCode::ServerUnavailable,
        }
    }
}

/// A CONNECT, taken apart.
struct ConnectRequest {
    client_id: String,
    /// The client asked for no id and gets a generated one.
    assigned_id: bool,
    clean_start: bool,
    keep_alive: u16,
    properties: Option<ConnectProperties>,
    will: Option<(LastWill, Option<LastWillProperties>)>,
    login: Option<Login>,
}

/// Serves one accepted (TLS-established) connection to the end.
pub(super) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    pending: Pending,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(4096);
    let limit = shared.limits.max_packet_size;
    let connect_limit = shared.limits.max_connect_packet_size.min(limit);
    let first = tokio::select! {
        () = pending.evicted() => {
            debug!(%peer, "no CONNECT yet, and a newer connection took its place");
            return;
        }
        first = tokio::time::timeout(
            shared.limits.connect_timeout,
            read_version(&mut stream, &mut input, connect_limit),
        ) => first,
    };
    let version = match first {
        Ok(Ok(version)) => version,
        Ok(Err(ConnectReadError::Codec(CodecError::UnsupportedProtocol { name, level }))) => {
            info!(%peer, protocol = ?name, level, "refused: unsupported protocol version");
            // 3.1.1's "unacceptable protocol version", which MQTT 5 also
            // prescribes for levels it does not speak.
            let _ =
                tokio::time::timeout(REFUSAL_WRITE, stream.write_all(&[0x20, 0x02, 0x00, 0x01]))
                    .await;
            let _ = tokio::time::timeout(REFUSAL_WRITE, stream.shutdown()).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "closed before a valid CONNECT");
            return;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            return;
        }
    };
    let mut wire = Wire::new(stream, Codec::new(version, limit), input);
    let request = match wire.output.codec().decode(&mut wire.input) {
        Ok(Some(Inbound {
            packet: Packet::Connect(connect, properties, will, will_properties, login),
            ..
        })) => {
            let assigned_id = connect.client_id.is_empty();
            ConnectRequest {
                client_id: if assigned_id {
                    generated_client_id()
                } else {
                    connect.client_id
                },
                assigned_id,
                clean_start: connect.clean_session,
                keep_alive: connect.keep_alive,
                properties,
                will: will.map(|w| (w, will_properties)),
                login,
            }
        }
        Ok(_) | Err(_) => {
            debug!(%peer, "malformed CONNECT");
            return;
        }
    };
    if wire.input.is_empty() {
        // The CONNECT needed a few KiB (it carries the token); an idle
        // device should not keep them.
        wire.input = BytesMut::new();
    }
    let ConnectRequest {
        client_id,
        assigned_id,
        clean_start,
        keep_alive,
        properties,
        will,
        login,
    } = request;

    // Reloads are watched from before the token is verified: a key removed
    // or a deny-list entry added while this client waits for its session
    // must still reach it.
    let mut reloads = shared.reloads.clone();
    reloads.mark_unchanged();
    let admitted = admit(&shared, &client_id, !assigned_id || clean_start, login).and_then(
        |(token, credential)| {
            check_properties(&shared, properties.as_ref(), will.as_ref())?;
            let will = will
                .map(|(will, properties)| will_of(&token, will, properties))
                .transpose()?;
            Ok((token, credential, will))
        },
    );
    let (token, credential, will) = match admitted {
        Ok(admitted) => admitted,
        Err((refusal, reason)) => {
            info!(%peer, client_id, reason = %reason, code = ?refusal.code(), "connection refused");
            refuse(&mut wire, refusal).await;
            return;
        }
    };

    // Sessions are keyed by subject as well as client id, so one device
    // cannot take over (or resume) another device's session by using its
    // client id.
    let key = SessionKey::new(token.subject.as_deref().unwrap_or(""), &client_id);
    let mut claim = match shared.takeover.claim(&key, TAKEOVER_WAIT).await {
        Ok(claim) => claim,
        Err(e) => {
            warn!(%peer, client_id, error = %e, "connection refused");
            refuse(&mut wire, Refusal::Unavailable).await;
            return;
        }
    };
    // A place among the authenticated connections, taken once an older
    // connection of this session has let go of its own: a device whose
    // old connection lingers is not refused at capacity.
    let Ok(place) = Arc::clone(&shared.sessions).try_acquire_owned() else {
        let reason = format!(
            "all {} places for connections are taken ([limits] max_connections)",
            shared.limits.max_connections
        );
        info!(%peer, client_id, reason = %reason, code = ?Refusal::Busy.code(), "connection refused");
        refuse(&mut wire, Refusal::Busy).await;
        return;
    };
    // Authenticated, with a place: no longer a stranger.
    drop(pending);
    let mut attached = shared.broker.attach(key, clean_start);

    let max_session_expiry = shared.broker.settings().max_session_expiry;
    let requested_expiry = match (version.is_v5(), clean_start) {
        (true, _) => Duration::from_secs(
            properties
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .map_or(0, u64::from),
        ),
        // MQTT 3.1.1 has no expiry: a persistent session lasts as long as
        // the gateway keeps any.
        (false, false) => max_session_expiry,
        (false, true) => Duration::ZERO,
    };
    let session_expiry = requested_expiry.min(max_session_expiry);
    let (keep_alive, server_keep_alive) = match shared.limits.max_keep_alive {
        Some(max) if keep_alive == 0 || keep_alive > max => (max, Some(max)),
        _ => (keep_alive, None),
    };
    let client_limits = ClientLimits::new(
        shared.broker.settings(),
        &shared.limits,
        properties.as_ref(),
    );

    let ack = ConnAck {
        session_present: attached.present,
        code: ConnectReturnCode::Success,
    };
    let ack_properties = version.is_v5().then(|| ConnAckProperties {
        assigned_client_identifier: assigned_id.then(|| client_id.clone()),
        session_expiry_interval: (requested_expiry > session_expiry)
            .then(|| u32::try_from(session_expiry.as_secs()).unwrap_or(u32::MAX)),
        max_packet_size: u32::try_from(limit).ok(),
        receive_max: Some(shared.broker.settings().max_inflight),
        topic_alias_max: (shared.limits.max_topic_aliases > 0)
            .then_some(shared.limits.max_topic_aliases),
        server_keep_alive,
        retain_available: Some(1),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        ..ConnAckProperties::default()
    });
    wire.output.queue(Packet::ConnAck(ack, ack_properties));
    info!(
        %peer,
        client_id,
        sub = token.subject.as_deref().unwrap_or(""),
        kid = token.key_id,
        version = version.as_str(),
        session_present = attached.present,
        "client connected"
    );
    if attached.present {
        // A resumed session may hold subscriptions made under an older,
        // wider token.
        let dropped =
            shared
                .broker
                .restrict(&attached.session, &token.grants, &mut attached.inflight);
        for filter in dropped {
            info!(
                client_id,
                filter, "subscription dropped: the new token does not grant it"
            );
        }
    }

    let keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let expires_at = token
        .expires_at
        .and_then(|exp| deadline_from_unix(exp.saturating_add(shared.leeway.as_secs())));
    let id = Identity {
        client_id,
        version,
        credential,
        grants: token.grants,
    };
    let mut client = Client::new(
        Arc::clone(&shared.broker),
        shared.deny_publish,
        id,
        will,
        attached,
        session_expiry,
        client_limits,
    );
    let timers = Timers {
        keep_alive,
        expires_at,
    };
    let ending = session::run(
        &mut client,
        &mut wire,
        &shared,
        &mut claim,
        reloads,
        shutdown,
        timers,
    )
    .await;
    session::finish(client, &mut wire, ending).await;
    // Only now, with the session handed back and its place given up, may a
    // newer connection of this client take them.
    drop(place);
    drop(claim);
}

/// Errors while waiting for the CONNECT.
#[derive(Debug, thiserror::Error)]
enum ConnectReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
}

async fn read_version<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut BytesMut,
    limit: usize,
) -> Result<Version, ConnectReadError> {
    loop {
        if let Some(version) = sniff_version(input, limit)? {
            return Ok(version);
        }
        if stream.read_buf(input).await? == 0 {
            return Err(ConnectReadError::Closed);
        }
    }
}

type Refused = (Refusal, String);

/// Decides whether a CONNECT's credentials may become a session. Returns
/// the verified token and the credential (kept to re-check it), or the
/// refusal and a reason for the log.
fn admit(
    shared: &Shared,
    client_id: &str,
    id_acceptable: bool,
    login: Option<Login>,
) -> Result<(VerifiedToken, String), Refused> {
    let login = login.ok_or((Refusal::BadCredentials, "no username".to_owned()))?;
    if login.username != "JWT" {
        return Err((Refusal::BadCredentials, "username is not JWT".to_owned()));
    }
    // A client without an id must ask for a clean session: there is no
    // session of its to resume.
    if !id_acceptable {
        return Err((
            Refusal::BadClientId,
            "empty client id with a persistent session".to_owned(),
        ));
    }
    let keys = shared.keys.snapshot();
    let token = token::verify(&login.password, &keys, &shared.policy).map_err(|e| {
        // A token that verifies but carries no usable grant is a valid
        // identity without rights; anything else is a bad credential.
        let refusal = match &e {
            // Revocation too: the token is authentic, the identity may not
            // connect; it matches the DISCONNECT a live connection gets.
            // A token without a subject is authentic too, but names no one
            // a session could belong to.
            TokenError::MissingTopics
            | TokenError::BadTopicsClaim
            | TokenError::Revoked { .. }
            | TokenError::MissingSubject => Refusal::NotAuthorized,
            _ => Refusal::BadCredentials,
        };
        (refusal, e.to_string())
    })?;
    for (filter, why) in &token.rejected_filters {
        warn!(client_id, filter, reason = %why, "ignoring an invalid filter in the token");
    }
    if !token.grants.may_connect() {
        return Err((
            Refusal::NotAuthorized,
            "the token grants no topics".to_owned(),
        ));
    }
    Ok((token, login.password))
}

/// MQTT 5 extras of a CONNECT: no enhanced authentication, and property
/// sections within `[limits] max_property_bytes`.
fn check_properties(
    shared: &Shared,
    properties: Option<&ConnectProperties>,
    will: Option<&(LastWill, Option<LastWillProperties>)>,
) -> Result<(), Refused> {
    if let Some(method) = properties.and_then(|p| p.authentication_method.as_ref()) {
        return Err((
            Refusal::BadAuthenticationMethod,
            format!("enhanced authentication ({method}) is not supported"),
        ));
    }
    let user_bytes = |pairs: &[(String, String)]| -> usize {
        pairs.iter().map(|(k, v)| 4 + k.len() + v.len()).sum()
    };
    let bytes = properties.map_or(0, |p| user_bytes(&p.user_properties))
        + will
            .and_then(|(_, p)| p.as_ref())
            .map_or(0, |p| user_bytes(&p.user_properties));
    if bytes > shared.limits.max_property_bytes {
        return Err((
            Refusal::QuotaExceeded,
            format!(
                "{bytes} bytes of user properties; at most {} allowed",
                shared.limits.max_property_bytes
            ),
        ));
    }
    Ok(())
}

/// The will of a CONNECT, if the token lets the client publish it.
fn will_of(
    token: &VerifiedToken,
    will: LastWill,
    properties: Option<LastWillProperties>,
) -> Result<Will, Refused> {
    let topic = std::str::from_utf8(&will.topic)
        .ok()
        .filter(|t| validate_topic_name(t).is_ok())
        .ok_or((
            Refusal::NotAuthorized,
            "will topic is not a valid topic".to_owned(),
        ))?;
    if !token.grants.may_publish(topic) {
        return Err((
            Refusal::NotAuthorized,
            "will topic is not granted".to_owned(),
        ));
    }
    let properties = properties.unwrap_or(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    });
    Ok(Will {
        publication: Publication {
            topic: topic.to_owned(),
            payload: will.message,
            qos: broker_qos(will.qos),
            retain: will.retain,
            properties: Properties {
                payload_format_indicator: properties.payload_format_indicator,
                content_type: properties.content_type,
                response_topic: properties.response_topic,
                correlation_data: properties.correlation_data,
                user_properties: properties.user_properties,
            },
            expiry: properties
                .message_expiry_interval
                .map(|secs| Duration::from_secs(secs.into())),
        },
        delay: Duration::from_secs(properties.delay_interval.map_or(0, u64::from)),
    })
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<S>, refusal: Refusal) {
    let ack = ConnAck {
        session_present: false,
        code: refusal.code(),
    };
    wire.output.queue(Packet::ConnAck(ack, None));
    wire.close(REFUSAL_WRITE).await;
}

fn generated_client_id() -> String {
    let mut bytes = [0u8; 8];
    // Uniqueness, not secrecy, is what matters; a failure of the system RNG
    // still leaves the time-based part.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("jwtgate-{:016x}{nanos:08x}", u64::from_be_bytes(bytes))
}

/// Converts a unix time into a tokio deadline; `None` when it is too far
/// ahead for the clock to represent (a token with `exp` = 2^63 never
/// expires in practice).
fn deadline_from_unix(unix_secs: u64) -> Option<Instant> {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let target = Duration::from_secs(unix_secs);
    Instant::now().checked_add(target.saturating_sub(now_unix))
}
