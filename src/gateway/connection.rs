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
//!    connection is closed; a CONNECT that breaks a rule of the protocol
//!    is refused before its token is read, and MQTT 3.1.1, which has no
//!    code for that, is closed without a CONNACK (`refusal`). An accepted client gives back its stranger's
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
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::{debug, info};

use super::authenticate::{Authenticated, FailureKind, authenticate};
use super::client::{Client, ClientLimits, Identity};
use super::codec::auth;
use super::codec::{Codec, CodecError, Inbound, sniff_version};
use super::pending::Pending;
use super::session::{self, Timers};
use super::shared::Shared;
use super::takeover::{Claim, Live};
use super::wire::Wire;
use crate::acl::Grants;
use crate::broker::{Properties, Publication, SessionKey, Will};
use crate::metrics::{ConnectOutcome, Connected, Metrics};
use crate::mqtt::TopicLimits;
use crate::mqtt::{QoS, Transport, Version};
use crate::tls::Thumbprint;
use refusal::{Refusal, Refused, check_connect_properties, will_topic};

/// How long a new connection waits for an older one of the same session
/// to let go of it.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// How long a refused client gets to read its CONNACK.
const REFUSAL_WRITE: Duration = Duration::from_secs(2);

mod refusal;

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

/// Who is at the other end of a connection: its address, what carries
/// its MQTT bytes, and the client certificate it presented, if any. Shown
/// as the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// `[tls] client_ca`: the verified client certificate's thumbprint.
    pub certificate: Option<Thumbprint>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// Serves one accepted connection (TLS up, and for a WebSocket its
/// upgrade done) to the end.
pub(crate) async fn serve<S>(
    stream: S,
    peer: Peer,
    pending: Pending,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Boxed: admission (the CONNECT, the token, the takeover wait) holds
    // far more than a session that runs; inline, every idle device's task
    // would keep room for it, twice what its session needs.
    let Some(mut admitted) = Box::pin(take_connect(stream, peer, pending, &shared)).await else {
        return;
    };
    // The session runs on the admitted client's fields in place: handed to
    // a function of its own by value, the client would be held twice (its
    // argument and its local are apart in a future).
    let ending = session::run(
        &mut admitted.client,
        &mut admitted.wire,
        &shared,
        &mut admitted.claim,
        admitted.reloads,
        shutdown,
        admitted.timers,
    )
    .await;
    // Boxed, as the refusals' last words are: the state machine of a
    // connection's task is as large as its largest step, and this one (the
    // client moved in, the close under its deadline) would otherwise
    // double what every idle connection holds.
    Box::pin(session::finish(
        admitted.client,
        &mut admitted.wire,
        ending,
        &shared.metrics,
    ))
    .await;
    // Only now, with the session handed back and its place given up, may a
    // newer connection of this client take them.
    drop(admitted.place);
    drop(admitted.claim);
    drop(admitted.connected);
}

/// A client let in: what its session runs with.
struct Admitted<S> {
    client: Client,
    wire: Wire<S>,
    claim: Claim,
    place: OwnedSemaphorePermit,
    reloads: watch::Receiver<u64>,
    timers: Timers,
    connected: Connected,
}

