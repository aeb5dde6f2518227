//! A connected client: the session loop and its teardown.
//!
//! One task per client runs [`Client::run`], a loop over one `select!`:
//!
//! - **inbound**: each packet the client sends is authorized against its
//!   token's grants and handed to the routing core ([`crate::broker`]).
//!   PUBLISH is routed right here, on this task. When a subscriber's queue
//!   is full the publication is *pending*: the client's next publishes are
//!   not taken (only its acks and pings, and its socket only a little
//!   ahead) until every subscriber has taken it or its hold-back bound
//!   passed, and only then does the client get its PUBACK/PUBREC;
//! - **outbound**: when the session's mailbox has deliveries, they are
//!   taken in batches and written as PUBLISH packets, QoS 1/2 ones within
//!   the in-flight window (min of `[sessions] max_inflight` and the
//!   client's receive maximum) and none larger than the client accepts;
//! - **control**: keep-alive, token expiry, re-verification after a key
//!   reload, session takeover, the slow-subscriber eviction and shutdown.
//!
//! The socket is driven by [`Wire::progress`], never by a bare write, so a
//! client that stops reading cannot park its task: every control arm stays
//! live.
//!
//! [`Client::finish`] ends the connection: an MQTT 5 client is told why
//! the server closed (within a deadline), a pending publication is left to
//! complete in the background, and the session goes back to the routing
//! core with its will.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{
    ConnectProperties, Disconnect, DisconnectProperties, DisconnectReasonCode, Filter, Packet,
    PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel,
    PubRelReason, PublishProperties, RetainForwardRule, SubAck, Subscribe, SubscribeProperties,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::Shared;
use super::codec::{
    CodecError, Inbound, OutgoingPublish, PublishHeader, Version, broker_qos, wire_qos,
};
use super::takeover::Claim;
use super::wire::{Progress, Wire};
use crate::acl::{Grants, RequestedFilter, validate_topic_name};
use crate::broker::{
    Attached, Broker, Delivery, Inflight, Pending, Properties, Publication, QoS, Resend,
    RetainHandling, Session, SubscribeError, SubscriptionOptions, Taken, Will,
};
use crate::config::DenyPublish;
use crate::token;

/// Output past which deliveries are left in the mailbox until the client
/// has read what is written.
const WRITE_BATCH: usize = 64 * 1024;
/// Output past which the client's own packets are not read either: a
/// client that never reads its acks is paced too.
const MAX_UNWRITTEN: usize = 4 * WRITE_BATCH;
/// Deliveries taken from the mailbox per lock.
const TAKE_BATCH: usize = 64;
/// Packets put aside while a publication waits, in bytes, past which the
/// client is not read until it is through.
const LOOKAHEAD: usize = 64 * 1024;
/// How long a closing connection may take to write its last packets.
const LAST_WORDS: Duration = Duration::from_secs(1);
/// Output a client must read, at least, within `[limits]
/// write_timeout_secs` (unless it reads all there is): reading a byte now
/// and then does not keep a stalled connection alive.
const WRITE_PROGRESS: u64 = WRITE_BATCH as u64;

/// Why a session ended.
#[derive(Debug)]
pub(super) enum Ending {
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
    /// The client read nothing of what it was sent for
    /// `[limits] write_timeout_secs`.
    WriteStalled,
}

impl Ending {
    /// The DISCONNECT reason an MQTT 5 client is given, if the server is the
    /// side that ends the session.
    fn reason(&self) -> Option<DisconnectReasonCode> {
        match self {
            // A client that does not read would not read a DISCONNECT.
            Ending::Disconnected { .. } | Ending::Vanished | Ending::WriteStalled => None,
            Ending::Protocol(code, _) => Some(*code),
            Ending::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            // MQTT 5's "maximum connect time": the token's lifetime is the
            // connection's.
            Ending::TokenExpired => Some(DisconnectReasonCode::MaximumConnectTime),
            Ending::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            Ending::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            Ending::PublishDenied | Ending::Revoked(_) => Some(DisconnectReasonCode::NotAuthorized),
            Ending::SlowSubscriber => Some(DisconnectReasonCode::QuotaExceeded),
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
            | Ending::SlowSubscriber
            | Ending::WriteStalled => true,
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            Ending::Protocol(_, detail) | Ending::Revoked(detail) => Some(detail.clone()),
            Ending::SlowSubscriber => Some(
                "the session's queue is full and the client does not read it fast enough".into(),
            ),
            _ => None,
        }
    }
}

