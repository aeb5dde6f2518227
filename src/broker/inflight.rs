//! QoS 1 and 2 exchanges in progress with a client, both ways.
//!
//! They are part of the session (MQTT 5 §4.1): a persistent session keeps
//! them while its client is away, and the next connection re-sends what
//! was not acknowledged, in the order it was first sent (§4.4). While a
//! connection holds the session it owns its [`Inflight`] outright, so the
//! hot path (assign a packet id, take an ack) needs no lock.
//!
//! **Outgoing.** Each QoS 1/2 delivery gets a packet id and waits in send
//! order for PUBACK, or for PUBREC and then (after our PUBREL) PUBCOMP.
//! Packet ids are handed out in increasing order, wrapping from 65535 to 1,
//! so the waiting ids are always sorted by their distance from the oldest
//! one: finding an ack is a binary search, and the next id is free unless
//! the ids have gone all the way round to the oldest waiting one (then
//! nothing more is sent until it is acknowledged).
//!
//! **Incoming.** A QoS 2 PUBLISH is routed once, when it first arrives; its
//! packet id is remembered until the client's PUBREL, so a re-sent PUBLISH
//! (DUP) is acknowledged again without being routed twice (§4.3.3, the
//! "store the packet identifier" method).

use std::collections::{HashSet, VecDeque};

use super::mailbox::Delivery;
use crate::mqtt::{PacketId, QoS};

#[derive(Debug, Default)]
pub struct Inflight {
    outgoing: VecDeque<Outgoing>,
    /// The id the next outgoing delivery gets; the first when `None`.
    next_id: Option<PacketId>,
    /// QoS 2 packet ids received and PUBREC'd, awaiting PUBREL.
    incoming: HashSet<PacketId>,
}

#[derive(Debug)]
struct Outgoing {
    id: PacketId,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// PUBLISH sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent; awaiting PUBCOMP. The message itself is no longer
    /// needed.
    Released,
}

/// Something to send again when a session is resumed.
#[derive(Debug)]
pub enum Resend<'a> {
    /// The PUBLISH again, with DUP set.
    Publish(PacketId, &'a Delivery),
    /// The PUBREL again.
    Release(PacketId),
}

/// A client acknowledgement that matched nothing: a protocol slip the
/// connection logs and otherwise ignores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no QoS exchange is waiting for this acknowledgement of packet {0}")]
pub struct UnexpectedAck(pub PacketId);

/// Distance of `id` after `base` on the 1..=65535 ring.
fn ring_distance(base: PacketId, id: PacketId) -> u32 {
    (u32::from(id.get()) + 65535 - u32::from(base.get())) % 65535
}

impl Inflight {
    /// Outgoing deliveries awaiting acknowledgement.
    pub fn outgoing(&self) -> usize {
        self.outgoing.len()
    }

    /// How many more packet ids can be handed out before the ring reaches
    /// the oldest waiting one.
    pub fn free_ids(&self) -> usize {
        match self.outgoing.front() {
            None => 65535,
            Some(oldest) => ring_distance(self.peek_id(), oldest.id) as usize,
        }
    }

    fn peek_id(&self) -> PacketId {
        self.next_id.unwrap_or(PacketId::FIRST)
    }

    /// Records a QoS 1/2 delivery as sent and returns its packet id, and
    /// the delivery to write. The caller checks [`Inflight::free_ids`]
    /// first.
    pub fn send(&mut self, delivery: Delivery) -> (PacketId, &Delivery) {
        debug_assert!(delivery.qos != QoS::AtMostOnce);
        let id = self.peek_id();
        self.next_id = Some(id.next());
        self.outgoing.push_back(Outgoing {
            id,
            stage: Stage::Published(delivery),
        });
        match self.outgoing.back().map(|o| &o.stage) {
            Some(Stage::Published(delivery)) => (id, delivery),
            _ => unreachable!("just pushed"),
        }
    }

    fn position(&self, id: PacketId) -> Option<usize> {
        let base = self.outgoing.front()?.id;
        let target = ring_distance(base, id);
        self.outgoing
            .binary_search_by_key(&target, |o| ring_distance(base, o.id))
            .ok()
    }

    /// PUBACK for a QoS 1 delivery: the exchange is over.
    pub fn puback(&mut self, id: PacketId) -> Result<(), UnexpectedAck> {
        match self.position(id) {
            Some(i)
                if matches!(&self.outgoing[i].stage,
                    Stage::Published(d) if d.qos == QoS::AtLeastOnce) =>
            {
                self.outgoing.remove(i);
                Ok(())
            }
            _ => Err(UnexpectedAck(id)),
        }
    }

    /// PUBREC for a QoS 2 delivery. On success the caller sends PUBREL;
    /// a failure reason code (MQTT 5) ends the exchange instead (§4.3.3).
    pub fn pubrec(&mut self, id: PacketId, success: bool) -> Result<(), UnexpectedAck> {
        let i = self.position(id).ok_or(UnexpectedAck(id))?;
        let entry = &mut self.outgoing[i];
        match &entry.stage {
            Stage::Published(d) if d.qos == QoS::ExactlyOnce => {}
            // A PUBREC repeated after our PUBREL: send PUBREL again.
            Stage::Released if success => return Ok(()),
            _ => return Err(UnexpectedAck(id)),
        }
        if success {
            entry.stage = Stage::Released;
        } else {
            self.outgoing.remove(i);
        }
        Ok(())
    }

    /// PUBCOMP: the QoS 2 exchange is over.
    pub fn pubcomp(&mut self, id: PacketId) -> Result<(), UnexpectedAck> {
        match self.position(id) {
            Some(i) if matches!(self.outgoing[i].stage, Stage::Released) => {
                self.outgoing.remove(i);
                Ok(())
            }
            _ => Err(UnexpectedAck(id)),
        }
    }

    /// Gives up on an exchange without an ack (a re-send the client would
    /// not accept).
    pub fn abandon(&mut self, id: PacketId) {
        if let Some(i) = self.position(id) {
            self.outgoing.remove(i);
        }
    }

    /// What a resumed session sends again, oldest first.
    pub fn resend(&self) -> impl Iterator<Item = Resend<'_>> {
        self.outgoing.iter().map(|o| match &o.stage {
            Stage::Published(d) => Resend::Publish(o.id, d),
            Stage::Released => Resend::Release(o.id),
        })
    }

    /// Drops unacknowledged deliveries `keep` rejects (a resumed session
    /// whose new token grants less); PUBRELs are kept, their message is
    /// delivered already.
    pub fn retain(&mut self, mut keep: impl FnMut(&Delivery) -> bool) {
        self.outgoing.retain(|o| match &o.stage {
            Stage::Published(d) => keep(d),
            Stage::Released => true,
        });
    }

    /// QoS 2 messages received and not yet released by the client.
    pub fn incoming(&self) -> usize {
        self.incoming.len()
    }

    /// Whether a QoS 2 PUBLISH with `id` was routed already and awaits
    /// its PUBREL (a PUBLISH with it again is a re-send).
    pub fn has_received(&self, id: PacketId) -> bool {
        self.incoming.contains(&id)
    }

    /// Records a new QoS 2 PUBLISH with `id`, routed now.
    pub fn receive(&mut self, id: PacketId) {
        self.incoming.insert(id);
    }

    /// PUBREL for `id`: forgets it. False if it was not known (the client
    /// still gets its PUBCOMP; MQTT 5 with "packet identifier not found").
    pub fn release(&mut self, id: PacketId) -> bool {
        self.incoming.remove(&id)
    }
}

#[cfg(test)]
mod tests;
