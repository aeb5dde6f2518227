//! A connected client's side of the protocol: packets in, decisions out.
//!
//! [`Client`] holds what MQTT makes a connection remember (its identity
//! and grants, the QoS 1/2 exchanges in flight both ways, topic aliases
//! both ways, the publication waiting for a full subscriber) and decides
//! what each packet means; it owns no socket and no timer, so it is tested
//! with bytes in and bytes out. The connection's loop
//! ([`super::session`]) feeds it:
//!
//! - **inbound** ([`Client::take_input`]): each packet the client sends is
//!   authorized against its token's grants and handed to the routing core
//!   ([`crate::broker`]). PUBLISH is routed right here, on the client's own
//!   task. When a subscriber's queue is full the publication is *pending*:
//!   the client's next publishes are not taken (only its acks and pings,
//!   and its socket only a little ahead) until every subscriber has taken
//!   it or its hold-back bound passed, and only then does the client get
//!   its PUBACK/PUBREC ([`Client::publication_done`]);
//! - **outbound** ([`Client::pump`]): deliveries are taken from the
//!   session's mailbox in batches and encoded as PUBLISH packets, QoS 1/2
//!   ones within the in-flight window (min of `[sessions] max_inflight` and
//!   the client's receive maximum) and none larger than the client accepts;
//! - **the end** ([`Ending`], [`Client::say_goodbye`],
//!   [`Client::hand_back`]): why the session ended, the DISCONNECT that
//!   tells an MQTT 5 client, and the session handed back to the routing
//!   core with its will.
//!
//! Every answer goes into an [`Outbox`](super::wire::Outbox); the loop
//! writes it out.
//!
//! One file per seam, each an `impl Client` block over the state in
//! [`state`]: [`inbound`] decodes and dispatches, [`publish`],
//! [`subscribe`] and [`reauth`] answer their packets, [`deliver`] is the
//! outbound pump, [`aliases`] holds the topic alias tables both ways, and
//! [`ending`] says why a session ended, a broken rule being a
//! [`ending::ProtocolViolation`].

// Untrusted input (the client's packets drive this code): fail with an
// error, never a panic, here and in every file below. Tests are exempt
// through clippy.toml. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod aliases;
mod deliver;
mod ending;
mod inbound;
mod publish;
mod reauth;
mod state;
mod subscribe;

pub(super) use deliver::WRITE_BATCH;
pub(super) use ending::{Ending, ProtocolViolation};
pub(super) use state::{Client, ClientLimits, Identity};

#[cfg(test)]
mod tests;
