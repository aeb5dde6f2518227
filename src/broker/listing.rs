//! The sessions as an operator sees them (`jwtgate sessions`), and the
//! parked ones an operator may discard (`jwtgate disconnect
//! --discard-session`). Live connections are ended by their own tasks;
//! what is left here is the routing core's side.

use std::sync::Arc;
use std::time::SystemTime;

use super::routing_core::{Broker, lock};
use super::session::{Session, SessionKey};

/// One session, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub key: SessionKey,
    /// A connection holds it.
    pub attached: bool,
    pub subscriptions: usize,
    /// Deliveries waiting in its queue.
    pub queued: usize,
    /// For a parked session, when it expires.
    pub expires_at: Option<SystemTime>,
}

impl Broker {
    /// Every session known, connected or parked, in key order.
    pub fn sessions(&self) -> Vec<SessionView> {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).sessions.values().cloned().collect();
        let mut views: Vec<SessionView> = sessions
            .iter()
            .map(|session| {
                let state = session.state();
                SessionView {
                    key: session.key().clone(),
                    attached: state.attached,
                    subscriptions: state.subscriptions.len(),
                    queued: session.mailbox().len(),
                    expires_at: state.expires_at.filter(|_| !state.attached),
                }
            })
            .collect();
        views.sort_by(|a, b| {
            (a.key.subject(), a.key.client_id()).cmp(&(b.key.subject(), b.key.client_id()))
        });
        views
    }

    /// Ends the parked session `key` now, as its expiry would: out of the
    /// registry, the index and the store, its queue dropped. A session a
    /// connection holds is left to that connection; false then, and when
    /// there is no such session.
    pub fn discard_parked(&self, key: &SessionKey) -> bool {
        let Some(session) = lock(&self.sessions).get(key).cloned() else {
            return false;
        };
        self.end_parked(&session, "an operator discarded it")
    }
}
