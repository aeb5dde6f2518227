//! One bridge's connection to its remote broker: connect, subscribe, then
//! move messages both ways until the connection fails or the gateway
//! stops; then back off and do it again.
//!
//! The queue on disk is the truth: each connection starts reading it from
//! its first row (the oldest message the remote has not acknowledged), so
//! whatever was in flight when a connection died is simply sent again, in
//! order. A message sent twice this way is counted as resent; the remote
//! may see it twice (at-least-once), never not at all.
//!
//! Inbound, the bridge's session at the remote plays that part: what the
//! remote sent and the bridge did not acknowledge (because the
//! connection died first, or because it could not be kept) is sent again
//! on the next connection, and what is published meanwhile waits there.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::connection::{self, Connection, LinkError, READ_ROOM};
use super::outbound::{Outbound, Totals};
use super::refusal::{Refusal, Refusals};
use super::status::LinkStatus;
use super::subscriptions;
use super::wire::{InboundPublish, Incoming};
use crate::broker::{Broker, CommitError, Message};
use crate::config::BridgeConfig;
use crate::mqtt::QoS;
use crate::mqtt::{LimitError, TopicError, TopicLimits};
use crate::storage::Queue;

/// Acknowledged messages are deleted from the queue in batches of this
/// many, or after [`ACK_DELAY`]: a commit per PUBACK would rewrite the
/// queue's first page for every message. Deleting late only risks a
/// duplicate after a crash, never a loss.
const ACK_BATCH: usize = 256;
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Refused inbound messages are logged at most once per this interval
/// (with how many were refused since): a hostile or broken remote could
/// otherwise write the log as fast as it sends.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Bytes of a refused topic shown in the log: the topic may be as long as
/// MQTT allows.
const LOGGED_TOPIC_BYTES: usize = 120;

/// A deadline for a disabled timer branch.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// One bridge's link task.
pub(super) struct Link {
    config: BridgeConfig,
    name: Arc<str>,
    /// Where the link stands, for the metrics and `jwtgate status`.
    status: Arc<LinkStatus>,
    queue: Arc<Queue>,
    broker: Arc<Broker>,
    /// `[limits]` topic limits, applied to what the remote sends as to
    /// what devices send.
    limits: TopicLimits,
    /// Inbound messages not routed, by reason (the metrics read them).
    refusals: Arc<Refusals>,
    /// Refusals since the last one logged, and when that was.
    refusals_unlogged: u64,
    refusal_logged: Option<Instant>,
    /// Where what the remote's session is subscribed to is recorded (in
    /// `[storage] dir`), so that a resumed session is subscribed again
    /// only when the rules changed; `None` with `clean_start`.
    subscriptions_file: Option<PathBuf>,
    totals: Totals,
    received: u64,
}

impl Link {
    pub fn new(
        config: BridgeConfig,
        status: Arc<LinkStatus>,
        queue: Arc<Queue>,
        broker: Arc<Broker>,
        limits: TopicLimits,
        refusals: Arc<Refusals>,
        subscriptions_file: Option<PathBuf>,
    ) -> Link {
        Link {
            subscriptions_file,
            config,
            name: status.shared_name(),
            status,
            queue,
            broker,
            limits,
            refusals,
            refusals_unlogged: 0,
            refusal_logged: None,
            totals: Totals::default(),
            received: 0,
        }
    }

    fn remote(&self) -> String {
        connection::remote(&self.config)
    }

    /// Marks the link down with `err`, and says so.
    fn failed(&self, err: &LinkError, what: &str) {
        self.status.failed(err.kind(), err.to_string());
        warn!(
            bridge = &*self.name,
            remote = self.remote(),
            kind = err.kind(),
            error = %err,
            "bridge: {what}"
        );
    }

