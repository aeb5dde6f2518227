//! Subscribing and unsubscribing a session, and the replay of retained
//! messages for a new subscription.
//!
//! A subscription is charged to its session's subject before it is made
//! (refused past `max_subscriptions`, `max_subscription_bytes` or the
//! budget). Retained messages are not copied into the session's queue at
//! once: the subscription gets a position in the retained store, and
//! [`Broker::replay`] reads on from it a slice at a time, into whatever
//! room the queue has, so neither the queue nor the store's lock is held
//! by one subscriber for longer than a slice.

use std::sync::Arc;

use super::budget::{Kind, QuotaError};
use super::index::{self, Subscriber};
use super::inflight::Inflight;
use super::mailbox::Delivery;
use super::retained::Position;
use super::routing_core::Broker;
use super::session::{Replay, Session, Subscription};
use crate::acl::Grants;
use crate::mqtt::{FilterError, RequestedFilter};
use crate::mqtt::{RetainHandling, SubscriptionOptions};

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid filter: {0}")]
    Invalid(#[from] FilterError),
    #[error("the session already has the maximum of {0} subscriptions")]
    TooMany(usize),
    #[error(
        "the session's subscriptions would hold more than {0} bytes ([sessions] max_subscription_bytes)"
    )]
    TooLarge(usize),
    #[error("{0}")]
    Quota(#[from] QuotaError),
}

/// Retained-tree nodes one replay slice looks at: bounds how long one
/// subscriber holds the retained store from publishers of retained messages.
const REPLAY_STEPS: usize = 256;

