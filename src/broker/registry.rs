//! The sessions the routing core knows, connected or parked, and how many
//! each token subject holds: what `[sessions] max_sessions_per_subject`
//! is checked against.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::{Session, SessionKey};

/// What a session costs besides its subscriptions and queue: its state,
/// mailbox and key.
pub(super) fn session_cost(key: &SessionKey) -> usize {
    std::mem::size_of::<Session>() + 256 + key.subject().len() + key.client_id().len()
}

/// The sessions known, connected or parked, and how many each subject has.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pub sessions: HashMap<SessionKey, Arc<Session>>,
    per_subject: HashMap<Box<str>, usize>,
}

impl Registry {
    pub fn get(&self, key: &SessionKey) -> Option<&Arc<Session>> {
        self.sessions.get(key)
    }

    pub fn insert(&mut self, key: SessionKey, session: Arc<Session>) {
        let subject = key.subject().into();
        if self.sessions.insert(key, session).is_none() {
            *self.per_subject.entry(subject).or_default() += 1;
        }
    }

    pub fn remove(&mut self, key: &SessionKey) -> Option<Arc<Session>> {
        let removed = self.sessions.remove(key)?;
        if let Some(count) = self.per_subject.get_mut(key.subject()) {
            *count -= 1;
            if *count == 0 {
                self.per_subject.remove(key.subject());
            }
        }
        Some(removed)
    }

    pub fn of_subject(&self, subject: &str) -> usize {
        self.per_subject.get(subject).copied().unwrap_or(0)
    }
}