    /// Connects, serves, reconnects, until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                _ = shutdown.changed() => break,
            };
            match attempt {
                Ok(mut connection) => {
                    self.status.connected();
                    info!(
                        bridge = &*self.name,
                        remote = self.remote(),
                        queued = self.queue.snapshot().messages,
                        window = connection.window,
                        session_present = connection.session_present,
                        "bridge connected"
                    );
                    backoff.reset();
                    match self.serve(&mut connection, &mut shutdown).await {
                        Ok(()) => {
                            let _ = connection.codec.disconnect(&mut connection.output);
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), connection.flush())
                                    .await;
                            break;
                        }
                        Err(err) => self.failed(&err, "connection ended; reconnecting"),
                    }
                }
                Err(err) => self.failed(&err, "cannot connect"),
            }
            let wait = backoff.next_wait();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.status.stopped();
        info!(
            bridge = &*self.name,
            forwarded = self.totals.forwarded,
            resent = self.totals.resent,
            refused = self.totals.refused,
            received = self.received,
            queued = self.queue.snapshot().messages,
            "bridge stopped"
        );
    }

    /// Connects and subscribes as the remote's session needs.
    async fn connect(&self) -> Result<Connection, LinkError> {
        let mut connection = connection::connect(&self.config).await?;
        subscriptions::subscribe(
            &self.config,
            self.subscriptions_file.as_deref(),
            &mut connection,
        )?;
        connection.flush().await?;
        Ok(connection)
    }

    /// Moves messages both ways until the connection fails (an error) or
    /// `shutdown` turns true (`Ok`).
    async fn serve(
        &mut self,
        connection: &mut Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), LinkError> {
        let backlog = self.queue.snapshot().messages;
        let mut out = Outbound::new(self.queue.reader()?, backlog);
        let ended = self.exchange(connection, shutdown, &mut out).await;
        // What the remote acknowledged goes, however the connection ended.
        self.queue.acked(std::mem::take(&mut out.done));
        ended
    }

    async fn exchange(
        &mut self,
        connection: &mut Connection,
        shutdown: &mut watch::Receiver<bool>,
        out: &mut Outbound,
    ) -> Result<(), LinkError> {
        let mut committed = self.queue.committed();
        let mut last_heard = Instant::now();
        let mut last_sent = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        // What came in with the CONNACK: a resumed session's queued
        // messages follow it at once, often in the same read, and would
        // otherwise sit in the buffer until the next bytes arrive (the
        // PINGRESP, a keep-alive later).
        while let Some(packet) = connection.codec.decode(&mut connection.input)? {
            self.handle(packet, connection, out).await?;
        }
        loop {
            let tail = *committed.borrow_and_update();
            out.fill(&self.queue, tail).await?;
            out.send(connection, &mut self.totals, &self.name)?;
            let caught_up = out.ahead.is_empty() && out.read_upto >= tail;
            if out.done.len() >= ACK_BATCH || (caught_up && out.inflight.is_empty()) {
                self.queue.acked(std::mem::take(&mut out.done));
                out.done_since = None;
            } else if !out.done.is_empty() {
                out.done_since.get_or_insert_with(Instant::now);
            }
            out.report_drain(&self.name, tail);
            let window_full = out.inflight.len() >= connection.window;
            if !connection.output.is_empty() {
                last_sent = Instant::now();
            }
            let ping_due = last_sent + connection.keep_alive;
            let silent_since = ping_sent.unwrap_or(last_heard);
            let dead_at = silent_since + connection.keep_alive + connection.keep_alive / 2;
            // Room for a read: the buffer's front goes with every packet
            // decoded, and a full one would be read 64 bytes at a time.
            connection.input.reserve(READ_ROOM);
            tokio::select! {
                read = connection.reader.read_buf(&mut connection.input) => {
                    if read.map_err(LinkError::Lost)? == 0 {
                        return Err(LinkError::Lost(io::ErrorKind::UnexpectedEof.into()));
                    }
                    last_heard = Instant::now();
                    ping_sent = None;
                    while let Some(packet) = connection.codec.decode(&mut connection.input)? {
                        self.handle(packet, connection, out).await?;
                    }
                }
                written = connection.writer.write(&connection.output), if !connection.output.is_empty() => {
                    let n = written.map_err(LinkError::Lost)?;
                    connection.output.advance(n);
                }
                changed = committed.changed(), if caught_up && !window_full => {
                    // The writer is gone only at shutdown, which the
                    // shutdown branch sees.
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(ping_due.into()), if ping_sent.is_none() => {
                    connection.codec.pingreq(&mut connection.output)?;
                    ping_sent = Some(Instant::now());
                }
                () = tokio::time::sleep_until(dead_at.into()) => {
                    return Err(LinkError::Timeout("the remote stopped answering (keep-alive)"));
                }
                () = tokio::time::sleep_until(
                    out.done_since.map_or(far_future(), |since| since + ACK_DELAY).into()
                ), if out.done_since.is_some() => {
                    self.queue.acked(std::mem::take(&mut out.done));
                    out.done_since = None;
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    async fn handle(
        &mut self,
        packet: Incoming,
        connection: &mut Connection,
        out: &mut Outbound,
    ) -> Result<(), LinkError> {
        match packet {
            Incoming::PubAck { pkid, refused } => {
                out.acked(pkid, refused, &mut self.totals, &self.name)?;
            }
            Incoming::Publish(publish) => self.receive(publish, connection).await?,
            Incoming::SubAck { pkid, granted } => subscriptions::subacked(
                &self.config,
                self.subscriptions_file.as_deref(),
                connection,
                pkid,
                granted,
            )?,
            Incoming::UnsubAck { pkid } => subscriptions::unsubacked(
                &self.config,
                self.subscriptions_file.as_deref(),
                connection,
                pkid,
            )?,
            Incoming::PingResp => {}
            Incoming::Disconnect { reason } => return Err(LinkError::Disconnected(reason)),
            Incoming::ConnAck(_) => return Err(LinkError::Protocol("a second CONNACK".to_owned())),
            Incoming::Unexpected(what) => {
                return Err(LinkError::Protocol(format!(
                    "unexpected {what} from the remote"
                )));
            }
        }
        Ok(())
    }

    /// Publishes a message from the remote into the routing core under its
    /// local topic, then acknowledges it: only once it is routed and every
    /// commit it made (a retained message, another bridge's queue) is
    /// done, so the remote keeps it until the gateway has it. A message
    /// that could not be kept is not acknowledged and the connection ends:
    /// the remote sends it again on the next one (the bridge's session
    /// there holds it).
    ///
    /// A message the gateway would refuse from a device (its local topic
    /// is over the `[limits]` topic limits, or it maps to no valid local
    /// topic) is not routed, but acknowledged all the same: refused, it
    /// would otherwise come back on every connection for ever.
    async fn receive(
        &mut self,
        publish: InboundPublish,
        connection: &mut Connection,
    ) -> Result<(), LinkError> {
        let InboundPublish {
            pkid,
            topic,
            mut publication,
        } = publish;
        let qos = publication.qos;
        match self.local_topic(&topic) {
            Ok((local, rule_qos)) => {
                self.received += 1;
                publication.topic = local;
                publication.qos = qos.min(rule_qos);
                let message = Message::bridged(publication, self.broker.budget(), &self.name);
                let mut pending = self.broker.publish(message, None);
                for kept in pending.take_kept() {
                    // A dropped sender (the writer gone) is not kept.
                    let outcome = kept.await.unwrap_or(Err(CommitError::Storage));
                    if let Err(error) = outcome {
                        return Err(LinkError::NotKept { topic, error });
                    }
                }
                while !pending.is_done() {
                    pending.advance(&self.broker).await;
                }
            }
            Err(refusal) => self.refused_inbound(refusal, &topic),
        }
        if qos != QoS::AtMostOnce {
            connection.codec.puback(pkid, &mut connection.output)?;
        }
        Ok(())
    }

    /// The local topic and QoS of a message the remote sent on
    /// `remote_topic`, or why it has none here. The local topic is
    /// checked against the gateway's topic limits before anything else
    /// sees it.
    fn local_topic(&self, remote_topic: &str) -> Result<(String, QoS), Refusal> {
        let rule = self
            .config
            .subscribe
            .iter()
            .find(|rule| rule.remote.matches_topic(remote_topic))
            .ok_or(Refusal::Unmapped)?;
        let local = rule
            .local_topic(remote_topic)
            .ok_or(Refusal::InvalidTopic)?;
        match self.limits.topic_name(&local) {
            Ok(()) => Ok((local, rule.qos)),
            Err(TopicError::Limit(LimitError::TooDeep { .. })) => Err(Refusal::TopicLevels),
            Err(TopicError::Limit(LimitError::TooLong { .. })) => Err(Refusal::TopicBytes),
            Err(_) => Err(Refusal::InvalidTopic),
        }
    }

    /// Counts an inbound message not routed, and logs it unless one was
    /// logged within [`REFUSAL_LOG_INTERVAL`].
    fn refused_inbound(&mut self, refusal: Refusal, topic: &str) {
        self.refusals.count(refusal);
        self.refusals_unlogged += 1;
        if self
            .refusal_logged
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let mut shown = LOGGED_TOPIC_BYTES.min(topic.len());
        while !topic.is_char_boundary(shown) {
            shown -= 1;
        }
        warn!(
            bridge = &*self.name,
            reason = refusal.as_str(),
            topic = &topic[..shown],
            topic_bytes = topic.len(),
            topic_levels = topic.bytes().filter(|&b| b == b'/').count() + 1,
            max_topic_levels = self.limits.max_levels,
            max_topic_bytes = self.limits.max_bytes,
            refused = self.refusals_unlogged,
            "bridge: messages from the remote were not routed (acknowledged, not redelivered); logged at most once a minute, counted in jwtgate_bridge_refused_total"
        );
        self.refusals_unlogged = 0;
        self.refusal_logged = Some(Instant::now());
    }
}
