//! The changes sent to the writer thread, and where it answers.
//!
//! The parts that write (a bridge's queue, the durable store, the opened
//! database) only send these; the writer alone applies them. Apart from
//! the writer, so that the senders need not know it.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::broker::store::SessionRecord;
use crate::broker::{CommitError, Delivery, Message, SessionKey};
use crate::mqtt::QoS;

/// Where a write's outcome goes: to whoever holds back an ack for it.
pub(super) type Answer = oneshot::Sender<Result<(), CommitError>>;

/// One change to the database.
pub(super) enum Write {
    /// Queue `message` as `topic` at `qos` on queue number `queue`.
    Append {
        queue: usize,
        message: Arc<Message>,
        topic: String,
        qos: QoS,
        kept: Answer,
    },
    /// The remote acknowledged these sequence numbers of queue `queue`.
    Acked {
        queue: usize,
        seqs: Vec<u64>,
    },
    Retain(Arc<Message>, Answer),
    ClearRetained(Box<str>, Answer),
    SaveSession {
        key: SessionKey,
        record: SessionRecord,
        kept: Answer,
    },
    /// A delivery for a parked session, at `position` of its stored queue
    /// (behind what its last `SaveSession` wrote).
    QueueParked {
        key: SessionKey,
        position: u64,
        delivery: Delivery,
        kept: Answer,
    },
    RemoveSession(SessionKey),
    /// Commit and sync everything sent before, then answer.
    Flush(oneshot::Sender<()>),
    /// As `Flush`, then stop.
    Stop(oneshot::Sender<()>),
}
