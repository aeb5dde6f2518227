//! The client's packets in: decoded one at a time, put aside while a
//! publication waits, and dispatched by type.

use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PingResp, PubComp, PubCompReason, PubRecReason, PubRel,
    PubRelReason,
};
use tracing::debug;

use crate::gateway::codec::{Inbound, PublishHeader};
use crate::gateway::wire::Outbox;
use crate::mqtt::PacketId;

use super::ending::{Ending, ProtocolViolation};
use super::state::{Client, LOOKAHEAD};

impl Client {
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
                        Err(e) => return Some(Ending::Protocol(e.into())),
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
        self.dispatch(out, packet, header)
            .unwrap_or_else(|violation| Some(Ending::Protocol(violation)))
    }

    /// Handles one client packet by its type.
    fn dispatch(
        &mut self,
        out: &mut Outbox,
        packet: Packet,
        header: Option<PublishHeader>,
    ) -> Result<Option<Ending>, ProtocolViolation> {
        Ok(match packet {
            Packet::Publish(publish, properties) => {
                let Some(header) = header else {
                    return Ok(None);
                };
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
                let id = packet_id(ack.pkid, "PUBACK")?;
                if let Err(e) = self.inflight.puback(id) {
                    debug!(client_id = self.id.client_id, error = %e, "PUBACK ignored");
                }
                None
            }
            Packet::PubRec(rec, _) => {
                let id = packet_id(rec.pkid, "PUBREC")?;
                let success = matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                match self.inflight.pubrec(id, success) {
                    Ok(()) if success => out.queue(Packet::PubRel(
                        PubRel {
                            pkid: id.get(),
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
                let id = packet_id(comp.pkid, "PUBCOMP")?;
                if let Err(e) = self.inflight.pubcomp(id) {
                    debug!(client_id = self.id.client_id, error = %e, "PUBCOMP ignored");
                }
                None
            }
            Packet::PubRel(rel, _) => {
                let id = packet_id(rel.pkid, "PUBREL")?;
                // A PUBREL for an id the gateway does not know (one whose
                // PUBLISH it refused, for a 3.1.1 client that cannot tell)
                // still gets its PUBCOMP, so the client can move on.
                let known = self.inflight.release(id);
                let reason = if known || !self.id.version.is_v5() {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                out.queue(Packet::PubComp(
                    PubComp {
                        pkid: id.get(),
                        reason,
                    },
                    None,
                ));
                None
            }
            Packet::Subscribe(subscribe, properties) => {
                packet_id(subscribe.pkid, "SUBSCRIBE")?;
                self.subscribe(out, subscribe, properties)
            }
            Packet::Unsubscribe(unsubscribe, _) => {
                packet_id(unsubscribe.pkid, "UNSUBSCRIBE")?;
                // rumqttd's decoder lets an empty one through, unlike an
                // empty SUBSCRIBE.
                if unsubscribe.filters.is_empty() {
                    return Err(ProtocolViolation::UnsubscribeWithoutFilters);
                }
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
                        return Err(ProtocolViolation::SessionExpiryAfterZero);
                    }
                    self.session_expiry = Duration::from_secs(secs.into());
                }
                Some(Ending::Disconnected {
                    publish_will: disconnect.reason_code
                        == DisconnectReasonCode::DisconnectWithWillMessage,
                })
            }
            Packet::Connect(..) => return Err(ProtocolViolation::SecondConnect),
            other => return Err(ProtocolViolation::UnexpectedPacket(format!("{other:?}"))),
        })
    }
}

/// The identifier of a packet that must carry one ([MQTT-2.2.1-3]);
/// rumqttd's decoder refuses a zero only on a PUBLISH (the codec turns
/// that into the same violation).
fn packet_id(id: u16, packet: &'static str) -> Result<PacketId, ProtocolViolation> {
    PacketId::new(id).ok_or(ProtocolViolation::PacketIdZero(packet))
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
