//! What a publisher's acknowledgement waits on besides its subscribers:
//! the commits of the taps outside the routing core and of the store.
//!
//! These words are shared by the routing core, its store and the bridges'
//! queues, so they live apart from all three.

use std::sync::Arc;

use super::message::Message;

/// Completes once a [`Tap`] or the store has tried to commit a message,
/// with the outcome the publisher's acknowledgement must tell. A closed
/// channel (the writer stopped) means it was not kept.
pub type Kept = tokio::sync::oneshot::Receiver<Result<(), CommitError>>;

/// Why a message a publisher waits on was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The commit failed (an I/O error, the writer gone).
    #[error("the store could not commit it")]
    Storage,
    /// The disk (or a quota, or a file size limit), the queue's own
    /// budget or the memory budget has no room for it.
    #[error("the store has no room for it")]
    Full,
}

/// Something outside the routing core that takes the routed messages it
/// wants: a bridge's store-and-forward queue. A publisher's QoS 1/2
/// acknowledgement waits until every tap that took its message has kept
/// it.
pub trait Tap: Send + Sync {
    /// Takes `message` if it wants it.
    fn take(&self, message: &Arc<Message>) -> Option<Kept>;
}