/// What one client may be sent and may send.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientLimits {
    /// QoS 1/2 deliveries awaiting the client's ack, at most.
    inflight: usize,
    /// QoS 2 messages from the client awaiting its PUBREL, at most: the
    /// receive maximum announced in CONNACK.
    receive_maximum: usize,
    /// Largest packet the client accepts.
    max_packet: usize,
    /// Topic aliases granted in CONNACK.
    topic_aliases: u16,
    /// Topic aliases the gateway may use towards the client: the client's
    /// topic alias maximum, within the same bound as its own.
    sent_aliases: u16,
    /// MQTT 5 property bytes accepted in one packet; also the bound on the
    /// topics held by aliases.
    max_property_bytes: usize,
}

impl ClientLimits {
    pub fn new(shared: &Shared, properties: Option<&ConnectProperties>) -> ClientLimits {
        let receive_maximum = properties
            .and_then(|p| p.receive_maximum)
            .filter(|&r| r > 0)
            .unwrap_or(u16::MAX);
        ClientLimits {
            inflight: usize::from(shared.broker.settings().max_inflight.min(receive_maximum)),
            receive_maximum: usize::from(shared.broker.settings().max_inflight),
            max_packet: properties
                .and_then(|p| p.max_packet_size)
                .and_then(|m| usize::try_from(m).ok())
                .filter(|&m| m > 0)
                .unwrap_or(usize::MAX),
            topic_aliases: shared.limits.max_topic_aliases,
            sent_aliases: properties
                .and_then(|p| p.topic_alias_max)
                .unwrap_or(0)
                .min(shared.limits.max_topic_aliases),
            max_property_bytes: shared.limits.max_property_bytes,
        }
    }
}

/// Who a client is, as its CONNECT established.
pub(super) struct Identity {
    pub client_id: String,
    pub version: Version,
    /// The token, kept to re-check it when keys or the deny list change.
    pub credential: String,
    pub grants: Grants,
}

/// A connected client's state.
pub(super) struct Client {
    shared: Arc<Shared>,
    id: Identity,
    will: Option<Will>,
    session: Arc<Session>,
    inflight: Inflight,
    /// The exchanges of a resumed session still have to be re-sent.
    resend: bool,
    session_expiry: Duration,
    /// CONNECT set no session expiry, so DISCONNECT may not set one.
    expiry_was_zero: bool,
    limits: ClientLimits,
    /// Topic aliases the client set: alias `n` is at `n - 1`.
    aliases: Vec<Option<Box<str>>>,
    alias_bytes: usize,
    /// Topic aliases the gateway set towards the client.
    sent_aliases: SentAliases,
    /// A publication some subscriber has not taken yet, and the ack its
    /// publisher gets once it has.
    pending: Option<(Pending, Option<Packet>)>,
    /// Packets read while a publication waits, with their sizes.
    deferred: VecDeque<(Inbound, usize)>,
    deferred_bytes: usize,
    /// Scratch space for deliveries taken from the mailbox.
    batch: Vec<Delivery>,
}

impl Client {
    pub fn new(
        shared: Arc<Shared>,
        id: Identity,
        will: Option<Will>,
        attached: Attached,
        session_expiry: Duration,
        limits: ClientLimits,
    ) -> Client {
        Client {
            shared,
            id,
            will,
            session: attached.session,
            resend: attached.inflight.outgoing() > 0,
            inflight: attached.inflight,
            expiry_was_zero: session_expiry.is_zero(),
            session_expiry,
            limits,
            aliases: Vec::new(),
            alias_bytes: 0,
            sent_aliases: SentAliases::new(limits.sent_aliases),
            pending: None,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            batch: Vec::new(),
        }
    }

