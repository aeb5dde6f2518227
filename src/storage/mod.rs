//! The durable store: what must outlive the process, in one SQLite
//! database under `[storage] dir`.
//!
//! # The model
//!
//! Three kinds of state live here:
//!
//! - each bridge's **store-and-forward queue** ([`Queue`]): messages bound
//!   for a remote broker, from the moment they are routed until the remote
//!   acknowledged them;
//! - the **retained messages**, one per topic;
//! - the **parked sessions**: a persistent session's subscriptions and
//!   expiry while its client is away.
//!
//! All writes go through one writer thread (`writer.rs`) that commits them
//! in groups; readers (a bridge draining its queue) have connections of
//! their own, which WAL mode lets run beside the writer. At start,
//! [`Storage::open`] reads the retained messages and sessions back
//! ([`Restored`]) so that the routing core has them before the listener
//! takes its first device; the queues need no restoring, the bridges read
//! them where they are.
//!
//! # What survives what
//!
//! A committed write survives a process kill at once: WAL mode with
//! `synchronous=NORMAL` writes every commit into the WAL file. A power cut
//! may lose what was committed in the last `[storage] sync_interval_ms`,
//! after which the WAL is fsynced (`writer.rs`); a zero interval fsyncs
//! every commit. A message queued for a bridge, and a retained message set
//! or cleared, is committed before the device's PUBACK is sent (the
//! device's ack waits for the writer's answer), so no acknowledged message
//! is lost to a kill. A commit that fails (a full disk) is answered too:
//! the ack then says the message was not kept ([`crate::broker::Kept`]),
//! and [`Health`] shows the state until a commit works again.
//!
//! # Why SQLite
//!
//! Measured on this workload (`benches/store-choice`, see BENCHMARKS.md):
//! SQLite in WAL mode commits a message in tens of microseconds without an
//! fsync while staying safe against a kill; redb, the pure-Rust
//! alternative, is only kill-safe with an fsync per commit (its
//! non-durable commits are lost by a crash), which made it 14 times slower
//! per message and 3.5 times slower in groups of 64.

mod command;
mod database;
mod durable;
mod queue;
mod restore;
mod rows;
mod schema;
mod writer;

pub use database::Storage;
pub use durable::DurableStore;
pub use queue::{Queue, QueueReader, QueueSnapshot, Queued};
pub use restore::{ParkedSession, QueuedDelivery, Restored};
pub use rows::RowError;
pub use schema::StorageError;
pub use writer::Health;

#[cfg(test)]
mod tests;
