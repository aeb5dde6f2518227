//! The ledger checked against what is held.
//!
//! [`Broker::audit`] recomputes, from the structures themselves, what each
//! [`Kind`] of the ledger should hold: every session in the registry,
//! every subscription and replay they keep, every retained message, and
//! every distinct message sitting in a queue, a parked session's in-flight
//! window or the retained store. A charge taken and never given back, or a
//! structure that grew without one, makes the two disagree; the property
//! tests (and the fuzz target) compare them after every step.

use std::collections::HashSet;
use std::sync::Arc;

use super::budget::Kind;
use super::inflight::{Inflight, Resend};
use super::message::Message;
use super::registry::session_cost;
use super::routing_core::{Broker, lock};
use super::{index, retained};

/// Bytes the ledger should hold, per [`Kind`], as recomputed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    pub messages: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub sessions: usize,
}

impl Holdings {
    /// The ledger's own figures, to compare with.
    pub fn booked(broker: &Broker) -> Holdings {
        let budget = broker.budget();
        Holdings {
            messages: budget.used_by(Kind::Messages),
            subscriptions: budget.used_by(Kind::Subscriptions),
            retained: budget.used_by(Kind::Retained),
            sessions: budget.used_by(Kind::Sessions),
        }
    }
}

impl Broker {
    /// What the ledger should hold, recomputed from the structures. Only
    /// exact while no connection holds messages of its own (in flight to a
    /// client, or on their way in), as in the routing core's tests.
    pub fn audit(&self) -> Holdings {
        let mut holdings = Holdings::default();
        let mut messages: HashSet<*const Message> = HashSet::new();
        let mut count = |message: &Arc<Message>, holdings: &mut Holdings| {
            if messages.insert(Arc::as_ptr(message)) {
                holdings.messages += message.cost();
            }
        };
        let sessions: Vec<_> = lock(&self.sessions).sessions.values().cloned().collect();
        for session in sessions {
            holdings.sessions += session_cost(session.key());
            let state = session.state();
            for requested in state.subscriptions.keys() {
                holdings.subscriptions += index::subscription_cost(requested);
            }
            for replay in &state.replays {
                holdings.subscriptions += self.replay_cost(&replay.filter);
            }
            for resend in state.inflight.iter().flat_map(Inflight::resend) {
                if let Resend::Publish(_, delivery) = resend {
                    count(&delivery.message, &mut holdings);
                }
            }
            drop(state);
            for delivery in session.mailbox().peek_all() {
                count(&delivery.message, &mut holdings);
            }
        }
        self.store.each_retained(&mut |kept| {
            holdings.retained += retained::place_cost(kept.message.topic());
            count(&kept.message, &mut holdings);
        });
        holdings
    }
}

#[cfg(test)]
mod tests;
