//! One client connection, from its CONNECT to its last byte.
//!
//! A connection goes through three phases:
//!
//! 1. **CONNECT**: the first packet must arrive within the connect timeout.
//!    The gateway answers it itself: username `JWT`, a token that verifies
//!    against the current key set, a will the token allows, a client id the
//!    router can take. A refusal gets the CONNACK code the client's protocol
//!    version has for it, then the connection is closed.
//! 2. **Session**: a loop that reads the client's packets, authorizes each
//!    PUBLISH and SUBSCRIBE against the token's grants, hands what is allowed
//!    to the router in one batch per socket read, and writes what the router
//!    sends back. The loop also enforces keep-alive, token expiry, session
//!    takeover and shutdown.
//! 3. **Teardown**: the will is published when the client vanished without a
//!    DISCONNECT, MQTT 5 clients are told why the server closed, and the
//!    router link is released.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rumqttd::Notification;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Filter, LastWill, Login, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, QoS, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck, UnsubAckReason,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use super::Shared;
use super::acks::AckOrder;
use super::codec::{Codec, CodecError, Inbound, PublishHeader, Version, sniff_version};
use super::losses::LossTracker;
use super::router::Link;
use super::sessions::{Claim, session_key};
use crate::acl::{Grants, TopicFilter, validate_topic_name};
use crate::config::DenyPublish;
use crate::token::{self, TokenError, VerifiedToken};

/// Packets handed to the router but not yet picked up, past which the
/// gateway stops reading from this client.
const MAX_ROUTER_BACKLOG: usize = 1_000;
/// Bytes of pending output after which router notifications are flushed
/// to the client before more are taken.
const WRITE_BATCH: usize = 64 * 1024;
/// Room the input buffer gets before a socket read: from the minimum,
/// doubled each time a read fills it, up to the maximum.
const MIN_READ_CHUNK: usize = 1024;
const MAX_READ_CHUNK: usize = 32 * 1024;
/// How long a new connection waits for an older one with the same client
/// id to let go of its session.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Why the gateway refused a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadCredentials,
    NotAuthorized,
    BadClientId,
    Unavailable,
}

impl Refusal {
    fn code(self) -> ConnectReturnCode {
        match self {
            Refusal::BadCredentials => ConnectReturnCode::BadUserNamePassword,
            Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
            Refusal::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
            Refusal::Unavailable => ConnectReturnCode::ServerUnavailable,
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
enum Ending {
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
    /// The router dropped the link.
    RouterClosed,
}

impl Ending {
    /// The DISCONNECT reason an MQTT 5 client is given, if the server is the
    /// side that ends the session.
    fn reason(&self) -> Option<DisconnectReasonCode> {
        match self {
            Ending::Disconnected { .. } | Ending::Vanished => None,
            Ending::Protocol(code, _) => Some(*code),
            Ending::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            // MQTT 5's "maximum connect time": the token's lifetime is the
            // connection's.
            Ending::TokenExpired => Some(DisconnectReasonCode::MaximumConnectTime),
            Ending::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            Ending::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            Ending::PublishDenied | Ending::Revoked(_) => Some(DisconnectReasonCode::NotAuthorized),
            Ending::RouterClosed => Some(DisconnectReasonCode::UnspecifiedError),
        }
    }

    fn publishes_will(&self) -> bool {
        match self {
            Ending::Disconnected { publish_will } => *publish_will,
            // A revoked device's will was authorized by what is now revoked.
            Ending::TakenOver | Ending::Shutdown | Ending::Revoked(_) => false,
            Ending::Vanished
            | Ending::Protocol(..)
            | Ending::KeepAliveTimeout
            | Ending::TokenExpired
            | Ending::PublishDenied
            | Ending::RouterClosed => true,
        }
    }
}

/// The acks a client sends for what the router forwarded to it.
#[derive(Debug, Clone, Copy)]
enum ClientAck {
    /// PUBACK: a QoS 1 delivery arrived.
    Ack,
    /// PUBREC: a QoS 2 delivery arrived.
    Rec,
    /// PUBCOMP: a QoS 2 release completed.
    Comp,
}

impl ClientAck {
    /// The same ack, as the router takes it (it only takes success).
    fn packet(self, pkid: u16) -> Packet {
        match self {
            ClientAck::Ack => Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ),
            ClientAck::Rec => Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ),
            ClientAck::Comp => Packet::PubComp(
                PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                },
                None,
            ),
        }
    }
}