impl Broker {
    /// Subscribes `session` to `requested` (a filter or `$share/...`),
    /// replacing a subscription to the same filter, and sets up the replay
    /// of the retained messages `retain_handling` asks for (sent as the
    /// session has room, see [`Broker::replay`]). Returns whether the
    /// subscription existed before.
    ///
    /// A new subscription is charged to the session's subject: refused
    /// past `max_subscriptions`, past `max_subscription_bytes`, or when the
    /// memory budget is used up.
    ///
    /// The store is not written here: the caller makes one record of a
    /// whole SUBSCRIBE ([`Broker::keep_subscriptions`]) and answers once it
    /// is committed.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        requested: &str,
        options: SubscriptionOptions,
        retain_handling: RetainHandling,
    ) -> Result<bool, SubscribeError> {
        let parsed = RequestedFilter::parse(requested)?;
        let mut state = session.state();
        let existed = state.subscriptions.contains_key(requested);
        let send_retained = parsed.group.is_none()
            && match retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscription => !existed,
                RetainHandling::Never => false,
            };
        let subscription_cost = if existed {
            0
        } else {
            index::subscription_cost(requested)
        };
        let replay_cost = if send_retained {
            self.replay_cost(parsed.filter)
        } else {
            0
        };
        if !existed && state.subscriptions.len() >= self.settings.max_subscriptions {
            return Err(SubscribeError::TooMany(self.settings.max_subscriptions));
        }
        let quota = self.settings.max_subscription_bytes;
        if state.subscription_bytes + subscription_cost + replay_cost > quota {
            return Err(SubscribeError::TooLarge(quota));
        }
        let account = match &state.account {
            Some(account) => Arc::clone(account),
            None => self.budget.account(session.key().subject()),
        };
        let charge = |bytes| {
            self.budget
                .try_charge(&account, Kind::Subscriptions, bytes, bytes, usize::MAX)
        };
        let subscription_charge = if existed {
            None
        } else {
            Some(charge(subscription_cost)?)
        };
        let replay_charge = if send_retained {
            Some(charge(replay_cost)?)
        } else {
            None
        };
        state.subscription_bytes += subscription_cost + replay_cost;
        match state.subscriptions.get_mut(requested) {
            Some(existing) => existing.options = options,
            None => {
                state.subscriptions.insert(
                    requested.into(),
                    Subscription {
                        options,
                        charge: subscription_charge,
                    },
                );
            }
        }
        self.write_index().insert(
            parsed.group,
            parsed.filter,
            Subscriber {
                session: Arc::clone(session),
                options,
            },
        );
        if let Some(charge) = replay_charge {
            state.replays.push_back(Replay {
                filter: parsed.filter.into(),
                options,
                after: None,
                charge,
            });
            drop(state);
            session.set_replaying(true);
            session.mailbox().wake();
        }
        Ok(existed)
    }

    /// What a retained replay of `filter` holds: the filter and the
    /// longest position it may reach.
    pub(super) fn replay_cost(&self, filter: &str) -> usize {
        filter.len() + self.quotas.max_topic_bytes + std::mem::size_of::<Replay>()
    }

    /// Moves retained messages waiting to be replayed into `session`'s
    /// queue while it has room, reading the store one bounded slice at a
    /// time. Returns whether more wait (the caller comes back once the
    /// queue drains, or at once to yield between slices).
    ///
    /// Repeating a filter in one SUBSCRIBE, or subscribing to many, adds
    /// positions to read from, not copies: what sits in the queue is bounded
    /// by the queue's own limits.
    pub fn replay(&self, session: &Arc<Session>) -> bool {
        let mut state = session.state();
        let Some(replay) = state.replays.front_mut() else {
            drop(state);
            session.set_replaying(false);
            return false;
        };
        let ids: Box<[u32]> = replay.options.id.into_iter().collect();
        let mut found = Vec::new();
        let next = self.store.retained(
            &replay.filter,
            replay.after.as_deref(),
            REPLAY_STEPS,
            &mut |message| found.push(Arc::clone(message)),
        );
        let mut full = false;
        for message in found {
            let delivery = Delivery {
                qos: message.qos().min(replay.options.qos),
                retain: true,
                subscription_ids: ids.clone(),
                message,
            };
            let topic: Position = delivery.message.topic().into();
            if !session.mailbox().push_if_room(delivery, &self.budget) {
                full = true;
                break;
            }
            replay.after = Some(topic);
        }
        if !full {
            match next {
                Some(position) => replay.after = Some(position),
                None => {
                    if let Some(done) = state.replays.pop_front() {
                        state.subscription_bytes -= done.charge.bytes();
                    }
                }
            }
        }
        let more = !state.replays.is_empty();
        drop(state);
        if !more {
            session.set_replaying(false);
        }
        // A full queue is drained by the connection, which calls again.
        more && !full
    }

    /// Removes `session`'s subscription to `requested`; whether it had one.
    /// The store as for [`Broker::subscribe`].
    pub fn unsubscribe(&self, session: &Arc<Session>, requested: &str) -> bool {
        let mut state = session.state();
        let Some(removed) = state.subscriptions.remove(requested) else {
            return false;
        };
        state.subscription_bytes -= removed.charge.as_ref().map_or(0, |c| c.bytes());
        match RequestedFilter::parse(requested) {
            Ok(parsed) => self
                .write_index()
                .remove(parsed.group, parsed.filter, session),
            Err(_) => false,
        }
    }

    /// Narrows a session to what a new token grants (on resuming it, or on
    /// re-authentication): subscriptions it does not cover at their QoS are
    /// removed (and returned, for the log), and queued or unacknowledged
    /// messages it would not let the client receive are dropped.
    pub fn restrict(
        &self,
        session: &Arc<Session>,
        grants: &Grants,
        inflight: &mut Inflight,
    ) -> Vec<String> {
        let removed: Vec<String> = session
            .state()
            .subscriptions
            .iter()
            .filter(|(requested, sub)| !grants.may_subscribe(requested, sub.options.qos))
            .map(|(requested, _)| requested.to_string())
            .collect();
        for requested in &removed {
            self.unsubscribe(session, requested);
        }
        if !removed.is_empty() {
            // Nothing waits: a crash before the commit brings back
            // subscriptions the next connection's token narrows again.
            let _ = self.keep_subscriptions(session);
        }
        {
            let mut state = session.state();
            let before: usize = state.replays.iter().map(|r| r.charge.bytes()).sum();
            state
                .replays
                .retain(|r| grants.may_subscribe(&r.filter, r.options.qos));
            let after: usize = state.replays.iter().map(|r| r.charge.bytes()).sum();
            state.subscription_bytes -= before - after;
        }
        let allowed = |d: &Delivery| grants.may_receive(d.message.topic(), d.qos);
        session.mailbox().retain(allowed);
        inflight.retain(allowed);
        removed
    }
}
