//! The acknowledgements a publisher is owed, in the order it published.
//!
//! A PUBLISH that must be written down (a bridge forwards it, or it sets a
//! retained message) is acknowledged only once the commit was tried
//! ([`crate::broker::Kept`]), and the ack tells its outcome: success only
//! if everything the message needed was committed. Waiting for that commit
//! before reading the client's next PUBLISH would let each client have one
//! message in each commit; instead the client reads on, its messages are
//! routed as they come, and the acks wait here. MQTT wants them in the
//! order the PUBLISH packets came (§4.6), and the writer commits in that
//! order too, so an ack leaves only when every ack before it has.

use std::collections::VecDeque;

use rumqttd::protocol::{Packet, PubAck, PubAckReason, PubRec, PubRecReason};
use tokio::sync::oneshot::error::TryRecvError;

use super::wire::Outbox;
use crate::broker::{CommitError, Kept};

/// Acks past which the client's packets are not read until some leave: a
/// bound on what one client can have waiting for the disk.
pub(super) const MAX_OWED: usize = 256;

/// An ack waiting for its message's commits, and what they said so far.
struct Owing {
    kept: Vec<Kept>,
    outcome: Result<(), CommitError>,
    ack: Packet,
}

impl Owing {
    fn heard(&mut self, outcome: Result<Result<(), CommitError>, CommitError>) {
        if let Err(err) = outcome.and_then(|kept| kept) {
            // A failure to keep the whole message outranks running out of
            // room for part of it: it is what the device should retry on.
            if self.outcome != Err(CommitError::Storage) {
                self.outcome = Err(err);
            }
        }
    }
}

/// Acks waiting for their messages' commits, oldest first.
#[derive(Default)]
pub(super) struct Owed {
    queue: VecDeque<Owing>,
}

impl Owed {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Owes `ack` (none for QoS 0) once `kept` are committed and every
    /// earlier ack has left; with nothing to wait for, it leaves at once.
    pub fn push(&mut self, kept: Vec<Kept>, ack: Option<Packet>, out: &mut Outbox) {
        // A QoS 0 message owes nothing, so it has nothing to wait for.
        let Some(ack) = ack else {
            return;
        };
        if kept.is_empty() && self.queue.is_empty() {
            out.queue(ack);
        } else {
            self.queue.push_back(Owing {
                kept,
                outcome: Ok(()),
                ack,
            });
        }
    }

    /// Completes once the oldest owed ack may leave. Cancel-safe: a commit
    /// seen stays seen.
    pub async fn settled(&mut self) {
        let Some(owing) = self.queue.front_mut() else {
            return std::future::pending().await;
        };
        while let Some(commit) = owing.kept.last_mut() {
            // A closed channel: the writer stopped (shutdown) before it.
            let outcome = commit.await.map_err(|_| CommitError::Storage);
            owing.kept.pop();
            owing.heard(outcome);
        }
    }

    /// The oldest ack, with its message's outcome, once its commits were
    /// all tried; `None` while it still waits (or nothing is owed).
    pub fn next_settled(&mut self) -> Option<(Packet, Result<(), CommitError>)> {
        let owing = self.queue.front_mut()?;
        let mut index = 0;
        while let Some(commit) = owing.kept.get_mut(index) {
            let outcome = match commit.try_recv() {
                Err(TryRecvError::Empty) => {
                    index += 1;
                    continue;
                }
                Err(TryRecvError::Closed) => Err(CommitError::Storage),
                Ok(kept) => Ok(kept),
            };
            owing.kept.swap_remove(index);
            owing.heard(outcome);
        }
        if !owing.kept.is_empty() {
            return None;
        }
        self.queue
            .pop_front()
            .map(|owing| (owing.ack, owing.outcome))
    }
}

/// `ack` saying its message was not kept (MQTT 5): 0x97 when there was no
/// room, 0x80 when the commit failed otherwise.
pub(super) fn refused(ack: Packet, err: CommitError) -> Packet {
    let (puback, pubrec) = match err {
        CommitError::Full => (PubAckReason::QuotaExceeded, PubRecReason::QuotaExceeded),
        CommitError::Storage => (
            PubAckReason::UnspecifiedError,
            PubRecReason::UnspecifiedError,
        ),
    };
    match ack {
        Packet::PubAck(ack, properties) => Packet::PubAck(
            PubAck {
                reason: puback,
                ..ack
            },
            properties,
        ),
        Packet::PubRec(rec, properties) => Packet::PubRec(
            PubRec {
                reason: pubrec,
                ..rec
            },
            properties,
        ),
        other => other,
    }
}