    fn broker(&self) -> &Broker {
        &self.shared.broker
    }

    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        claim: &mut Claim,
        mut reloads: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
        keep_alive: Option<Duration>,
        expires_at: Option<Instant>,
    ) -> Ending {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let expiry = sleep_until(expires_at.map_or(far, |at| at.min(far)));
        let idle = sleep_until(keep_alive.map_or(far, |k| Instant::now() + k));
        let stalled = sleep_until(far);
        tokio::pin!(expiry, idle, stalled);
        let write_timeout = self.shared.limits.write_timeout;
        // While output waits: the byte count that, once written, renews
        // the write deadline.
        let mut renew_at: Option<u64> = None;
        let shared = Arc::clone(&self.shared);
        if std::mem::take(&mut self.resend) {
            self.resend(wire);
        }
        // Packets that arrived behind the CONNECT in the same read.
        if let Some(ending) = self.take_input(wire) {
            return ending;
        }
        loop {
            if let Some(ending) = self.pump(wire) {
                return ending;
            }
            match (wire.wants_write(), renew_at) {
                (false, _) => renew_at = None,
                (true, Some(at)) if wire.written() < at => {}
                (true, _) => {
                    renew_at = Some(wire.written() + WRITE_PROGRESS);
                    stalled.as_mut().reset(Instant::now() + write_timeout);
                }
            }
            let read = self.deferred_bytes < LOOKAHEAD && wire.output.len() < MAX_UNWRITTEN;
            if let (false, Some(k)) = (read, keep_alive) {
                // Keep-alive measures the client's silence, which cannot
                // be told while the gateway is not reading it.
                idle.as_mut().reset(Instant::now() + k);
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ending::Shutdown,
                () = claim.taken_over() => return Ending::TakenOver,
                () = &mut expiry => return Ending::TokenExpired,
                () = &mut idle => return Ending::KeepAliveTimeout,
                () = &mut stalled, if renew_at.is_some() => return Ending::WriteStalled,
                Ok(()) = reloads.changed() => {
                    let keys = shared.keys.snapshot();
                    if let Err(e) = token::verify(&self.id.credential, &keys, &shared.policy) {
                        return Ending::Revoked(e.to_string());
                    }
                }
                () = self.session.mailbox().ready() => {}
                () = advance(&mut self.pending, &shared.broker), if self.pending.is_some() => {
                    if self.pending.as_ref().is_some_and(|(p, _)| p.is_done()) {
                        if let Some((_, Some(ack))) = self.pending.take() {
                            wire.queue(ack);
                        }
                        if let Some(ending) = self.take_input(wire) {
                            return ending;
                        }
                    }
                }
                progress = wire.progress(read) => match progress {
                    Progress::Read => {
                        if let Some(k) = keep_alive {
                            idle.as_mut().reset(Instant::now() + k);
                        }
                        if let Some(ending) = self.take_input(wire) {
                            return ending;
                        }
                    }
                    Progress::Wrote => {}
                    Progress::Closed | Progress::Failed(_) => return Ending::Vanished,
                },
            }
        }
    }

    /// Re-sends what a resumed session had in flight (MQTT 5 §4.4).
    fn resend<S: AsyncRead + AsyncWrite + Unpin>(&mut self, wire: &mut Wire<S>) {
        let now = std::time::Instant::now();
        let mut too_large = Vec::new();
        for resend in self.inflight.resend() {
            match resend {
                Resend::Publish(id, delivery) => {
                    let publish = outgoing(delivery, id, true, now, None);
                    if wire.codec.publish_size(&publish) > self.limits.max_packet {
                        too_large.push(id);
                    } else {
                        wire.queue_publish(&publish);
                    }
                }
                Resend::Release(id) => wire.queue(Packet::PubRel(
                    PubRel {
                        pkid: id,
                        reason: PubRelReason::Success,
                    },
                    None,
                )),
            }
        }
        for id in too_large {
            self.shared.broker.stats().oversized();
            self.inflight.abandon(id);
        }
    }

    /// Moves deliveries from the session's mailbox to the output, while
    /// there is room in both the output and the in-flight window.
    fn pump<S: AsyncRead + AsyncWrite + Unpin>(&mut self, wire: &mut Wire<S>) -> Option<Ending> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut ending = None;
        loop {
            // With the output full nothing is taken, but an eviction is
            // still noticed: a stalled client is exactly the one to evict.
            let max = if wire.output.len() < WRITE_BATCH {
                TAKE_BATCH
            } else {
                0
            };
            let room = self
                .limits
                .inflight
                .saturating_sub(self.inflight.outgoing())
                .min(self.inflight.free_ids());
            match self.session.mailbox().take(max, room, &mut batch) {
                Taken::Evicted => {
                    ending = Some(Ending::SlowSubscriber);
                    break;
                }
                Taken::Recovered { dropped } => {
                    warn!(
                        client_id = self.id.client_id,
                        dropped, "slow subscriber: caught up after dropping messages"
                    );
                }
                Taken::Ok => {}
            }
            if batch.is_empty() {
                break;
            }
            for delivery in batch.drain(..) {
                self.send(wire, delivery);
            }
        }
        self.batch = batch;
        ending
    }

    /// Writes one delivery as a PUBLISH, unless its message has expired or
    /// it is larger than the client accepts (MQTT 5 §3.1.2.11.4: such a
    /// message is dropped as if sent).
    fn send<S: AsyncRead + AsyncWrite + Unpin>(&mut self, wire: &mut Wire<S>, delivery: Delivery) {
        let now = std::time::Instant::now();
        let stats = self.shared.broker.stats();
        if delivery.message.expired(now) {
            stats.expired();
            return;
        }
        let alias = self.sent_aliases.lookup(delivery.message.topic());
        let size = wire
            .codec
            .publish_size(&outgoing(&delivery, 0, false, now, alias));
        if size > self.limits.max_packet {
            stats.oversized();
            debug!(
                client_id = self.id.client_id,
                topic = delivery.message.topic(),
                size,
                max = self.limits.max_packet,
                "delivery skipped: larger than the client's maximum packet size"
            );
            return;
        }
        if let Some(SentAlias::New(alias)) = alias {
            self.sent_aliases.learned(delivery.message.topic(), alias);
        }
        if delivery.qos == QoS::AtMostOnce {
            wire.queue_publish(&outgoing(&delivery, 0, false, now, alias));
        } else {
            let (id, delivery) = self.inflight.send(delivery);
            wire.queue_publish(&outgoing(delivery, id, false, now, alias));
        }
    }

    /// Handles the client's packets: first those put aside while a
    /// publication waited, then every complete one in the input buffer.
    ///
    /// While a publication waits, only acknowledgements and pings are
    /// handled; the rest is put aside, in order, up to [`LOOKAHEAD`] bytes.
    /// Acks concern what the gateway sends, so taking them ahead of the
    /// client's own publishes reorders nothing that matters, and it lets a
    /// waiting client keep draining its own queue (two devices flooding
    /// each other would otherwise each wait for the other's acks).
    fn take_input<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
    ) -> Option<Ending> {
        loop {
            let waiting = self.pending.is_some();
            let deferred = if waiting {
                None
            } else {
                self.deferred.pop_front()
            };
            let inbound = match deferred {
                Some((inbound, size)) => {
                    self.deferred_bytes -= size;
                    inbound
                }
                None => {
                    if waiting && self.deferred_bytes >= LOOKAHEAD {
                        return None;
                    }
                    let before = wire.input.len();
                    let inbound = match wire.codec.decode(&mut wire.input) {
                        Ok(Some(inbound)) => inbound,
                        Ok(None) => return None,
                        Err(e) => return Some(codec_error(e)),
                    };
                    if waiting && !is_ack(&inbound.packet) {
                        let size = before - wire.input.len();
                        self.deferred_bytes += size;
                        self.deferred.push_back((inbound, size));
                        continue;
                    }
                    inbound
                }
            };
            if let Some(ending) = self.handle(wire, inbound) {
                return Some(ending);
            }
        }
    }

    /// Handles one client packet.
    fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        inbound: Inbound,
    ) -> Option<Ending> {
        match inbound.packet {
            Packet::Publish(publish, properties) => {
                let header = inbound.publish?;
                self.publish(
                    wire,
                    header,
                    publish.topic,
                    publish.payload,
                    publish.retain,
                    properties,
                )
            }
            Packet::PubAck(ack, _) => {
                if let Err(e) = self.inflight.puback(ack.pkid) {
                    debug!(client_id = self.id.client_id, error = %e, "PUBACK ignored");
                }
                None
            }
            Packet::PubRec(rec, _) => {
                let success = matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                match self.inflight.pubrec(rec.pkid, success) {
                    Ok(()) if success => wire.queue(Packet::PubRel(
                        PubRel {
                            pkid: rec.pkid,
                            reason: PubRelReason::Success,
                        },
                        None,
                    )),
                    Ok(()) => {}
                    Err(e) => debug!(client_id = self.id.client_id, error = %e, "PUBREC ignored"),
                }
                None
            }
            Packet::PubComp(comp, _) => {
                if let Err(e) = self.inflight.pubcomp(comp.pkid) {
                    debug!(client_id = self.id.client_id, error = %e, "PUBCOMP ignored");
                }
                None
            }
            Packet::PubRel(rel, _) => {
                // A PUBREL for an id the gateway does not know (one whose
                // PUBLISH it refused, for a 3.1.1 client that cannot tell)
                // still gets its PUBCOMP, so the client can move on.
                let known = self.inflight.release(rel.pkid);
                let reason = if known || !self.id.version.is_v5() {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                wire.queue(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason,
                    },
                    None,
                ));
                None
            }
            Packet::Subscribe(subscribe, properties) => self.subscribe(wire, subscribe, properties),
            Packet::Unsubscribe(unsubscribe, _) => {
                self.unsubscribe(wire, unsubscribe);
                None
            }
            Packet::PingReq(_) => {
                wire.queue(Packet::PingResp(PingResp));
                None
            }
            Packet::Disconnect(disconnect, properties) => {
                if let Some(secs) = properties.and_then(|p| p.session_expiry_interval) {
                    if self.expiry_was_zero && secs != 0 {
                        return Some(Ending::Protocol(
                            DisconnectReasonCode::ProtocolError,
                            "DISCONNECT sets a session expiry after CONNECT set none".into(),
                        ));
                    }
                    self.session_expiry = Duration::from_secs(secs.into());
                }
                Some(Ending::Disconnected {
                    publish_will: disconnect.reason_code
                        == DisconnectReasonCode::DisconnectWithWillMessage,
                })
            }
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

    /// Authorizes and routes one PUBLISH.
    fn publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        header: PublishHeader,
        topic: Bytes,
        payload: Bytes,
        retain: bool,
        properties: Option<PublishProperties>,
    ) -> Option<Ending> {
        let topic = match self.resolve_topic(&topic, properties.as_ref()) {
            Ok(topic) => topic,
            Err(ending) => return Some(ending),
        };
        if properties
            .as_ref()
            .is_some_and(|p| !p.subscription_identifiers.is_empty())
        {
            return Some(Ending::Protocol(
                DisconnectReasonCode::ProtocolError,
                "a client PUBLISH may not carry a subscription identifier".into(),
            ));
        }
        if header.properties_len > self.limits.max_property_bytes {
            info!(
                client_id = self.id.client_id,
                topic,
                bytes = header.properties_len,
                max = self.limits.max_property_bytes,
                "publish refused: too many property bytes"
            );
            self.refuse_publish(wire, header, PubAckReason::QuotaExceeded);
            return None;
        }
        if !self.id.grants.may_publish(&topic) {
            info!(
                client_id = self.id.client_id,
                topic, "publish refused: topic not granted"
            );
            self.refuse_publish(wire, header, PubAckReason::NotAuthorized);
            return match self.shared.deny_publish {
                DenyPublish::Drop => None,
                DenyPublish::Disconnect => Some(Ending::PublishDenied),
            };
        }
        let ack = match header.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(
                PubAck {
                    pkid: header.pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            QoS::ExactlyOnce => Some(Packet::PubRec(
                PubRec {
                    pkid: header.pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )),
        };
        if header.qos == QoS::ExactlyOnce {
            if self.inflight.has_received(header.pkid) {
                // A re-sent QoS 2 PUBLISH: routed once already.
                wire.queue(ack?);
                return None;
            }
            if self.inflight.incoming() >= self.limits.receive_maximum {
                return Some(Ending::Protocol(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    format!(
                        "more than {} QoS 2 messages awaiting PUBREL",
                        self.limits.receive_maximum
                    ),
                ));
            }
            self.inflight.receive(header.pkid);
        }
        let (properties, expiry) = message_properties(properties);
        let message = self.broker().message(Publication {
            topic,
            payload,
            qos: header.qos,
            retain,
            properties,
            expiry,
        });
        let pending = self.broker().publish(message, Some(&self.session));
        if pending.is_done() {
            if let Some(ack) = ack {
                wire.queue(ack);
            }
        } else {
            self.pending = Some((pending, ack));
        }
        None
    }

    /// The topic of a PUBLISH, through the client's topic aliases (MQTT 5
    /// §3.3.2.3.4).
    fn resolve_topic(
        &mut self,
        raw: &[u8],
        properties: Option<&PublishProperties>,
    ) -> Result<String, Ending> {
        let invalid =
            |detail: String| Ending::Protocol(DisconnectReasonCode::TopicNameInvalid, detail);
        let topic = std::str::from_utf8(raw).map_err(|_| invalid("topic is not UTF-8".into()))?;
        let Some(alias) = properties.and_then(|p| p.topic_alias) else {
            validate_topic_name(topic).map_err(|e| invalid(e.to_string()))?;
            return Ok(topic.to_owned());
        };
        if alias == 0 || alias > self.limits.topic_aliases {
            return Err(Ending::Protocol(
                DisconnectReasonCode::TopicAliasInvalid,
                format!(
                    "topic alias {alias}; the maximum granted is {}",
                    self.limits.topic_aliases
                ),
            ));
        }
        let slot = usize::from(alias) - 1;
        if topic.is_empty() {
            return self
                .aliases
                .get(slot)
                .and_then(|t| t.as_deref())
                .map(str::to_owned)
                .ok_or_else(|| {
                    Ending::Protocol(
                        DisconnectReasonCode::ProtocolError,
                        format!("topic alias {alias} was never set"),
                    )
                });
        }
        validate_topic_name(topic).map_err(|e| invalid(e.to_string()))?;
        if self.aliases.len() <= slot {
            self.aliases.resize(slot + 1, None);
        }
        let old = self.aliases[slot].replace(topic.into());
        self.alias_bytes = self.alias_bytes + topic.len() - old.map_or(0, |t| t.len());
        if self.alias_bytes > self.limits.max_property_bytes {
            return Err(Ending::Protocol(
                DisconnectReasonCode::QuotaExceeded,
                "topic aliases hold more bytes than [limits] max_property_bytes".into(),
            ));
        }
        Ok(topic.to_owned())
    }

    /// Answers a refused PUBLISH: QoS 0 is dropped, QoS 1/2 acknowledged so
    /// the client does not resend it forever (MQTT 5 with the reason).
    fn refuse_publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        header: PublishHeader,
        reason: PubAckReason,
    ) {
        let pkid = header.pkid;
        match header.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => wire.queue(Packet::PubAck(PubAck { pkid, reason }, None)),
            QoS::ExactlyOnce => {
                let reason = match reason {
                    PubAckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
                    _ => PubRecReason::NotAuthorized,
                };
                wire.queue(Packet::PubRec(PubRec { pkid, reason }, None));
            }
        }
    }

    /// Answers a SUBSCRIBE filter by filter: refused where the token does
    /// not cover it, subscribed in the routing core otherwise.
    fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        subscribe: Subscribe,
        properties: Option<SubscribeProperties>,
    ) -> Option<Ending> {
        let id = properties.as_ref().and_then(|p| p.id);
        if id == Some(0) {
            return Some(Ending::Protocol(
                DisconnectReasonCode::ProtocolError,
                "subscription identifier 0".into(),
            ));
        }
        let property_bytes: usize = properties.as_ref().map_or(0, |p| {
            p.user_properties
                .iter()
                .map(|(k, v)| 4 + k.len() + v.len())
                .sum()
        });
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for filter in &subscribe.filters {
            let code = if property_bytes > self.limits.max_property_bytes {
                SubscribeReasonCode::QuotaExceeded
            } else {
                match self.subscribe_one(filter, id.and_then(|id| u32::try_from(id).ok())) {
                    Ok(code) => code,
                    Err(ending) => return Some(ending),
                }
            };
            if !matches!(code, SubscribeReasonCode::Success(_)) {
                info!(client_id = self.id.client_id, filter = filter.path, reason = ?code, "subscription refused");
            }
            return_codes.push(code);
        }
        wire.queue(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        ));
        None
    }

    fn subscribe_one(
        &mut self,
        filter: &Filter,
        id: Option<u32>,
    ) -> Result<SubscribeReasonCode, Ending> {
        let Ok(requested) = RequestedFilter::parse(&filter.path) else {
            return Ok(SubscribeReasonCode::TopicFilterInvalid);
        };
        if requested.group.is_some() && filter.nolocal {
            return Err(Ending::Protocol(
                DisconnectReasonCode::ProtocolError,
                "No Local on a shared subscription".into(),
            ));
        }
        if !self.id.grants.may_subscribe(&filter.path) {
            return Ok(SubscribeReasonCode::NotAuthorized);
        }
        let qos = broker_qos(filter.qos);
        let options = SubscriptionOptions {
            qos,
            no_local: filter.nolocal,
            retain_as_published: filter.preserve_retain,
            id,
        };
        let retain_handling = match filter.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => RetainHandling::OnSubscribe,
            RetainForwardRule::OnNewSubscribe => RetainHandling::OnNewSubscription,
            RetainForwardRule::Never => RetainHandling::Never,
        };
        Ok(
            match self
                .broker()
                .subscribe(&self.session, &filter.path, options, retain_handling)
            {
                Ok(_) => SubscribeReasonCode::Success(wire_qos(qos)),
                Err(SubscribeError::TooMany(_)) => SubscribeReasonCode::QuotaExceeded,
                Err(SubscribeError::Invalid(_)) => SubscribeReasonCode::TopicFilterInvalid,
            },
        )
    }

    fn unsubscribe<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        unsubscribe: Unsubscribe,
    ) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.broker().unsubscribe(&self.session, filter) {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        wire.queue(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
    }

    /// Ends the session: tells an MQTT 5 client why (if the server is the
    /// side that ends it), lets a pending publication finish in the
    /// background, and hands the session back to the routing core with the
    /// will when one is due.
    pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        wire: &mut Wire<S>,
        ending: Ending,
    ) {
        match &ending {
            Ending::Protocol(_, detail) => {
                info!(
                    client_id = self.id.client_id,
                    reason = detail,
                    "closing: protocol error"
                );
            }
            Ending::SlowSubscriber => {
                self.shared.broker.stats().evicted();
                warn!(
                    client_id = self.id.client_id,
                    queued = self.session.mailbox().len(),
                    "slow subscriber: disconnecting (see [sessions] slow_subscriber)"
                );
            }
            Ending::WriteStalled => {
                warn!(
                    client_id = self.id.client_id,
                    unwritten = wire.output.len(),
                    timeout_secs = self.shared.limits.write_timeout.as_secs(),
                    "client stopped reading: disconnecting (see [limits] write_timeout_secs)"
                );
            }
            other => info!(client_id = self.id.client_id, ending = ?other, "client disconnected"),
        }
        if let (true, Some(reason_code)) = (self.id.version.is_v5(), ending.reason()) {
            let properties = ending.detail().map(|detail| DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(detail),
                user_properties: Vec::new(),
                server_reference: None,
            });
            wire.queue(Packet::Disconnect(Disconnect { reason_code }, properties));
        }
        if !matches!(ending, Ending::WriteStalled) {
            wire.close(LAST_WORDS).await;
        }
        if let Some((mut pending, _)) = self.pending {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                while !pending.is_done() {
                    pending.advance(&shared.broker).await;
                }
            });
        }
        let will = if ending.publishes_will() {
            self.will
        } else {
            None
        };
        self.shared
            .broker
            .detach(self.session, self.inflight, self.session_expiry, will);
    }
}

