//! The acknowledgements a publisher is owed, in the order it published.
//!
//! A PUBLISH that a bridge forwards is acknowledged only once the bridge's
//! queue has committed it to disk ([`crate::broker::Kept`]). Waiting for
//! that commit before reading the client's next PUBLISH would let each
//! client have one message in each commit; instead the client reads on,
//! its messages are routed as they come, and the acks wait here. MQTT
//! wants them in the order the PUBLISH packets came (§4.6), and the writer
//! commits in that order too, so an ack leaves only when every ack before
//! it has.

use std::collections::VecDeque;

use rumqttd::protocol::Packet;
use tokio::sync::oneshot::error::TryRecvError;

use super::wire::Outbox;
use crate::broker::Kept;

/// Acks past which the client's packets are not read until some leave: a
/// bound on what one client can have waiting for the disk.
pub(super) const MAX_OWED: usize = 256;

/// Acks waiting for their messages' commits, oldest first.
#[derive(Default)]
pub(super) struct Owed {
    queue: VecDeque<(Vec<Kept>, Packet)>,
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
            self.queue.push_back((kept, ack));
        }
    }

    /// Completes once the oldest owed ack may leave. Cancel-safe: a commit
    /// seen stays seen.
    pub async fn settled(&mut self) {
        let Some((kept, _)) = self.queue.front_mut() else {
            return std::future::pending().await;
        };
        while let Some(commit) = kept.last_mut() {
            // An error means the writer stopped (shutdown): nothing to wait
            // for any more.
            let _ = commit.await;
            kept.pop();
        }
    }

    /// Queues, in order, every ack whose messages are committed.
    pub fn release(&mut self, out: &mut Outbox) {
        while let Some((kept, _)) = self.queue.front_mut() {
            kept.retain_mut(|commit| matches!(commit.try_recv(), Err(TryRecvError::Empty)));
            if !kept.is_empty() {
                return;
            }
            if let Some((_, ack)) = self.queue.pop_front() {
                out.queue(ack);
            }
        }
    }
}
