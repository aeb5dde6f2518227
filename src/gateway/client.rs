//! A connected client's side of the protocol: packets in, decisions out.
//!
//! [`Client`] holds what MQTT makes a connection remember (its identity
//! and grants, the QoS 1/2 exchanges in flight both ways, topic aliases
//! both ways, the publication waiting for a full subscriber) and decides
//! what each packet means; it owns no socket and no timer, so it is tested
//! with bytes in and bytes out. The connection's loop
//! ([`super::session`]) feeds it:
//!
//! - **inbound** ([`Client::take_input`]): each packet the client sends is
//!   authorized against its token's grants and handed to the routing core
//!   ([`crate::broker`]). PUBLISH is routed right here, on the client's own
//!   task. When a subscriber's queue is full the publication is *pending*:
//!   the client's next publishes are not taken (only its acks and pings,
//!   and its socket only a little ahead) until every subscriber has taken
//!   it or its hold-back bound passed, and only then does the client get
//!   its PUBACK/PUBREC ([`Client::publication_done`]);
//! - **outbound** ([`Client::pump`]): deliveries are taken from the
//!   session's mailbox in batches and encoded as PUBLISH packets, QoS 1/2
//!   ones within the in-flight window (min of `[sessions] max_inflight` and
//!   the client's receive maximum) and none larger than the client accepts;
//! - **the end** ([`Ending`], [`Client::say_goodbye`],
//!   [`Client::hand_back`]): why the session ended, the DISCONNECT that
//!   tells an MQTT 5 client, and the session handed back to the routing
//!   core with its will.
//!
//! Every answer goes into an [`Outbox`]; the loop writes it out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    ConnectProperties, Disconnect, DisconnectProperties, DisconnectReasonCode, Filter, Packet,
    PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, PubRel,
    PubRelReason, PublishProperties, RetainForwardRule, SubAck, Subscribe, SubscribeProperties,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tracing::{debug, info, warn};

use super::codec::auth::{self as enhanced, Auth};
use super::codec::{CodecError, Inbound, OutgoingPublish, PublishHeader};
use super::owed::{MAX_OWED, Owed};
use super::quiet::{Kind, Quiet};
use super::wire::Outbox;
use crate::acl::Grants;
use crate::broker::budget::{Account, Charge, Kind as Held};
use crate::broker::{
    Attached, Broker, Budget, CommitError, Delivery, Inflight, Kept, Pending, Properties,
    Publication, Resend, Session, SubscribeError, Taken, Will,
};
use crate::config::{DenyPublish, Limits, SessionSettings};
use crate::metrics::{Metrics, SessionEnd};
use crate::mqtt::Version;
use crate::mqtt::{QoS, RetainHandling, SubscriptionOptions};
use crate::mqtt::{TopicLimits, validate_topic_name};

