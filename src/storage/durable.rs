//! The routing core's [`Store`] backed by the database: retained messages
//! and parked sessions that survive a restart.
//!
//! Reads are served from memory, exactly as [`MemoryStore`] serves them
//! (matching a filter against the retained messages is the hot path and
//! stays a tree walk); every change is also sent to the writer, which
//! commits it with whatever else is pending. A retained message set or
//! cleared hands its commit back ([`Kept`]), so that the publisher's ack
//! waits for it: a kill after the PUBACK cannot lose it. At start the
//! memory side is filled from what [`super::Storage::open`] read back.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use tokio::sync::oneshot;

use super::Restored;
use super::writer::Write;
use crate::broker::store::{MemoryStore, SessionRecord, Store};
use crate::broker::{Budget, Delivery, Kept, Message, SessionKey};

pub struct DurableStore {
    memory: MemoryStore,
    writes: Sender<Write>,
}

impl DurableStore {
    /// A store holding `restored`, its messages charged to `budget`, that
    /// writes through `storage`.
    pub fn new(storage: &super::Storage, restored: Restored, budget: &Arc<Budget>) -> DurableStore {
        let memory = MemoryStore::new();
        for publication in restored.retained {
            // In memory only: nothing to commit.
            let _ = memory.retain(Message::new(publication, budget));
        }
        for (key, parked) in restored.sessions {
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
            memory.save_session(
                &key,
                SessionRecord {
                    subscriptions: parked.subscriptions,
                    expires_at: parked.expires_at,
                    queued,
                },
            );
        }
        DurableStore {
            memory,
            writes: storage.writes(),
        }
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
    fn retain(&self, message: Arc<Message>) -> Option<Kept> {
        self.memory.retain(Arc::clone(&message));
        let (kept, receiver) = oneshot::channel();
        self.write(Write::Retain(message, kept));
        Some(receiver)
    }

    fn clear_retained(&self, topic: &str) -> Option<Kept> {
        self.memory.clear_retained(topic);
        let (kept, receiver) = oneshot::channel();
        self.write(Write::ClearRetained(topic.into(), kept));
        Some(receiver)
    }

    fn retained(&self, filter: &str, visit: &mut dyn FnMut(&Arc<Message>)) {
        self.memory.retained(filter, visit);
    }

    fn save_session(&self, key: &SessionKey, record: SessionRecord) {
        self.memory.save_session(key, record.clone());
        self.write(Write::SaveSession(key.clone(), record));
    }

    fn remove_session(&self, key: &SessionKey) {
        self.memory.remove_session(key);
        self.write(Write::RemoveSession(key.clone()));
    }

    fn sessions(&self) -> Vec<(SessionKey, SessionRecord)> {
        self.memory.sessions()
    }
}
