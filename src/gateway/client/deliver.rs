//! The outbound pump: deliveries taken from the session's mailbox within
//! the in-flight window and written as PUBLISH packets, and a resumed
//! session's exchanges sent again.

use rumqttd::protocol::{Packet, PubRel, PubRelReason};
use tracing::{debug, warn};

use crate::broker::{Delivery, Resend, Taken};
use crate::gateway::codec::OutgoingPublish;
use crate::gateway::wire::Outbox;
use crate::mqtt::{PacketId, QoS};

use super::aliases::SentAlias;
use super::ending::Ending;
use super::state::Client;

/// Output past which deliveries are left in the mailbox until the client
/// has read what is written.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;
/// Deliveries taken from the mailbox per lock.
const TAKE_BATCH: usize = 64;

impl Client {
    /// Re-sends what a resumed session had in flight (MQTT 5 §4.4).
    pub(super) fn resend(&mut self, out: &mut Outbox) {
        let now = std::time::Instant::now();
        let mut too_large = Vec::new();
        for resend in self.inflight.resend() {
            match resend {
                Resend::Publish(id, delivery) => {
                    let publish = outgoing(delivery, Some(id), true, now, None);
                    if out.codec().publish_size(&publish) > self.limits.max_packet {
                        too_large.push(id);
                    } else {
                        out.queue_publish(&publish);
                    }
                }
                Resend::Release(id) => out.queue(Packet::PubRel(
                    PubRel {
                        pkid: id.get(),
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
            .publish_size(&outgoing(&delivery, None, false, now, alias));
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
            out.queue_publish(&outgoing(&delivery, None, false, now, alias));
        } else {
            let (id, delivery) = self.inflight.send(delivery);
            out.queue_publish(&outgoing(delivery, Some(id), false, now, alias));
        }
    }
}

/// The PUBLISH that carries `delivery` to its client.
fn outgoing(
    delivery: &Delivery,
    pkid: Option<PacketId>,
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
        pkid: pkid.map_or(0, PacketId::get),
        dup,
        retain: delivery.retain,
        properties: message.properties(),
        expiry: message.remaining_expiry(now),
        subscription_ids: &delivery.subscription_ids,
        topic_alias,
    }
}
