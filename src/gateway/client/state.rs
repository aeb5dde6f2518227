//! The client's state: who it is, what it may do, what it holds in
//! flight, and how the session is handed back when the connection ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{ConnectProperties, Disconnect, DisconnectProperties, Packet};
use tracing::{info, warn};

use crate::acl::Grants;
use crate::broker::{
    Attached, Broker, CommitError, Delivery, Inflight, Kept, Pending, Session, Will,
};
use crate::config::{DenyPublish, Limits, SessionSettings};
use crate::gateway::codec::Inbound;
use crate::gateway::codec::auth as enhanced;
use crate::gateway::owed::{MAX_OWED, Owed};
use crate::gateway::quiet::{Kind, Quiet};
use crate::gateway::wire::Outbox;
use crate::metrics::Metrics;
use crate::mqtt::TopicLimits;
use crate::mqtt::{PacketId, Version};

use super::aliases::{ReceivedAliases, SentAliases};
use super::ending::Ending;

/// Packets put aside while a publication waits, in bytes, past which the
/// client is not read until it is through.
pub(super) const LOOKAHEAD: usize = 64 * 1024;

/// What one client may be sent and may send, and what a refused PUBLISH
/// costs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLimits {
    pub(super) deny_publish: DenyPublish,
    /// QoS 1/2 deliveries awaiting the client's ack, at most.
    pub(super) inflight: usize,
    /// QoS 2 messages from the client awaiting its PUBREL, at most: the
    /// receive maximum announced in CONNACK.
    pub(super) receive_maximum: usize,
    /// Largest packet the client accepts.
    pub(super) max_packet: usize,
    /// Topic aliases granted in CONNACK.
    pub(super) topic_aliases: u16,
    /// Topic aliases the gateway may use towards the client: the client's
    /// topic alias maximum, within the same bound as its own.
    pub(super) sent_aliases: u16,
    /// MQTT 5 property bytes accepted in one packet; also the bound on the
    /// topics held by aliases.
    pub(super) max_property_bytes: usize,
    /// How deep and long a topic or filter may be.
    pub(super) topics: TopicLimits,
}