/// The byte side of a connection: the TLS stream and its buffers.
struct Wire<S> {
    stream: S,
    codec: Codec,
    input: BytesMut,
    output: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn queue(&mut self, packet: Packet) -> Option<PublishHeader> {
        match self.codec.encode(packet, &mut self.output) {
            Ok(header) => header,
            Err(e) => {
                // Only router output is encoded here; a failure is a bug
                // in what was built, not something the client did.
                warn!(error = %e, "could not encode a packet for the client");
                None
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        self.stream.flush().await
    }
}

/// Serves one accepted (TLS-established) connection to the end.
pub(super) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut input = BytesMut::with_capacity(4096);
    let limit = shared.limits.max_packet_size;
    let version = match tokio::time::timeout(
        shared.limits.connect_timeout,
        read_version(&mut stream, &mut input, limit),
    )
    .await
    {
        Ok(Ok(version)) => version,
        Ok(Err(ConnectReadError::Codec(CodecError::UnsupportedProtocol { name, level }))) => {
            info!(%peer, protocol = %name, level, "refused: unsupported protocol version");
            // 3.1.1's "unacceptable protocol version", which MQTT 5 also
            // prescribes for levels it does not speak.
            let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            let _ = stream.shutdown().await;
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
    let mut wire = Wire {
        stream,
        codec: Codec::new(version, limit),
        input,
        output: BytesMut::new(),
    };
    let connect = match wire.codec.decode(&mut wire.input) {
        Ok(Some(Inbound {
            packet: Packet::Connect(connect, _, will, _, login),
            ..
        })) => (connect, will, login),
        Ok(_) | Err(_) => {
            debug!(%peer, "malformed CONNECT");
            return;
        }
    };
    let (connect, will, login) = connect;
    if wire.input.is_empty() {
        // The CONNECT needed a few KiB (it carries the token); an idle
        // device should not keep them.
        wire.input = BytesMut::new();
    }
    let mut client_id = connect.client_id;
    let assigned_id = client_id.is_empty();
    if assigned_id {
        client_id = generated_client_id();
    }

    let admitted = admit(
        &shared,
        &client_id,
        !assigned_id || connect.clean_session,
        login,
        will.as_ref(),
    );
    let (token, credential) = match admitted {
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
    let key = session_key(token.subject.as_deref(), &client_id);
    let mut claim = match shared.sessions.claim(&key, TAKEOVER_WAIT).await {
        Ok(claim) => claim,
        Err(e) => {
            warn!(%peer, client_id, error = %e, "connection refused");
            refuse(&mut wire, Refusal::Unavailable).await;
            return;
        }
    };
    let (link, session_present) = match shared.router.open_link(key, connect.clean_session).await {
        Ok(link) => link,
        Err(e) => {
            warn!(%peer, client_id, error = %e, "router refused the link");
            refuse(&mut wire, Refusal::Unavailable).await;
            return;
        }
    };

    let ack = ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
    };
    let properties = version.is_v5().then(|| ConnAckProperties {
        assigned_client_identifier: assigned_id.then(|| client_id.clone()),
        max_packet_size: u32::try_from(limit).ok(),
        retain_available: Some(1),
        wildcard_subscription_available: Some(1),
        shared_subscription_available: Some(1),
        ..ConnAckProperties::default()
    });
    wire.queue(Packet::ConnAck(ack, properties));
    if let Err(e) = wire.flush().await {
        debug!(%peer, client_id, error = %e, "client left before CONNACK");
        return;
    }
    info!(
        %peer,
        client_id,
        sub = token.subject.as_deref().unwrap_or(""),
        kid = token.key_id,
        version = version.as_str(),
        session_present,
        "client connected"
    );

    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let expires_at = token
        .expires_at
        .map(|exp| deadline_from_unix(exp + shared.leeway.as_secs()));
    let mut session = Session {
        shared: Arc::clone(&shared),
        credential,
        client_id,
        version,
        grants: token.grants,
        will,
        link,
        // A resumed session may hold subscriptions made under an older,
        // wider token: deliveries are then checked against this token.
        check_deliveries: session_present,
        publish_acks: AckOrder::default(),
        release_acks: AckOrder::default(),
        subacks: HashMap::new(),
        refused_qos2: HashSet::new(),
        losses: LossTracker::default(),
    };
    let ending = session
        .run(&mut wire, &mut claim, shutdown, keep_alive, expires_at)
        .await;
    session.finish(&mut wire, ending).await;
    // Only now, with the router link released, may a newer connection of
    // this client take the session.
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

/// Decides whether a CONNECT may become a session. Returns the verified
/// token, or the refusal and a reason for the log.
fn admit(
    shared: &Shared,
    client_id: &str,
    id_acceptable: bool,
    login: Option<Login>,
    will: Option<&LastWill>,
) -> Result<(VerifiedToken, String), (Refusal, String)> {
    let login = login.ok_or((Refusal::BadCredentials, "no username".to_owned()))?;
    if login.username != "JWT" {
        return Err((Refusal::BadCredentials, "username is not JWT".to_owned()));
    }
    // The router ignores (and never answers) a client id with these; and a
    // 3.1.1 client without an id must ask for a clean session.
    if !id_acceptable || client_id.contains(['+', '#', '$', '/']) {
        return Err((
            Refusal::BadClientId,
            "client id is empty with a persistent session, or has one of + # $ /".to_owned(),
        ));
    }
    let keys = shared.keys.snapshot();
    let token = token::verify(&login.password, &keys, &shared.policy).map_err(|e| {
        // A token that verifies but carries no usable grant is a valid
        // identity without rights; anything else is a bad credential.
        let refusal = match &e {
            // Revocation too: the token is authentic, the identity may not
            // connect; it matches the DISCONNECT a live connection gets.
            TokenError::MissingTopics | TokenError::BadTopicsClaim | TokenError::Revoked { .. } => {
                Refusal::NotAuthorized
            }
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
    if let Some(will) = will {
        let allowed = std::str::from_utf8(&will.topic).is_ok_and(|t| token.grants.may_publish(t));
        if !allowed {
            return Err((
                Refusal::NotAuthorized,
                "will topic is not granted".to_owned(),
            ));
        }
    }
    Ok((token, login.password))
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<S>, refusal: Refusal) {
    let ack = ConnAck {
        session_present: false,
        code: refusal.code(),
    };
    wire.queue(Packet::ConnAck(ack, None));
    let _ = wire.flush().await;
    let _ = wire.stream.shutdown().await;
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

/// Converts a unix time into a tokio deadline.
fn deadline_from_unix(unix_secs: u64) -> Instant {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let target = Duration::from_secs(unix_secs);
    Instant::now() + target.saturating_sub(now_unix)
}

/// A connected client's state.
struct Session {
    shared: Arc<Shared>,
    /// The token, kept to re-check it when keys or the deny list change.
    credential: String,
    client_id: String,
    version: Version,
    grants: Grants,
    will: Option<LastWill>,
    link: Link,
    check_deliveries: bool,
    /// QoS 1/2 messages written to the client, awaiting its PUBACK/PUBREC.
    publish_acks: AckOrder,
    /// PUBRELs written to the client, awaiting its PUBCOMP.
    release_acks: AckOrder,
    /// SUBSCRIBEs the router is working on: for each requested filter,
    /// `None` where the router's answer goes, or the gateway's refusal.
    subacks: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    /// QoS 2 PUBLISHes refused with a PUBREC (MQTT 3.1.1 has no failure
    /// code there): their PUBREL is answered here, not by the router.
    refused_qos2: HashSet<u16>,
    losses: LossTracker,
}

impl Session {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        claim: &mut Claim,
        mut shutdown: watch::Receiver<bool>,
        keep_alive: Option<Duration>,
        expires_at: Option<Instant>,
    ) -> Ending {
        let mut reloads = self.shared.reloads.clone();
        reloads.mark_unchanged();
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let expiry = sleep_until(expires_at.unwrap_or(far));
        let idle = sleep_until(keep_alive.map_or(far, |k| Instant::now() + k));
        tokio::pin!(expiry, idle);
        // Packets that arrived behind the CONNECT in the same read.
        if let Some(ending) = self.take_input(wire) {
            return ending;
        }
        if wire.flush().await.is_err() {
            return Ending::Vanished;
        }
        // Reads start small, so the thousands of idle devices of a fleet
        // hold little memory, and grow while a client keeps filling them.
        let mut chunk = MIN_READ_CHUNK;
        loop {
            if wire.input.capacity() - wire.input.len() < chunk / 2 {
                wire.input.reserve(chunk);
            }
            let room = wire.input.capacity() - wire.input.len();
            let congested =
                self.link.backlog() > MAX_ROUTER_BACKLOG || self.shared.router.congested();
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ending::Shutdown,
                _ = claim.taken_over() => return Ending::TakenOver,
                _ = &mut expiry => return Ending::TokenExpired,
                _ = &mut idle => return Ending::KeepAliveTimeout,
                Ok(()) = reloads.changed() => {
                    let keys = self.shared.keys.snapshot();
                    if let Err(e) = token::verify(&self.credential, &keys, &self.shared.policy) {
                        return Ending::Revoked(e.to_string());
                    }
                }
                notification = self.link.next() => {
                    let Some(notification) = notification else {
                        return Ending::RouterClosed;
                    };
                    let mut wake_router = self.deliver(wire, notification);
                    while wire.output.len() < WRITE_BATCH {
                        match self.link.try_next() {
                            Some(n) => wake_router |= self.deliver(wire, n),
                            None => break,
                        }
                    }
                    if wire.flush().await.is_err() {
                        return Ending::Vanished;
                    }
                    if wake_router && self.link.wake().await.is_err() {
                        return Ending::RouterClosed;
                    }
                }
                read = wire.stream.read_buf(&mut wire.input), if !congested => {
                    match read {
                        Ok(0) | Err(_) => return Ending::Vanished,
                        Ok(n) if n >= room => chunk = (chunk * 2).min(MAX_READ_CHUNK),
                        Ok(_) => {}
                    }
                    if let Some(k) = keep_alive {
                        idle.as_mut().reset(Instant::now() + k);
                    }
                    let ending = self.take_input(wire);
                    if wire.flush().await.is_err() {
                        return Ending::Vanished;
                    }
                    if let Some(ending) = ending {
                        return ending;
                    }
                }
                // The router is behind: look again shortly, without reading.
                _ = sleep(Duration::from_millis(1)), if congested => {}
            }
        }
    }

    /// Handles every complete packet in the input buffer; allowed packets go
    /// to the router in one batch, replies of the gateway's own are queued on
    /// the wire.
    fn take_input<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
    ) -> Option<Ending> {
        let mut to_router = Vec::new();
        let mut ending = None;
        loop {
            let inbound = match wire.codec.decode(&mut wire.input) {
                Ok(Some(inbound)) => inbound,
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        CodecError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
                        CodecError::ForbiddenPacketType(_) => DisconnectReasonCode::ProtocolError,
                        _ => DisconnectReasonCode::MalformedPacket,
                    };
                    ending = Some(Ending::Protocol(code, e.to_string()));
                    break;
                }
            };
            if let Some(end) = self.handle(wire, inbound, &mut to_router) {
                ending = Some(end);
                break;
            }
        }
        if !to_router.is_empty() && self.link.send(to_router).is_err() {
            return Some(Ending::RouterClosed);
        }
        ending
    }

    /// Handles one client packet.
    fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        inbound: Inbound,
        to_router: &mut Vec<Packet>,
    ) -> Option<Ending> {
        match inbound.packet {
            Packet::Publish(publish, properties) => {
                let header = inbound.publish?;
                if properties.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                    // No topic alias maximum is granted in CONNACK.
                    return Some(Ending::Protocol(
                        DisconnectReasonCode::TopicAliasInvalid,
                        "topic alias used, none granted".into(),
                    ));
                }
                let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                    return Some(Ending::Protocol(
                        DisconnectReasonCode::TopicNameInvalid,
                        "topic is not UTF-8".into(),
                    ));
                };
                if let Err(e) = validate_topic_name(topic) {
                    return Some(Ending::Protocol(
                        DisconnectReasonCode::TopicNameInvalid,
                        e.to_string(),
                    ));
                }
                if self.grants.may_publish(topic) {
                    to_router.push(Packet::Publish(publish, properties));
                    return None;
                }
                info!(
                    client_id = self.client_id,
                    topic, "publish refused: topic not granted"
                );
                self.refuse_publish(wire, header);
                match self.shared.deny_publish {
                    DenyPublish::Drop => None,
                    DenyPublish::Disconnect => Some(Ending::PublishDenied),
                }
            }
            Packet::PubAck(ack, _) => {
                self.client_acked(ClientAck::Ack, ack.pkid, to_router);
                None
            }
            Packet::PubRec(rec, _) => {
                self.client_acked(ClientAck::Rec, rec.pkid, to_router);
                None
            }
            Packet::PubComp(comp, _) => {
                self.client_acked(ClientAck::Comp, comp.pkid, to_router);
                None
            }
            Packet::PubRel(rel, _) => {
                if self.refused_qos2.remove(&rel.pkid) {
                    wire.queue(Packet::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason: PubCompReason::Success,
                        },
                        None,
                    ));
                } else {
                    // The router only takes a PUBREL without properties.
                    to_router.push(Packet::PubRel(rel, None));
                }
                None
            }
            Packet::Subscribe(subscribe, properties) => {
                if properties.as_ref().is_some_and(|p| p.id == Some(0)) {
                    return Some(Ending::Protocol(
                        DisconnectReasonCode::ProtocolError,
                        "subscription identifier 0".into(),
                    ));
                }
                if let Some(allowed) = self.authorize_subscribe(wire, subscribe) {
                    to_router.push(Packet::Subscribe(allowed, properties));
                }
                None
            }
            Packet::Unsubscribe(unsubscribe, _) => {
                // The router acks each filter separately and not at all for a
                // filter it does not know, so the gateway answers here and
                // drops the router's UNSUBACKs.
                wire.queue(Packet::UnsubAck(
                    UnsubAck {
                        pkid: unsubscribe.pkid,
                        reasons: vec![UnsubAckReason::Success; unsubscribe.filters.len()],
                    },
                    None,
                ));
                for filter in &unsubscribe.filters {
                    self.losses.unsubscribed(filter);
                }
                to_router.push(Packet::Unsubscribe(unsubscribe, None));
                None
            }
            Packet::PingReq(_) => {
                wire.queue(Packet::PingResp(PingResp));
                None
            }
            Packet::Disconnect(disconnect, _) => Some(Ending::Disconnected {
                publish_will: disconnect.reason_code
                    == DisconnectReasonCode::DisconnectWithWillMessage,
            }),
            Packet::Connect(..) => Some(Ending::Protocol(
                DisconnectReasonCode::ProtocolError,
                "second CONNECT".into(),
            )),
            other => Some(Ending::Protocol(
                DisconnectReasonCode::ProtocolError,
                format!("unexpected packet {other:?}"),
            )),
        }
    }

    /// Answers a refused PUBLISH: QoS 0 is dropped, QoS 1/2 acknowledged so
    /// the client does not resend it forever (MQTT 5 with "not authorized").
    fn refuse_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        header: PublishHeader,
    ) {
        let pkid = header.pkid;
        match header.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                wire.queue(Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::NotAuthorized,
                    },
                    None,
                ));
            }
            QoS::ExactlyOnce => {
                wire.queue(Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: PubRecReason::NotAuthorized,
                    },
                    None,
                ));
                // An MQTT 5 client ends the exchange on a failure PUBREC;
                // a 3.1.1 client cannot tell and goes on with PUBREL.
                if !self.version.is_v5() {
                    self.refused_qos2.insert(pkid);
                }
            }
        }
    }

    /// Splits a SUBSCRIBE into the filters the token covers, which go to the
    /// router, and the refused ones, answered in the merged SUBACK.
    fn authorize_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        subscribe: Subscribe,
    ) -> Option<Subscribe> {
        let pkid = subscribe.pkid;
        let mut layout = Vec::with_capacity(subscribe.filters.len());
        let mut allowed: Vec<Filter> = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            let refusal = if TopicFilter::parse(&filter.path).is_err() {
                Some(SubscribeReasonCode::TopicFilterInvalid)
            } else if filter.path.starts_with('$') && !filter.path.starts_with("$share/") {
                // The router drops a connection that subscribes to a `$`
                // filter other than a shared subscription.
                Some(SubscribeReasonCode::ImplementationSpecific)
            } else if !self.grants.may_subscribe(&filter.path) {
                Some(SubscribeReasonCode::NotAuthorized)
            } else {
                None
            };
            match refusal {
                Some(code) => {
                    info!(client_id = self.client_id, filter = filter.path, reason = ?code, "subscription refused");
                    layout.push(Some(code));
                }
                None => {
                    layout.push(None);
                    self.losses.subscribed(&filter.path);
                    allowed.push(filter);
                }
            }
        }
        if allowed.is_empty() {
            let return_codes = layout.into_iter().flatten().collect();
            wire.queue(Packet::SubAck(SubAck { pkid, return_codes }, None));
            return None;
        }
        self.subacks.insert(pkid, layout);
        Some(Subscribe {
            pkid,
            filters: allowed,
        })
    }

    /// Writes one router notification to the client. Returns true when the
    /// router paused this link and must be woken once the output is flushed.
    fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        notification: Notification,
    ) -> bool {
        let packet = match notification {
            Notification::Forward(forward) => {
                let publish = forward.publish;
                if let Some((_, offset)) = forward.cursor {
                    self.count_losses(&publish, offset);
                }
                if self.check_deliveries && !self.may_receive(&publish) {
                    self.skip_delivery(wire, publish);
                    return false;
                }
                if let Some(header) = wire.queue(Packet::Publish(publish, forward.properties)) {
                    if header.qos != QoS::AtMostOnce {
                        self.publish_acks.sent(header.pkid);
                    }
                }
                return false;
            }
            Notification::Unschedule => return true,
            other => Option::<Packet>::from(other),
        };
        match packet {
            Some(Packet::SubAck(ack, properties)) => {
                let merged = self.merge_suback(ack);
                wire.queue(Packet::SubAck(merged, properties));
            }
            Some(Packet::PubRel(rel, properties)) => {
                self.release_acks.sent(rel.pkid);
                wire.queue(Packet::PubRel(rel, properties));
            }
            Some(packet @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..))) => {
                wire.queue(packet);
            }
            // UNSUBACK and PINGRESP are the gateway's own to send; the
            // CONNACK was sent already; a router DISCONNECT is followed by
            // the link closing, and the session's end tells the client.
            _ => {}
        }
        false
    }

    fn count_losses(&mut self, publish: &Publish, offset: u64) {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return;
        };
        let lost = self.losses.delivered(topic, offset);
        if lost > 0 {
            let total = self.shared.losses.add(lost);
            warn!(
                client_id = self.client_id,
                topic,
                lost,
                total_lost = total,
                "subscriber fell behind the router's log; messages dropped (see [router] max_segment_size/max_segment_count)"
            );
        }
    }

    fn may_receive(&self, publish: &Publish) -> bool {
        std::str::from_utf8(&publish.topic).is_ok_and(|t| self.grants.may_publish(t))
    }

    /// A delivery the current token does not cover: not written, but acked
    /// to the router (as if the client had) so its in-order flow goes on.
    fn skip_delivery<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        publish: Publish,
    ) {
        debug!(client_id = self.client_id, topic = ?publish.topic, "delivery outside the token's grants dropped");
        // Encode into a scratch buffer only to learn QoS and packet id.
        let mut scratch = BytesMut::new();
        let header = wire
            .codec
            .encode(Packet::Publish(publish, None), &mut scratch);
        if let Ok(Some(header)) = header {
            let ack = match header.qos {
                QoS::AtMostOnce => return,
                QoS::AtLeastOnce => ClientAck::Ack,
                QoS::ExactlyOnce => ClientAck::Rec,
            };
            self.publish_acks.sent(header.pkid);
            let mut acks = Vec::new();
            self.client_acked(ack, header.pkid, &mut acks);
            let _ = self.link.send(acks);
        }
    }

    /// Records the client's (or, for a skipped delivery, the gateway's) ack
    /// and hands the router every ack it may now have, in its order.
    fn client_acked(&mut self, ack: ClientAck, pkid: u16, to_router: &mut Vec<Packet>) {
        let order = match ack {
            ClientAck::Ack | ClientAck::Rec => &mut self.publish_acks,
            ClientAck::Comp => &mut self.release_acks,
        };
        if order.acked(pkid) {
            to_router.extend(order.release().map(|pkid| ack.packet(pkid)));
        } else {
            debug!(client_id = self.client_id, pkid, ack = ?ack, "unexpected ack ignored");
        }
    }

    /// Puts the gateway's refusals back between the router's answers, in
    /// the order the client asked.
    fn merge_suback(&mut self, ack: SubAck) -> SubAck {
        let Some(layout) = self.subacks.remove(&ack.pkid) else {
            return ack;
        };
        let mut routed = ack.return_codes.into_iter();
        let return_codes = layout
            .into_iter()
            .map(|slot| {
                slot.or_else(|| routed.next())
                    .unwrap_or(SubscribeReasonCode::Unspecified)
            })
            .collect();
        SubAck {
            pkid: ack.pkid,
            return_codes,
        }
    }

    /// Ends the session: tells an MQTT 5 client why, publishes the will when
    /// due, and lets go of the router link (its `Drop` disconnects it).
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(self, wire: &mut Wire<S>, ending: Ending) {
        match &ending {
            Ending::Protocol(_, detail) => {
                info!(
                    client_id = self.client_id,
                    reason = detail,
                    "closing: protocol error"
                );
            }
            other => info!(client_id = self.client_id, ending = ?other, "client disconnected"),
        }
        let mut link = self.link;
        if ending.publishes_will() {
            if let Some(will) = self.will {
                let publish = Publish::new(will.topic, will.message, will.retain);
                let _ = link.send([Packet::Publish(publish, None)]);
            }
        }
        if let (true, Some(reason_code)) = (self.version.is_v5(), ending.reason()) {
            let properties = match &ending {
                Ending::Protocol(_, detail) | Ending::Revoked(detail) => {
                    Some(DisconnectProperties {
                        session_expiry_interval: None,
                        reason_string: Some(detail.clone()),
                        user_properties: Vec::new(),
                        server_reference: None,
                    })
                }
                _ => None,
            };
            wire.queue(Packet::Disconnect(Disconnect { reason_code }, properties));
            let _ = wire.flush().await;
        }
        let _ = wire.stream.shutdown().await;
        drop(link);
    }
}
