//! jwtgate's routing core: subscriptions, retained messages, sessions and
//! delivery with back-pressure.
//!
//! # The model
//!
//! There is no router thread. A PUBLISH is routed on its publisher's own
//! task: [`Broker::publish`] matches its topic against the subscription
//! [`index`], merges the subscriptions of one session into one delivery
//! (at the highest QoS, with every subscription identifier), and puts a
//! [`Delivery`] into each subscriber session's bounded [`mailbox`]. The
//! subscriber's connection task is woken once per batch, not per message,
//! and turns deliveries into PUBLISH packets on its own socket. A message
//! crosses at most one task boundary between publisher and subscriber.
//!
//! **Back-pressure, not loss.** When a connected subscriber's queue is
//! full, [`Broker::publish`] returns a [`Pending`] publication; the
//! publisher's connection stops reading its socket and awaits
//! [`Pending::advance`] until every subscriber has taken the message, so
//! TCP paces the device. Only its QoS 1 PUBACK (or QoS 2 PUBREC) waits for
//! that, so a PUBACKed message is in every matching subscriber's queue.
//! One subscriber may hold a publisher back for at most `[sessions]
//! slow_subscriber_timeout`; then that subscriber's overflow policy applies
//! (see [`mailbox`]), every drop is counted ([`Stats`]) and logged, and the
//! publisher goes on. A subscriber that drains meanwhile takes the message
//! at once, so the policy only meets one that stayed full all along.
//!
//! **Sessions** are keyed by token subject and client id
//! ([`SessionKey`]). A connection [`Broker::attach`]es to one (new, or a
//! resumed persistent one with its queue and in-flight exchanges) and
//! [`Broker::detach`]es when it ends: the session then ends, or is parked
//! (its subscriptions kept, its queue still filling up to its bound) until
//! its expiry, with its will published after the will delay unless the
//! client comes back first.
//!
//! **Memory** is bounded per session (messages and bytes queued, in-flight
//! window, subscriptions) and gateway-wide by one ledger, the [`budget`]:
//! every message (MQTT 5 properties included), subscription, retained
//! message's place in the tree, session and topic alias is charged to it
//! while it lives, and what a client asks to hold is also booked to its
//! token subject's account, against the subject's quotas ([`Quotas`],
//! `[sessions] max_sessions_per_subject`, `max_subscription_bytes`). No
//! structure here walks topic levels by recursion, and retained messages
//! for a new subscription are replayed in slices (see `subscribe.rs`).
//!
//! **Storage**: retained messages and persistent sessions go through the
//! [`store::Store`] trait; [`store::MemoryStore`] keeps them in memory.
//!
//! Authorization is not done here: the connection layer only hands the
//! broker what the token allows ([`crate::acl`]).

mod attach;
mod audit;
pub mod budget;
mod children;
pub mod index;
pub mod inflight;
mod listing;
pub mod mailbox;
pub mod message;
mod publish;
mod registry;
pub mod retained;
mod routing_core;
pub mod session;
mod stats;
pub mod store;
mod subscribe;
mod tap;

pub use attach::{AttachError, Attached, Will};
pub use budget::{Budget, QuotaError};
pub use inflight::{Inflight, Resend, UnexpectedAck};
pub use listing::SessionView;
pub use mailbox::{Delivery, Offer, QueueLimits, Taken};
pub use message::{Message, Properties, Publication};
pub use publish::Pending;
pub use routing_core::{Broker, Quotas};
pub use session::{Session, SessionKey};
pub use stats::{Stats, StatsSnapshot};
pub use subscribe::SubscribeError;
pub use tap::{CommitError, Kept, Tap};

/// Runs `run` on a thread with a small stack (256 KiB, an eighth of a
/// tokio worker's): a walk that recursed over thousands of topic levels
/// would overflow it.
#[cfg(test)]
fn on_small_stack(run: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
}

#[cfg(test)]
mod tests;