impl ClientLimits {
    pub fn new(
        sessions: &SessionSettings,
        limits: &Limits,
        deny_publish: DenyPublish,
        properties: Option<&ConnectProperties>,
    ) -> ClientLimits {
        // A CONNECT with a Receive Maximum or Maximum Packet Size of 0 is
        // refused as a Protocol Error before it gets here; the filters only
        // keep a 0 from stalling the window should that ever change.
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
pub(crate) struct Identity {
    /// Where the connection comes from, for the log.
    pub remote: std::net::SocketAddr,
    /// The client certificate it presented: what a re-authentication's
    /// bound token must name too.
    pub certificate: Option<crate::tls::Thumbprint>,
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
pub(crate) struct Client {
    pub(super) broker: Arc<Broker>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) id: Identity,
    /// Boxed: a will is a few hundred bytes most clients never set.
    pub(super) will: Option<Box<Will>>,
    pub(super) session: Arc<Session>,
    pub(super) inflight: Inflight,
    /// The exchanges of a resumed session still have to be re-sent.
    pub(super) resend: bool,
    pub(super) session_expiry: Duration,
    /// CONNECT set no session expiry, so DISCONNECT may not set one.
    pub(super) expiry_was_zero: bool,
    pub(super) limits: ClientLimits,
    /// Topic aliases the client set.
    pub(super) aliases: ReceivedAliases,
    /// Topic aliases the gateway set towards the client.
    pub(super) sent_aliases: SentAliases,
    /// A publication some subscriber has not taken yet (boxed: rare, and
    /// larger than all the rest an idle client holds).
    pub(super) pending: Option<Box<Waiting>>,
    /// Acks waiting for their messages to be committed by the bridges.
    pub(super) owed: Owed,
    /// Packets read while a publication waits, with their sizes.
    pub(super) deferred: VecDeque<(Inbound, usize)>,
    pub(super) deferred_bytes: usize,
    /// Scratch space for deliveries taken from the mailbox.
    pub(super) batch: Vec<Delivery>,
    /// The token of an AUTH (re-authenticate) waiting to be verified; no
    /// packet behind it is taken until it is, so each is judged by the
    /// grants in force when it was sent.
    pub(super) reauth: Option<String>,
    /// How many more lines the client's refusals may write to the log.
    pub(super) quiet: Quiet,
}

/// A publication some subscriber has not taken yet, and the ack its
/// publisher gets once it has.
pub(super) struct Waiting {
    pub pending: Pending,
    pub ack: Option<Packet>,
    pub kept: Vec<Kept>,
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
        let aliases = ReceivedAliases::new(
            limits.topic_aliases,
            limits.max_property_bytes,
            Arc::clone(broker.budget()),
        );
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
            will: will.map(Box::new),
            session: attached.session,
            resend: attached.inflight.outgoing() > 0,
            inflight: attached.inflight,
            expiry_was_zero: session_expiry.is_zero(),
            session_expiry,
            limits,
            aliases,
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

    pub(super) fn broker(&self) -> &Broker {
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
            self.pending.as_mut().map(|waiting| &mut waiting.pending),
            &mut self.owed,
        )
    }

    /// After the pending publication went through: its publisher's ack
    /// joins those owed, and the packets put aside meanwhile are handled.
    pub fn publication_done(&mut self, input: &mut BytesMut, out: &mut Outbox) -> Option<Ending> {
        if !self.pending.as_ref().is_some_and(|w| w.pending.is_done()) {
            return None;
        }
        if let Some(waiting) = self.pending.take() {
            let Waiting { ack, kept, .. } = *waiting;
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
    /// one: the client sends the message again once it reconnects. A
    /// SUBSCRIBE or UNSUBSCRIBE whose session could not be written down
    /// closes the connection in both versions: the change is in force in
    /// memory, so a refusing SUBACK would not be true either, and the
    /// client that sends it again on its next connection is right.
    fn not_kept(&mut self, ack: Packet, err: CommitError, out: &mut Outbox) -> Option<Ending> {
        if matches!(ack, Packet::SubAck(..) | Packet::UnsubAck(..)) {
            return Some(Ending::NotKept(err));
        }
        // The QoS 2 exchange ends here (MQTT 5 §4.3.3): its packet id is
        // free again, so that the PUBLISH an MQTT 3.1.1 client sends again
        // on its resumed session is routed, not taken for a re-send of a
        // message already kept.
        let received = match &ack {
            Packet::PubRec(rec, _) => PacketId::new(rec.pkid),
            _ => None,
        };
        if let Some(id) = received {
            self.inflight.release(id);
        }
        if !self.id.version.is_v5() {
            return Some(Ending::NotKept(err));
        }
        out.queue(crate::gateway::owed::refused(ack, err));
        None
    }

    /// Says why the session ends: in the log, and to an MQTT 5 client in a
    /// DISCONNECT when the server is the side that ends it.
    pub fn say_goodbye(&self, ending: &Ending, out: &mut Outbox) {
        match ending {
            Ending::Protocol(violation) => {
                self.metrics.protocol_violation(violation.label());
                info!(
                    client_id = self.id.client_id,
                    violation = violation.label(),
                    reason = %violation,
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
        if let Some(waiting) = self.pending {
            let mut pending = waiting.pending;
            let broker = Arc::clone(&self.broker);
            tokio::spawn(async move {
                while !pending.is_done() {
                    pending.advance(&broker).await;
                }
            });
        }
        let will = if ending.publishes_will() {
            self.will.map(|will| *will)
        } else {
            None
        };
        let expiry = match ending {
            Ending::Administrative {
                discard_session: true,
            } => Duration::ZERO,
            _ => self.session_expiry,
        };
        self.broker
            .detach(self.session, self.inflight, expiry, will);
    }
}
