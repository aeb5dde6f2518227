//! A PUBLISH from the client: its topic (through the client's aliases)
//! vetted, authorized against the grants, and routed or refused.

use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{Packet, PubAck, PubAckReason, PubRec, PubRecReason, PublishProperties};
use tracing::info;

use crate::broker::{Properties, Publication};
use crate::config::DenyPublish;
use crate::gateway::codec::PublishHeader;
use crate::gateway::quiet::Kind;
use crate::gateway::wire::Outbox;
use crate::mqtt::{PacketId, QoS};

use super::ending::{Ending, ProtocolViolation};
use super::state::{Client, Waiting};

impl Client {
    /// Authorizes and routes one PUBLISH.
    pub(super) fn publish(
        &mut self,
        out: &mut Outbox,
        header: PublishHeader,
        topic: Bytes,
        payload: Bytes,
        retain: bool,
        properties: Option<PublishProperties>,
    ) -> Option<Ending> {
        let alias = properties.as_ref().and_then(|p| p.topic_alias);
        let topic = match self.aliases.resolve(&topic, alias) {
            Ok(topic) => topic,
            Err(violation) => return Some(Ending::Protocol(violation)),
        };
        if properties
            .as_ref()
            .is_some_and(|p| !p.subscription_identifiers.is_empty())
        {
            return Some(Ending::Protocol(ProtocolViolation::SubscriptionIdOnPublish));
        }
        if let Err(e) = self.limits.topics.topic_name(&topic) {
            // MQTT 3.1.1 has no way to refuse one PUBLISH but closing.
            if !self.id.version.is_v5() {
                return Some(Ending::Protocol(ProtocolViolation::TopicOverLimits(e)));
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
            // rumqttd's decoder refuses a QoS 1/2 PUBLISH without one.
            let Some(id) = PacketId::new(header.pkid) else {
                return Some(Ending::Protocol(ProtocolViolation::PacketIdZero("PUBLISH")));
            };
            if self.inflight.has_received(id) {
                // A re-sent QoS 2 PUBLISH: routed once already; its PUBREC
                // still goes after those owed before it.
                self.owed.push(Vec::new(), ack, out);
                return None;
            }
            if self.inflight.incoming() >= self.limits.receive_maximum {
                return Some(Ending::Protocol(ProtocolViolation::ReceiveMaximum(
                    self.limits.receive_maximum,
                )));
            }
            self.inflight.receive(id);
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
            self.pending = Some(Box::new(Waiting { pending, ack, kept }));
        }
        None
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