/// Takes the CONNECT and answers it; the session to run when the client
/// is let in, `None` when it was refused (and told) or went away.
async fn take_connect<S>(
    mut stream: S,
    peer: Peer,
    pending: Pending,
    shared: &Arc<Shared>,
) -> Option<Admitted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(4096);
    let limit = shared.limits.max_packet_size;
    let connect_limit = shared.limits.max_connect_packet_size.min(limit);
    let first = tokio::select! {
        () = pending.evicted() => {
            debug!(%peer, "no CONNECT yet, and a newer connection took its place");
            return None;
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
            shared.metrics.connect(ConnectOutcome::UnsupportedProtocol);
            // 3.1.1's "unacceptable protocol version", which MQTT 5 also
            // prescribes for levels it does not speak.
            let _ =
                tokio::time::timeout(REFUSAL_WRITE, stream.write_all(&[0x20, 0x02, 0x00, 0x01]))
                    .await;
            let _ = tokio::time::timeout(REFUSAL_WRITE, stream.shutdown()).await;
            return None;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "closed before a valid CONNECT");
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
    };
    let mut wire = Wire::new(
        stream,
        Codec::new(version, limit),
        input,
        shared.metrics.traffic(),
    );
    let request = match wire.output.codec().decode(&mut wire.input) {
        Ok(Some(Inbound::Packet {
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
        Err(e) if e.is_protocol_error() => {
            // A CONNECT that parses but breaks a rule the codec checks on
            // the frame (a property given twice, a will's Payload Format
            // Indicator over 1, a 3.1.1 password without a user name):
            // refused like the rules of `refusal`, before the token is read.
            let refused = (Refusal::ProtocolError, e.to_string());
            Rejection::from(refused).report(&peer, "", &shared.metrics);
            refuse(&mut wire, Refusal::ProtocolError, version).await;
            return None;
        }
        Ok(_) | Err(_) => {
            // Closed without a CONNACK (MQTT 5 §4.13.1 makes it optional,
            // 3.1.1's [MQTT-3.1.4-1] forbids it), but counted.
            debug!(%peer, "malformed CONNECT");
            shared.metrics.connect(ConnectOutcome::MalformedPacket);
            return None;
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
    // The CONNECT's own form first: a rule broken is refused whoever sends
    // it, before the token is read or a grant consulted.
    let admitted = check_connect_properties(properties.as_ref())
        .and_then(|()| {
            will.as_ref()
                .map(|(will, _)| will_topic(&shared.limits.topics, will))
                .transpose()
        })
        .and_then(|_| credentials(login, properties.as_ref()))
        .map_err(Rejection::from)
        .and_then(|credentials| {
            admit(
                shared,
                &client_id,
                !assigned_id || clean_start,
                peer.certificate,
                credentials,
            )
        })
        .and_then(|(authenticated, credentials)| {
            let will = check_properties(shared, properties.as_ref(), will.as_ref())
                .and_then(|()| {
                    will.map(|(will, properties)| {
                        will_of(
                            &authenticated.grants,
                            &shared.limits.topics,
                            will,
                            properties,
                        )
                    })
                    .transpose()
                })
                .map_err(|refused| Rejection::of(&authenticated, refused))?;
            Ok((authenticated, credentials, will))
        });
    let (authenticated, credentials, will) = match admitted {
        Ok(admitted) => admitted,
        Err(rejection) => {
            rejection.report(&peer, &client_id, &shared.metrics);
            refuse(&mut wire, rejection.refusal, version).await;
            return None;
        }
    };

    // Sessions are keyed by subject as well as client id, so one device
    // cannot take over (or resume) another device's session by using its
    // client id.
    let token = &authenticated.token;
    let key = SessionKey::new(token.subject.as_deref().unwrap_or(""), &client_id);
    let mut claim = match shared.takeover.claim(&key, TAKEOVER_WAIT).await {
        Ok(claim) => claim,
        Err(e) => {
            Rejection::of(&authenticated, (Refusal::Unavailable, e.to_string())).report(
                &peer,
                &client_id,
                &shared.metrics,
            );
            refuse(&mut wire, Refusal::Unavailable, version).await;
            return None;
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
        Rejection::of(&authenticated, (Refusal::Busy, reason)).report(
            &peer,
            &client_id,
            &shared.metrics,
        );
        refuse(&mut wire, Refusal::Busy, version).await;
        return None;
    };
    // Authenticated, with a place: no longer a stranger.
    drop(pending);
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
    let attached = match shared.broker.attach(key, clean_start, session_expiry) {
        Ok(attached) => attached,
        Err(e) => {
            Rejection::of(&authenticated, (Refusal::QuotaExceeded, e.to_string())).report(
                &peer,
                &client_id,
                &shared.metrics,
            );
            refuse(&mut wire, Refusal::QuotaExceeded, version).await;
            return None;
        }
    };
    let (keep_alive, server_keep_alive) = match shared.limits.max_keep_alive {
        Some(max) if keep_alive == 0 || keep_alive > max => (max, Some(max)),
        _ => (keep_alive, None),
    };
    let client_limits = ClientLimits::new(
        shared.broker.settings(),
        &shared.limits,
        shared.deny_publish,
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
        authentication_method: credentials.enhanced.then(|| auth::METHOD.to_owned()),
        ..ConnAckProperties::default()
    });
    wire.output.queue(Packet::ConnAck(ack, ack_properties));
    info!(
        remote = %peer,
        client_id,
        sub = token.subject.as_deref().unwrap_or(""),
        kid = token.key_id,
        outcome = "accepted",
        reason = "",
        code = ?ConnectReturnCode::Success,
        version = version.as_str(),
        transport = peer.transport.as_str(),
        session_present = attached.present,
        "client connected"
    );
    shared.metrics.connect(ConnectOutcome::Accepted);
    claim.go_live(Live::new(
        peer.addr,
        peer.transport,
        version,
        token.expires_at,
    ));
    let connected = shared.metrics.connected(version, peer.transport);
    let resumed = attached.present;
    let keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let expires_at = authenticated.deadline(shared.leeway);
    let id = Identity {
        remote: peer.addr,
        certificate: peer.certificate,
        client_id,
        version,
        subject: authenticated.token.subject,
        username: credentials.username,
        credential: authenticated.credential,
        grants: authenticated.grants,
    };
    let mut client = Client::new(
        Arc::clone(&shared.broker),
        Arc::clone(&shared.metrics),
        id,
        will,
        attached,
        session_expiry,
        client_limits,
    );
    if resumed {
        // A resumed session may hold subscriptions made under an older,
        // wider token.
        client.narrow_to_grants();
    }
    let timers = Timers {
        keep_alive,
        expires_at,
    };
    Some(Admitted {
        client,
        wire,
        claim,
        place,
        reloads,
        timers,
        connected,
    })
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

/// A refused CONNECT, with what is known of whose token it carried: the
/// one log line of a refusal, with the same fields as an acceptance's.
struct Rejection {
    refusal: Refusal,
    outcome: ConnectOutcome,
    reason: String,
    subject: Option<String>,
    kid: Option<String>,
}

impl From<Refused> for Rejection {
    fn from((refusal, reason): Refused) -> Rejection {
        Rejection {
            refusal,
            outcome: refusal.outcome(),
            reason,
            subject: None,
            kid: None,
        }
    }
}

impl Rejection {
    /// A refusal of a client whose token verified.
    fn of(authenticated: &Authenticated, (refusal, reason): Refused) -> Rejection {
        Rejection {
            refusal,
            outcome: refusal.outcome(),
            reason,
            subject: authenticated.token.subject.clone(),
            kid: Some(authenticated.token.key_id.clone()),
        }
    }

    /// Logs the refusal and counts its outcome.
    fn report(&self, peer: &Peer, client_id: &str, metrics: &Metrics) {
        metrics.connect(self.outcome);
        info!(
            remote = %peer,
            client_id,
            sub = self.subject.as_deref().unwrap_or(""),
            kid = self.kid.as_deref().unwrap_or(""),
            outcome = "refused",
            reason = %self.reason,
            code = ?self.refusal.code(),
            transport = peer.transport.as_str(),
            "connection refused"
        );
    }
}

/// Where a CONNECT carries its token, and the user name placeholders see.
struct Credentials {
    token: String,
    username: Option<String>,
    /// The token came as MQTT 5 authentication data (method `JWT`), which
    /// CONNACK then names.
    enhanced: bool,
}

/// Takes the token out of a CONNECT: the password of user name `JWT`, or
/// the authentication data of method `JWT` (MQTT 5), where a user name is
/// optional and, if given, `JWT`.
fn credentials(
    login: Option<Login>,
    properties: Option<&ConnectProperties>,
) -> Result<Credentials, Refused> {
    let username_is_jwt = |login: &Login| {
        if login.username == "JWT" {
            Ok(())
        } else {
            Err((Refusal::BadCredentials, "username is not JWT".to_owned()))
        }
    };
    match properties.and_then(|p| p.authentication_method.as_deref()) {
        Some(auth::METHOD) => {
            let data = properties
                .and_then(|p| p.authentication_data.as_ref())
                .ok_or((
                    Refusal::BadCredentials,
                    "authentication method JWT without authentication data".to_owned(),
                ))?;
            let token = std::str::from_utf8(data)
                .map_err(|_| {
                    (
                        Refusal::BadCredentials,
                        "authentication data is not UTF-8".to_owned(),
                    )
                })?
                .to_owned();
            if let Some(login) = &login {
                username_is_jwt(login)?;
            }
            Ok(Credentials {
                token,
                username: login.map(|l| l.username),
                enhanced: true,
            })
        }
        Some(method) => Err((
            Refusal::BadAuthenticationMethod,
            format!("authentication method {method:?} is not supported; jwtgate speaks JWT"),
        )),
        None => {
            let login = login.ok_or((Refusal::BadCredentials, "no username".to_owned()))?;
            username_is_jwt(&login)?;
            Ok(Credentials {
                token: login.password,
                username: Some(login.username),
                enhanced: false,
            })
        }
    }
}

/// Decides whether a CONNECT's credentials may become a session.
fn admit(
    shared: &Shared,
    client_id: &str,
    id_acceptable: bool,
    certificate: Option<Thumbprint>,
    mut credentials: Credentials,
) -> Result<(Authenticated, Credentials), Rejection> {
    // A client without an id must ask for a clean session: there is no
    // session of its to resume.
    if !id_acceptable {
        return Err(Rejection::from((
            Refusal::BadClientId,
            "empty client id with a persistent session".to_owned(),
        )));
    }
    // Grants name topics after the client id (`${clientid}`): one holding
    // a wildcard or a level separator would reach past its own.
    if client_id.contains(['+', '#', '/', '\0']) {
        return Err(Rejection::from((
            Refusal::BadClientId,
            "client id holds '+', '#', '/' or NUL".to_owned(),
        )));
    }
    let token = std::mem::take(&mut credentials.token);
    let username = credentials.username.as_deref();
    let authenticated = authenticate(shared, client_id, username, certificate, token, None)
        .map_err(|failure| Rejection {
            refusal: match failure.kind {
                FailureKind::BadCredentials => Refusal::BadCredentials,
                FailureKind::NotAuthorized => Refusal::NotAuthorized,
                FailureKind::ClientIdMismatch => Refusal::BadClientId,
            },
            outcome: failure.outcome,
            reason: failure.reason,
            subject: failure.subject,
            kid: failure.kid,
        })?;
    Ok((authenticated, credentials))
}

/// MQTT 5 extras of a CONNECT: property sections within `[limits]
/// max_property_bytes`.
fn check_properties(
    shared: &Shared,
    properties: Option<&ConnectProperties>,
    will: Option<&(LastWill, Option<LastWillProperties>)>,
) -> Result<(), Refused> {
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

/// The will of a CONNECT, if its topic is valid within `limits` and the
/// grants let the client publish it.
fn will_of(
    grants: &Grants,
    limits: &TopicLimits,
    will: LastWill,
    properties: Option<LastWillProperties>,
) -> Result<Will, Refused> {
    let topic = will_topic(limits, &will)?.to_owned();
    if !grants.may_publish(&topic, QoS::from(will.qos), will.retain) {
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
            topic,
            payload: will.message,
            qos: QoS::from(will.qos),
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

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    refusal: Refusal,
    version: Version,
) {
    if refusal.answered(version) {
        let ack = ConnAck {
            session_present: false,
            code: refusal.code(),
        };
        wire.output.queue(Packet::ConnAck(ack, None));
    }
    // Boxed: see `finish` in `serve`.
    Box::pin(wire.close(REFUSAL_WRITE)).await;
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
