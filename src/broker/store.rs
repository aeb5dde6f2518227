//! The storage seam: where retained messages and persistent sessions live.
//!
//! The routing core keeps live state (queues, in-flight exchanges,
//! subscriptions of connected clients) in memory. What should outlive a
//! client's connection, and one day a restart, goes through [`Store`]:
//!
//! - **retained messages**, one per topic, found by filter;
//! - **persistent sessions**: their subscriptions and expiry. The broker
//!   saves the record when a client attaches to one and whenever its
//!   subscriptions change (so a crash while it is connected loses neither
//!   the session nor its subscriptions), saves it with the messages it
//!   holds when the client goes away, removes it when the session ends,
//!   and reads them all back when it starts. When the gateway stops, every
//!   parked session is saved again with the messages waiting for it
//!   ([`super::Broker::save_parked`]), so they outlive the restart.
//!
//! [`MemoryStore`] keeps both for the life of the process. A durable store
//! (the uplink's store-and-forward) implements the same trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::budget::{Account, Charge};
use super::mailbox::Delivery;
use super::message::Message;
use super::retained::{Position, Retained, RetainedTree};
use super::session::SessionKey;
use super::tap::Kept;
use crate::mqtt::SubscriptionOptions;

/// What is kept of a persistent session.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Subscriptions as the client made them (`$share/...` included).
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    /// When the session ends unless a client resumes it.
    pub expiry: SessionExpiry,
    /// Messages waiting for it, oldest first (unacknowledged ones
    /// included): those it held when parked; none for a connected one.
    pub queued: Vec<Delivery>,
}

/// When a stored session ends unless a client resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionExpiry {
    /// Parked: at this time.
    At(SystemTime),
    /// Connected when it was written: this long after the gateway reads it
    /// back. Its connection ended with the process, at a time nobody wrote
    /// down, so the client's interval counts from the restart.
    AfterRestart(Duration),
}

impl SessionExpiry {
    /// How long a session read back at `now` has left, `None` if none.
    pub fn left(self, now: SystemTime) -> Option<Duration> {
        match self {
            SessionExpiry::At(at) => at.duration_since(now).ok(),
            SessionExpiry::AfterRestart(interval) => Some(interval),
        }
    }
}

pub trait Store: Send + Sync + 'static {
    /// Makes `retained` the retained message of its topic.
    /// A store that writes it down returns the commit, which the
    /// publisher's ack waits on; one that keeps it in memory only, `None`.
    fn retain(&self, retained: Retained) -> Option<Kept>;
    /// Removes the retained message of `topic`; the commit as for
    /// [`Store::retain`].
    fn clear_retained(&self, topic: &str) -> Option<Kept>;
    /// What replacing the retained message of `topic` would give back to
    /// `account`: its quota counts it as free for the new one.
    fn held_by(&self, topic: &str, account: &Arc<Account>) -> usize;
    /// Visits, in topic order, the unexpired retained messages matching
    /// `filter` (valid) after position `after`, looking at `steps` entries
    /// at most; returns where to resume, `None` when done. See
    /// [`RetainedTree::matching_after`].
    fn retained(
        &self,
        filter: &str,
        after: Option<&str>,
        steps: usize,
        visit: &mut dyn FnMut(&Arc<Message>),
    ) -> Option<Position>;
    /// Every retained message with its charge, for checking the ledger.
    fn each_retained(&self, visit: &mut dyn FnMut(&Retained));
    /// Retained messages held (expired ones not yet purged included).
    fn retained_count(&self) -> usize;
    /// Writes down a persistent session: a connected one (its
    /// subscriptions) or a parked one (with the messages it holds). The
    /// commit as for [`Store::retain`]: a SUBACK waits on it.
    fn save_session(&self, key: &SessionKey, record: SessionRecord) -> Option<Kept>;
    /// Writes down `delivery`, queued for parked session `key` after its
    /// record was saved, at `position` of its queue. A store that writes
    /// it down returns the commit, which the publisher's ack waits on; one
    /// that keeps sessions in memory only, `None` (the session's mailbox
    /// holds it, and [`Broker::save_parked`](super::Broker::save_parked)
    /// saves it at shutdown).
    fn queue_parked(&self, key: &SessionKey, position: u64, delivery: &Delivery) -> Option<Kept>;
    /// Forgets a parked session (resumed, or ended).
    fn remove_session(&self, key: &SessionKey);
    /// Every parked session, read once at start.
    fn sessions(&self) -> Vec<(SessionKey, SessionRecord)>;
}

/// Retained messages set between purges of expired ones: the purge walks
/// the whole tree, so it runs now and then, not on every set.
const PURGE_EVERY: u32 = 1024;

/// The in-memory [`Store`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    retained: RwLock<RetainedTree>,
    sets_since_purge: Mutex<u32>,
    sessions: Mutex<HashMap<SessionKey, SessionRecord>>,
}

impl MemoryStore {
    /// Holds `record` with its queue, for [`Store::sessions`] to hand over
    /// at start: how a store that reads sessions back from the disk passes
    /// them on (`save_session` keeps no queue).
    pub fn restore_session(&self, key: &SessionKey, record: SessionRecord) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), record);
    }

    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn retain(&self, retained: Retained) -> Option<Kept> {
        let mut tree = self
            .retained
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        tree.set(retained);
        let mut sets = self
            .sets_since_purge
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *sets += 1;
        if *sets >= PURGE_EVERY {
            *sets = 0;
            tree.purge(Instant::now());
        }
        None
    }

    fn clear_retained(&self, topic: &str) -> Option<Kept> {
        self.retained
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear(topic);
        None
    }

    fn held_by(&self, topic: &str, account: &Arc<Account>) -> usize {
        self.retained
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .and_then(|r| r.charge.as_ref())
            .filter(|charge| charge.is_booked_to(account))
            .map_or(0, Charge::account_bytes)
    }

    fn retained(
        &self,
        filter: &str,
        after: Option<&str>,
        steps: usize,
        visit: &mut dyn FnMut(&Arc<Message>),
    ) -> Option<Position> {
        self.retained
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .matching_after(filter, after, steps, Instant::now(), visit)
    }

    fn each_retained(&self, visit: &mut dyn FnMut(&Retained)) {
        self.retained
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .each(visit);
    }

    fn retained_count(&self) -> usize {
        self.retained
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn save_session(&self, key: &SessionKey, record: SessionRecord) -> Option<Kept> {
        // The queue of a session saved while running is in its own
        // mailbox; a copy here would keep messages alive that the mailbox
        // has delivered or dropped, outside what the ledger can see.
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                key.clone(),
                SessionRecord {
                    queued: Vec::new(),
                    ..record
                },
            );
        None
    }

    fn queue_parked(&self, _: &SessionKey, _: u64, _: &Delivery) -> Option<Kept> {
        None
    }

    fn remove_session(&self, key: &SessionKey) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    fn sessions(&self) -> Vec<(SessionKey, SessionRecord)> {
        // Read once, at start: the queues go to the sessions restored with
        // them, and are not held here a second time.
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .map(|(key, record)| {
                let queued = std::mem::take(&mut record.queued);
                (
                    key.clone(),
                    SessionRecord {
                        queued,
                        ..record.clone()
                    },
                )
            })
            .collect()
    }
}