/// The end of a connection whose bytes do not decode.
fn codec_error(e: CodecError) -> Ending {
    let code = match e {
        CodecError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
        CodecError::ForbiddenPacketType(_) => DisconnectReasonCode::ProtocolError,
        _ => DisconnectReasonCode::MalformedPacket,
    };
    Ending::Protocol(code, e.to_string())
}

/// Packets about what the gateway sends, which may be taken ahead of the
/// client's own publishes.
fn is_ack(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubComp(..)
            | Packet::PubRel(..)
            | Packet::PingReq(_)
    )
}

/// Advances the pending publication, if there is one.
async fn advance(pending: &mut Option<(Pending, Option<Packet>)>, broker: &Broker) {
    match pending {
        Some((pending, _)) => pending.advance(broker).await,
        None => std::future::pending().await,
    }
}

/// A topic alias the gateway uses for one PUBLISH to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SentAlias {
    /// Sent with the topic, which it stands for from now on.
    New(u16),
    /// Sent instead of the topic.
    Known(u16),
}

/// The topic aliases the gateway uses towards one client (MQTT 5
/// §3.3.2.3.4), when the client allows some: the first topics it is sent
/// get one each, for the life of the connection, and later PUBLISHes on
/// them carry the alias and an empty topic. A device with a handful of
/// topics then receives each topic name once.
#[derive(Debug)]
struct SentAliases {
    max: u16,
    by_topic: HashMap<Box<str>, u16>,
}