/// Output past which deliveries are left in the mailbox until the client
/// has read what is written.
pub(super) const WRITE_BATCH: usize = 64 * 1024;
/// Deliveries taken from the mailbox per lock.
const TAKE_BATCH: usize = 64;
/// Packets put aside while a publication waits, in bytes, past which the
/// client is not read until it is through.
const LOOKAHEAD: usize = 64 * 1024;

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
    fn reason(&self) -> Option<DisconnectReasonCode> {
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

    fn publishes_will(&self) -> bool {
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

    fn detail(&self) -> Option<String> {
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

/// What one client may be sent and may send, and what a refused PUBLISH
/// costs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientLimits {
    deny_publish: DenyPublish,
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
    /// How deep and long a topic or filter may be.
    topics: TopicLimits,
}

impl ClientLimits {
    pub fn new(
        sessions: &SessionSettings,
        limits: &Limits,
        deny_publish: DenyPublish,
        properties: Option<&ConnectProperties>,
    ) -> ClientLimits {
        let receive_maximum = properties
            .and_then(|p| p.receive_maximum)
            .filter(|&r| r > 0)
            .unwrap_or(u16::MAX);
        ClientLimits {
            deny_publish,
            inflight: usize::from(sessions.max_inflight.min(receive_maximum)),
            receive_maximum: usize::from(sessions.max_inflight),
            max_packet: properties
                .and_then(|p| p.max_packet_size)
                .and_then(|m| usize::try_from(m).ok())
                .filter(|&m| m > 0)
                .unwrap_or(usize::MAX),
            topic_aliases: limits.max_topic_aliases,
            sent_aliases: properties
                .and_then(|p| p.topic_alias_max)
                .unwrap_or(0)
                .min(limits.max_topic_aliases),
            max_property_bytes: limits.max_property_bytes,
            topics: limits.topics,
        }
    }
}

/// Who a client is, as its CONNECT established.
pub(super) struct Identity {
    /// Where the connection comes from, for the log.
    pub remote: std::net::SocketAddr,
    pub client_id: String,
    pub version: Version,
    /// The token's `sub`: a re-authentication must name the same.
    pub subject: Option<String>,
    /// The CONNECT's user name, for `${username}` in grants.
    pub username: Option<String>,
    /// The token, kept to re-check it when keys or the deny list change.
    pub credential: String,
    pub grants: Grants,
}

/// A connected client's protocol state: packets in, packets out.
pub(super) struct Client {
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
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
    /// The client's aliases as booked to the ledger.
    alias_charge: Option<Charge>,
    /// Topic aliases the gateway set towards the client.
    sent_aliases: SentAliases,
    /// A publication some subscriber has not taken yet, and the ack its
    /// publisher gets once it has.
    pending: Option<(Pending, Option<Packet>, Vec<Kept>)>,
    /// Acks waiting for their messages to be committed by the bridges.
    owed: Owed,
    /// Packets read while a publication waits, with their sizes.
    deferred: VecDeque<(Inbound, usize)>,
    deferred_bytes: usize,
    /// Scratch space for deliveries taken from the mailbox.
    batch: Vec<Delivery>,
    /// The token of an AUTH (re-authenticate) waiting to be verified; no
    /// packet behind it is taken until it is, so each is judged by the
    /// grants in force when it was sent.
    reauth: Option<String>,
    /// How many more lines the client's refusals may write to the log.
    quiet: Quiet,
}

impl Client {
    pub fn new(
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        id: Identity,
        will: Option<Will>,
        attached: Attached,
        session_expiry: Duration,
        limits: ClientLimits,
    ) -> Client {
        let sent_aliases = SentAliases::new(
            limits.sent_aliases,
            limits.max_property_bytes,
            Arc::clone(broker.budget()),
            attached.session.account(),
        );
        Client {
            broker,
            metrics,
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
            alias_charge: None,
            sent_aliases,
            pending: None,
            owed: Owed::default(),
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            batch: Vec::new(),
            reauth: None,
            quiet: Quiet::default(),
        }
    }

    fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Logs a line about this client's refusals through its [`Quiet`]:
    /// `line` (given the client id) runs for the first few of `kind`, the
    /// rest are only counted and summed up now and then.
    pub fn log_limited(&mut self, kind: Kind, line: impl FnOnce(&str)) {
        self.quiet.log(kind, &self.id.client_id, line);
    }

    /// The limiter, for lines written about the client from outside
    /// (re-authentication).
    pub fn quiet(&mut self) -> &mut Quiet {
        &mut self.quiet
    }

    pub fn id(&self) -> &Identity {
        &self.id
    }

    /// The routing core's side of the session: its mailbox is what the
    /// connection's loop waits on for deliveries.
    pub fn session(&self) -> Arc<Session> {
        Arc::clone(&self.session)
    }

    /// Starts the conversation: a resumed session's exchanges are re-sent,
    /// then the packets that arrived behind the CONNECT are handled.
    pub fn start(&mut self, input: &mut BytesMut, out: &mut Outbox) -> Option<Ending> {
        if std::mem::take(&mut self.resend) {
            self.resend(out);
        }
        self.take_input(input, out)
    }

    /// Whether the client's packets may be read now: not while too many
    /// wait behind a pending publication, nor while too many acks wait
    /// for the disk.
    pub fn reads_input(&self) -> bool {
        self.deferred_bytes < LOOKAHEAD && self.owed.len() < MAX_OWED
    }

    /// What the connection's loop waits on for the client: the
    /// publication some subscriber has not taken yet, if any, and the acks
    /// owed once the bridges' queues commit.
    pub fn waits(&mut self) -> (Option<&mut Pending>, &mut Owed) {
        (
            self.pending.as_mut().map(|(pending, _, _)| pending),
            &mut self.owed,
        )
    }

    /// After the pending publication went through: its publisher's ack
    /// joins those owed, and the packets put aside meanwhile are handled.
    pub fn publication_done(&mut self, input: &mut BytesMut, out: &mut Outbox) -> Option<Ending> {
        if !self.pending.as_ref().is_some_and(|(p, _, _)| p.is_done()) {
            return None;
        }
        if let Some((_, ack, kept)) = self.pending.take() {
            self.owed.push(kept, ack, out);
        }
        self.take_input(input, out)
    }

    /// Sends, in order, the acks whose messages' commits were tried, each
    /// telling its outcome.
    pub fn release_owed(&mut self, out: &mut Outbox) -> Option<Ending> {
        while let Some((ack, outcome)) = self.owed.next_settled() {
            match outcome {
                Ok(()) => out.queue(ack),
                Err(err) => {
                    if let Some(ending) = self.not_kept(ack, err, out) {
                        return Some(ending);
                    }
                }
            }
        }
        None
    }

    /// Answers a PUBLISH whose message could not be kept: MQTT 5 with the
    /// ack's reason (0x97 when there was no room, 0x80 otherwise), MQTT
    /// 3.1.1, whose ack cannot say it, by closing the connection without
    /// one: the client sends the message again once it reconnects.
    fn not_kept(&mut self, ack: Packet, err: CommitError, out: &mut Outbox) -> Option<Ending> {
        // The QoS 2 exchange ends here (MQTT 5 §4.3.3): its packet id is
        // free again, so that the PUBLISH an MQTT 3.1.1 client sends again
        // on its resumed session is routed, not taken for a re-send of a
        // message already kept.
        if let Packet::PubRec(rec, _) = &ack {
            self.inflight.release(rec.pkid);
        }
        if !self.id.version.is_v5() {
            return Some(Ending::NotKept(err));
        }
        out.queue(super::owed::refused(ack, err));
        None
    }

    /// Re-sends what a resumed session had in flight (MQTT 5 §4.4).
    fn resend(&mut self, out: &mut Outbox) {
        let now = std::time::Instant::now();
        let mut too_large = Vec::new();
        for resend in self.inflight.resend() {
            match resend {
                Resend::Publish(id, delivery) => {
                    let publish = outgoing(delivery, id, true, now, None);
                    if out.codec().publish_size(&publish) > self.limits.max_packet {
                        too_large.push(id);
                    } else {
                        out.queue_publish(&publish);
                    }
                }
                Resend::Release(id) => out.queue(Packet::PubRel(
                    PubRel {
                        pkid: id,
                        reason: PubRelReason::Success,
                    },
                    None,
                )),
            }
        }
        for id in too_large {
            self.broker.stats().oversized();
            self.inflight.abandon(id);
        }
    }

    /// Moves deliveries from the session's mailbox to the output, while
    /// there is room in both the output and the in-flight window.
    pub fn pump(&mut self, out: &mut Outbox) -> Option<Ending> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut ending = None;
        loop {
            // With the output full nothing is taken, but an eviction is
            // still noticed: a stalled client is exactly the one to evict.
            let max = if out.len() < WRITE_BATCH {
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
                self.send(out, delivery);
            }
        }
        self.batch = batch;
        // Retained messages for new subscriptions, one slice per round,
        // into the room the queue has: a slice that leaves more wakes the
        // connection again, so the task yields between slices; a full queue
        // is refilled when the client has taken from it.
        if self.session.is_replaying() && self.broker.replay(&self.session) {
            self.session.mailbox().wake();
        }
        ending
    }

    /// Writes one delivery as a PUBLISH, unless its message has expired or
    /// it is larger than the client accepts (MQTT 5 §3.1.2.11.4: such a
    /// message is dropped as if sent).
    fn send(&mut self, out: &mut Outbox, delivery: Delivery) {
        let now = std::time::Instant::now();
        let stats = self.broker.stats();
        if delivery.message.expired(now) {
            stats.expired();
            return;
        }
        let mut alias = self.sent_aliases.lookup(delivery.message.topic());
        let size = out
            .codec()
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
        if let Some(SentAlias::New(new)) = alias {
            if !self.sent_aliases.learned(delivery.message.topic(), new) {
                alias = None;
            }
        }
        self.metrics.delivered(delivery.qos);
        if delivery.qos == QoS::AtMostOnce {
            out.queue_publish(&outgoing(&delivery, 0, false, now, alias));
        } else {
            let (id, delivery) = self.inflight.send(delivery);
            out.queue_publish(&outgoing(delivery, id, false, now, alias));
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
    pub fn take_input(&mut self, input: &mut BytesMut, out: &mut Outbox) -> Option<Ending> {
        self.quiet
            .catch_up(&self.id.client_id, std::time::Instant::now());
        loop {
            if self.reauth.is_some() {
                return None;
            }
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
                    let before = input.len();
                    let inbound = match out.codec().decode(input) {
                        Ok(Some(inbound)) => inbound,
                        Ok(None) => return None,
                        Err(e) => return Some(codec_error(e)),
                    };
                    if waiting && !is_ack(&inbound) {
                        let size = before - input.len();
                        self.deferred_bytes += size;
                        self.deferred.push_back((inbound, size));
                        continue;
                    }
                    inbound
                }
            };
            if let Some(ending) = self.handle(out, inbound) {
                return Some(ending);
            }
        }
    }

    /// Handles one client packet.
    fn handle(&mut self, out: &mut Outbox, inbound: Inbound) -> Option<Ending> {
        let (packet, header) = match inbound {
            Inbound::Packet { packet, publish } => (packet, publish),
            Inbound::Auth(auth) => return self.auth(auth),
        };
        match packet {
            Packet::Publish(publish, properties) => {
                let header = header?;
                self.publish(
                    out,
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
                    Ok(()) if success => out.queue(Packet::PubRel(
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
                out.queue(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason,
                    },
                    None,
                ));
                None
            }
            Packet::Subscribe(subscribe, properties) => self.subscribe(out, subscribe, properties),
            Packet::Unsubscribe(unsubscribe, _) => {
                self.unsubscribe(out, unsubscribe);
                None
            }
            Packet::PingReq(_) => {
                out.queue(Packet::PingResp(PingResp));
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

    /// An AUTH from the client. jwtgate speaks one exchange, re-authenticate
    /// (0x19) with method `JWT` and a fresh token as data; the token is
    /// verified by the session loop, which holds the keys
    /// ([`Client::take_reauth`]), before any later packet is taken. A
    /// client that authenticated with a password may re-authenticate this
    /// way too.
    fn auth(&mut self, auth: Auth) -> Option<Ending> {
        if auth.reason != enhanced::REAUTHENTICATE {
            return Some(Ending::Protocol(
                DisconnectReasonCode::ProtocolError,
                format!(
                    "AUTH reason {:#04x}: the gateway sends no challenge, only re-authentication (0x19) is expected",
                    auth.reason
                ),
            ));
        }
        if auth.method.as_deref() != Some(enhanced::METHOD) {
            return Some(Ending::ReauthRefused {
                code: enhanced::BAD_AUTHENTICATION_METHOD,
                detail: "re-authentication needs method JWT".to_owned(),
                signed: None,
            });
        }
        match auth.data.as_deref().map(std::str::from_utf8) {
            Some(Ok(token)) => {
                self.reauth = Some(token.to_owned());
                None
            }
            _ => Some(Ending::ReauthRefused {
                code: enhanced::BAD_USER_NAME_OR_PASSWORD,
                detail: "re-authentication without a UTF-8 token as data".to_owned(),
                signed: None,
            }),
        }
    }

    /// The token of a re-authentication the client asked for, to verify.
    pub fn take_reauth(&mut self) -> Option<String> {
        self.reauth.take()
    }

    /// Puts a verified re-authentication into force: the new grants
    /// replace the old at once, the session is narrowed to them, and the
    /// client hears AUTH success. The caller re-arms the expiry.
    pub fn reauthenticated(&mut self, grants: Grants, credential: String, out: &mut Outbox) {
        self.id.grants = grants;
        self.id.credential = credential;
        self.narrow_to_grants();
        let grants = &self.id.grants;
        let not_granted = self.will.take_if(|will| {
            let p = &will.publication;
            !grants.may_publish(&p.topic, p.qos, p.retain)
        });
        if let Some(will) = not_granted {
            self.log_limited(Kind::Reauthentication, |client_id| {
                info!(
                    client_id,
                    topic = will.publication.topic,
                    "will dropped: the new token does not grant its topic"
                );
            });
        }
        out.queue_with(|bytes| Auth::encode(enhanced::SUCCESS, None, bytes));
    }

    /// Drops the subscriptions, queued messages and unacknowledged
    /// deliveries the grants do not cover: on resuming a session made
    /// under an older token, and after re-authentication.
    pub fn narrow_to_grants(&mut self) {
        let dropped = self
            .broker
            .restrict(&self.session, &self.id.grants, &mut self.inflight);
        self.resend &= self.inflight.outgoing() > 0;
        for filter in dropped {
            self.log_limited(Kind::SubscriptionDropped, |client_id| {
                info!(
                    client_id,
                    filter, "subscription dropped: the new token does not grant it"
                );
            });
        }
    }

    /// Authorizes and routes one PUBLISH.
    fn publish(
        &mut self,
        out: &mut Outbox,
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
        if let Err(e) = self.limits.topics.topic_name(&topic) {
            // MQTT 3.1.1 has no way to refuse one PUBLISH but closing.
            if !self.id.version.is_v5() {
                return Some(Ending::Protocol(
                    DisconnectReasonCode::TopicNameInvalid,
                    e.to_string(),
                ));
            }
            self.log_limited(Kind::PublishRefused, |client_id| {
                info!(client_id, error = %e, "publish refused: topic over the limits");
            });
            self.refuse_publish(out, header, PubAckReason::TopicNameInvalid);
            return None;
        }
        if header.properties_len > self.limits.max_property_bytes {
            let (bytes, max) = (header.properties_len, self.limits.max_property_bytes);
            self.log_limited(Kind::PublishRefused, |client_id| {
                info!(
                    client_id,
                    topic, bytes, max, "publish refused: too many property bytes"
                );
            });
            self.refuse_publish(out, header, PubAckReason::QuotaExceeded);
            return None;
        }
        if !self.id.grants.may_publish(&topic, header.qos, retain) {
            self.log_limited(Kind::PublishRefused, |client_id| {
                info!(client_id, topic, "publish refused: topic not granted");
            });
            self.refuse_publish(out, header, PubAckReason::NotAuthorized);
            return match self.limits.deny_publish {
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
                // A re-sent QoS 2 PUBLISH: routed once already; its PUBREC
                // still goes after those owed before it.
                self.owed.push(Vec::new(), ack, out);
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
        self.metrics.published(header.qos);
        let (properties, expiry) = message_properties(properties);
        let message = self.broker().message(Publication {
            topic,
            payload,
            qos: header.qos,
            retain,
            properties,
            expiry,
        });
        let mut pending = self.broker().publish(message, Some(&self.session));
        let kept = pending.take_kept();
        if pending.is_done() {
            self.owed.push(kept, ack, out);
        } else {
            self.pending = Some((pending, ack, kept));
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
        // Bounded per connection just below; booked so the ledger sees it.
        self.alias_charge = Some(self.broker.budget().charge_as(
            Held::Aliases,
            self.alias_bytes + self.aliases.len() * ALIAS_OVERHEAD,
        ));
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
    fn refuse_publish(&mut self, out: &mut Outbox, header: PublishHeader, reason: PubAckReason) {
        self.metrics.publish_refused();
        let pkid = header.pkid;
        match header.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => out.queue(Packet::PubAck(PubAck { pkid, reason }, None)),
            QoS::ExactlyOnce => {
                let reason = match reason {
                    PubAckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
                    PubAckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
                    _ => PubRecReason::NotAuthorized,
                };
                out.queue(Packet::PubRec(PubRec { pkid, reason }, None));
            }
        }
    }

    /// Answers a SUBSCRIBE filter by filter: refused where the token does
    /// not cover it, subscribed in the routing core otherwise.
    fn subscribe(
        &mut self,
        out: &mut Outbox,
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
        // A filter repeated in one SUBSCRIBE is one subscription (the last
        // options win, MQTT 5 §3.8.4): it is made, charged and replayed
        // once, by its last repetition; the others are answered as they
        // would have been.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(subscribe.filters.len());
        for (i, filter) in subscribe.filters.iter().enumerate() {
            last.insert(filter.path.as_str(), i);
        }
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for (i, filter) in subscribe.filters.iter().enumerate() {
            let commit = last.get(filter.path.as_str()) == Some(&i);
            let code = if property_bytes > self.limits.max_property_bytes {
                SubscribeReasonCode::QuotaExceeded
            } else {
                match self.subscribe_one(filter, id.and_then(|id| u32::try_from(id).ok()), commit) {
                    Ok(code) => code,
                    Err(ending) => return Some(ending),
                }
            };
            if !matches!(code, SubscribeReasonCode::Success(_)) {
                self.metrics.subscription_refused();
                self.log_limited(Kind::SubscriptionRefused, |client_id| {
                    info!(client_id, filter = filter.path, reason = ?code, "subscription refused");
                });
            }
            return_codes.push(code);
        }
        out.queue(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        ));
        None
    }

    /// Vets one filter and, with `commit`, subscribes to it.
    fn subscribe_one(
        &mut self,
        filter: &Filter,
        id: Option<u32>,
        commit: bool,
    ) -> Result<SubscribeReasonCode, Ending> {
        let Ok(requested) = self.limits.topics.requested(&filter.path) else {
            return Ok(SubscribeReasonCode::TopicFilterInvalid);
        };
        if requested.group.is_some() && filter.nolocal {
            return Err(Ending::Protocol(
                DisconnectReasonCode::ProtocolError,
                "No Local on a shared subscription".into(),
            ));
        }
        let qos = QoS::from(filter.qos);
        if !self.id.grants.may_subscribe(&filter.path, qos) {
            return Ok(SubscribeReasonCode::NotAuthorized);
        }
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
        if !commit {
            return Ok(SubscribeReasonCode::Success(qos.into()));
        }
        Ok(
            match self
                .broker()
                .subscribe(&self.session, &filter.path, options, retain_handling)
            {
                Ok(_) => SubscribeReasonCode::Success(qos.into()),
                Err(
                    SubscribeError::TooMany(_)
                    | SubscribeError::TooLarge(_)
                    | SubscribeError::Quota(_),
                ) => SubscribeReasonCode::QuotaExceeded,
                Err(SubscribeError::Invalid(_)) => SubscribeReasonCode::TopicFilterInvalid,
            },
        )
    }

    fn unsubscribe(&mut self, out: &mut Outbox, unsubscribe: Unsubscribe) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.limits.topics.requested(filter).is_err() {
                    UnsubAckReason::TopicFilterInvalid
                } else if self.broker().unsubscribe(&self.session, filter) {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        out.queue(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
    }

    /// Says why the session ends: in the log, and to an MQTT 5 client in a
    /// DISCONNECT when the server is the side that ends it.
    pub fn say_goodbye(&self, ending: &Ending, out: &mut Outbox) {
        match ending {
            Ending::Protocol(_, detail) => {
                info!(
                    client_id = self.id.client_id,
                    reason = detail,
                    "closing: protocol error"
                );
            }
            Ending::SlowSubscriber => {
                self.broker.stats().evicted();
                warn!(
                    client_id = self.id.client_id,
                    queued = self.session.mailbox().len(),
                    "slow subscriber: disconnecting (see [sessions] slow_subscriber)"
                );
            }
            Ending::WriteStalled => {
                warn!(
                    client_id = self.id.client_id,
                    unwritten = out.len(),
                    "client stopped reading: disconnecting (see [limits] write_timeout_secs)"
                );
            }
            Ending::ReauthRefused {
                code,
                detail,
                signed,
            } => {
                // The same fields as every authentication decision.
                let (sub, kid) = signed.as_ref().map_or(("", ""), |(sub, kid)| {
                    (sub.as_deref().unwrap_or(""), kid.as_str())
                });
                info!(
                    remote = %self.id.remote,
                    client_id = self.id.client_id,
                    sub,
                    kid,
                    outcome = "refused",
                    reason = %detail,
                    code = format_args!("{code:#04x}"),
                    "re-authentication refused: disconnecting"
                );
                // Only MQTT 5 clients can send AUTH.
                out.queue_with(|bytes| enhanced::encode_disconnect(*code, detail, bytes));
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
            out.queue(Packet::Disconnect(Disconnect { reason_code }, properties));
        }
    }

    /// Hands the session back to the routing core, with the will when one
    /// is due. A pending publication completes in the background: its
    /// subscribers still get it, its publisher no longer its ack.
    pub fn hand_back(mut self, ending: &Ending) {
        self.quiet.finish(&self.id.client_id);
        if let Some((mut pending, _, _)) = self.pending {
            let broker = Arc::clone(&self.broker);
            tokio::spawn(async move {
                while !pending.is_done() {
                    pending.advance(&broker).await;
                }
            });
        }
        let will = if ending.publishes_will() {
            self.will
        } else {
            None
        };
        self.broker
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
fn is_ack(inbound: &Inbound) -> bool {
    let Inbound::Packet { packet, .. } = inbound else {
        return false;
    };
    matches!(
        packet,
        Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubComp(..)
            | Packet::PubRel(..)
            | Packet::PingReq(_)
    )
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
///
/// The topics held are charged to the ledger and bounded in bytes like the
/// client's own aliases (`[limits] max_property_bytes`): past either, a
/// topic is simply sent without an alias.
#[derive(Debug)]
struct SentAliases {
    max: u16,
    by_topic: HashMap<Box<str>, (u16, Charge)>,
    bytes: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
    account: Option<Arc<Account>>,
}

/// What one alias entry costs beside its topic: the map slot and the box.
const ALIAS_OVERHEAD: usize = 48;

impl SentAliases {
    fn new(
        max: u16,
        max_bytes: usize,
        budget: Arc<Budget>,
        account: Option<Arc<Account>>,
    ) -> SentAliases {
        SentAliases {
            max,
            by_topic: HashMap::new(),
            bytes: 0,
            max_bytes,
            budget,
            account,
        }
    }

    /// The alias to use for `topic`, if any.
    fn lookup(&self, topic: &str) -> Option<SentAlias> {
        if let Some(&(alias, _)) = self.by_topic.get(topic) {
            return Some(SentAlias::Known(alias));
        }
        let next = u16::try_from(self.by_topic.len() + 1).ok()?;
        (next <= self.max).then_some(SentAlias::New(next))
    }

    /// A PUBLISH is about to tell the client that `alias` stands for
    /// `topic`, if the aliases may hold it: whether they do.
    fn learned(&mut self, topic: &str, alias: u16) -> bool {
        let cost = topic.len() + ALIAS_OVERHEAD;
        if self.bytes + cost > self.max_bytes {
            return false;
        }
        let charge = match &self.account {
            Some(account) => {
                match self
                    .budget
                    .try_charge(account, Held::Aliases, cost, cost, usize::MAX)
                {
                    Ok(charge) => charge,
                    Err(_) => return false,
                }
            }
            None => self.budget.charge_as(Held::Aliases, cost),
        };
        self.bytes += cost;
        self.by_topic.insert(topic.into(), (alias, charge));
        true
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

#[cfg(test)]
mod tests {
    use rumqttd::protocol::{Protocol, v4::V4, v5::V5};

    use super::*;
    use crate::broker::SessionKey;
    use crate::broker::store::MemoryStore;
    use crate::gateway::codec::Codec;
    use crate::mqtt::TopicFilter;

    const MAX_PACKET: usize = 1024 * 1024;

    struct Harness {
        client: Client,
        out: Outbox,
        version: Version,
    }

    fn client_with(
        version: Version,
        grants: &[&str],
        deny_publish: DenyPublish,
        settings: SessionSettings,
    ) -> Harness {
        let broker = Broker::new(&settings, 64 * 1024 * 1024, Arc::new(MemoryStore::new()));
        let attached = broker.attach(SessionKey::new("dev", "c1"), true).unwrap();
        let grants = Grants::new(
            grants
                .iter()
                .map(|filter| TopicFilter::parse(filter).unwrap())
                .collect(),
        );
        let id = Identity {
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: "c1".to_owned(),
            version,
            subject: None,
            username: Some("JWT".to_owned()),
            credential: String::new(),
            grants,
        };
        let limits = ClientLimits::new(&settings, &Limits::default(), deny_publish, None);
        Harness {
            client: Client::new(
                broker,
                Arc::default(),
                id,
                None,
                attached,
                Duration::ZERO,
                limits,
            ),
            out: Outbox::new(Codec::new(version, MAX_PACKET)),
            version,
        }
    }

    fn client(version: Version, grants: &[&str]) -> Harness {
        client_with(
            version,
            grants,
            DenyPublish::Drop,
            SessionSettings::default(),
        )
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        let mut len = body.len();
        loop {
            let byte = (len % 128) as u8;
            len /= 128;
            frame.push(if len > 0 { byte | 0x80 } else { byte });
            if len == 0 {
                break;
            }
        }
        frame.extend_from_slice(body);
        frame
    }

    impl Harness {
        /// The client sends `bytes`; what the gateway decides.
        fn send(&mut self, bytes: &[u8]) -> Option<Ending> {
            let mut input = BytesMut::from(bytes);
            let ending = self.client.take_input(&mut input, &mut self.out);
            assert!(
                ending.is_some() || input.is_empty(),
                "bytes left: {input:?}"
            );
            ending
        }

        fn publish(&mut self, topic: &str, qos: u8, pkid: u16, properties: &[u8]) -> Vec<u8> {
            let mut body = Vec::new();
            string(topic, &mut body);
            if qos > 0 {
                body.extend_from_slice(&pkid.to_be_bytes());
            }
            if self.version.is_v5() {
                body.push(u8::try_from(properties.len()).unwrap());
                body.extend_from_slice(properties);
            }
            body.extend_from_slice(b"payload");
            frame(0x30 | (qos << 1), &body)
        }

        fn subscribe(&self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
            let mut body = pkid.to_be_bytes().to_vec();
            if self.version.is_v5() {
                body.push(0);
            }
            for (filter, qos) in filters {
                string(filter, &mut body);
                body.push(*qos);
            }
            frame(0x82, &body)
        }

        /// Everything the gateway answered, decoded.
        fn answers(&mut self) -> Vec<Packet> {
            self.answers_with_headers()
                .into_iter()
                .map(|(packet, _)| packet)
                .collect()
        }

        /// The same, with the header of each PUBLISH as on the wire
        /// (rumqttd keeps a PUBLISH's QoS and packet id to itself).
        fn answers_with_headers(&mut self) -> Vec<(Packet, Option<PublishHeader>)> {
            let mut bytes = self.out.take();
            let mut packets = Vec::new();
            while let Some(&first) = bytes.first() {
                if first >> 4 == 3 {
                    let inbound = self.out.codec().decode(&mut bytes).unwrap().unwrap();
                    packets.push(inbound.into_packet());
                    continue;
                }
                let packet = match self.version {
                    Version::V5 => V5.read_mut(&mut bytes, MAX_PACKET),
                    _ => V4.read_mut(&mut bytes, MAX_PACKET),
                };
                packets.push((packet.unwrap(), None));
            }
            packets
        }
    }

    #[test]
    fn a_ping_is_answered() {
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        assert!(h.send(&[0xC0, 0x00]).is_none());
        assert!(matches!(h.answers()[..], [Packet::PingResp(_)]));
    }

    #[test]
    fn a_publish_outside_the_grants_is_acknowledged_and_not_routed() {
        for version in [Version::V3_1_1, Version::V5] {
            let mut h = client(version, &["dev/#"]);
            let subscribe = h.subscribe(1, &[("#", 1)]);
            // "#" is not granted either: the SUBACK refuses it, nothing
            // routes back to this client.
            assert!(h.send(&subscribe).is_none());
            let publish = h.publish("other/x", 1, 7, &[]);
            assert!(h.send(&publish).is_none());
            assert!(h.client.pump(&mut h.out).is_none());
            let answers = h.answers();
            assert_eq!(answers.len(), 2, "{answers:?}");
            assert!(matches!(&answers[1], Packet::PubAck(ack, _) if ack.pkid == 7));
            if version.is_v5() {
                assert!(matches!(
                    &answers[1],
                    Packet::PubAck(ack, _) if ack.reason == PubAckReason::NotAuthorized
                ));
            }
        }
    }

    #[test]
    fn deny_publish_disconnect_ends_the_session() {
        let mut h = client_with(
            Version::V3_1_1,
            &["dev/#"],
            DenyPublish::Disconnect,
            SessionSettings::default(),
        );
        let publish = h.publish("other/x", 0, 0, &[]);
        assert!(matches!(h.send(&publish), Some(Ending::PublishDenied)));
    }

    /// A tap whose commits are already answered: `dev/full/...` had no
    /// room, `dev/broken/...` failed, the rest was kept.
    struct Answered;

    impl crate::broker::Tap for Answered {
        fn take(&self, message: &Arc<crate::broker::Message>) -> Option<Kept> {
            let outcome = if message.topic().starts_with("dev/full/") {
                Err(CommitError::Full)
            } else if message.topic().starts_with("dev/broken/") {
                Err(CommitError::Storage)
            } else {
                Ok(())
            };
            let (answer, kept) = tokio::sync::oneshot::channel();
            let _ = answer.send(outcome);
            Some(kept)
        }
    }

    /// Issue 19, item 4: an ack tells whether its message was kept.
    #[test]
    fn an_ack_tells_whether_the_message_was_committed() {
        let mut h = client(Version::V5, &["dev/#"]);
        h.client.broker.add_tap(Arc::new(Answered));
        for (topic, qos, pkid) in [
            ("dev/ok/1", 1, 1),
            ("dev/full/1", 1, 2),
            ("dev/broken/1", 1, 3),
            ("dev/full/2", 2, 4),
        ] {
            let publish = h.publish(topic, qos, pkid, &[]);
            assert!(h.send(&publish).is_none());
        }
        assert!(h.client.release_owed(&mut h.out).is_none());
        let reasons: Vec<String> = h
            .answers()
            .iter()
            .map(|packet| match packet {
                Packet::PubAck(ack, _) => format!("{} {:?}", ack.pkid, ack.reason),
                Packet::PubRec(rec, _) => format!("{} {:?}", rec.pkid, rec.reason),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "1 Success",
                "2 QuotaExceeded",
                "3 UnspecifiedError",
                "4 QuotaExceeded"
            ]
        );
        // The refused QoS 2 exchange ended: the same packet id is a new
        // message, routed (and refused) again, not taken for a re-send
        // (which would be answered with success).
        assert_eq!(h.client.inflight.incoming(), 0);
        let publish = h.publish("dev/full/3", 2, 4, &[]);
        assert!(h.send(&publish).is_none());
        assert!(h.client.release_owed(&mut h.out).is_none());
        assert!(matches!(
            &h.answers()[..],
            [Packet::PubRec(rec, _)] if rec.pkid == 4 && rec.reason == PubRecReason::QuotaExceeded
        ));

        // MQTT 3.1.1 cannot say it: the connection closes without the ack,
        // and a QoS 2 id is not left behind as received.
        for qos in [1, 2] {
            let mut h = client(Version::V3_1_1, &["dev/#"]);
            h.client.broker.add_tap(Arc::new(Answered));
            let publish = h.publish("dev/full/1", qos, 1, &[]);
            assert!(h.send(&publish).is_none());
            assert!(matches!(
                h.client.release_owed(&mut h.out),
                Some(Ending::NotKept(CommitError::Full))
            ));
            assert!(h.answers().is_empty());
            assert_eq!(h.client.inflight.incoming(), 0);
        }
    }

    #[test]
    fn each_filter_is_granted_or_refused_on_its_own() {
        use rumqttd::protocol::QoS as WireQoS;
        // As rumqttd's decoders read them back.
        for (version, expected) in [
            (
                Version::V3_1_1,
                [
                    SubscribeReasonCode::Success(WireQoS::AtLeastOnce),
                    SubscribeReasonCode::Failure,
                    SubscribeReasonCode::Success(WireQoS::ExactlyOnce),
                ],
            ),
            (
                Version::V5,
                [
                    SubscribeReasonCode::QoS1,
                    SubscribeReasonCode::NotAuthorized,
                    SubscribeReasonCode::QoS2,
                ],
            ),
        ] {
            let mut h = client(version, &["dev/1/#"]);
            let subscribe = h.subscribe(3, &[("dev/1/t", 1), ("dev/2/t", 1), ("dev/1/+", 2)]);
            assert!(h.send(&subscribe).is_none());
            let answers = h.answers();
            let Packet::SubAck(ack, _) = &answers[0] else {
                panic!("{answers:?}");
            };
            assert_eq!(ack.pkid, 3);
            assert_eq!(ack.return_codes, expected);
        }
    }

    /// Topics and filters over `[limits] max_topic_levels` are refused at
    /// the door with the code MQTT has for them, and a filter repeated in
    /// one SUBSCRIBE is answered each time but subscribed once.
    #[test]
    fn topics_over_the_limits_are_refused_at_the_door() {
        let max = crate::mqtt::TopicLimits::DEFAULT.max_levels;
        let deep = format!("dev/{}", vec!["l"; max].join("/"));
        let fits = format!("dev/{}", vec!["l"; max - 1].join("/"));
        let mut h = client(Version::V5, &["dev/#"]);
        let subscribe = h.subscribe(1, &[(&deep, 1), (&fits, 1), (&fits, 0), (&fits, 1)]);
        assert!(h.send(&subscribe).is_none());
        let answers = h.answers();
        let Packet::SubAck(ack, _) = &answers[0] else {
            panic!("{answers:?}");
        };
        assert_eq!(
            ack.return_codes,
            [
                SubscribeReasonCode::TopicFilterInvalid,
                SubscribeReasonCode::QoS1,
                SubscribeReasonCode::QoS0,
                SubscribeReasonCode::QoS1,
            ]
        );
        assert_eq!(
            h.client.session.subscriptions(),
            std::slice::from_ref(&fits),
            "one subscription"
        );
        let publish = h.publish(&deep, 1, 2, &[]);
        assert!(h.send(&publish).is_none(), "MQTT 5: refused, connected");
        let answers = h.answers();
        assert!(
            matches!(
                &answers[..],
                [Packet::PubAck(
                    PubAck {
                        pkid: 2,
                        reason: PubAckReason::TopicNameInvalid
                    },
                    _
                )]
            ),
            "{answers:?}"
        );
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        let publish = h.publish(&deep, 1, 2, &[]);
        assert!(matches!(
            h.send(&publish),
            Some(Ending::Protocol(DisconnectReasonCode::TopicNameInvalid, _))
        ));
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        let subscribe = h.subscribe(1, &[(&deep, 1)]);
        assert!(h.send(&subscribe).is_none());
        let answers = h.answers();
        let Packet::SubAck(ack, _) = &answers[0] else {
            panic!("{answers:?}");
        };
        assert_eq!(ack.return_codes, [SubscribeReasonCode::Failure]);
    }

    #[test]
    fn a_granted_publish_reaches_the_clients_own_subscription_at_the_lower_qos() {
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        let subscribe = h.subscribe(1, &[("dev/+", 0)]);
        assert!(h.send(&subscribe).is_none());
        let publish = h.publish("dev/x", 1, 9, &[]);
        assert!(h.send(&publish).is_none());
        assert!(h.client.pump(&mut h.out).is_none());
        let answers = h.answers_with_headers();
        assert!(matches!(&answers[1].0, Packet::PubAck(ack, _) if ack.pkid == 9));
        let (Packet::Publish(delivered, _), Some(header)) = &answers[2] else {
            panic!("{answers:?}");
        };
        assert_eq!(&delivered.topic[..], b"dev/x");
        assert_eq!(header.qos, QoS::AtMostOnce);
    }

    #[test]
    fn a_second_connect_is_a_protocol_error() {
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        let mut body = Vec::new();
        string("MQTT", &mut body);
        body.extend_from_slice(&[4, 0x02, 0, 30]);
        string("c1", &mut body);
        let connect = frame(0x10, &body);
        assert!(matches!(
            h.send(&connect),
            Some(Ending::Protocol(DisconnectReasonCode::ProtocolError, _))
        ));
    }

    #[test]
    fn malformed_bytes_end_the_session_with_a_reason() {
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        // A CONNACK is the server's to send.
        assert!(matches!(
            h.send(&[0x20, 0x02, 0x00, 0x00]),
            Some(Ending::Protocol(DisconnectReasonCode::ProtocolError, _))
        ));
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        // A PUBLISH whose topic length runs past its frame.
        assert!(matches!(
            h.send(&[0x30, 0x03, 0x00, 0x09, b'x']),
            Some(Ending::Protocol(DisconnectReasonCode::MalformedPacket, _))
        ));
    }

    #[test]
    fn a_topic_alias_beyond_the_granted_maximum_ends_the_session() {
        let mut h = client(Version::V5, &["dev/#"]);
        let max = Limits::default().max_topic_aliases;
        let too_far = max + 1;
        let [hi, lo] = too_far.to_be_bytes();
        // Property 0x23: topic alias.
        let publish = h.publish("dev/x", 0, 0, &[0x23, hi, lo]);
        assert!(matches!(
            h.send(&publish),
            Some(Ending::Protocol(DisconnectReasonCode::TopicAliasInvalid, _))
        ));
        let mut h = client(Version::V5, &["dev/#"]);
        let unset = h.publish("", 0, 0, &[0x23, 0, 1]);
        assert!(matches!(
            h.send(&unset),
            Some(Ending::Protocol(DisconnectReasonCode::ProtocolError, _))
        ));
    }

    #[test]
    fn more_qos2_messages_than_the_receive_maximum_end_the_session() {
        let settings = SessionSettings {
            max_inflight: 2,
            ..SessionSettings::default()
        };
        let mut h = client_with(Version::V5, &["dev/#"], DenyPublish::Drop, settings);
        for pkid in 1..=2 {
            let publish = h.publish("dev/x", 2, pkid, &[]);
            assert!(h.send(&publish).is_none());
        }
        let third = h.publish("dev/x", 2, 3, &[]);
        assert!(matches!(
            h.send(&third),
            Some(Ending::Protocol(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                _
            ))
        ));
    }

    #[test]
    fn a_pubrel_for_an_unknown_id_still_gets_its_pubcomp() {
        let mut h = client(Version::V3_1_1, &["dev/#"]);
        assert!(h.send(&[0x62, 0x02, 0x00, 0x05]).is_none());
        assert!(matches!(&h.answers()[..], [Packet::PubComp(comp, _)] if comp.pkid == 5));
        let mut h = client(Version::V5, &["dev/#"]);
        assert!(h.send(&[0x62, 0x02, 0x00, 0x05]).is_none());
        assert!(matches!(
            &h.answers()[..],
            [Packet::PubComp(comp, _)] if comp.reason == PubCompReason::PacketIdentifierNotFound
        ));
    }

    #[test]
    fn a_disconnect_may_not_set_an_expiry_the_connect_did_not() {
        let mut h = client(Version::V5, &["dev/#"]);
        // Reason 0, properties: session expiry interval (0x11) = 60.
        let disconnect = frame(0xE0, &[0x00, 0x05, 0x11, 0, 0, 0, 60]);
        assert!(matches!(
            h.send(&disconnect),
            Some(Ending::Protocol(DisconnectReasonCode::ProtocolError, _))
        ));
        let mut h = client(Version::V5, &["dev/#"]);
        assert!(matches!(
            h.send(&[0xE0, 0x00]),
            Some(Ending::Disconnected {
                publish_will: false
            })
        ));
    }

    /// Issue 10's MQTT property: any sequence of valid packets from a few
    /// clients sharing one broker (SUBSCRIBE and UNSUBSCRIBE inside and
    /// outside the grants, PUBLISH at QoS 0/1/2 on topics inside and
    /// outside, the acks for what is outstanding, QoS 2 re-sent with DUP)
    /// never delivers outside the receiver's grants, delivers each message
    /// to each subscriber once, at min(publish QoS, highest matching
    /// subscription QoS) (MQTT 3.1.1 §3.8.4, §3.3.5; 5 §3.8.4), plus one
    /// copy per matching shared group (`$share/...`) to one of its members
    /// at that member's QoS (MQTT 5 §4.8.2; README: "deliver each message
    /// to one member"), and
    /// completes every QoS 1/2 exchange exactly once both ways (README,
    /// "Authentication and authorization": refused QoS 1/2 publishes are
    /// acknowledged too). Once everything is acknowledged, every message a
    /// connected subscriber was owed has reached it (README, "The
    /// guarantee"; no queue comes near its bound here).
    mod sequences {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use rumqttd::protocol::QoS as WireQoS;
        use std::collections::BTreeMap;

        const TOPICS: [&str; 6] = [
            "dev/1/a", "dev/1/b", "dev/2/a", "shared/x", "$SYS/up", "other",
        ];
        const FILTERS: [&str; 9] = [
            "dev/1/#", "dev/+/a", "dev/2/a", "#", "+/+/a", "shared/x", "$SYS/#", "dev/1/a", "+",
        ];
        const CLIENTS: usize = 3;
        /// Small, so that deliveries wait for the in-flight window.
        const MAX_INFLIGHT: u16 = 3;

        #[derive(Debug, Clone)]
        enum Op {
            /// Filters with the QoS asked for, some shared in group `g0`
            /// or `g1`.
            Subscribe {
                client: usize,
                filters: Vec<(usize, u8, Option<u8>)>,
            },
            Unsubscribe {
                client: usize,
                filter: usize,
                group: Option<u8>,
            },
            Publish {
                client: usize,
                topic: usize,
                qos: u8,
            },
            /// Re-send (DUP) a QoS 2 PUBLISH that awaits its PUBREL.
            Resend { client: usize, pick: Index },
            /// PUBREL for a QoS 2 PUBLISH the gateway answered.
            Release { client: usize, pick: Index },
            /// The client's next step for a delivery in flight: PUBACK,
            /// PUBREC or PUBCOMP.
            Ack { client: usize, pick: Index },
        }

        fn op() -> impl Strategy<Value = Op> {
            let client = 0..CLIENTS;
            prop_oneof![
                3 => (client.clone(), prop::collection::vec((0..FILTERS.len(), 0..=2u8, group()), 1..3))
                    .prop_map(|(client, filters)| Op::Subscribe { client, filters }),
                1 => (client.clone(), 0..FILTERS.len(), group())
                    .prop_map(|(client, filter, group)| Op::Unsubscribe { client, filter, group }),
                5 => (client.clone(), 0..TOPICS.len(), 0..=2u8)
                    .prop_map(|(client, topic, qos)| Op::Publish { client, topic, qos }),
                1 => (client.clone(), any::<Index>())
                    .prop_map(|(client, pick)| Op::Resend { client, pick }),
                2 => (client.clone(), any::<Index>())
                    .prop_map(|(client, pick)| Op::Release { client, pick }),
                4 => (client, any::<Index>()).prop_map(|(client, pick)| Op::Ack { client, pick }),
            ]
        }

        fn group() -> impl Strategy<Value = Option<u8>> {
            prop::option::weighted(0.3, 0..2u8)
        }

        /// The filter as a SUBSCRIBE carries it.
        fn requested(filter: usize, group: Option<u8>) -> String {
            match group {
                Some(group) => format!("$share/g{group}/{}", FILTERS[filter]),
                None => FILTERS[filter].to_owned(),
            }
        }

        /// A message's copies for the members of one shared group: exactly
        /// one of them gets it, at its own subscription's QoS.
        #[derive(Debug)]
        struct GroupCopy {
            msg: u64,
            /// (client, QoS it gets the message at).
            members: Vec<(usize, u8)>,
        }

        fn version() -> impl Strategy<Value = Version> {
            prop::sample::select(vec![Version::V3_1, Version::V3_1_1, Version::V5])
        }

        /// An answer the gateway owes a client.
        #[derive(Debug, Clone, PartialEq, Eq)]
        enum Owed {
            SubAck(u16, Vec<Option<u8>>),
            UnsubAck(u16),
            /// For a QoS 1 PUBLISH; whether it was authorized.
            PubAck(u16, bool),
            /// For a QoS 2 PUBLISH; whether it was authorized.
            PubRec(u16, bool),
            PubComp(u16),
            /// For the client's PUBREC of a QoS 2 delivery.
            PubRel(u16),
        }

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Stage {
            /// Sent; the client owes PUBACK (QoS 1) or PUBREC (QoS 2).
            Published,
            /// The client sent PUBREC; the gateway owes PUBREL.
            Received,
            /// The gateway sent PUBREL; the client owes PUBCOMP.
            Released,
        }

        /// One client as the model sees it.
        struct Peer {
            h: Harness,
            grants: Grants,
            /// Filter (as requested) to the granted QoS.
            subscriptions: BTreeMap<String, u8>,
            next_pkid: u16,
            /// The client's QoS 2 publishes awaiting its PUBREL, by packet
            /// id: (topic, message, authorized).
            awaiting_release: BTreeMap<u16, (usize, u64, bool)>,
            owed: Vec<Owed>,
            /// Deliveries in flight to the client, by packet id.
            inflight: BTreeMap<u16, (u64, u8, Stage)>,
            /// Messages the client must get through its non-shared
            /// subscriptions, with the QoS to get them at.
            expected: BTreeMap<u64, u8>,
            /// Each copy delivered, with its QoS.
            delivered: BTreeMap<u64, Vec<u8>>,
            /// Copies the client may get as a shared group's member, with
            /// the QoS of each.
            shared_offers: BTreeMap<u64, Vec<u8>>,
        }

        fn connect(
            broker: &Arc<Broker>,
            settings: &SessionSettings,
            i: usize,
            version: Version,
            grants: &[&'static str],
        ) -> Peer {
            let client_id = format!("c{i}");
            let attached = broker
                .attach(SessionKey::new(&format!("dev{i}"), &client_id), true)
                .unwrap();
            let grants = Grants::new(
                grants
                    .iter()
                    .map(|filter| TopicFilter::parse(filter).unwrap())
                    .collect(),
            );
            let id = Identity {
                remote: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                client_id,
                version,
                subject: None,
                username: Some("JWT".to_owned()),
                credential: String::new(),
                grants: grants.clone(),
            };
            let limits = ClientLimits::new(settings, &Limits::default(), DenyPublish::Drop, None);
            let client = Client::new(
                Arc::clone(broker),
                Arc::default(),
                id,
                None,
                attached,
                Duration::ZERO,
                limits,
            );
            Peer {
                h: Harness {
                    client,
                    out: Outbox::new(Codec::new(version, MAX_PACKET)),
                    version,
                },
                grants,
                subscriptions: BTreeMap::new(),
                next_pkid: 0,
                awaiting_release: BTreeMap::new(),
                owed: Vec::new(),
                inflight: BTreeMap::new(),
                expected: BTreeMap::new(),
                delivered: BTreeMap::new(),
                shared_offers: BTreeMap::new(),
            }
        }

        fn publish_bytes(
            version: Version,
            topic: &str,
            qos: u8,
            pkid: u16,
            dup: bool,
            msg: u64,
        ) -> Vec<u8> {
            let mut body = Vec::new();
            string(topic, &mut body);
            if qos > 0 {
                body.extend_from_slice(&pkid.to_be_bytes());
            }
            if version.is_v5() {
                body.push(0);
            }
            body.extend_from_slice(format!("m{msg}").as_bytes());
            frame(0x30 | (u8::from(dup) << 3) | (qos << 1), &body)
        }

        fn ack_bytes(first: u8, pkid: u16) -> Vec<u8> {
            frame(first, &pkid.to_be_bytes())
        }

        fn granted_qos(code: &SubscribeReasonCode) -> Option<u8> {
            match code {
                SubscribeReasonCode::QoS0 | SubscribeReasonCode::Success(WireQoS::AtMostOnce) => {
                    Some(0)
                }
                SubscribeReasonCode::QoS1 | SubscribeReasonCode::Success(WireQoS::AtLeastOnce) => {
                    Some(1)
                }
                SubscribeReasonCode::QoS2 | SubscribeReasonCode::Success(WireQoS::ExactlyOnce) => {
                    Some(2)
                }
                _ => None,
            }
        }

        /// What the gateway sent, decoded as `Harness::answers_with_headers`
        /// does, except UNSUBACK, read here: rumqttd's MQTT 5 reader
        /// reaches `unreachable!()` on it (see codec.rs).
        fn answers(h: &mut Harness) -> Vec<(Packet, Option<PublishHeader>)> {
            let mut bytes = h.out.take();
            let mut packets = Vec::new();
            while let Some(&first) = bytes.first() {
                match first >> 4 {
                    3 => {
                        let inbound = h.out.codec().decode(&mut bytes).unwrap().unwrap();
                        packets.push(inbound.into_packet());
                    }
                    11 => {
                        let (mut len, mut shift, mut at) = (0usize, 0, 1);
                        loop {
                            let byte = bytes[at];
                            len |= usize::from(byte & 0x7f) << shift;
                            shift += 7;
                            at += 1;
                            if byte & 0x80 == 0 {
                                break;
                            }
                        }
                        let pkid = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
                        let _ = bytes.split_to(at + len);
                        let reasons = Vec::new();
                        packets.push((Packet::UnsubAck(UnsubAck { pkid, reasons }, None), None));
                    }
                    _ => {
                        let packet = match h.version {
                            Version::V5 => V5.read_mut(&mut bytes, MAX_PACKET),
                            _ => V4.read_mut(&mut bytes, MAX_PACKET),
                        };
                        packets.push((packet.unwrap(), None));
                    }
                }
            }
            packets
        }

        struct World {
            peers: Vec<Peer>,
            next_msg: u64,
            groups: Vec<GroupCopy>,
        }

        impl Peer {
            fn pkid(&mut self) -> u16 {
                loop {
                    self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                    if !self.awaiting_release.contains_key(&self.next_pkid) {
                        return self.next_pkid;
                    }
                }
            }

            fn send(&mut self, bytes: &[u8]) -> Result<(), TestCaseError> {
                let ending = self.h.send(bytes);
                prop_assert!(ending.is_none(), "the session ended: {:?}", ending);
                // Queues hold 1000 messages; none fills up here, so no
                // publication waits.
                prop_assert!(self.h.client.waits().0.is_none());
                Ok(())
            }

            fn owe(&mut self, answer: &Owed) -> Result<(), TestCaseError> {
                let at = self.owed.iter().position(|owed| owed == answer);
                prop_assert!(
                    at.is_some(),
                    "unexpected {:?}; owed {:?}",
                    answer,
                    self.owed
                );
                self.owed.remove(at.unwrap());
                Ok(())
            }

            /// Reads everything the gateway sent and checks it against the
            /// model.
            fn check_answers(&mut self) -> Result<usize, TestCaseError> {
                let ending = self.h.client.pump(&mut self.h.out);
                prop_assert!(ending.is_none(), "{:?}", ending);
                let answers = answers(&mut self.h);
                let count = answers.len();
                let v5 = self.h.version.is_v5();
                for answer in answers {
                    match answer {
                        (Packet::SubAck(ack, _), _) => {
                            let codes = ack.return_codes.iter().map(granted_qos).collect();
                            self.owe(&Owed::SubAck(ack.pkid, codes))?;
                        }
                        (Packet::UnsubAck(ack, _), _) => self.owe(&Owed::UnsubAck(ack.pkid))?,
                        (Packet::PubAck(ack, _), _) => {
                            let granted = ack.reason == PubAckReason::Success;
                            prop_assert!(v5 || granted);
                            // A 3.1.1 PUBACK carries no reason: match either.
                            let owed = Owed::PubAck(ack.pkid, true);
                            if v5 || self.owed.contains(&owed) {
                                self.owe(&Owed::PubAck(ack.pkid, granted))?;
                            } else {
                                self.owe(&Owed::PubAck(ack.pkid, false))?;
                            }
                        }
                        (Packet::PubRec(rec, _), _) => {
                            let granted = rec.reason == PubRecReason::Success;
                            let owed = Owed::PubRec(rec.pkid, true);
                            if v5 || self.owed.contains(&owed) {
                                self.owe(&Owed::PubRec(rec.pkid, granted))?;
                            } else {
                                self.owe(&Owed::PubRec(rec.pkid, false))?;
                            }
                        }
                        (Packet::PubComp(comp, _), _) => {
                            prop_assert_eq!(comp.reason, PubCompReason::Success);
                            self.owe(&Owed::PubComp(comp.pkid))?;
                        }
                        (Packet::PubRel(rel, _), _) => {
                            self.owe(&Owed::PubRel(rel.pkid))?;
                            let entry = self.inflight.get_mut(&rel.pkid);
                            prop_assert!(
                                entry
                                    .as_ref()
                                    .is_some_and(|(_, _, stage)| *stage == Stage::Received),
                                "PUBREL {} for {:?}",
                                rel.pkid,
                                entry
                            );
                            if let Some((_, _, stage)) = entry {
                                *stage = Stage::Released;
                            }
                        }
                        (Packet::Publish(publish, _), Some(header)) => {
                            let topic = std::str::from_utf8(&publish.topic).unwrap().to_owned();
                            let msg: u64 = std::str::from_utf8(&publish.payload)
                                .ok()
                                .and_then(|p| p.strip_prefix('m'))
                                .and_then(|m| m.parse().ok())
                                .unwrap();
                            let qos = QoS::level(header.qos);
                            prop_assert!(
                                self.grants.may_receive(&topic, QoS::AtMostOnce),
                                "message {} on {:?} delivered outside the grants {:?}",
                                msg,
                                topic,
                                self.grants
                            );
                            // Each copy is either the one for the
                            // non-shared subscriptions or one for a shared
                            // group, at the QoS that copy is due; none
                            // comes twice (no re-sends without a
                            // reconnect, MQTT 5 §4.4).
                            let copies = self.delivered.entry(msg).or_default();
                            copies.push(qos);
                            let mut due: Vec<u8> =
                                self.expected.get(&msg).copied().into_iter().collect();
                            due.extend(self.shared_offers.get(&msg).into_iter().flatten());
                            let fits = copies.iter().all(|q| {
                                copies.iter().filter(|c| *c == q).count()
                                    <= due.iter().filter(|d| *d == q).count()
                            });
                            prop_assert!(
                                fits,
                                "message {} on {:?}: copies at QoS {:?}, due {:?}; subscriptions {:?}",
                                msg,
                                topic,
                                copies,
                                due,
                                self.subscriptions
                            );
                            if qos > 0 {
                                prop_assert!(header.pkid != 0);
                                let clash = self
                                    .inflight
                                    .insert(header.pkid, (msg, qos, Stage::Published));
                                prop_assert!(
                                    clash.is_none(),
                                    "packet id {} in use by {:?}",
                                    header.pkid,
                                    clash
                                );
                            }
                        }
                        other => prop_assert!(false, "unexpected answer {:?}", other),
                    }
                }
                Ok(count)
            }
        }

        impl World {
            fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
                match op {
                    Op::Subscribe { client, filters } => {
                        let peer = &mut self.peers[*client];
                        let pkid = peer.pkid();
                        let requested: Vec<(String, u8)> = filters
                            .iter()
                            .map(|&(f, qos, group)| (requested(f, group), qos))
                            .collect();
                        let mut codes = Vec::new();
                        for (filter, qos) in &requested {
                            if peer.grants.may_subscribe(filter, QoS::AtMostOnce) {
                                peer.subscriptions.insert(filter.clone(), *qos);
                                codes.push(Some(*qos));
                            } else {
                                codes.push(None);
                            }
                        }
                        peer.owed.push(Owed::SubAck(pkid, codes));
                        let requested: Vec<(&str, u8)> = requested
                            .iter()
                            .map(|(f, qos)| (f.as_str(), *qos))
                            .collect();
                        let bytes = peer.h.subscribe(pkid, &requested);
                        peer.send(&bytes)?;
                    }
                    Op::Unsubscribe {
                        client,
                        filter,
                        group,
                    } => {
                        let peer = &mut self.peers[*client];
                        let pkid = peer.pkid();
                        let mut body = pkid.to_be_bytes().to_vec();
                        if peer.h.version.is_v5() {
                            body.push(0);
                        }
                        let filter = requested(*filter, *group);
                        string(&filter, &mut body);
                        peer.subscriptions.remove(&filter);
                        peer.owed.push(Owed::UnsubAck(pkid));
                        peer.send(&frame(0xA2, &body))?;
                    }
                    Op::Publish { client, topic, qos } => {
                        let msg = self.next_msg;
                        self.next_msg += 1;
                        let name = TOPICS[*topic];
                        let peer = &self.peers[*client];
                        let granted = peer.grants.may_publish(name, QoS::AtMostOnce, false);
                        // Stay within the receive maximum for QoS 2.
                        let qos = if *qos == 2
                            && peer.awaiting_release.len() >= usize::from(MAX_INFLIGHT)
                        {
                            1
                        } else {
                            *qos
                        };
                        if granted {
                            // Shared groups are keyed by name and filter.
                            let mut groups: BTreeMap<(String, String), Vec<(usize, u8)>> =
                                BTreeMap::new();
                            for (i, other) in self.peers.iter_mut().enumerate() {
                                let mut best = None;
                                for (filter, &sub_qos) in &other.subscriptions {
                                    let parsed =
                                        crate::mqtt::RequestedFilter::parse(filter).unwrap();
                                    if !TopicFilter::parse(parsed.filter)
                                        .unwrap()
                                        .matches_topic(name)
                                    {
                                        continue;
                                    }
                                    match parsed.group {
                                        Some(group) => groups
                                            .entry((group.to_owned(), parsed.filter.to_owned()))
                                            .or_default()
                                            .push((i, sub_qos.min(qos))),
                                        None => best = best.max(Some(sub_qos.min(qos))),
                                    }
                                }
                                if let Some(best) = best {
                                    other.expected.insert(msg, best);
                                }
                            }
                            for members in groups.into_values() {
                                for &(i, qos) in &members {
                                    self.peers[i]
                                        .shared_offers
                                        .entry(msg)
                                        .or_default()
                                        .push(qos);
                                }
                                self.groups.push(GroupCopy { msg, members });
                            }
                        }
                        let peer = &mut self.peers[*client];
                        let pkid = if qos > 0 { peer.pkid() } else { 0 };
                        let version = peer.h.version;
                        match qos {
                            0 => {}
                            1 => peer.owed.push(Owed::PubAck(pkid, granted)),
                            _ => {
                                peer.owed.push(Owed::PubRec(pkid, granted));
                                // An MQTT 5 client learns from the PUBREC's
                                // reason that the exchange is over.
                                if granted || !version.is_v5() {
                                    peer.awaiting_release.insert(pkid, (*topic, msg, granted));
                                }
                            }
                        }
                        peer.send(&publish_bytes(version, name, qos, pkid, false, msg))?;
                    }
                    Op::Resend { client, pick } => {
                        let peer = &mut self.peers[*client];
                        if peer.awaiting_release.is_empty() {
                            return Ok(());
                        }
                        let &(&pkid, &(topic, msg, granted)) =
                            pick.get(&peer.awaiting_release.iter().collect::<Vec<_>>()[..]);
                        peer.owed.push(Owed::PubRec(pkid, granted));
                        let bytes =
                            publish_bytes(peer.h.version, TOPICS[topic], 2, pkid, true, msg);
                        peer.send(&bytes)?;
                    }
                    Op::Release { client, pick } => {
                        let peer = &mut self.peers[*client];
                        if peer.awaiting_release.is_empty() {
                            return Ok(());
                        }
                        let pkid =
                            *pick.get(&peer.awaiting_release.keys().copied().collect::<Vec<_>>());
                        peer.awaiting_release.remove(&pkid);
                        peer.owed.push(Owed::PubComp(pkid));
                        peer.send(&ack_bytes(0x62, pkid))?;
                    }
                    Op::Ack { client, pick } => {
                        let peer = &mut self.peers[*client];
                        if peer.inflight.is_empty() {
                            return Ok(());
                        }
                        let pkid = *pick.get(&peer.inflight.keys().copied().collect::<Vec<_>>());
                        peer.ack(pkid)?;
                    }
                }
                self.settle()
            }

            /// Every client reads what it was sent until nothing more
            /// comes; nothing is owed then.
            fn settle(&mut self) -> Result<(), TestCaseError> {
                loop {
                    let mut read = 0;
                    for peer in &mut self.peers {
                        read += peer.check_answers()?;
                    }
                    if read == 0 {
                        break;
                    }
                }
                for (i, peer) in self.peers.iter().enumerate() {
                    prop_assert!(
                        peer.owed.is_empty(),
                        "client {} still owed {:?}",
                        i,
                        peer.owed
                    );
                }
                Ok(())
            }

            /// Completes every exchange, then checks that each message
            /// reached every client it was owed to.
            fn drain(&mut self) -> Result<(), TestCaseError> {
                for _ in 0..1000 {
                    let mut sent = false;
                    for peer in &mut self.peers {
                        let ids: Vec<u16> = peer.inflight.keys().copied().collect();
                        for pkid in ids {
                            peer.ack(pkid)?;
                            sent = true;
                        }
                        let releases: Vec<u16> = peer.awaiting_release.keys().copied().collect();
                        for pkid in releases {
                            peer.awaiting_release.remove(&pkid);
                            peer.owed.push(Owed::PubComp(pkid));
                            peer.send(&ack_bytes(0x62, pkid))?;
                            sent = true;
                        }
                    }
                    self.settle()?;
                    if !sent {
                        break;
                    }
                }
                for (i, peer) in self.peers.iter().enumerate() {
                    prop_assert!(
                        peer.inflight.is_empty(),
                        "client {}: {:?}",
                        i,
                        peer.inflight
                    );
                }
                // Every copy due arrived: the non-shared ones, and one per
                // shared group to one of its members.
                let mut left: Vec<BTreeMap<u64, Vec<u8>>> =
                    self.peers.iter().map(|p| p.delivered.clone()).collect();
                for (i, peer) in self.peers.iter().enumerate() {
                    for (&msg, &qos) in &peer.expected {
                        let copies = left[i].entry(msg).or_default();
                        let at = copies.iter().position(|&c| c == qos);
                        prop_assert!(
                            at.is_some(),
                            "client {} never got message {} at QoS {}",
                            i,
                            msg,
                            qos
                        );
                        copies.remove(at.unwrap());
                    }
                }
                let groups: Vec<&GroupCopy> = self.groups.iter().collect();
                prop_assert!(
                    assign(&groups, &mut left),
                    "shared copies {:?} do not make one per group {:?}",
                    left,
                    self.groups
                );
                prop_assert!(
                    left.iter().all(|l| l.values().all(Vec::is_empty)),
                    "copies beyond those due: {:?}",
                    left
                );
                Ok(())
            }
        }

        /// Whether each group can be given exactly one of the copies left,
        /// to one of its members at that member's QoS.
        fn assign(groups: &[&GroupCopy], left: &mut [BTreeMap<u64, Vec<u8>>]) -> bool {
            let Some((group, rest)) = groups.split_first() else {
                return true;
            };
            for &(i, qos) in &group.members {
                let copies = left[i].entry(group.msg).or_default();
                if let Some(at) = copies.iter().position(|&c| c == qos) {
                    copies.remove(at);
                    if assign(rest, left) {
                        return true;
                    }
                    left[i].entry(group.msg).or_default().push(qos);
                }
            }
            false
        }

        impl Peer {
            /// The client's next step for the delivery `pkid`.
            fn ack(&mut self, pkid: u16) -> Result<(), TestCaseError> {
                let (msg, qos, stage) = self.inflight[&pkid];
                match (qos, stage) {
                    (1, Stage::Published) => {
                        self.inflight.remove(&pkid);
                        self.send(&ack_bytes(0x40, pkid))
                    }
                    (_, Stage::Published) => {
                        self.inflight.insert(pkid, (msg, qos, Stage::Received));
                        self.owed.push(Owed::PubRel(pkid));
                        self.send(&ack_bytes(0x50, pkid))
                    }
                    (_, Stage::Released) => {
                        self.inflight.remove(&pkid);
                        self.send(&ack_bytes(0x70, pkid))
                    }
                    // Settled before the next step: the PUBREL came.
                    (_, Stage::Received) => {
                        prop_assert!(false, "no PUBREL for {}", pkid);
                        Ok(())
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn packet_sequences_respect_grants_qos_and_exchanges(
                clients in prop::collection::vec(
                    (version(), prop::sample::subsequence(FILTERS.to_vec(), 2..=6)),
                    1..=CLIENTS,
                ),
                ops in prop::collection::vec(op(), 1..60),
            ) {
                let settings = SessionSettings {
                    max_inflight: MAX_INFLIGHT,
                    ..SessionSettings::default()
                };
                let broker = Broker::new(&settings, 64 * 1024 * 1024, Arc::new(MemoryStore::new()));
                let peers = clients
                    .iter()
                    .enumerate()
                    .map(|(i, (version, grants))| connect(&broker, &settings, i, *version, grants))
                    .collect();
                let mut world = World {
                    peers,
                    next_msg: 0,
                    groups: Vec::new(),
                };
                for op in &ops {
                    let mut op = op.clone();
                    // Ops name a client among those connected.
                    match &mut op {
                        Op::Subscribe { client, .. }
                        | Op::Unsubscribe { client, .. }
                        | Op::Publish { client, .. }
                        | Op::Resend { client, .. }
                        | Op::Release { client, .. }
                        | Op::Ack { client, .. } => *client %= clients.len(),
                    }
                    world.apply(&op)?;
                }
                world.drain()?;
            }
        }
    }
}
