//! The routing core's [`Store`] backed by the database: retained messages
//! and parked sessions that survive a restart.
//!
//! Reads are served from memory, exactly as [`MemoryStore`] serves them
//! (matching a filter against the retained messages is the hot path and
//! stays a tree walk); every change is also sent to the writer, which
//! commits it with whatever else is pending. A retained message set or
//! cleared hands its commit back ([`Kept`]), so that the publisher's ack
//! waits for it: a kill after the PUBACK cannot lose it. At start the
//! memory side is filled from what [`Storage::open`] read back.
//!
//! Retained messages on the server's own topics (`$SYS/...`, see
//! [`is_server_topic`]) are the exception: they are the gateway's figures
//! of this run, set by no client, and are kept in memory only. Written
//! down, they would be rewritten every `[sys] interval_secs`, and read
//! back after a restart as stale values (Mosquitto does not keep them
//! either).

use std::sync::Arc;
use std::sync::mpsc::Sender;

use tokio::sync::oneshot;

use super::command::Write;
use super::database::Storage;
use super::restore::Restored;
use crate::broker::budget::{Account, Kind};
use crate::broker::retained::{self, Position, Retained};
use crate::broker::store::{MemoryStore, SessionRecord, Store};
use crate::broker::{Budget, Delivery, Kept, Message, SessionKey};
use crate::mqtt::{TopicLimits, is_server_topic};

pub struct DurableStore {
    memory: MemoryStore,
    writes: Sender<Write>,
}

impl DurableStore {
    /// A store holding `restored`, its messages charged to `budget`, that
    /// writes through `storage`. What today's `limits` no longer admit (a
    /// topic or a filter kept by a run with wider limits, or by a version
    /// that had none) is left out, counted in the returned figure, and
    /// deleted from the database: it would be refused at the door today.
    pub fn new(
        storage: &Storage,
        restored: Restored,
        budget: &Arc<Budget>,
        limits: &TopicLimits,
    ) -> (DurableStore, usize) {
        let memory = MemoryStore::new();
        let writes = storage.writes();
        let mut refused = 0;
        for publication in restored.retained {
            let over_limits = limits.topic_name(&publication.topic).is_err();
            // A `$` topic written down by a version that let clients
            // publish there: no client may set it today, and it would
            // outlive every figure the gateway publishes over it.
            if over_limits || is_server_topic(&publication.topic) {
                refused += usize::from(over_limits);
                // Nobody waits for this commit.
                let (kept, _) = oneshot::channel();
                let _ = writes.send(Write::ClearRetained(publication.topic.into(), kept));
                continue;
            }
            // Who published it is not kept, so its place is charged to the
            // gateway alone until its publisher replaces it.
            let charge = budget.charge_as(Kind::Retained, retained::place_cost(&publication.topic));
            // In memory only: nothing to commit.
            let _ = memory.retain(Retained {
                message: Message::new(publication, budget),
                charge: Some(charge),
            });
        }
        for (key, mut parked) in restored.sessions {
            let before = parked.subscriptions.len();
            parked
                .subscriptions
                .retain(|(requested, _)| limits.requested(requested).is_ok());
            refused += before - parked.subscriptions.len();
            parked
                .queued
                .retain(|queued| limits.topic_name(&queued.publication.topic).is_ok());
            let queued = parked
                .queued
                .into_iter()
                .map(|queued| Delivery {
                    message: Message::new(queued.publication, budget),
                    qos: queued.qos,
                    retain: queued.retain,
                    subscription_ids: queued.subscription_ids.into(),
                })
                .collect();
            memory.restore_session(
                &key,
                SessionRecord {
                    subscriptions: parked.subscriptions,
                    expiry: parked.expiry,
                    queued,
                },
            );
        }
        (DurableStore { memory, writes }, refused)
    }

    /// Retained messages held.
    pub fn retained_count(&self) -> usize {
        self.memory.retained_count()
    }

    fn write(&self, write: Write) {
        // Fails only after the storage closed, at shutdown; a waiter's
        // receiver then completes at once, as not kept.
        let _ = self.writes.send(write);
    }
}

impl Store for DurableStore {
    fn retain(&self, retained: Retained) -> Option<Kept> {
        let message = Arc::clone(&retained.message);
        if is_server_topic(message.topic()) {
            // In memory only (see the module docs): nothing to commit.
            return self.memory.retain(retained);
        }
        let _ = self.memory.retain(retained);
        let (kept, receiver) = oneshot::channel();
        self.write(Write::Retain(message, kept));
        Some(receiver)
    }

    fn clear_retained(&self, topic: &str) -> Option<Kept> {
        if is_server_topic(topic) {
            return self.memory.clear_retained(topic);
        }
        self.memory.clear_retained(topic);
        let (kept, receiver) = oneshot::channel();
        self.write(Write::ClearRetained(topic.into(), kept));
        Some(receiver)
    }

    fn held_by(&self, topic: &str, account: &Arc<Account>) -> usize {
        self.memory.held_by(topic, account)
    }

    fn retained(
        &self,
        filter: &str,
        after: Option<&str>,
        steps: usize,
        visit: &mut dyn FnMut(&Arc<Message>),
    ) -> Option<Position> {
        self.memory.retained(filter, after, steps, visit)
    }

    fn each_retained(&self, visit: &mut dyn FnMut(&Retained)) {
        self.memory.each_retained(visit);
    }

    fn retained_count(&self) -> usize {
        self.memory.retained_count()
    }

    fn save_session(&self, key: &SessionKey, record: SessionRecord) -> Option<Kept> {
        let _ = self.memory.save_session(key, record.clone());
        let (kept, receiver) = oneshot::channel();
        self.write(Write::SaveSession {
            key: key.clone(),
            record,
            kept,
        });
        Some(receiver)
    }

    fn queue_parked(&self, key: &SessionKey, position: u64, delivery: &Delivery) -> Option<Kept> {
        let (kept, receiver) = oneshot::channel();
        self.write(Write::QueueParked {
            key: key.clone(),
            position,
            delivery: delivery.clone(),
            kept,
        });
        Some(receiver)
    }

    fn remove_session(&self, key: &SessionKey) {
        self.memory.remove_session(key);
        self.write(Write::RemoveSession(key.clone()));
    }

    fn sessions(&self) -> Vec<(SessionKey, SessionRecord)> {
        self.memory.sessions()
    }
}