impl SentAliases {
    fn new(max: u16) -> SentAliases {
        SentAliases {
            max,
            by_topic: HashMap::new(),
        }
    }

    /// The alias to use for `topic`, if any.
    fn lookup(&self, topic: &str) -> Option<SentAlias> {
        if let Some(&alias) = self.by_topic.get(topic) {
            return Some(SentAlias::Known(alias));
        }
        let next = u16::try_from(self.by_topic.len() + 1).ok()?;
        (next <= self.max).then_some(SentAlias::New(next))
    }

    /// A PUBLISH has told the client that `alias` stands for `topic`.
    fn learned(&mut self, topic: &str, alias: u16) {
        self.by_topic.insert(topic.into(), alias);
    }
}

/// The PUBLISH that carries `delivery` to its client.
fn outgoing(
    delivery: &Delivery,
    pkid: u16,
    dup: bool,
    now: std::time::Instant,
    alias: Option<SentAlias>,
) -> OutgoingPublish<'_> {
    let message = &delivery.message;
    let (topic, topic_alias) = match alias {
        None => (message.topic(), None),
        Some(SentAlias::New(alias)) => (message.topic(), Some(alias)),
        Some(SentAlias::Known(alias)) => ("", Some(alias)),
    };
    OutgoingPublish {
        topic,
        payload: message.payload(),
        qos: delivery.qos,
        pkid,
        dup,
        retain: delivery.retain,
        properties: message.properties(),
        expiry: message.remaining_expiry(now),
        subscription_ids: &delivery.subscription_ids,
        topic_alias,
    }
}

/// What a PUBLISH's MQTT 5 properties give its message.
fn message_properties(properties: Option<PublishProperties>) -> (Properties, Option<Duration>) {
    let Some(p) = properties else {
        return (Properties::default(), None);
    };
    (
        Properties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
        },
        p.message_expiry_interval
            .map(|secs| Duration::from_secs(secs.into())),
    )
}
